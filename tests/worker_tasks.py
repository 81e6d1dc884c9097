"""Tasks for worker-process tests, in a module that imports nothing heavy (spawned workers import it)."""

from __future__ import annotations


def crash_on_two(key: int) -> int:
    """key squared; for key 2, a segfault in native code (as pydensecrf had on NaN features)."""
    if key == 2:
        import ctypes

        ctypes.string_at(0)
    return key * key


def square(key: int) -> int:
    return key * key
