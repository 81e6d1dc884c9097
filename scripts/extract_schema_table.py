"""Turn a Caffe fork's caffe.proto into the compact field table that tests/test_schemas.py checks our schemas with.

    python scripts/extract_schema_table.py CAFFE_PROTO --repo BVLC/caffe --commit SHA \\
        --path src/caffe/proto/caffe.proto -o tests/data/schemas/upstream.json

CAFFE_PROTO is a checkout's `src/caffe/proto/caffe.proto` (read from a clone, never committed here); --repo,
--commit and --path only record where it came from. The table holds facts about the file format and nothing
else: every message reachable from NetParameter (SolverParameter and the like are left out), each field's
number, label, type (with the message or enum it names), default and packing, and every enum's values in
declaration order (the first value is the default of an enum field without an explicit one). Names are given
relative to their proto package, so the fork's `caffe.PoolingParameter` and our
`caffe2torch.common.PoolingParameter` both read `PoolingParameter`.

`schema_table()` is also what the test runs over our generated modules' descriptors, so both sides of the
comparison are normalised by the same code. Needs grpcio-tools (the `test` extra) for protoc.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

FieldProto = descriptor_pb2.FieldDescriptorProto
_LABELS = {FieldProto.LABEL_OPTIONAL: "optional", FieldProto.LABEL_REQUIRED: "required",
           FieldProto.LABEL_REPEATED: "repeated"}
_TYPES = {value: name[len("TYPE_"):].lower() for name, value in FieldProto.Type.items()}


def compile_proto(proto: Path) -> list[descriptor_pb2.FileDescriptorProto]:
    """protoc's parse of one self-contained .proto file (a fork's caffe.proto imports nothing)."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        descriptor_set = Path(out) / "set.pb"
        args = ["protoc", f"-I{proto.parent}", f"--descriptor_set_out={descriptor_set}", "--include_imports",
                str(proto)]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc could not parse {proto}")
        return list(descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file)


def _default(field: descriptor_pb2.FieldDescriptorProto) -> Any:
    """The declared default as a JSON value: floats rounded to their stored precision, enums by name."""
    text = field.default_value
    kind = _TYPES[field.type]
    if kind == "double":
        return float(text)
    if kind == "float":
        return _shortest_float32(float(text))
    if kind == "bool":
        return text == "true"
    if kind in ("string", "bytes", "enum"):
        return text
    return int(text)


def _shortest_float32(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (0.999, not 0.9990000128746033)."""
    stored = struct.unpack("<f", struct.pack("<f", value))[0]
    for digits in range(1, 10):
        candidate = float(f"{stored:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", candidate))[0] == stored:
            return candidate
    return stored


def schema_table(files: Iterable[descriptor_pb2.FileDescriptorProto], root: str) -> dict[str, Any]:
    """{"messages": {name: {field: entry}}, "enums": {name: [[value, number], ...]}} for `root` and every
    message and enum reachable from it (nested enums of a reachable message included).

    `root` is a full name without the leading dot (e.g. "caffe.NetParameter"). Two reachable types with the
    same package-relative name (the same message defined in two of our files) are an error.
    """
    messages: dict[str, tuple[str, descriptor_pb2.DescriptorProto]] = {}
    enums: dict[str, tuple[str, descriptor_pb2.EnumDescriptorProto]] = {}

    def index(scope: str, relative: str, message: descriptor_pb2.DescriptorProto) -> None:
        full = f"{scope}.{message.name}" if scope else message.name
        messages[full] = (relative + message.name, message)
        for enum in message.enum_type:
            enums[f"{full}.{enum.name}"] = (f"{relative}{message.name}.{enum.name}", enum)
        for nested in message.nested_type:
            index(full, f"{relative}{message.name}.", nested)

    for file in files:
        for message in file.message_type:
            index(file.package, "", message)
        for enum in file.enum_type:
            full = f"{file.package}.{enum.name}" if file.package else enum.name
            enums[full] = (enum.name, enum)

    table: dict[str, Any] = {"messages": {}, "enums": {}}
    owners: dict[str, str] = {}

    def claim(relative: str, full: str) -> None:
        if owners.setdefault(relative, full) != full:
            raise ValueError(f"{relative} is reachable as both {owners[relative]} and {full}")

    def add_enum(full: str) -> str:
        relative, enum = enums[full]
        claim(relative, full)
        table["enums"][relative] = [[value.name, value.number] for value in enum.value]
        return relative

    pending = [root]
    while pending:
        full = pending.pop()
        relative, message = messages[full]
        claim(relative, full)
        if relative in table["messages"]:
            continue
        entries: dict[str, Any] = {}
        for field in message.field:
            entry: dict[str, Any] = {"number": field.number, "label": _LABELS[field.label],
                                     "type": _TYPES[field.type]}
            target = field.type_name.lstrip(".")
            if field.type == FieldProto.TYPE_MESSAGE:
                entry["type_name"] = messages[target][0]
                pending.append(target)
            elif field.type == FieldProto.TYPE_ENUM:
                entry["type_name"] = add_enum(target)
            if field.HasField("default_value"):
                entry["default"] = _default(field)
            if field.options.HasField("packed"):
                entry["packed"] = field.options.packed
            entries[field.name] = entry
        for enum in message.enum_type:
            add_enum(f"{full}.{enum.name}")
        table["messages"][relative] = entries
    table["messages"] = dict(sorted(table["messages"].items()))
    table["enums"] = dict(sorted(table["enums"].items()))
    return table


def dump(table: dict[str, Any]) -> str:
    """JSON with one line per field and per enum: small diffs, easy to read."""
    lines = ["{"]
    for key, value in table.items():
        if key in ("messages", "enums"):
            continue
        lines.append(f"  {json.dumps(key)}: {json.dumps(value)},")
    lines.append('  "messages": {')
    for m, (name, fields) in enumerate(table["messages"].items()):
        lines.append(f"    {json.dumps(name)}: {{")
        for f, (field, entry) in enumerate(fields.items()):
            comma = "," if f + 1 < len(fields) else ""
            lines.append(f"      {json.dumps(field)}: {json.dumps(entry)}{comma}")
        lines.append("    }" + ("," if m + 1 < len(table["messages"]) else ""))
    lines.append("  },")
    lines.append('  "enums": {')
    for e, (name, values) in enumerate(table["enums"].items()):
        comma = "," if e + 1 < len(table["enums"]) else ""
        lines.append(f"    {json.dumps(name)}: {json.dumps(values)}{comma}")
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("proto", type=Path, help="the fork's caffe.proto, from a local clone")
    parser.add_argument("--repo", required=True, help="where it came from, e.g. BVLC/caffe")
    parser.add_argument("--commit", required=True, help="the full commit id it was read at")
    parser.add_argument("--path", default="src/caffe/proto/caffe.proto", help="its path in that repository")
    parser.add_argument("--root", default="NetParameter", help="the message whose reachable types are kept")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    files = compile_proto(args.proto.resolve())
    package = files[-1].package
    table = {"source": {"repository": args.repo, "commit": args.commit, "path": args.path},
             "extracted_by": "scripts/extract_schema_table.py", "root": args.root}
    table.update(schema_table(files, f"{package}.{args.root}" if package else args.root))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(dump(table))
    print(f"{args.output}: {len(table['messages'])} messages, {len(table['enums'])} enums")
    return 0


if __name__ == "__main__":
    sys.exit(main())
