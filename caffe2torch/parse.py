"""Text prototxt → the net as plain dicts, read with the schema of the file's dialect, borrowing by name.

DeepLab v1, DeepLab v2 and upstream Caffe clash on field *numbers*, which only binary files use. A text file
names every field, so there is no clash there: a DeepLab v2 net may declare its input with upstream's
`Input` layer (`input_param`, whose number 143 is DeepLab v2's `interp_param`), and a v1 net may use stock
Caffe's DECONVOLUTION. So a file is read in three steps:

1. `textproto.read_text_message`: the text as a schema-free tree (line and column of every field);
2. `dialects.detect_dialect`: the fork whose schema and layer types explain the file best (it decides what
   really differs: layer semantics, enums, binary field numbers);
3. `SchemaReader`: every field typed by the dialect's schema; a field that schema lacks is taken from another
   dialect's schema at the same place when one has it (a "borrowed" field, listed in the notes); a field no
   schema has is kept as written and recorded with its line under the layer's `_unknown` key, so that later
   stages can drop a layer that writes nothing back, or list every unknown parameter in one error.

The result holds only the fields the file sets (presence matters to Caffe, e.g. for Interp), enums by name,
messages as dicts and repeated fields as lists: the same shape for every dialect.
Template placeholders `${NAME}` (the DeepLab v2 scripts filled them with sed) are replaced first.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from caffe2torch import limits
from caffe2torch.dialects import DIALECTS, Dialect, detect_dialect, dialect_title, get_dialect
from caffe2torch.errors import Location, PrototxtError
from caffe2torch.paths import require_file, sniff
from caffe2torch.textproto import Scalar, TextField, TextMessage, read_text_message, tokens

# Kept for callers that show a dialect's title by name.
DIALECT_TITLES = {name: dialect.title for name, dialect in DIALECTS.items()}

LAYER_FIELDS = ("layer", "layers")
# NetParameter fields of a solver file: a hint when one is given where a net is expected.
_SOLVER_FIELDS = {"base_lr", "lr_policy", "max_iter", "solver_mode", "snapshot_prefix", "net", "train_net",
                  "test_net", "test_iter", "momentum", "weight_decay", "display", "snapshot", "solver_type"}
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class BorrowedField:
    """A field the file's dialect lacks, read with another dialect's schema."""

    path: str
    dialect: str
    line: int


@dataclass
class ParsedPrototxt:
    """A parsed file: its dialect, the net as dicts, and the line where each layer starts (in file order)."""

    dialect: str
    net: dict[str, Any]
    layer_lines: list[int]
    source: str | None = None
    warnings: list[str] = field(default_factory=list)
    borrowed: list[BorrowedField] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# Placeholders
# ---------------------------------------------------------------------------------------------------------


def substitute_placeholders(text: str, defines: dict[str, str], source: str | None = None) -> tuple[str, list[str]]:
    """Replace `${NAME}` from `defines`.

    An undefined placeholder where a number or identifier is needed is an error that lists every such name
    with its line; inside a quoted string (a path, a layer name) it may stay, with a warning.
    """
    if "${" not in text:
        return text, []
    missing: dict[str, list[int]] = {}
    kept: dict[str, list[int]] = {}
    for kind, value, line, _ in tokens(text):
        if kind not in ("placeholder", "string"):
            continue
        for name in _PLACEHOLDER.findall(value):
            if name not in defines:
                lines = (kept if kind == "string" else missing).setdefault(name, [])
                if len(lines) < 20:
                    lines.append(line)
    if missing:
        listed = ", ".join(f"${{{n}}} (line {', '.join(map(str, lines))})" for n, lines in missing.items())
        raise PrototxtError(
            f"undefined template placeholder(s) where a value is needed: {listed}; "
            f"give each with --define NAME=VALUE",
            Location(file=source),
        )
    notes = []
    if kept:
        listed = ", ".join(f"${{{n}}} (line {', '.join(map(str, lines))})" for n, lines in kept.items())
        notes.append(f"undefined placeholder(s) left inside quoted text: {listed}")
    result = _PLACEHOLDER.sub(lambda m: defines.get(m.group(1), m.group(0)), text)
    return result, notes


# ---------------------------------------------------------------------------------------------------------
# Scalars by protobuf type
# ---------------------------------------------------------------------------------------------------------

_I32, _I64 = (-(1 << 31), (1 << 31) - 1), (-(1 << 63), (1 << 63) - 1)
_U32, _U64 = (0, (1 << 32) - 1), (0, (1 << 64) - 1)
_FD = FieldDescriptor
_INT_RANGES = {
    _FD.TYPE_INT32: _I32, _FD.TYPE_SINT32: _I32, _FD.TYPE_SFIXED32: _I32, _FD.TYPE_UINT32: _U32,
    _FD.TYPE_FIXED32: _U32, _FD.TYPE_INT64: _I64, _FD.TYPE_SINT64: _I64, _FD.TYPE_SFIXED64: _I64,
    _FD.TYPE_UINT64: _U64, _FD.TYPE_FIXED64: _U64,
}
_FLOAT_WORDS = {"inf": math.inf, "infinity": math.inf, "nan": math.nan}
_FLT_MAX = 3.4028234663852886e38


def _parse_int(text: str) -> int | None:
    """Protobuf's integer literals: decimal, 0x hex, 0 octal."""
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    try:
        if body.lower().startswith("0x"):
            return sign * int(body[2:], 16)
        if len(body) > 1 and body.startswith("0") and body.isdigit():
            return sign * int(body, 8)
        if body.isdigit():
            return sign * int(body)
    except ValueError:
        return None
    return None


def _parse_float(text: str) -> float | None:
    word = text.lstrip("+-").lower()
    if word in _FLOAT_WORDS:
        return -_FLOAT_WORDS[word] if text.startswith("-") else _FLOAT_WORDS[word]
    body = text[:-1] if text[-1:] in "fF" and not text.lower().startswith("0x") else text
    as_int = _parse_int(body)
    if as_int is not None:
        return float(as_int)
    try:
        return float(body)
    except ValueError:
        return None


def to_float32(value: float) -> float:
    """What a Caffe `float` field holds: the value rounded to float32 (beyond its range: +-inf)."""
    if math.isfinite(value) and abs(value) > _FLT_MAX:
        return math.copysign(math.inf, value)
    return struct.unpack("<f", struct.pack("<f", value))[0]


def generic_value(value: Scalar | TextMessage) -> Any:
    """A value no schema types: numbers as numbers, everything else as written; messages as dicts."""
    if isinstance(value, TextMessage):
        out: dict[str, Any] = {}
        for child in value.fields:
            item = generic_value(child.value)
            if child.name in out:
                previous = out[child.name]
                out[child.name] = (previous if isinstance(previous, list) else [previous]) + [item]
            else:
                out[child.name] = item
        return out
    if value.kind == "number":
        as_int = _parse_int(value.text)
        return as_int if as_int is not None else _parse_float(value.text)
    return value.text


# ---------------------------------------------------------------------------------------------------------
# Schema-guided reading with borrowing
# ---------------------------------------------------------------------------------------------------------

# The same message as seen by each dialect (None where a dialect has no such field at this place), primary first.
Views = list[tuple[Dialect, Descriptor | None]]


class SchemaReader:
    """Types a TextMessage tree by the primary dialect's schema, borrowing from the others (see module doc)."""

    def __init__(self, primary: Dialect, source: str | None):
        self.primary = primary
        self.source = source
        others = sorted((d for d in DIALECTS.values() if d is not primary), key=lambda d: d.priority)
        self.order = [primary, *others]
        self.borrowed: list[BorrowedField] = []

    def error(self, message: str, item: TextField | Scalar) -> PrototxtError:
        return PrototxtError(message, Location(file=self.source, line=item.line, column=item.column))

    def read_net(self, root: TextMessage) -> tuple[dict[str, Any], list[int], list[dict[str, Any]]]:
        """(net dict, line of each layer, unknown net-level fields)."""
        views: Views = [(d, d.net_descriptor) for d in self.order]
        net: dict[str, Any] = {}
        lines: list[int] = []
        unknown_net: list[dict[str, Any]] = []
        for item in root.fields:
            unknown = unknown_net
            if item.name in LAYER_FIELDS and isinstance(item.value, TextMessage):
                unknown = []
                lines.append(item.line)
            value = self.field(item, views, net, "", unknown)
            if unknown is not unknown_net and unknown and isinstance(value, dict):
                value["_unknown"] = unknown
        return net, lines, unknown_net

    def message(self, node: TextMessage, views: Views, path: str, unknown: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for item in node.fields:
            self.field(item, views, out, path, unknown)
        return out

    def field(self, item: TextField, views: Views, out: dict[str, Any], path: str,
              unknown: list[dict[str, Any]]) -> Any:
        """Read one field occurrence into `out`; returns the value stored."""
        is_message = isinstance(item.value, TextMessage)
        candidates = [(d, fd) for d, desc in views if (fd := _field_of(d, desc, item.name)) is not None]
        fitting = [(d, fd) for d, fd in candidates if (fd.type == FieldDescriptor.TYPE_MESSAGE) == is_message]
        dotted = f"{path}{item.name}"
        if not fitting:
            if candidates:
                kind = "a message: write it as `{} {{ ... }}`" if not is_message else "a value: write it as `{}: VALUE`"
                raise self.error(f"'{dotted}' is {kind.format(item.name)}", item)
            value = generic_value(item.value)
            unknown.append({"field": dotted, "line": item.line, "column": item.column})
            self._store(out, item, value, repeated=item.name in out)
            return value
        dialect, fd = fitting[0]
        if dialect is not self.primary and views[0][1] is not None:  # the top of a borrowed subtree, once
            self.borrowed.append(BorrowedField(dotted, dialect.name, item.line))
        if is_message:
            child_views: Views = []
            for d, desc in views:
                child = _field_of(d, desc, item.name)
                ok = child is not None and child.type == FieldDescriptor.TYPE_MESSAGE
                child_views.append((d, child.message_type if ok else None))
            value = self.message(item.value, child_views, dotted + ".", unknown)  # type: ignore[arg-type]
        else:
            value = self.scalar(item, fitting, dotted, unknown)
        self._store(out, item, value, repeated=_is_repeated(fd))
        return value

    def _store(self, out: dict[str, Any], item: TextField, value: Any, repeated: bool) -> None:
        if repeated:
            existing = out.get(item.name)
            if existing is None:
                out[item.name] = [value]
            elif isinstance(existing, list):
                existing.append(value)
            else:
                out[item.name] = [existing, value]
        elif item.name in out:
            raise self.error(f"'{item.name}' is given more than once; it takes one value", item)
        else:
            out[item.name] = value

    def scalar(self, item: TextField, fitting: list[tuple[Dialect, FieldDescriptor]], dotted: str,
               unknown: list[dict[str, Any]]) -> Any:
        """A scalar typed by the first fitting field (the primary dialect's where it has the field)."""
        value: Scalar = item.value  # type: ignore[assignment]
        fd = fitting[0][1]
        kind, text = value.kind, value.text
        if kind == "placeholder":
            raise self.error(f"'{dotted}' is the undefined placeholder {text}; give it with --define", value)
        t = fd.type
        if t in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            if kind != "string":
                raise self.error(f"'{dotted}' takes a quoted string, not {text}", value)
            return text
        if t == FieldDescriptor.TYPE_BOOL:
            if text in ("true", "True", "t", "1"):
                return True
            if text in ("false", "False", "f", "0"):
                return False
            raise self.error(f"'{dotted}' takes true or false, not {text}", value)
        if t in _INT_RANGES:
            number = _parse_int(text) if kind == "number" else None
            if number is None:
                raise self.error(f"'{dotted}' takes an integer, not {text}", value)
            low, high = _INT_RANGES[t]
            if not low <= number <= high:
                raise self.error(f"'{dotted}' = {text} is out of range for its type ({low} .. {high})", value)
            return number
        if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            number = _parse_float(text) if kind in ("number", "ident") else None
            if number is None:
                raise self.error(f"'{dotted}' takes a number, not {text}", value)
            return to_float32(number) if t == FieldDescriptor.TYPE_FLOAT else number
        if t == FieldDescriptor.TYPE_ENUM:
            return self.enum(value, fitting, dotted, unknown)
        raise self.error(f"'{dotted}' has a field type this reader does not handle", value)

    def enum(self, value: Scalar, fitting: list[tuple[Dialect, FieldDescriptor]], dotted: str,
             unknown: list[dict[str, Any]]) -> Any:
        """An enum value by name (or number); a name only another dialect's enum has is borrowed; a name no
        dialect knows is kept and recorded (a layer type of an unknown fork is reported as such later)."""
        text, fd = value.text, fitting[0][1]
        if value.kind == "number":
            number = _parse_int(text)
            if number is None:
                raise self.error(f"'{dotted}' takes an enum name or integer, not {text}", value)
            for _, candidate in fitting:
                if candidate.type == FieldDescriptor.TYPE_ENUM:
                    named = candidate.enum_type.values_by_number.get(number)
                    if named is not None:
                        return named.name
            if dotted.rsplit(".", 1)[-1] == "type":  # a V1 layer type of an unknown fork: reported as such later
                return number
            # Caffe's proto2 enums are closed: its text parser refuses a number that names no value.
            values = ", ".join(f"{v.name}={v.number}" for v in fd.enum_type.values[:8])
            more = ", ..." if len(fd.enum_type.values) > 8 else ""
            raise self.error(f"'{dotted}' = {number} is not a value of {fd.enum_type.name} ({values}{more})", value)
        if value.kind != "ident":
            raise self.error(f"'{dotted}' takes an enum name, not {text}", value)
        if text in fd.enum_type.values_by_name:
            return text
        for dialect, other in fitting[1:]:
            if other.type == FieldDescriptor.TYPE_ENUM and text in other.enum_type.values_by_name:
                self.borrowed.append(BorrowedField(f"{dotted}: {text}", dialect.name, value.line))
                return text
        if dotted.rsplit(".", 1)[-1] != "type":  # unknown layer types are reported as such, once
            unknown.append({"field": f"{dotted}: {text}", "line": value.line, "column": value.column})
        return text


def _field_of(dialect: Dialect, desc: Descriptor | None, name: str) -> FieldDescriptor | None:
    """`desc`'s field `name`; at net level, `layer` and `layers` both mean a dialect's own layer message, so a
    `layer {}` file can borrow from DeepLab v1's `layers {}` schema and the other way round."""
    if desc is None:
        return None
    found = desc.fields_by_name.get(name)
    if desc is dialect.net_descriptor and name in LAYER_FIELDS:
        own = desc.fields_by_name.get(dialect.layer_fields[0])
        if found is None or (own is not None and name not in dialect.layer_fields):
            found = own
    return found


def _is_repeated(fd: FieldDescriptor) -> bool:
    flag = getattr(fd, "is_repeated", None)
    return flag if flag is not None else fd.label == FieldDescriptor.LABEL_REPEATED


# ---------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------


def _layer_field(root: TextMessage, source: str | None) -> str | None:
    """`layer` or `layers`: which syntax the file uses; both is Caffe's "inconsistent NetParameter" error."""
    layer = [f for f in root.fields if f.name == "layer"]
    layers = [f for f in root.fields if f.name == "layers"]
    if layer and layers:
        first_minor = (layers if len(layers) < len(layer) else layer)[0]
        raise PrototxtError(
            "the file mixes `layer {}` (DeepLab v2 / upstream syntax) and `layers {}` (DeepLab v1 / V1 syntax); "
            f"{len(layer)} layer and {len(layers)} layers blocks",
            Location(file=source, line=first_minor.line, column=first_minor.column),
        )
    return "layer" if layer else ("layers" if layers else None)


def names_used(root: TextMessage) -> set[str]:
    """Every field name, identifier value (enum names) and layer type string in the tree."""
    names: set[str] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        for item in node.fields:
            names.add(item.name)
            if isinstance(item.value, TextMessage):
                stack.append(item.value)
            elif item.value.kind == "ident" or (item.name == "type" and item.value.kind == "string"):
                names.add(item.value.text)
    return names


def _describe_borrowed(borrowed: list[BorrowedField]) -> list[str]:
    grouped: dict[tuple[str, str], list[int]] = {}
    for b in borrowed:
        grouped.setdefault((b.dialect, b.path), []).append(b.line)
    notes = []
    for (dialect, path), lines in grouped.items():
        shown = ", ".join(map(str, lines[:5])) + (f" and {len(lines) - 5} more" if len(lines) > 5 else "")
        notes.append(f"'{path}' is not in this dialect's schema; read as {dialect_title(dialect)} defines it "
                     f"(line {shown})")
    return notes


def parse_prototxt_text(
    text: str,
    source: str | None = None,
    defines: dict[str, str] | None = None,
    dialect: str | None = None,
) -> ParsedPrototxt:
    """Parse prototxt text. `dialect` forces one of `dialects.DIALECTS` instead of detecting it."""
    if dialect is not None and dialect not in DIALECTS:
        raise PrototxtError(f"unknown dialect '{dialect}'; choose from {', '.join(DIALECTS)}")
    text, notes = substitute_placeholders(text, defines or {}, source)
    root = read_text_message(text, source)
    layer_field = _layer_field(root, source)
    chosen = get_dialect(dialect) if dialect else detect_dialect(layer_field, names_used(root))
    reader = SchemaReader(chosen, source)
    net, lines, unknown_net = reader.read_net(root)
    if unknown_net:
        listed = ", ".join(f"'{u['field']}' (line {u['line']})" for u in unknown_net[:10])
        hint = ""
        if {u["field"] for u in unknown_net} & _SOLVER_FIELDS:
            hint = "; this looks like a solver file: give the net definition it names instead"
        first = unknown_net[0]
        raise PrototxtError(f"unknown net-level field(s) in every known Caffe schema: {listed}{hint}",
                            Location(file=source, line=first["line"], column=first["column"]))
    if not _defines_anything(net):
        what = "is empty" if not text.strip() else "has no layers and no inputs"
        raise PrototxtError(f"not a net definition: the file {what} (a truncated or failed download?)",
                            Location(file=source))
    notes += _describe_borrowed(reader.borrowed)
    return ParsedPrototxt(chosen.name, net, lines, source, notes, reader.borrowed)


def _defines_anything(net: dict[str, Any]) -> bool:
    """A net has layers or net-level inputs; one with neither (an empty file, only comments, only a name) gives
    nothing to convert, and no dialect can be told from it."""
    return bool(net.get("layer") or net.get("layers") or net.get("input") or net.get("input_shape"))


def parse_prototxt(
    path: str | Path, defines: dict[str, str] | None = None, dialect: str | None = None
) -> ParsedPrototxt:
    """Parse a prototxt file: a regular file (not a folder or FIFO) of sane size, text and not some other
    format (a caffemodel, an image, an artifact), checked before it is read whole."""
    path = require_file(path, "a prototxt", PrototxtError)
    size, kind = path.stat().st_size, sniff(path)
    if size > limits.MAX_PROTOTXT_BYTES:
        raise PrototxtError(f"{limits.human_bytes(size)}: over the {limits.human_bytes(limits.MAX_PROTOTXT_BYTES)} a "
                            f"prototxt may take (the largest DeepLab prototxt has 0.4 MB)"
                            + (f"; it looks like {kind}" if kind else ""), Location(str(path)))
    if kind and not kind.startswith("a text file"):
        raise PrototxtError(f"not a text prototxt: it looks like {kind}", Location(str(path)))
    try:
        with open(path, "rb") as handle:
            data = handle.read(limits.MAX_PROTOTXT_BYTES + 1)
    except OSError as exc:
        raise PrototxtError(f"cannot read: {exc.strerror}", Location(file=str(path))) from None
    text, notes = decode_prototxt(data, str(path))
    parsed = parse_prototxt_text(text, source=str(path), defines=defines, dialect=dialect)
    parsed.warnings[:0] = notes
    return parsed


def decode_prototxt(data: bytes, source: str | None = None) -> tuple[str, list[str]]:
    """The text of a prototxt file, and notes. Binary protobuf (a caffemodel) holds NUL bytes; text does not.
    A UTF-8 byte-order mark is dropped; text that is not UTF-8 (comments written in another encoding, as
    Caffe itself accepts) is read as Latin-1, with a note."""
    if b"\x00" in data:
        raise PrototxtError("not a text prototxt (it holds NUL bytes: a binary .caffemodel goes in the CAFFEMODEL "
                            "argument)", Location(file=source))
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return data.decode("latin-1"), [f"the file is not UTF-8 (first at line {line}); read as Latin-1, so names "
                                        "with non-ASCII characters may not match the caffemodel's"]
