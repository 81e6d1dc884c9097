"""Small helpers shared by every stage."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from caffe2torch.errors import Location, OutputError

# Write errors that concern the whole output folder, not one file: a batch stops at the first one.
_FOLDER_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def output_error(path: str | Path, exc: OSError) -> OutputError:
    """The OSError of a write, as a CaffeError naming the file; fatal when the folder cannot take more."""
    return OutputError(f"cannot write: {exc.strerror or exc}", Location(str(path)),
                       fatal=exc.errno in _FOLDER_FULL_ERRNOS)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str | Path, path: Path) -> None:
    """Give the finished file the permissions a plain open() would have (mkstemp makes it 0600), then
    rename it into place."""
    os.chmod(tmp, 0o666 & ~_current_umask())
    os.replace(tmp, path)


NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems


def fit_name(name: str, limit: int) -> str:
    """`name` cut (on a character boundary) to at most `limit` bytes as the file system stores it."""
    if len(os.fsencode(name)) <= limit:
        return name
    kept, size = [], 0
    for char in name:
        size += len(os.fsencode(char))
        if size > limit:
            break
        kept.append(char)
    return "".join(kept)


def _temporary_beside(path: Path) -> tuple[int, str]:
    # ".NAME.XXXXXXXX.part": NAME cut so that a final name that fits the file system has a temporary that fits
    prefix = "." + fit_name(path.name, NAME_MAX - len(".") - len("._XXXXXXX") - len(".part")) + "."
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=prefix, suffix=".part", dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from None


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[BinaryIO]:
    """Write to a temporary file beside `path`, then rename it into place: readers never see a half-written
    file, and a failure or a kill leaves the old file (or none) behind. A failed write (disk full, read-only
    folder, a folder in the way) is an OutputError naming `path`."""
    path = Path(path)
    fd, tmp = _temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise output_error(path, exc) from None
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Like atomic_output, for writers that take a file name (safetensors, onnx, Pillow): yields a temporary
    path beside `path` and renames it into place when the block succeeds."""
    path = Path(path)
    fd, tmp = _temporary_beside(path)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise output_error(path, exc) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """UTF-8; lone surrogates (file names that are not valid UTF-8, quoted in a report) become \\udcXX."""
    atomic_write_bytes(path, text.encode("utf-8", errors="backslashreplace"))


def in_background(function, *args) -> concurrent.futures.Future:
    """function(*args) in a daemon thread; its result or exception from the returned future. For work that
    releases the GIL (hashing, reading files), so that it runs on another core beside the caller's; a daemon,
    so that an error in the caller does not wait for it."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(function(*args))
            except BaseException as exc:  # handed to whoever asks for the result
                future.set_exception(exc)

    threading.Thread(target=run, name=getattr(function, "__name__", "background"), daemon=True).start()
    return future


def loads_json(text: str | bytes):
    """json.loads for untrusted text (model metadata, artifact headers, run records): a document nested too
    deeply for Python's recursive decoder (`[[[[...` a hundred thousand times) is a ValueError like any other
    text that is not JSON, never a RecursionError."""
    import json

    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """torch on one thread (process-wide) for the block. For work made of many small operations (copying
    weights layer by layer, tracing at a small size): a parallel operator waits for its slowest thread, and on
    a busy machine each waits for a descheduled one (measured on 2 shared cores: an ONNX trace of ResNet-101
    MSC 2.5x slower with 2 threads than with 1). Results do not depend on the thread count of these
    operations."""
    import torch

    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _init_worker(retain_memory: bool, parent_pid: int | None = None) -> None:
    """Pool initializer: one thread per worker process, so that N workers on N cores do not each start a
    thread pool per core (OpenBLAS, OpenMP, torch if a task imports it; pydensecrf itself is
    single-threaded); for the CRF, freed memory kept in the heap; the worker dies with the process that
    started it; and interrupts are left to that process, which finishes or cancels the work in order (a
    Ctrl-C reaches the whole process group; a worker stopped in the middle of a write would leave a
    temporary file behind)."""
    for name in _THREAD_VARIABLES:
        os.environ[name] = "1"
    if retain_memory:
        retain_freed_memory()
    if parent_pid is not None:
        die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked since birth (`interrupts_deferred`); ignored from now on
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _INTERRUPTS)


_INTERRUPTS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread for the block. A process started inside inherits the blocked
    mask through fork and exec, so a Ctrl-C (which reaches the whole process group) cannot kill a worker
    that is still starting, before its initializer ignores interrupts, with a traceback; here the signal
    stays pending and is delivered when the block ends. (multiprocessing's resource tracker is started the
    same way.)"""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> bool:
    """Ask Linux to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG), so that a worker
    never outlives a parent killed by SIGKILL or a crash; exits at once if the parent is already gone (it may
    have died before the request). Returns False where this is not Linux. Note: Linux sends the signal when
    the parent *thread* that started this process exits, so pools must be used from long-lived threads."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid:
        os._exit(1)
    return True


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
    """A process pool for CPU work (CRF, scoring) beside the network.

    Workers are started with "spawn" and die with this process (`die_with_parent`). Not fork(): forking a
    process whose torch/OpenMP threads hold locks can deadlock the children. Not the forkserver either: on
    Linux its workers are children of the server, not of this process, and every worker holds the write ends
    of its own task queue and of the server's "alive" pipe, so after a SIGKILL of this process the workers
    wait on their queue, the server waits for them, and the resource tracker for both, forever (measured:
    four orphans per --jobs 2 run). A spawned worker's parent is this process, so the kernel kills it when
    this process dies, and then the resource tracker sees its pipe close and exits. Spawning costs about as
    much as forking from the server here (0.2 s for two workers). `retain_memory=False` leaves glibc's
    allocator as it is (benchmarks/crf.py compares the two)."""
    import multiprocessing

    with interrupts_deferred():  # the resource tracker may start here
        return _WorkerPool(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                           initializer=_init_worker, initargs=(retain_memory, os.getpid()))


class _WorkerPool(concurrent.futures.ProcessPoolExecutor):
    """A ProcessPoolExecutor whose workers, started on demand by submit(), are born with interrupts blocked
    (`interrupts_deferred`)."""

    def submit(self, fn, /, *args, **kwargs):
        with interrupts_deferred():
            return super().submit(fn, *args, **kwargs)
