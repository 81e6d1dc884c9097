"""Size bounds, checked before anything is allocated: a 200-byte file must never make a tool allocate gigabytes.

Two kinds of bound:

- **Caffe's own**, always errors: a blob has at most 32 axes (`kMaxBlobAxes`) and at most INT_MAX elements
  (`Blob::Reshape`: "blob size exceeds INT_MAX"). A net or a caffemodel beyond them never ran in Caffe.
- **Budgets** for what we hold in memory, derived from the largest real models with room to spare, and
  overridable (environment variables, sizes like `8G`) for a real model that needs more:
  - weights: the parameters of a net built in memory (convert, verify, `caffe2torch.load`). Default 4 GiB
    (1.07 billion float32 values); DeepLab v2 ResNet-101 MSC has 44 million (177 MB), VGG-16 with its
    fully connected layers 138 million.
  - blobs: every blob of a forward pass that keeps them all (verify). Default 8 GiB; ResNet-101 MSC at
    513x513 keeps 0.72 billion values (2.9 GB).
  - files read whole before they are validated: prototxt text (16 MiB; the largest DeepLab prototxt is
    0.3 MB) and the JSON header of an artifact (16 MiB; ResNet-101 MSC's is 0.4 MB).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable

INT_MAX = 2**31 - 1
MAX_BLOB_AXES = 32

WEIGHTS_VARIABLE = "CAFFE2TORCH_MAX_WEIGHTS"
BLOBS_VARIABLE = "CAFFE2TORCH_MAX_BLOBS"
DEFAULT_MAX_WEIGHTS = 4 << 30
DEFAULT_MAX_BLOBS = 8 << 30
MAX_PROTOTXT_BYTES = 16 << 20
MAX_HEADER_BYTES = 16 << 20
FLOAT_BYTES = 4

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)i?b?\s*$", re.I | re.ASCII)  # ASCII digits only


def parse_size(text: str) -> int:
    """'8G', '512M', '1.5GB', '4096' (bytes) → bytes. Binary multiples (1G = 2**30)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"'{text}' is not a size such as 8G, 512M or 1073741824")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * (1 << (10 * " kmgt".index(unit or " "))))


def _budget(variable: str, default: int) -> int:
    from caffe2torch.errors import CaffeError

    text = os.environ.get(variable)
    if not text:
        return default
    try:
        return parse_size(text)
    except ValueError as exc:
        raise CaffeError(f"{variable}: {exc}") from None


def max_weights_bytes() -> int:
    return _budget(WEIGHTS_VARIABLE, DEFAULT_MAX_WEIGHTS)


def max_blobs_bytes() -> int:
    return _budget(BLOBS_VARIABLE, DEFAULT_MAX_BLOBS)


def human_bytes(n: int | float) -> str:
    """1536 → '1.5 KiB'; sizes a user can read at a glance."""
    value = float(n)
    if value >= 1 << 60:
        return f"{value:.2e} bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


def human_count(n: int) -> str:
    """2_800_000_000 → '2.8 billion'."""
    if n >= 10**15:
        return f"{n:.2e}"
    for size, word in ((10**12, "trillion"), (10**9, "billion"), (10**6, "million")):
        if n >= size:
            return f"{n / size:.3g} {word}"
    return f"{n:,}"


def element_count(shape: Iterable[int]) -> int:
    """Elements of a shape, in Python integers (no int64 wrap-around, whatever the dims)."""
    return math.prod(int(d) for d in shape)


def blob_problem(shape: Iterable[int | None]) -> str | None:
    """Why Caffe could not hold a blob of this shape (unknown dims are skipped), or None."""
    dims = list(shape)
    if len(dims) > MAX_BLOB_AXES:
        return f"{len(dims)} axes (Caffe allows at most {MAX_BLOB_AXES})"
    known = [d for d in dims if d is not None]
    if any(d < 0 for d in known):
        return f"a negative dimension in {tuple(dims)}"
    count = element_count(known)
    if count > INT_MAX:
        return (f"{human_count(count)} elements ({human_bytes(count * FLOAT_BYTES)} as float32), over Caffe's "
                f"limit of INT_MAX = {INT_MAX:,} elements per blob")
    return None
