"""Protobuf text format, read without a schema: a tree of named fields with their line and column.

Caffe's prototxt files are protobuf text format. Reading them without a schema first lets one file use fields
from several Caffe forks, lets a layer carry parameters no schema knows (they are reported later, by layer,
instead of stopping the parse at the first one), and keeps memory small: tokens are never all held at once,
and the tree stores each field as one small object (a 1 MB prototxt takes a few MB).

Grammar (as protobuf's own text parser): a message is a list of fields, each `name: value`, `name { ... }`,
`name < ... >` (the colon optional before a message) or `name: [v, v, ...]`; fields may end with `,` or `;`;
`#` starts a comment; strings are single- or double-quoted with C escapes, and adjacent strings concatenate.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from caffe2torch.errors import Location, PrototxtError

# Deeper nesting than any Caffe file has (they use 3 or 4 levels); bounds the parser's stack.
MAX_DEPTH = 64


class Scalar:
    """A scalar value as written: kind is "string" (text unescaped), "number", "ident" or "placeholder"."""

    __slots__ = ("kind", "text", "line", "column")

    def __init__(self, kind: str, text: str, line: int, column: int):
        self.kind, self.text, self.line, self.column = kind, text, line, column

    def __repr__(self) -> str:
        return f"Scalar({self.kind}, {self.text!r})"


class TextField:
    """One `name: value` or `name { ... }` occurrence. `value` is a Scalar or a TextMessage."""

    __slots__ = ("name", "value", "line", "column")

    def __init__(self, name: str, value: Scalar | TextMessage, line: int, column: int):
        self.name, self.value, self.line, self.column = name, value, line, column


@dataclass(slots=True)
class TextMessage:
    fields: list[TextField] = field(default_factory=list)
    line: int = 1
    column: int = 1


_TOKEN = re.compile(
    r"""(?P<nl>\n)|(?P<ws>[ \t\r\f\v]+)|(?P<comment>\#[^\n]*)
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<placeholder>\$\{[A-Za-z_][A-Za-z0-9_]*\})
    |(?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?))
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<punct>[{}<>:;,\[\]\-])
    |(?P<other>.)""",
    re.X,
)


def tokens(text: str) -> Iterator[tuple[str, str, int, int]]:
    """(kind, text, line, column) of each token, comments and whitespace skipped; lines and columns 1-based."""
    line, line_start = 1, 0
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "nl":
            line += 1
            line_start = match.end()
        elif kind not in ("ws", "comment"):
            yield kind, match.group(), line, match.start() - line_start + 1  # type: ignore[misc]


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "\\": "\\", "'": "'",
            '"': '"', "?": "?"}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)")


def unescape(quoted: str) -> str:
    """The text of a quoted protobuf string: C escapes (\\n, \\", \\x41, \\101, \\u00e9) resolved as protobuf
    does: \\x and octal escapes are bytes, and the string's bytes are UTF-8, so `"\\303\\251"` (how protobuf's
    text printer writes a non-ASCII name) is 'é', as the same name in a binary caffemodel reads."""
    body = quoted[1:-1]
    if "\\" not in body:
        return body
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(body):
        out += body[pos:match.start()].encode("utf-8", "surrogatepass")
        pos = match.end()
        code = match.group(1)
        if code[0] == "x":
            out.append(int(code[1:], 16))
        elif code[0] in "01234567":
            out.append(int(code, 8) & 0xFF)  # C++ protobuf keeps the low byte of \\400..\\777
        elif code[0] in "uU":
            out += chr(min(int(code[1:], 16), 0x10FFFF)).encode("utf-8", "surrogatepass")
        else:
            out += _ESCAPES.get(code, code).encode("utf-8", "surrogatepass")
    out += body[pos:].encode("utf-8", "surrogatepass")
    return out.decode("utf-8", "replace")  # as the caffemodel reader decodes names


class _Reader:
    """Recursive-descent parser over the token stream, with an explicit stack of open messages."""

    def __init__(self, text: str, source: str | None):
        self.stream = tokens(text)
        self.source = source
        self.peeked: tuple[str, str, int, int] | None = None
        self.last = ("", "", 1, 1)

    def error(self, message: str, line: int, column: int) -> PrototxtError:
        return PrototxtError(message, Location(file=self.source, line=line, column=column))

    def peek(self) -> tuple[str, str, int, int] | None:
        if self.peeked is None:
            self.peeked = next(self.stream, None)
        return self.peeked

    def take(self) -> tuple[str, str, int, int] | None:
        token = self.peek()
        self.peeked = None
        if token is not None:
            self.last = token
        return token

    def expect_more(self, what: str) -> tuple[str, str, int, int]:
        token = self.take()
        if token is None:
            _, text, line, column = self.last
            raise self.error(f"the file ends where {what} was expected (after '{text}')", line, column)
        return token

    def read(self) -> TextMessage:
        root = TextMessage()
        stack: list[tuple[TextMessage, str]] = [(root, "")]  # open messages and the bracket that closes each
        while True:
            token = self.take()
            message, closer = stack[-1]
            if token is None:
                if len(stack) > 1:
                    raise self.error(f"the file ends inside a message: {len(stack) - 1} bracket(s) still open "
                                     f"(the innermost opened at line {message.line})", message.line, message.column)
                return root
            kind, text, line, column = token
            if kind == "punct" and text in "}>":
                if text != closer:
                    raise self.error(f"unexpected '{text}'" + (f" (expected '{closer}')" if closer else ""),
                                     line, column)
                stack.pop()
                self._skip_separator()
                continue
            if kind != "ident":
                raise self.error(f"expected a field name, found '{text}'", line, column)
            self._field(text, line, column, message, stack)

    def _skip_separator(self) -> None:
        token = self.peek()
        if token is not None and token[0] == "punct" and token[1] in ",;":
            self.take()

    def _open(self, name: str, bracket: str, line: int, column: int, parent: TextMessage,
              stack: list[tuple[TextMessage, str]]) -> TextMessage:
        if len(stack) > MAX_DEPTH:
            raise self.error(f"messages nested more than {MAX_DEPTH} deep", line, column)
        child = TextMessage(line=line, column=column)
        parent.fields.append(TextField(name, child, line, column))
        stack.append((child, "}" if bracket == "{" else ">"))
        return child

    def _field(self, name: str, line: int, column: int, message: TextMessage,
               stack: list[tuple[TextMessage, str]]) -> None:
        kind, text, tline, tcolumn = self.expect_more(f"':' or '{{' after '{name}'")
        if kind == "punct" and text in "{<":
            self._open(name, text, line, column, message, stack)
            return
        if not (kind == "punct" and text == ":"):
            raise self.error(f"expected ':' or '{{' after field name '{name}', found '{text}'", tline, tcolumn)
        kind, text, tline, tcolumn = self.expect_more(f"a value for '{name}'")
        if kind == "punct" and text in "{<":
            self._open(name, text, line, column, message, stack)
            return
        if kind == "punct" and text == "[":
            self._list(name, line, column, message, stack)
            return
        message.fields.append(TextField(name, self._scalar(kind, text, tline, tcolumn, name), line, column))
        self._skip_separator()

    def _list(self, name: str, line: int, column: int, message: TextMessage,
              stack: list[tuple[TextMessage, str]]) -> None:
        """`name: [a, b, c]`: one field occurrence per element (messages in a list are not used by Caffe)."""
        kind, text, tline, tcolumn = self.expect_more(f"a value or ']' in the list '{name}'")
        if kind == "punct" and text == "]":
            self._skip_separator()
            return
        while True:
            if kind == "punct" and text in "{<":
                raise self.error(f"a list of messages in '{name}' is not supported; write the field once per "
                                 "message", tline, tcolumn)
            message.fields.append(TextField(name, self._scalar(kind, text, tline, tcolumn, name), line, column))
            kind, text, tline, tcolumn = self.expect_more(f"',' or ']' in the list '{name}'")
            if kind == "punct" and text == "]":
                self._skip_separator()
                return
            if not (kind == "punct" and text == ","):
                raise self.error(f"expected ',' or ']' in the list '{name}', found '{text}'", tline, tcolumn)
            kind, text, tline, tcolumn = self.expect_more(f"a value in the list '{name}'")

    def _scalar(self, kind: str, text: str, line: int, column: int, name: str) -> Scalar:
        if kind == "string":
            parts = [unescape(text)]
            while (nxt := self.peek()) is not None and nxt[0] == "string":
                parts.append(unescape(nxt[1]))
                self.take()
            return Scalar("string", "".join(parts), line, column)
        if kind == "punct" and text == "-":  # -inf, -nan
            kind2, text2, _, _ = self.expect_more(f"a value after '-' for '{name}'")
            if kind2 != "ident":
                raise self.error(f"expected a number after '-' for '{name}', found '{text2}'", line, column)
            return Scalar("ident", "-" + text2, line, column)
        if kind in ("number", "ident", "placeholder"):
            return Scalar(kind, text, line, column)
        raise self.error(f"expected a value for '{name}', found '{text}'", line, column)


def read_text_message(text: str, source: str | None = None) -> TextMessage:
    """Parse protobuf text into a schema-free tree; PrototxtError (file, line, column) on malformed text."""
    return _Reader(text, source).read()
