"""deeplab-run against careless and hostile input (issue 12, items 3, 4, 7, 9 and resume): inputs are never
overwritten, output names never collide, one bad image never stops a batch and is reported once, bad options
and unusable output folders are located errors with exit 2."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from caffe2torch.batch import BatchPool, WorkerDied
from caffe2torch.cli import convert, run
from caffe2torch.cli.common import per_core_limit
from caffe2torch.executors import base as executor_base
from caffe2torch.outputs import RunJournal, assign_stems

from .conftest import net_from_text, write_random_weights
from .runtime_helpers import TINY_NET, convert_tiny_model, png_with_header, save_photo, tree_digest
from .worker_tasks import crash_on_two


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return convert_tiny_model(tmp_path_factory.mktemp("tiny")) / "model.onnx"


def deeplab_run(model, *args):
    result = CliRunner().invoke(run.main, ["--onnx", str(model), *[str(a) for a in args]])
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, name in enumerate(("a.jpg", "b.png")):
        save_photo(folder / name, index)
    return folder


def test_output_folder_equal_to_the_input_folder_is_refused_and_nothing_is_touched(model, photos):
    before = tree_digest(photos)
    result = deeplab_run(model, photos, "-o", photos)
    assert result.exit_code == 2 and "the output folder holds input image(s)" in result.output
    assert tree_digest(photos) == before
    explicit = deeplab_run(model, photos / "a.jpg", "-o", photos)  # one input file inside -o is enough
    assert explicit.exit_code == 2 and tree_digest(photos) == before


def test_output_names_never_collide_and_inputs_stay_untouched(model, tmp_path):
    folder, other = tmp_path / "in", tmp_path / "other"
    folder.mkdir()
    other.mkdir()
    for index, name in enumerate(("x.png", "x_overlay.png", "y.jpg", "y.png", "Z.png")):
        save_photo(folder / name, index)
    save_photo(other / "y.png", 9)  # the same name in another folder
    save_photo(other / "z.png", 10)  # the same name but for case
    before = tree_digest(tmp_path)
    out = tmp_path / "out"
    result = deeplab_run(model, folder, other, "-o", out, "--save-probs")
    assert result.exit_code == 0, result.output
    assert "segmented 7 of 7" in result.output
    inputs_after = {k: v for k, v in tree_digest(tmp_path).items() if not k.startswith("out")}
    assert inputs_after == before
    labels = sorted(p.name for p in out.glob("*.png") if not p.name.endswith("_overlay.png"))
    assert labels == ["Z.png", "x.png", "x_overlay_2.png", "y.png", "y_2.png", "y_3.png", "z_2.png"]
    assert len(list(out.glob("*_overlay.png"))) == 7 and len(list(out.glob("*_probs.npy"))) == 7
    # each output belongs to the right input: other/y.png (seed 9) got the third y
    stems = assign_stems(sorted((folder / n for n in ("x.png", "x_overlay.png")), key=str))
    assert stems == {folder / "x.png": "x", folder / "x_overlay.png": "x_overlay_2"}
    overlay = np.asarray(Image.open(out / "y_3_overlay.png"))[:24, :32]  # the image; its legend is below
    background = np.asarray(Image.open(out / "y_3.png")) == 0
    assert (overlay[background] == np.asarray(Image.open(other / "y.png"))[background]).all()


def test_the_same_file_twice_is_segmented_once(model, photos, tmp_path):
    result = deeplab_run(model, photos, photos / "a.jpg", "-o", tmp_path / "out")
    assert result.exit_code == 0 and "segmented 2 of 2" in result.output
    assert f"note: {photos / 'a.jpg'} is given twice: segmented once" in result.output


def test_bad_images_are_reported_once_each_and_the_batch_goes_on(model, photos, tmp_path):
    png_with_header(photos / "bomb.png", 30000, 30000)
    png_with_header(photos / "big.png", 5000, 5000, idat=b"not zlib data")
    (photos / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (photos / "folder.jpg").mkdir()
    os.mkfifo(photos / "pipe.png")
    Image.fromarray(np.zeros((5, 6), np.float32)).save(photos / "float.tif")
    out = tmp_path / "out"
    for jobs in ("1", "2"):
        result = deeplab_run(model, photos, "-o", out, "--jobs", jobs, "--crf", "--no-resume")
        assert result.exit_code == 1, result.output
        assert "segmented 2 of 8" in result.output and "6 image(s) failed" in result.output
        for name, reason in (("bomb.png", "nothing was decoded"), ("big.png", "over the limit of 16777216"),
                             ("corrupt.jpg", "Pillow can read"), ("folder.jpg", "is a folder"),
                             ("pipe.png", "is a FIFO"), ("float.tif", "mode F")):
            lines = [line for line in result.output.splitlines() if name in line]
            assert len(lines) == 1 and reason in lines[0], (name, lines)
        assert (out / "a.png").is_file() and (out / "b.png").is_file()
    raised = deeplab_run(model, photos / "big.png", "-o", out, "--max-pixels", "30000000")
    assert raised.exit_code == 1 and "big.png: cannot decode the image" in raised.output  # header ok, data not


@pytest.mark.parametrize("failure", [RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION"),
                                     MemoryError(), ValueError("odd"), OSError(5, "Input/output error")])
def test_any_failure_of_the_net_on_one_image_skips_only_that_image(model, photos, tmp_path, monkeypatch, failure):
    real = executor_base.image_logits

    def flaky(backend, rgb, *args):
        if rgb.shape[:2] == (24, 32) and rgb[0, 0, 0] == np.asarray(Image.open(photos / "a.jpg"))[0, 0, 0]:
            raise failure
        return real(backend, rgb, *args)

    monkeypatch.setattr(executor_base, "image_logits", flaky)
    result = deeplab_run(model, photos, "-o", tmp_path / "out")
    assert result.exit_code == 1 and "segmented 1 of 2" in result.output
    assert f"a.jpg: {type(failure).__name__}" in result.output or "a.jpg: out of memory" in result.output


def test_nan_scores_are_an_image_failure_not_label_zero(model, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(executor_base, "image_logits", lambda backend, rgb, *a: np.full((21, *rgb.shape[:2]), np.nan,
                                                                               np.float32))
    result = deeplab_run(model, photos, "-o", tmp_path / "out")
    assert result.exit_code == 1 and result.output.count("NaN or infinite") == 2
    assert not list((tmp_path / "out").glob("*.png"))


@pytest.mark.parametrize("args, message", [
    (["--scales", "nan"], "--scales"), (["--scales", "inf"], "--scales"), (["--scales", "0"], "--scales"),
    (["--scales", "-1"], "--scales"), (["--scales", ","], "--scales"), (["--scales", "1," * 17], "--scales"),
    (["--fuse", "median"], "--fuse"), (["--crf-params", "bi_w"], "--crf-params"),
    (["--crf-params", "bi_w=1,,max_iter=x"], "--crf-params"), (["--max-pixels", "0"], "--max-pixels"),
    (["--jobs", "0"], "--jobs"),
])
def test_bad_options_are_usage_errors(model, photos, tmp_path, args, message):
    result = deeplab_run(model, photos, "-o", tmp_path / "out", *args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_huge_scale_skips_the_images_it_would_blow_up(model, photos, tmp_path):
    result = deeplab_run(model, photos, "-o", tmp_path / "out", "--scales", "1,100", "--max-pixels", "1000000")
    assert result.exit_code == 1 and result.output.count("at scale 100 the 32x24 image becomes 3200x2400") == 2


def test_unusable_output_folders_are_located_errors(model, photos, tmp_path):
    (tmp_path / "file").write_text("x")
    result = deeplab_run(model, photos, "-o", tmp_path / "file")
    assert result.exit_code == 2 and "file" in result.output
    result = deeplab_run(model, photos, "-o", tmp_path / "file" / "below")
    assert result.exit_code == 2 and "below: cannot create the output folder" in result.output
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        readonly = locked
    else:  # root writes through permission bits; sysfs refuses new files even to root
        readonly = "/sys/kernel"
    result = deeplab_run(model, photos, "-o", readonly)
    assert result.exit_code == 2 and "cannot write in the output folder" in result.output, result.output


def test_a_full_disk_stops_the_run_with_exit_2_and_how_to_resume(model, photos, tmp_path, monkeypatch):
    import caffe2torch.util as util

    real = util._publish

    def no_space_for_images(tmp, path):
        if path.suffix == ".png":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tmp, path)

    monkeypatch.setattr(util, "_publish", no_space_for_images)
    out = tmp_path / "out"
    result = deeplab_run(model, photos, "-o", out)
    assert result.exit_code == 2
    assert "a.png: cannot write: No space left on device" in result.output
    assert "running the same command again resumes" in result.output
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


def test_an_output_name_taken_by_a_folder_skips_that_image_only(model, photos, tmp_path):
    out = tmp_path / "out"
    (out / "a.png").mkdir(parents=True)
    result = deeplab_run(model, photos, "-o", out)
    assert result.exit_code == 1 and "a.png: cannot write" in result.output and (out / "b.png").is_file()


def test_rerun_resumes_only_what_was_done_with_the_same_settings(model, photos, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = executor_base.image_logits
    calls = []

    def interrupted_at_second(backend, rgb, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(backend, rgb, *args)

    monkeypatch.setattr(executor_base, "image_logits", interrupted_at_second)
    first = deeplab_run(model, photos, "-o", out)
    assert first.exit_code == 130, first.output
    assert "1 of 2 image(s) are done" in first.output and "running the same command again resumes" in first.output
    monkeypatch.setattr(executor_base, "image_logits", real)
    stamp = (out / "a.png").stat().st_mtime_ns
    second = deeplab_run(model, photos, "-o", out)
    assert second.exit_code == 0 and "segmented 2 of 2" in second.output and "1 from an earlier run" in second.output
    assert (out / "a.png").stat().st_mtime_ns == stamp
    changed = deeplab_run(model, photos, "-o", out, "--flip")  # other settings: everything again
    assert changed.exit_code == 0 and "earlier run" not in changed.output
    assert (out / "a.png").stat().st_mtime_ns != stamp
    # an image that changed since is done again; --no-resume redoes all
    save_photo(photos / "a.jpg", 7)
    again = deeplab_run(model, photos, "-o", out, "--flip")
    assert "1 from an earlier run" in again.output
    last = {}
    for line in (out / RunJournal.NAME).read_text().splitlines():
        record = json.loads(line)
        last[record["input"]] = record["state"]
    assert last == {str(photos / "a.jpg"): "done", str(photos / "b.png"): "done"}


def test_a_worker_that_dies_fails_only_its_own_image():
    with BatchPool(2) as batch:
        outcomes = []
        for key in range(5):
            outcomes += batch.submit(key, crash_on_two, key)
        outcomes += batch.drain()
        outcomes += batch.submit(9, crash_on_two, 9)  # the pool was replaced: work goes on
        outcomes += batch.drain()
    by_key = {o.key: o for o in outcomes}
    assert sorted(by_key) == [0, 1, 2, 3, 4, 9]
    assert isinstance(by_key[2].error, WorkerDied) and "died while processing" in str(by_key[2].error)
    assert all(by_key[k].result == k * k for k in (0, 1, 3, 4, 9))


def test_worker_and_thread_counts_are_bounded(model, photos, tmp_path):
    for option in ("--jobs", "--threads"):
        result = deeplab_run(model, photos, "-o", tmp_path / "out", option, str(per_core_limit() + 1))
        assert result.exit_code == 2 and f"is more than {per_core_limit()}" in result.output


def test_a_one_pixel_tall_panorama_is_refused_for_its_padded_size(model, tmp_path):
    """40000x1 is within --max-pixels, but the net would see it padded to 40001x33: the padded input is
    bounded too (by twice the limit)."""
    Image.fromarray(np.zeros((1, 40000, 3), np.uint8)).save(tmp_path / "strip.png")
    result = deeplab_run(model, tmp_path / "strip.png", "-o", tmp_path / "out", "--max-pixels", "50000")
    assert result.exit_code == 1
    assert "the 40000x1 image is 40000x1, which the net sees padded to 40001x33 = 1320033 pixels" in result.output


def test_file_names_that_are_not_utf8_are_printed_escaped(model, photos, tmp_path):
    name = os.fsdecode(b"broken\xfe.jpg")
    (photos / name).write_bytes(b"not an image")
    save_photo(photos / os.fsdecode(b"good\xff.png"), 3)
    out = tmp_path / "out"
    result = deeplab_run(model, photos, "-o", out)
    assert result.exit_code == 1 and "broken\\udcfe.jpg: not an image file" in result.output
    assert (out / os.fsdecode(b"good\xff.png")).is_file()


def test_a_model_with_more_classes_than_a_label_png_holds_is_refused(tmp_path, photos):
    folder = tmp_path / "many"
    folder.mkdir()
    (folder / "net.prototxt").write_text(TINY_NET.replace("num_output: 21", "num_output: 300"))  # it converts
    write_random_weights(net_from_text((folder / "net.prototxt").read_text()), folder / "net.caffemodel")
    assert CliRunner().invoke(convert.main, [str(folder / "net.prototxt"), str(folder / "net.caffemodel"), "-o",
                                             str(folder)]).exit_code == 0
    result = deeplab_run(folder / "model.onnx", photos, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "the model gives 300 classes; label PNGs hold at most 256" in result.output
