"""Write a dialect schema (.proto) for a Caffe fork from its field table (tests/data/schemas/FORK.json).

    python scripts/write_fork_proto.py tests/data/schemas/segnet.json --package segnet \\
        --title "SegNet (alexgkendall/caffe-segnet) ..." -o caffe2torch/proto/segnet.proto [--base deeplab_v2]

The table (scripts/extract_schema_table.py) holds every message, field and enum a net definition of the fork can
reach. Each message that reads exactly the same, with everything it reaches, as a message of
caffe2torch/proto/common.proto (or of the --base dialect's schema) is taken from there; the others are written
into the new file, fields in the fork's declaration order. The result is a schema that tests/test_schemas.py
finds equal to the fork's caffe.proto. Run scripts/generate_protos.py afterwards (after adding the new name to
its SCHEMAS).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from extract_schema_table import schema_table  # noqa: E402


def _files(modules) -> list[descriptor_pb2.FileDescriptorProto]:
    files, pending, seen = [], [m.DESCRIPTOR for m in modules], set()
    while pending:
        file = pending.pop()
        if file.name in seen:
            continue
        seen.add(file.name)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        files.append(proto)
        pending.extend(file.dependencies)
    return files


def _closure(desc: Descriptor) -> dict[str, str]:
    """Package-relative name -> full name of every message and enum `desc` reaches (itself included)."""
    out: dict[str, str] = {}
    stack = [desc]
    while stack:
        d = stack.pop()
        relative = d.full_name[len(d.file.package) + 1:]
        if relative in out:
            continue
        out[relative] = d.full_name
        for enum in d.enum_types:
            out[enum.full_name[len(d.file.package) + 1:]] = enum.full_name
        for fd in d.fields:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                stack.append(fd.message_type)
            elif fd.type == FieldDescriptor.TYPE_ENUM:
                e = fd.enum_type
                out[e.full_name[len(e.file.package) + 1:]] = e.full_name
    return out


def reusable(fork: dict[str, Any], sources: list) -> dict[str, str]:
    """Fork message name -> full name of an identical message (closure included) in one of `sources`, the
    first source that has one; then pruned until every chosen message's closure resolves to chosen names."""
    files = _files(sources)
    candidates: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for module in sources:
        for name, desc in module.DESCRIPTOR.message_types_by_name.items():
            if name not in fork["messages"]:
                continue
            table = schema_table(files, desc.full_name)
            same = all(fork["messages"].get(m) == entries for m, entries in table["messages"].items()) and all(
                fork["enums"].get(e) == values for e, values in table["enums"].items())
            if same:
                candidates.setdefault(name, []).append((desc.full_name, _closure(desc)))
    chosen = {name: options[0] for name, options in candidates.items()}
    changed = True
    while changed:
        changed = False
        for name, (_, closure) in list(chosen.items()):
            for relative, target in closure.items():
                message = relative.split(".")[0]
                owner = target if "." not in relative else target.rsplit(".", 1)[0]
                if message == "Phase" or message == name:
                    continue
                if chosen.get(message, ("",))[0] != owner:
                    del chosen[name]
                    changed = True
                    break
    return {name: full for name, (full, _) in chosen.items()}


def _type_name(entry: dict[str, Any], external: dict[str, str]) -> str:
    name = entry["type_name"]
    message, _, nested = name.partition(".")
    if message in external:
        return external[message] + ("." + nested if nested else "")
    if message == "Phase" and "Phase" in external:
        return external["Phase"]
    return name


def _default(value: Any, kind: str) -> str:
    if kind == "string" or kind == "bytes":
        return json.dumps(value)
    if kind == "bool":
        return "true" if value else "false"
    if kind in ("float", "double"):
        text = repr(float(value))
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def write_proto(fork: dict[str, Any], package: str, title: list[str], base: str | None) -> str:
    from caffe2torch.proto import common_pb2

    sources = [common_pb2]
    if base:
        sources.append(importlib.import_module(f"caffe2torch.proto.{base}_pb2"))
    external = reusable(fork, sources)
    # Top-level enums (Phase) come from the common file, which defines the same values.
    common_enums = {e.name: e.full_name for e in common_pb2.DESCRIPTOR.enum_types_by_name.values()}
    for name in fork["enums"]:
        if "." not in name:
            if name not in common_enums:
                raise SystemExit(f"top-level enum {name} is not in common.proto")
            external[name] = common_enums[name]
    lines = [f"// {line}" if line else "//" for line in title]
    lines += ['syntax = "proto2";', "", f"package caffe2torch.{package};", ""]
    imports = sorted({full.split(".")[1] for full in external.values()})
    lines += [f'import "caffe2torch/proto/{name}.proto";' for name in imports]
    local = [name for name in fork["messages"] if name not in external]
    # NetParameter and LayerParameter first, then the rest alphabetically (the table's order).
    order = [n for n in ("NetParameter", "LayerParameter", "V1LayerParameter") if n in local]
    order += [n for n in local if n not in order]
    for name in order:
        lines += ["", f"message {name} {{"]
        for enum_name, values in fork["enums"].items():
            if enum_name.startswith(name + ".") and enum_name.count(".") == 1:
                lines.append(f"  enum {enum_name.split('.')[1]} {{")
                lines += [f"    {value} = {number};" for value, number in values]
                lines.append("  }")
        for field, entry in fork["messages"][name].items():
            kind = entry["type"]
            type_text = _type_name(entry, external) if kind in ("message", "enum") else kind
            options = []
            if "default" in entry:
                options.append(f"default = {_default(entry['default'], kind)}")
            if "packed" in entry:
                options.append(f"packed = {'true' if entry['packed'] else 'false'}")
            suffix = f" [{', '.join(options)}]" if options else ""
            lines.append(f"  {entry['label']} {type_text} {field} = {entry['number']}{suffix};")
        lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path)
    parser.add_argument("--package", required=True, help="the dialect's name, e.g. segnet")
    parser.add_argument("--title", action="append", default=[], help="a header comment line (repeatable)")
    parser.add_argument("--base", help="another dialect schema to take identical messages from, e.g. deeplab_v2")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    fork = json.loads(args.table.read_text())
    args.output.write_text(write_proto(fork, args.package, args.title, args.base))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
