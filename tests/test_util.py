"""Process-level helpers: the CRF worker pool and its allocator setting."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from caffe2torch.crf import crf_preset, dense_crf
from caffe2torch.util import worker_pool

# Allocates and frees a 256 MB block, then prints how much of it the process still holds (MB).
_HELD_AFTER_FREE = """
import sys
from caffe2torch.util import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
page = __import__("os").sysconf("SC_PAGE_SIZE")
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * page >> 20
import numpy as np
before = resident()
block = np.ones(256 << 20, dtype=np.uint8)
del block
print(resident() - before)
"""


def _held_after_free(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", _HELD_AFTER_FREE, mode], capture_output=True, text=True,
                            check=True)
    return int(result.stdout.strip())


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_retain_freed_memory_keeps_large_blocks_in_the_heap():
    # glibc's default hands a freed 256 MB block straight back to the kernel (munmap); the CRF workers'
    # setting keeps it, so that pydensecrf's next lattice buffer reuses pages instead of faulting in new ones.
    assert _held_after_free("default") < 32
    assert _held_after_free("retain") > 200


def _worker_environment(_: int) -> tuple[str | None, int]:
    return os.environ.get("OMP_NUM_THREADS"), os.getpid()


def _crf_in_worker(scores: np.ndarray, image: np.ndarray) -> np.ndarray:
    return dense_crf(scores, image, crf_preset("v2"))


def test_worker_pool_runs_single_threaded_workers_with_bit_identical_crf():
    rng = np.random.default_rng(3)
    scores = [rng.normal(0, 2, (5, 40, 56)).astype(np.float32) for _ in range(4)]
    images = [rng.integers(0, 256, (3, 40, 56)).astype(np.float32) for _ in range(4)]
    with worker_pool(2) as pool:
        environments = list(pool.map(_worker_environment, range(4)))
        parallel = list(pool.map(_crf_in_worker, scores, images))
    assert {threads for threads, _ in environments} == {"1"}
    assert os.getpid() not in {pid for _, pid in environments}
    for score, image, result in zip(scores, images, parallel):
        assert np.array_equal(result, dense_crf(score, image, crf_preset("v2")))


def test_cli_defaults_give_the_net_every_core_and_the_crf_one_worker_per_core(monkeypatch):
    from caffe2torch.cli.run import default_jobs, default_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert default_jobs(None, crf=True) == 16 and default_jobs(None, crf=False) == 1 and default_jobs(3, True) == 3
    assert default_threads(None) == 16  # the net on every core, CRF workers beside it or not
    assert default_threads(5) == 5
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert default_threads(None) == 1
