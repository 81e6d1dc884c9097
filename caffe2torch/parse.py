"""Text prototxt → protobuf message of the file's own dialect.

DeepLab v1, DeepLab v2 and upstream Caffe clash on field *numbers*, barely on field *names*, so a text file is
parsed by name with the schema of its dialect. The dialect is told by the file's syntax:

- `layers { type: ENUM }`  → DeepLab v1 (`deeplab_v1`); stock V1 enums DeepLab lacks (DECONVOLUTION) → `caffe`.
- `layer { type: "..." }`  → DeepLab v2 (`deeplab_v2`) when it uses a DeepLab field or type, else `caffe`.

Template placeholders `${NAME}` (the DeepLab v2 scripts filled them with sed) are replaced first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import Message

from caffe2torch.errors import Location, PrototxtError
from caffe2torch.proto import deeplab_v1_pb2, deeplab_v2_pb2, upstream_pb2

DIALECTS = {
    "deeplab_v1": deeplab_v1_pb2.NetParameter,
    "deeplab_v2": deeplab_v2_pb2.NetParameter,
    "caffe": upstream_pb2.NetParameter,
}
DIALECT_TITLES = {
    "deeplab_v1": "DeepLab v1 (deeplab-public: layers {} with enum types, hole)",
    "deeplab_v2": "DeepLab v2 (deeplab-public-ver2: layer {} with Interp/DenseCRF/... fields)",
    "caffe": "upstream BVLC Caffe",
}

# Field names and type strings that only DeepLab v2 defines for `layer {}` files.
_V2_FIELDS = {
    "interp_param", "seg_accuracy_param", "mat_write_param", "mat_read_param", "dense_crf_param",
    "domain_transform_param", "adaptive_bias_channel_param", "bias_channel_param", "unique_label_param",
    "scale_factors", "crop_width", "crop_height", "label_type",
}
_V2_TYPES = {
    "Interp", "DenseCRF", "SegAccuracy", "ImageSegData", "MatRead", "MatWrite", "DomainTransform",
    "DomainTransformForwardOnly", "SpatialProduct", "AdaptiveBiasChannel", "BiasChannel", "UniqueLabel",
}
# Hints for fields that belong to another dialect than the one the file's syntax selects.
_CROSS_DIALECT_HINTS = {
    "hole": "'hole' is a DeepLab v1 field (layers {} syntax); in layer {} syntax write 'dilation'",
    "hole_h": "'hole_h' is a DeepLab v1 field; in layer {} syntax write 'dilation'",
    "hole_w": "'hole_w' is a DeepLab v1 field; in layer {} syntax write 'dilation'",
    "dilation": "'dilation' does not exist in DeepLab v1 (layers {} syntax); write 'hole'",
    "padding_param": "'padding_param' (PADDING) exists only in DeepLab v1 (layers {} syntax)",
    "softmaxloss_param": "'softmaxloss_param' exists only in DeepLab v1 (layers {} syntax)",
    "domain_transform_param": "'domain_transform_param' exists only in DeepLab v2 (layer {} syntax)",
    "input_param": "'input_param' (Input layer) is upstream Caffe; DeepLab v2 uses field 143 for interp_param",
    "crop_param": "'crop_param' (Crop layer) is upstream Caffe; DeepLab v2 has no Crop layer",
}


@dataclass
class Token:
    kind: str  # "ident", "string", "number", "punct", "placeholder"
    text: str
    line: int
    column: int
    depth: int


_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r\f\v]+)|(?P<nl>\n)|(?P<comment>\#[^\n]*)
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<placeholder>\$\{[A-Za-z_][A-Za-z0-9_]*\})
    |(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
    |(?P<punct>[{}:;,<>\[\]])
    |(?P<other>.)""",
    re.X,
)
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def tokenize(text: str) -> list[Token]:
    """Tokens with line/column (1-based) and brace depth; comments and whitespace dropped."""
    tokens: list[Token] = []
    line, line_start, depth = 1, 0, 0
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "nl":
            line += 1
            line_start = match.end()
            continue
        if kind in ("ws", "comment"):
            continue
        value = match.group()
        if kind == "punct" and value in "}>":
            depth -= 1
        tokens.append(Token(kind, value, line, match.start() - line_start + 1, depth))
        if kind == "punct" and value in "{<":
            depth += 1
    return tokens


@dataclass
class ParsedPrototxt:
    """A parsed file: its dialect, the message, and the line where each layer starts (in file order)."""

    dialect: str
    message: Message
    layer_lines: list[int]
    source: str | None = None
    warnings: list[str] = field(default_factory=list)


def substitute_placeholders(text: str, defines: dict[str, str], source: str | None = None) -> tuple[str, list[str]]:
    """Replace `${NAME}` from `defines`.

    An undefined placeholder where a number or identifier is needed is an error that lists every such name
    with its line; inside a quoted string (a path, a layer name) it may stay, with a warning.
    """
    missing: dict[str, list[int]] = {}
    kept: dict[str, list[int]] = {}
    for tok in tokenize(text):
        names = _PLACEHOLDER.findall(tok.text)
        for name in names:
            if name in defines:
                continue
            (kept if tok.kind == "string" else missing).setdefault(name, []).append(tok.line)
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


def _top_level_layers(tokens: list[Token]) -> tuple[list[Token], list[Token]]:
    """The `layer` and `layers` field tokens at depth 0."""
    layer, layers = [], []
    for i, tok in enumerate(tokens):
        if tok.kind != "ident" or tok.depth != 0 or i + 1 >= len(tokens):
            continue
        nxt = tokens[i + 1].text
        if nxt not in ("{", ":", "<"):
            continue
        if tok.text == "layer":
            layer.append(tok)
        elif tok.text == "layers":
            layers.append(tok)
    return layer, layers


def detect_dialect(tokens: list[Token], source: str | None = None) -> list[str]:
    """Candidate dialects for a file, most likely first."""
    layer, layers = _top_level_layers(tokens)
    if layer and layers:
        first_minor = (layers if len(layers) < len(layer) else layer)[0]
        raise PrototxtError(
            "the file mixes `layer {}` (DeepLab v2 / upstream syntax) and `layers {}` (DeepLab v1 / V1 syntax); "
            f"{len(layer)} layer and {len(layers)} layers blocks",
            Location(file=source, line=first_minor.line, column=first_minor.column),
        )
    if layers:
        return ["deeplab_v1", "caffe"]
    idents = {t.text for t in tokens if t.kind == "ident"}
    strings = {t.text.strip("\"'") for t in tokens if t.kind == "string"}
    if idents & _V2_FIELDS or strings & _V2_TYPES:
        return ["deeplab_v2", "caffe"]
    return ["caffe", "deeplab_v2"]


_PARSE_ERROR = re.compile(r"^(\d+):(\d+) : (.*)$", re.S)
_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)"')


def _parse_error(exc: text_format.ParseError, source: str | None, dialect: str) -> PrototxtError:
    line, column, message = exc.GetLine(), exc.GetColumn(), str(exc)
    match = _PARSE_ERROR.match(message)
    if match:
        line, column, message = int(match.group(1)), int(match.group(2)), match.group(3)
    message = message.replace("caffe2torch.", "")
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:
        name = unknown.group(1)
        hint = _CROSS_DIALECT_HINTS.get(name)
        message = f"unknown field '{name}' for {DIALECT_TITLES[dialect]} ({message})"
        if hint:
            message += f"; {hint}"
    return PrototxtError(message, Location(file=source, line=line, column=column))


def parse_prototxt_text(
    text: str,
    source: str | None = None,
    defines: dict[str, str] | None = None,
    dialect: str | None = None,
) -> ParsedPrototxt:
    """Parse prototxt text. `dialect` forces one of DIALECTS instead of detecting it."""
    text, notes = substitute_placeholders(text, defines or {}, source)
    tokens = tokenize(text)
    candidates = [dialect] if dialect else detect_dialect(tokens, source)
    for name in candidates:
        if name not in DIALECTS:
            raise PrototxtError(f"unknown dialect '{name}'; choose from {', '.join(DIALECTS)}")
    errors: list[tuple[tuple[int, int], PrototxtError]] = []  # (line, column), error
    for name in candidates:
        message = DIALECTS[name]()
        try:
            text_format.Parse(text, message, allow_unknown_extension=False)
        except text_format.ParseError as exc:
            err = _parse_error(exc, source, name)
            errors.append(((err.location.line or 0, err.location.column or 0), err))
            continue
        layer, layers = _top_level_layers(tokens)
        lines = [t.line for t in (layer or layers)]
        return ParsedPrototxt(name, message, lines, source, notes)
    # Every candidate failed: report the detected dialect's error, unless it is an enum value that dialect
    # lacks (stock V1's DECONVOLUTION in a DeepLab v1 file); then the fallback's error is the relevant one.
    first = errors[0][1]
    if "has no value named" in first.message and len(errors) > 1:
        raise errors[1][1]
    raise first


def parse_prototxt(
    path: str | Path, defines: dict[str, str] | None = None, dialect: str | None = None
) -> ParsedPrototxt:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PrototxtError("no such file", Location(file=str(path))) from None
    except UnicodeDecodeError:
        raise PrototxtError(
            "not a text prototxt (it is not UTF-8 text; a binary .caffemodel goes in the CAFFEMODEL argument)",
            Location(file=str(path)),
        ) from None
    except OSError as exc:
        raise PrototxtError(f"cannot read: {exc.strerror}", Location(file=str(path))) from None
    return parse_prototxt_text(text, source=str(path), defines=defines, dialect=dialect)
