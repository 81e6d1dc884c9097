"""What a path given on the command line really is, checked before it is opened or written.

A careless argument (a folder, a FIFO, the prototxt where the caffemodel goes, a PNG, an output folder that is
a file or read-only) gets a clear error naming the path, not a hang, a traceback or a half-written folder.
"""

from __future__ import annotations

import os
import stat
import struct
import tempfile
from pathlib import Path

from caffe2torch.errors import ArgumentTypeError, CaffeError, Location

_SIGNATURES = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"PK\x03\x04", "a zip archive (an .npz?)"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"%PDF", "a PDF document"),
]


def describe_content(head: bytes) -> str | None:
    """A name for a well-known file format from the first bytes of a file, or None."""
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if len(head) >= 9 and head[8:9] == b"{":
        (length,) = struct.unpack("<Q", head[:8])
        if 2 <= length < 1 << 40:
            return "a safetensors file (a converted artifact?)"
    # ONNX's ModelProto starts with ir_version (field 1, a small varint), then producer_name, opset_import...
    # A caffemodel's NetParameter never starts with field 1 as a varint (field 1 is its name, a string).
    if len(head) >= 3 and head[0] == 0x08 and 3 <= head[1] <= 20 and head[2] in (0x12, 0x1A, 0x22, 0x2A, 0x3A, 0x42):
        return "an ONNX model"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (never opened: it could run code)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        if any(word in text for word in ("layer", "input", "name:")):
            return "a text file (a prototxt?)"
        return "a text file"
    return None


def sniff(path: str | Path, size: int = 64) -> str | None:
    """describe_content() of a file's first bytes; None if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return describe_content(handle.read(size))
    except OSError:
        return None


def path_argument(value: object, what: str) -> Path:
    """A path given to the Python API: str, bytes (os.fsdecode) or os.PathLike. ArgumentTypeError for anything
    else (None, a number, an open file) and for an empty string (Path('') would silently mean '.')."""
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if isinstance(value, str) or (isinstance(value, os.PathLike) and isinstance(os.fspath(value), str)):
        if not str(value):
            raise ArgumentTypeError(f"{what}: an empty path")
        return Path(value)
    raise ArgumentTypeError(f"expected a path to {what} (str or os.PathLike), not {type(value).__name__}")


def require_file(path: str | Path, what: str, error: type[CaffeError] = CaffeError) -> Path:
    """An existing regular file (not a folder, FIFO or device: opening those hangs or reads forever)."""
    path = path_argument(path, what)
    where = Location(str(path))
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error("no such file", where) from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}", where) from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"is a folder, not {what}", where)
    if not stat.S_ISREG(info.st_mode):
        raise error(f"is not a regular file (a FIFO, socket or device), not {what}", where)
    if not os.access(path, os.R_OK):
        raise error("cannot read: permission denied", where)
    return path


def check_output_dir(path: str | Path) -> Path:
    """A folder we may write into: an existing writable folder, or one that can be created (its nearest
    existing ancestor is a writable folder). Checked before any work, so a bad -o fails at once."""
    path = Path(path)
    where = Location(str(path))
    if path.exists() and not path.is_dir():
        raise CaffeError("the output folder is a file", where)
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise CaffeError(f"cannot create the output folder: {existing} is a file", where)
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "the output folder" if existing == path else f"cannot create the output folder: {existing}"
        raise CaffeError(f"{what} is not writable", where)
    return path


def make_output_dir(path: str | Path) -> Path:
    """check_output_dir, then create it and make sure a file can be written there (a probe file, removed at
    once: permissions alone do not tell, e.g. for root, read-only mounts or immutable folders); OS errors
    become CaffeErrors naming the path."""
    path = check_output_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CaffeError(f"cannot create the output folder: {exc.strerror}", Location(str(path))) from None
    try:
        with tempfile.TemporaryFile(dir=path, prefix=".write-test."):
            pass
    except OSError as exc:
        raise CaffeError(f"cannot write into the output folder: {exc.strerror}", Location(str(path))) from None
    return path
