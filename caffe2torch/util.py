"""Small helpers shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str | Path, path: Path) -> None:
    """Give the finished file the permissions a plain open() would have (mkstemp makes it 0600), then
    rename it into place."""
    os.chmod(tmp, 0o666 & ~_current_umask())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[BinaryIO]:
    """Write to a temporary file beside `path`, then rename it into place: readers never see a half-written
    file, and a failure or a kill leaves the old file (or none) behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Like atomic_output, for writers that take a file name (safetensors, onnx, Pillow): yields a temporary
    path beside `path` and renames it into place when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _init_worker(retain_memory: bool) -> None:
    """Pool initializer: one thread per worker process, so that N workers on N cores do not each start a
    thread pool per core (OpenBLAS, OpenMP, torch if a task imports it; pydensecrf itself is
    single-threaded), set before a worker imports anything that reads these variables; and, for the CRF,
    freed memory kept in the heap."""
    for name in _THREAD_VARIABLES:
        os.environ[name] = "1"
    if retain_memory:
        retain_freed_memory()


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def retain_freed_memory() -> bool:
    """Keep large freed blocks in this process's heap instead of handing them back to the kernel.

    Why: pydensecrf allocates and frees two lattice-sized buffers (tens of MB for a 500x375 image) for every
    filtering, 20+ times per image. Above glibc's mmap threshold (at most 32 MB) each allocation is a fresh
    mapping whose pages the kernel zero-fills on first touch; two workers doing that at once spend their time
    in page faults and memory bandwidth (measured: 24 images, 2 workers, 1.51-1.58x a single process before,
    1.84-1.92x after; results are bit-identical, only the allocator changes). Only for worker processes we
    own: the cost is that a worker's resident memory stays at its peak. Returns False where the C library is
    not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    int_max = (1 << 31) - 1  # mallopt takes a C int; this keeps every block up to 2 GB in the heap
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, int_max))


def worker_pool(jobs: int, retain_memory: bool = True):
    """A process pool for CPU work (CRF, scoring) beside the network. Workers come from a forkserver, not
    from fork(): forking a process whose torch/OpenMP threads hold locks can deadlock the children.
    `retain_memory=False` leaves glibc's allocator as it is (benchmarks/crf.py compares the two)."""
    import concurrent.futures
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context,
                                                  initializer=_init_worker, initargs=(retain_memory,))
