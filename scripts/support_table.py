"""Print the supported-layer table (Markdown) from the layer registry; the README embeds its output between
the `support-table` markers, and tests/test_docs.py fails when the two differ.

    python scripts/support_table.py            # print
    python scripts/support_table.py --write    # update README.md in place
"""

from __future__ import annotations

import sys
from pathlib import Path

from caffe2torch.layers import REGISTRY
from caffe2torch.upgrade import DATA_LAYER_TYPES, TRAINING_ONLY_TYPES, V1_LAYER_TYPES

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- support-table:begin -->", "<!-- support-table:end -->"


def table() -> str:
    v1_names = {}
    for enum, name in V1_LAYER_TYPES.items():
        v1_names.setdefault(name, enum)
    rows = ["| Caffe type | V1 enum | module |", "|---|---|---|"]
    for name in sorted(REGISTRY):
        family = type(REGISTRY[name]).__module__.rsplit(".", 1)[-1]
        rows.append(f"| {name} | {v1_names.get(name, '-')} | `layers/{family}.py` |")
    rows.append("")
    rows.append("Data layers, which become net inputs: " + ", ".join(sorted(DATA_LAYER_TYPES))
                + ", and a Python layer without bottoms (FCN's data layers; one that reads blobs is unsupported).")
    rows.append("")
    rows.append("Dropped at deploy time, and reported: " + ", ".join(sorted(TRAINING_ONLY_TYPES)) + ".")
    return "\n".join(rows)


def embedded(readme: str) -> str:
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[start:end].strip()


def main() -> int:
    text = table()
    if "--write" in sys.argv:
        readme = README.read_text()
        start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
        README.write_text(readme[:start] + "\n" + text + "\n" + readme[end:])
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
