"""Progress and exit messages (issue 13): when stderr is not a terminal, deeplab-run and deeplab-eval print a
line every few seconds and at every tenth of the work (done/total, images/s, ETA, skipped), counting images
when they are finished, not when they are submitted; a terminal gets a bar; interrupted runs say that the same
command resumes; a bad image is reported once."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from caffe2torch.cli import eval as eval_cli
from caffe2torch.cli import run as run_cli
from caffe2torch.progress import Progress, format_duration

from .conftest import REPO
from .runtime_helpers import convert_tiny_model, save_photo, voc_layout

LINE = re.compile(r"^(segmenting|evaluating): (\d+)/(\d+) images \((\d+)%\), (?:[\d.]+|-) images/s, "
                  r"ETA (?:[\dhmins ]+|[\d.]+ s|unknown), (\d+) skipped$")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines_of(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return convert_tiny_model(tmp_path_factory.mktemp("tiny")) / "model.onnx"


def test_plain_lines_at_every_tenth_and_every_interval_with_rate_eta_and_skips():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress("segmenting", stream=stream, tty=False, interval=5, clock=clock)
    progress.start(20)
    assert lines_of(stream) == ["segmenting: 20 images to do"]
    for index in range(20):
        clock.now += 0.5
        progress.advance(done=0 if index == 3 else 1, skipped=1 if index == 3 else 0)
    progress.close()
    lines = lines_of(stream)
    assert len(lines) == 1 + 9 + 1  # announcement, each tenth but the last, summary
    assert lines[1] == "segmenting: 2/20 images (10%), 2 images/s, ETA 9.0 s, 0 skipped"
    assert lines[2] == "segmenting: 4/20 images (20%), 2 images/s, ETA 8.0 s, 1 skipped"
    assert all(LINE.match(line) for line in lines[1:-1]), lines
    assert lines[-1] == "segmenting: 20/20 images in 10 s (2 images/s), 1 skipped"
    # a slow run: a line when the interval has passed, between tenths
    slow, stream = FakeClock(), io.StringIO()
    progress = Progress("evaluating", stream=stream, tty=False, interval=5, clock=slow)
    progress.start(1000)
    for _ in range(3):
        slow.now += 3
        progress.advance()
    assert lines_of(stream)[1:] == ["evaluating: 2/1000 images (0%), 0.333 images/s, ETA 49 min 54 s, 0 skipped"]


def test_images_from_an_earlier_run_count_as_done_but_not_in_the_rate():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress("segmenting", stream=stream, tty=False, interval=1000, clock=clock)
    progress.start(10)
    for _ in range(5):
        progress.advance(done=0, reused=1)
    clock.now += 4
    progress.advance()
    progress.advance()
    progress.close()
    lines = lines_of(stream)
    assert lines[5] == "segmenting: 5/10 images (50%), 5 from an earlier run, - images/s, ETA unknown, 0 skipped"
    assert lines[-2] == "segmenting: 7/10 images (70%), 5 from an earlier run, 0.5 images/s, ETA 6.0 s, 0 skipped"
    assert lines[-1] == "segmenting: 7/10 images in 4.0 s (0.5 images/s), 5 from an earlier run, 0 skipped"


def test_the_eta_follows_the_recent_rate_not_the_slow_start():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress("segmenting", stream=stream, tty=False, interval=1000, clock=clock)
    progress.start(100)
    clock.now += 30  # starting workers, loading the net
    for _ in range(40):
        clock.now += 1
        progress.advance()
    assert lines_of(stream)[-1] == "segmenting: 40/100 images (40%), 1 images/s, ETA 1 min 00 s, 0 skipped"


def test_a_terminal_gets_a_bar_that_counts_skips():
    stream = io.StringIO()
    with Progress("segmenting", stream=stream, tty=True).start(3) as progress:
        progress.advance()
        progress.advance(done=0, skipped=1)
        progress.write("skipped: x.jpg: broken")
        progress.advance()
    text = stream.getvalue()
    assert "segmenting: 100%" in text and "3/3" in text and "1 skipped" in text and "skipped: x.jpg" in text


def test_durations_read_well():
    assert [format_duration(s) for s in (0.04, 3.25, 9.96, 59.6, 200, 3 * 3600 + 65)] == [
        "0.0 s", "3.2 s", "10 s", "1 min 00 s", "3 min 20 s", "3 h 01 min"]


def test_deeplab_run_in_a_log_prints_progress_lines_and_reports_a_bad_image_once(model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(5):
        save_photo(folder / f"p{index}.png", index)
    (folder / "zz_broken.jpg").write_bytes(b"not a jpeg")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    completed = subprocess.run([sys.executable, "-m", "caffe2torch.cli.run", "--onnx", str(model), str(folder), "-o",
                                str(tmp_path / "out"), "--crf", "--crf-params", "max_iter=2", "--jobs", "2"],
                               env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1, completed.stderr
    lines = completed.stderr.splitlines()
    assert lines[0] == "segmenting: 6 images to do"
    progress = [m for m in map(LINE.match, lines) if m]
    assert len(progress) >= 3
    assert [int(m.group(2)) for m in progress] == sorted(int(m.group(2)) for m in progress)
    assert all(m.group(3) == "6" for m in progress)
    assert progress[-1].group(5) == "1"  # the broken image, last in name order, was counted as skipped
    assert re.match(r"^segmenting: 6/6 images in [\d.]+ s \([\d.]+ images/s\), 1 skipped$", lines[-2]), lines
    assert sum("zz_broken.jpg" in line for line in lines) == 1  # reported once
    assert lines[-1] == "1 image(s) failed (reported above as 'skipped')"
    assert completed.stdout.startswith("segmented 5 of 6 image(s)")


def test_deeplab_eval_in_a_log_prints_progress_lines(model, tmp_path):
    root = tmp_path / "VOC"
    voc_layout(root, count=4)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    completed = subprocess.run([sys.executable, "-m", "caffe2torch.cli.eval", "--onnx", str(model), "--voc-root",
                                str(root), "-o", str(tmp_path / "r")], env=env, capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stderr.splitlines()
    assert lines[0] == "evaluating: 4 images to do"
    assert [LINE.match(line).group(2) for line in lines[1:4]] == ["1", "2", "3"]
    assert re.match(r"^evaluating: 4/4 images in [\d.]+ s \([\d.]+ images/s\), 0 skipped$", lines[4])


class Recording(Progress):
    """Records, at each image counted as done, how many images have their files written."""

    def __init__(self, *args, count_files, **kwargs):
        super().__init__(*args, stream=io.StringIO(), tty=False, **kwargs)
        self.count_files = count_files
        self.seen: list[tuple[int, int]] = []

    def advance(self, done=1, skipped=0, reused=0):
        super().advance(done, skipped, reused)
        self.seen.append((self.done, self.count_files()))


def test_run_counts_finished_images_not_submitted_ones(model, tmp_path, monkeypatch):
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    for index in range(6):
        save_photo(folder / f"p{index}.png", index, 64, 64)
    made = []

    def recording(desc):
        made.append(Recording(desc, count_files=lambda: len(list(out.glob("*_overlay.png")))))
        return made[-1]

    monkeypatch.setattr(run_cli, "Progress", recording)
    result = CliRunner().invoke(run_cli.main, ["--onnx", str(model), str(folder), "-o", str(out), "--crf", "--jobs",
                                               "2", "--crf-params", "max_iter=30"])
    assert result.exit_code == 0, result.output
    seen = made[0].seen
    assert [done for done, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert all(done <= files for done, files in seen), seen  # never ahead of the files written


def test_eval_counts_scored_images(model, tmp_path, monkeypatch):
    root, out = tmp_path / "VOC", tmp_path / "r"
    voc_layout(root, count=5)
    made = []

    def recording(desc):
        made.append(Recording(desc, count_files=lambda: len(list((out / "predictions" / "crf").glob("*.png")))))
        return made[-1]

    monkeypatch.setattr(eval_cli, "Progress", recording)
    result = CliRunner().invoke(eval_cli.main, ["--onnx", str(model), "--voc-root", str(root), "-o", str(out),
                                                "--crf", "--jobs", "2", "--crf-params", "max_iter=30"])
    assert result.exit_code == 0, result.output
    assert [done for done, _ in made[0].seen] == [1, 2, 3, 4, 5]
    assert all(done <= files for done, files in made[0].seen)


def test_an_interrupted_eval_says_the_same_command_resumes(model, tmp_path, monkeypatch):
    root, out = tmp_path / "VOC", tmp_path / "r"
    voc_layout(root, count=3)
    from caffe2torch.executors import base as executor_base

    real, calls = executor_base.image_logits, []

    def interrupted_at_second(backend, rgb, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(backend, rgb, *args)

    monkeypatch.setattr(executor_base, "image_logits", interrupted_at_second)
    args = ["--onnx", str(model), "--voc-root", str(root), "-o", str(out)]
    first = CliRunner().invoke(eval_cli.main, args)
    assert first.exit_code == 130
    assert ("interrupted: 1 of 3 image(s) were scored and their predictions saved in "
            f"{out / 'predictions'}; running the same command again resumes from them") in first.output
    monkeypatch.setattr(executor_base, "image_logits", real)

    def interrupted_in_the_report(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_cli, "write_panels", interrupted_in_the_report)
    second = CliRunner().invoke(eval_cli.main, args)
    assert second.exit_code == 130 and "resumed: " not in second.output
    assert "interrupted: while writing the report: 3 image(s) were scored" in second.output
    assert "running the same command again resumes from them and writes the report" in second.output
