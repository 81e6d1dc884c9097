"""deeplab-run/-eval with worker processes under real signals (issue 12, item 8): after SIGKILL no process
of theirs is left (workers, resource tracker); SIGTERM and Ctrl-C stop them cleanly (no temporary file, a
message saying that the same command resumes), and the same command then resumes.

Processes are found through /proc (Linux only); every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO
from .runtime_helpers import convert_tiny_model, save_photo, voc_layout

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

CRF = ["--crf", "--crf-params", "max_iter=60", "--jobs", "2"]


def parent_of(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, not yet reaped by whoever adopted it) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    found, frontier = set(), {pid}
    while frontier:
        children = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                    and parent_of(int(p.name)) in frontier}
        frontier = children - found
        found |= children
    return found


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def start(module: str, args: list) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", module, *[str(a) for a in args]], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return process.returncode, out + err


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return convert_tiny_model(tmp_path_factory.mktemp("tiny")) / "model.onnx"


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(8):
        save_photo(folder / f"p{index}.png", index, 64, 64)
    return folder


def journal_has_done(out: Path) -> bool:
    journal = out / ".deeplab-run.jsonl"
    return journal.is_file() and '"done"' in journal.read_text()


def test_sigkill_leaves_no_worker_or_resource_tracker_behind(model, photos, tmp_path):
    out = tmp_path / "out"
    process = start("caffe2torch.cli.run", ["--onnx", model, photos, "-o", out, *CRF])
    try:
        wait_for(lambda: journal_has_done(out), 60, "a first image")
        helpers = descendants(process.pid)
        assert len(helpers) >= 3  # two workers and the resource tracker
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        wait_for(lambda: not any(alive(pid) for pid in helpers), 15, "the workers to die with their parent")
    finally:
        for pid in descendants(process.pid) | {process.pid}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        process.communicate()


@pytest.mark.parametrize("signal_number, status, word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                        (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_ctrl_c_stop_cleanly_and_the_same_command_resumes(model, photos, tmp_path, signal_number,
                                                                       status, word):
    out = tmp_path / "out"
    command = ["--onnx", model, photos, "-o", out, *CRF]
    process = start("caffe2torch.cli.run", command)
    try:
        wait_for(lambda: journal_has_done(out), 60, "a first image")
        helpers = descendants(process.pid)
        if signal_number == signal.SIGINT:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        else:
            process.send_signal(signal.SIGTERM)  # kill, timeout, service managers: the main process
        code, output = finish(process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert code == status, output
    assert word in output and "running the same command again resumes" in output and "Traceback" not in output
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]
    wait_for(lambda: not any(alive(pid) for pid in helpers), 15, "the workers to exit")
    code, output = finish(start("caffe2torch.cli.run", command))
    assert code == 0 and "segmented 8 of 8" in output and "from an earlier run with the same settings" in output
    assert len(list(out.glob("p*_overlay.png"))) == 8


def test_eval_sigterm_stops_cleanly_and_resumes_from_its_predictions(model, tmp_path):
    root = tmp_path / "VOC2012"
    voc_layout(root, count=8, size=(64, 64))
    out = tmp_path / "results"
    command = ["--onnx", model, "--voc-root", root, "-o", out, *CRF]
    process = start("caffe2torch.cli.eval", command)
    try:
        wait_for(lambda: len(list((out / "predictions" / "crf").glob("*.png"))) >= 1, 60, "a first prediction")
        helpers = descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        code, output = finish(process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert code == 143, output
    assert "terminated (SIGTERM)" in output and "running the same command again resumes from them" in output
    assert not [p for p in out.rglob("*.part")]
    wait_for(lambda: not any(alive(pid) for pid in helpers), 15, "the workers to exit")
    code, output = finish(start("caffe2torch.cli.eval", command))
    assert code == 0 and "8 image(s) scored" in output and "resumed: " in output, output


_CTRL_C_STORM = """
import os, signal, sys, threading, time
from caffe2torch.util import worker_pool
from tests.worker_tasks import square

received = []
signal.signal(signal.SIGINT, lambda *_: received.append(1))  # this process counts them, workers must survive
stop = threading.Event()

def storm():
    while not stop.is_set():
        os.killpg(os.getpgrp(), signal.SIGINT)
        time.sleep(0.002)

thread = threading.Thread(target=storm)
thread.start()
try:
    for _ in range(3):
        with worker_pool(2) as pool:
            assert list(pool.map(square, range(6))) == [k * k for k in range(6)]
finally:
    stop.set()
    thread.join()
print("ok", len(received) > 0)
"""


def test_workers_starting_during_a_ctrl_c_storm_survive_without_traceback():
    """Ctrl-C reaches the whole process group, also workers that are still starting (before their
    initializer ignores it): they are born with interrupts blocked, so none dies with a traceback."""
    run = subprocess.run([sys.executable, "-c", _CTRL_C_STORM], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok True", run.stdout + run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr, run.stderr[-3000:]
