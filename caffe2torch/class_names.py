"""Class names of a converted model: from the manifest for known models, from `deeplab-convert --classes`, VOC's
21 names for a 21-channel net, and `class_0 .. class_N-1` otherwise."""

from __future__ import annotations

import unicodedata
from collections import Counter
from pathlib import Path

from caffe2torch.errors import CaffeError, Location
from caffe2torch.images import VOC_CLASSES

# Bounds what a model's metadata may ask for (ImageNet-21k has 21,841 classes). Label PNGs hold only 256
# labels: deeplab-run and deeplab-eval refuse larger models themselves, but a 1000-class classifier converts.
MAX_CLASSES = 65536
MAX_NAME_LENGTH = 64


def default_class_names(channels: int | None) -> list[str]:
    if channels == len(VOC_CLASSES) or channels is None:
        return list(VOC_CLASSES)
    return [f"class_{i}" for i in range(channels)]


def name_problem(name: object) -> str | None:
    """Why `name` is not a usable class name, or None."""
    if not isinstance(name, str):
        return f"{name!r} is not a string"
    if not name.strip():
        return "an empty name"
    if len(name) > MAX_NAME_LENGTH:
        return f"'{name[:20]}...' is longer than {MAX_NAME_LENGTH} characters"
    if any(unicodedata.category(c).startswith("C") for c in name):
        return f"{name!r} holds control characters"
    return None


def check_class_names(names: object, channels: int | None = None) -> list[str]:
    """The names as a list, or ValueError: 1..MAX_CLASSES unique short printable strings, as many as the net's
    output channels when that is known."""
    if not isinstance(names, list) or not names:
        raise ValueError("must be a non-empty list of names")
    if len(names) > MAX_CLASSES:
        raise ValueError(f"{len(names)} names; at most {MAX_CLASSES} are accepted")
    for name in names:
        problem = name_problem(name)
        if problem:
            raise ValueError(f"bad class name: {problem}")
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ValueError(f"names repeated: {', '.join(duplicates[:5])}")
    if channels is not None and len(names) != channels:
        raise ValueError(f"{len(names)} names for a net with {channels} output channels")
    return list(names)


def read_class_names(value: str) -> list[str]:
    """`--classes`: a file with one name per line (blank lines ignored), or a comma-separated list."""
    path = Path(value)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CaffeError(f"cannot read the class names: {exc}", Location(str(path))) from None
        return [line.strip() for line in text.splitlines() if line.strip()]
    if "," not in value:
        raise CaffeError(f"--classes: '{value}' is neither a file nor a comma-separated list of names")
    return [part.strip() for part in value.split(",")]


def model_class_names(channels: int | None, given: list[str] | None = None,
                      known: list[str] | None = None, source: str = "--classes") -> list[str]:
    """The names a converted model is labelled with: given (--classes), else the known model's, else VOC for
    21 channels, else class_i; checked against the channel count."""
    names = given if given is not None else known if known else default_class_names(channels)
    if given is None:
        source = "the net's class names"
    try:
        return check_class_names(names, channels)
    except ValueError as exc:
        raise CaffeError(f"{source}: {exc}") from None
