"""Regenerate caffe2torch/proto/*_pb2.py from the .proto schemas beside them.

    python scripts/generate_protos.py          # rewrite the committed modules
    python scripts/generate_protos.py --check  # exit 1 if they are stale

Needs grpcio-tools (the `dev` extra), which bundles protoc. The output is post-processed so that the modules
load with protobuf 4.21 through 7: newer protoc emits a runtime version guard
(`_runtime_version.ValidateProtobufRuntimeVersion`) that refuses older runtimes, although the builder API the
modules use exists since protobuf 3.20. We drop that guard and nothing else.

tests/test_schemas.py checks the schemas against the forks' field tables in tests/data/schemas/
(scripts/extract_schema_table.py); scripts/check_protobuf_versions.sh loads them with each protobuf major.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "caffe2torch" / "proto"
SCHEMAS = ("common", "upstream", "deeplab_v1", "deeplab_v2", "segnet", "enet", "pspnet", "shufflenet")

_GUARD = re.compile(
    r"from google\.protobuf import runtime_version as _runtime_version\n"
    r"|_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:.*\n)*?\)\n"
)


def generate() -> dict[str, str]:
    """Run protoc on every schema; return {module file name: post-processed source}."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        args = ["protoc", f"-I{ROOT}", f"--python_out={out}"]
        args += [str(PROTO_DIR / f"{name}.proto") for name in SCHEMAS]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        modules = {}
        for name in SCHEMAS:
            path = Path(out) / "caffe2torch" / "proto" / f"{name}_pb2.py"
            modules[path.name] = _GUARD.sub("", path.read_text())
    return modules


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale modules")
    args = parser.parse_args()
    stale = []
    for name, text in generate().items():
        target = PROTO_DIR / name
        if not target.exists() or target.read_text() != text:
            stale.append(name)
            if not args.check:
                target.write_text(text)
    if args.check and stale:
        print("stale generated modules: " + ", ".join(stale), file=sys.stderr)
        return 1
    print("up to date" if not stale else "regenerated: " + ", ".join(stale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
