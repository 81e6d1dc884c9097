"""One exception family for every user-facing failure, each able to say where it happened."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Characters a terminal acts on instead of showing: C0 controls but newline and tab (ESC starts colour, title
# and cursor sequences; CR overwrites the line), DEL, C1 controls, and the bidirectional overrides that make
# text read differently from what it is. Names from files (layers, blobs, image and class names) may hold them.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every character a terminal would act on written as an escape (\\x1b, \\u202e): a hostile
    prototxt, caffemodel or file name cannot recolour, retitle or rewrite the user's terminal."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


@dataclass(frozen=True)
class Location:
    """Where in an input file something is: any part may be unknown."""

    file: str | None = None
    line: int | None = None
    column: int | None = None
    layer: str | None = None
    layer_type: str | None = None

    def __str__(self) -> str:
        place = ""
        if self.file:
            place = self.file
            if self.line is not None:
                place += f":{self.line}"
                if self.column is not None:
                    place += f":{self.column}"
        if self.layer:
            kind = f" ({self.layer_type})" if self.layer_type else ""
            place = f"{place}: layer '{self.layer}'{kind}" if place else f"layer '{self.layer}'{kind}"
        return place


class CaffeError(Exception):
    """Base class: a problem with the user's files or options, reported without a traceback."""

    def __init__(self, message: str, location: Location | None = None):
        self.message = message
        self.location = location or Location()
        where = str(self.location)
        super().__init__(f"{where}: {message}" if where else message)


class ArgumentTypeError(CaffeError, TypeError):
    """A Python API argument of the wrong type (None, a number, a list where a path or a mapping goes): a
    TypeError, as Python code expects, and a CaffeError, so that one `except CaffeError` covers every misuse."""


class PrototxtError(CaffeError):
    """Malformed text, unknown field, mixed dialects, undefined template placeholder."""


class NetDefinitionError(CaffeError):
    """A net that parses but is not valid: missing bottom, cycle, bad parameter value."""


class InvalidNetError(NetDefinitionError):
    """Layers that Caffe itself refuses (its LayerSetUp/Reshape CHECKs, wrong bottom/top counts), listed
    together with their locations."""

    def __init__(self, problems: list[tuple[Location, str]], source: str | None = None):
        self.problems = problems
        if len(problems) == 1:
            CaffeError.__init__(self, problems[0][1], problems[0][0])
            return
        head = f"{len(problems)} invalid layer definitions"
        if source:
            head += f" in {source}"
        CaffeError.__init__(self, head + " (Caffe refuses them too):\n" +
                            "\n".join(f"  {loc}: {msg}" for loc, msg in problems))


class LimitError(CaffeError):
    """An input that would need more memory than a sane bound allows (checked before allocating)."""


class UnsupportedError(CaffeError):
    """Layer types or parameter values we cannot convert. Lists every offending layer at once."""

    def __init__(self, problems: list[tuple[Location, str]], source: str | None = None):
        self.problems = problems
        lines = [f"  {loc}: {msg}" for loc, msg in problems]
        head = f"{len(problems)} unsupported layer(s) or parameter(s)"
        if source:
            head += f" in {source}"
        super().__init__(head + ":\n" + "\n".join(lines))


class CaffeModelError(CaffeError):
    """Truncated or corrupt caffemodel, or one that does not match the net."""


class WeightsMismatchError(CaffeModelError):
    """Missing layers, unused blobs and shape mismatches between a net and its weights, listed together."""

    def __init__(self, missing: list[str], unused: list[str], mismatched: list[str], source: str | None = None):
        self.missing, self.unused, self.mismatched = missing, unused, mismatched
        parts = []
        if missing:
            parts.append("layers without weights in the caffemodel: " + ", ".join(missing))
        if unused:
            parts.append("caffemodel layers the net does not use: " + ", ".join(unused))
        if mismatched:
            parts.append("shape mismatches:\n    " + "\n    ".join(mismatched))
        placeholders = sorted({m for name in missing for m in re.findall(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", name)})
        if placeholders:
            parts.append(f"hint: layer names still hold {', '.join(placeholders)}; give it with --define, e.g. "
                         f"--define {placeholders[0][2:-1]}=voc12 for the released DeepLab models")
        where = f"{source}: " if source else ""
        CaffeError.__init__(self, where + "weights do not match the net:\n  " + "\n  ".join(parts))


class OutputError(CaffeError):
    """An output cannot be written. `fatal`: the output folder as a whole cannot take more (disk full, quota,
    read-only file system), so a batch must stop rather than fail every remaining image one by one."""

    def __init__(self, message: str, location: Location | None = None, fatal: bool = False):
        super().__init__(message, location)
        self.fatal = fatal

    def __reduce__(self):  # keeps `fatal` (and the message) across processes
        return (OutputError, (self.message, self.location, self.fatal))


class ArtifactError(CaffeError):
    """A converted artifact that cannot be read."""
