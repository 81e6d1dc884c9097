"""Per-image work for deeplab-run and deeplab-eval: in worker processes (or inline with one job), where one
image's failure, of any kind, is that image's failure and never the batch's.

A failure is an exception from the task (reported with the image's name), or the death of the worker process
running it (a crash in native code, the kernel's out-of-memory killer): a dead worker breaks a
ProcessPoolExecutor and fails every task in flight with BrokenProcessPool, so those tasks are run again one at
a time, each in a fresh single-worker pool; the one that kills its worker again is reported, the others
complete, and the batch goes on with a new pool.
"""

from __future__ import annotations

import concurrent.futures as futures
import os
from collections.abc import Callable, Hashable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from caffe2torch.errors import CaffeError, printable
from caffe2torch.util import worker_pool


class WorkerDied(CaffeError):
    """The worker process died while it ran this task."""


@dataclass
class Outcome:
    key: Hashable
    result: object = None
    error: BaseException | None = None


def describe_failure(name: object, exc: BaseException) -> str:
    """One line for a per-image failure: the image first, then what went wrong."""
    if isinstance(exc, CaffeError):
        text = str(exc)
    elif isinstance(exc, MemoryError):
        text = "out of memory (MemoryError)"
    else:
        text = f"{type(exc).__name__}: {exc}"
    if text.startswith(str(name)):
        return printable(text)
    head, sep, rest = text.partition(": ")
    if sep and _same_path(head, str(name)):  # the error names the file by another spelling (absolute)
        text = rest
    return printable(f"{name}: {text}")


def _same_path(a: str, b: str) -> bool:
    try:
        return os.path.abspath(a) == os.path.abspath(b)
    except (ValueError, OSError):  # a NUL byte, a vanished working folder
        return False


class BatchPool:
    """submit(key, fn, *args) runs fn(*args) in a worker (inline when jobs == 1) and returns the outcomes
    finished meanwhile; drain() returns the rest. At most `2 * jobs` tasks are in flight, which bounds the
    memory their arguments (logits) hold. close(), or leaving a `with` block, waits for running tasks and
    cancels queued ones."""

    def __init__(self, jobs: int):
        self.jobs = jobs
        self.pool = worker_pool(jobs) if jobs > 1 else None
        self.pending: dict[futures.Future, tuple[Hashable, Callable, tuple]] = {}

    def __enter__(self) -> BatchPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def submit(self, key: Hashable, fn: Callable, *args) -> list[Outcome]:
        if self.jobs <= 1:
            try:
                return [Outcome(key, fn(*args))]
            except Exception as exc:  # noqa: BLE001 - any failure is this image's
                return [Outcome(key, error=exc)]
        outcomes: list[Outcome] = []
        try:
            future = self.pool.submit(fn, *args)
        except BrokenProcessPool:  # a worker died since the last look: recover, then submit again
            outcomes += self._collect(set(self.pending))
            try:
                future = self.pool.submit(fn, *args)
            except BrokenProcessPool:  # it died idle: no task was lost, only the pool
                self.pool.shutdown(wait=True, cancel_futures=True)
                self.pool = worker_pool(self.jobs)
                future = self.pool.submit(fn, *args)
        self.pending[future] = (key, fn, args)
        if len(self.pending) >= 2 * self.jobs:
            outcomes += self._collect(futures.wait(self.pending, return_when=futures.FIRST_COMPLETED).done)
        return outcomes

    def drain(self) -> list[Outcome]:
        outcomes: list[Outcome] = []
        while self.pending:
            outcomes += self._collect(futures.wait(self.pending).done)
        return outcomes

    def _collect(self, done) -> list[Outcome]:
        outcomes, lost = [], []
        for future in done:
            outcome = self._outcome(future)
            if outcome is None:
                lost.append(self.pending.pop(future))
            else:
                outcomes.append(outcome)
        if lost:  # the pool is broken: every task still in flight fails the same way; sort them out
            for future in futures.wait(self.pending).done:
                outcome = self._outcome(future)
                if outcome is None:
                    lost.append(self.pending.pop(future))
                else:
                    outcomes.append(outcome)
            outcomes += self._rerun_alone(lost)
        return outcomes

    def _outcome(self, future: futures.Future) -> Outcome | None:
        """The outcome of a finished future, None if it was lost to a broken pool (popped from pending
        otherwise)."""
        key = self.pending[future][0]
        try:
            result = future.result()
        except BrokenProcessPool:
            return None
        except Exception as exc:  # noqa: BLE001 - the task's own failure: this image's
            self.pending.pop(future)
            return Outcome(key, error=exc)
        self.pending.pop(future)
        return Outcome(key, result)

    def _rerun_alone(self, lost: list[tuple[Hashable, Callable, tuple]]) -> list[Outcome]:
        self.pool.shutdown(wait=True, cancel_futures=True)
        outcomes = []
        for key, fn, args in lost:
            single = worker_pool(1)
            try:
                outcomes.append(Outcome(key, single.submit(fn, *args).result()))
            except BrokenProcessPool:
                outcomes.append(Outcome(key, error=WorkerDied(
                    "the worker process died while processing this image (a crash in native code, or killed "
                    "by the system, e.g. out of memory); the other images went on")))
            except Exception as exc:  # noqa: BLE001
                outcomes.append(Outcome(key, error=exc))
            finally:
                single.shutdown(wait=True, cancel_futures=True)
        self.pool = worker_pool(self.jobs)
        return outcomes
