"""deeplab-eval against careless and hostile input (issue 12, items 2, 5, 6, 7, 9): list files cannot make it
read or write outside its folders, duplicate ids are scored once, labels are read by value, and the exit
status and the report never present a result that is not one."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from caffe2torch.cli import eval as eval_cli

from .runtime_helpers import convert_tiny_model, png16, png_with_header, tree_digest, voc_layout


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return convert_tiny_model(tmp_path_factory.mktemp("tiny")) / "model.onnx"


@pytest.fixture()
def voc(tmp_path):
    root = tmp_path / "VOC2012"
    return root, voc_layout(root)


def deeplab_eval(*args):
    result = CliRunner().invoke(eval_cli.main, [str(a) for a in args])
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.mark.parametrize("line, message", [
    ("../../outside/x", "holds a path separator"),
    ("..", "is not a file name"),
    ("a\\b", "holds a path separator"),
    ("/JPEGImages/../../../outside/x.jpg /SegmentationClass/2007_000000.png", "points outside the dataset root"),
    ("/JPEGImages/2007_000000.jpg ../outside/x.png", "points outside the dataset root"),
    ("a b c", "3 fields"),
])
def test_list_lines_that_escape_the_dataset_or_the_output_folder_are_refused(model, voc, tmp_path, line, message):
    root, ids = voc
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.png").write_bytes(b"precious")
    (outside / "x.jpg").write_bytes(b"precious")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{ids[0]}\n{line}\n")
    before = tree_digest(outside)
    result = deeplab_eval("--onnx", model, "--voc-root", root, "--list", listing, "-o", tmp_path / "r" / "deep")
    assert result.exit_code == 2 and f"{listing}:2: " in result.output and message in result.output, result.output
    assert tree_digest(outside) == before and not (tmp_path / "r").exists()


def test_duplicate_ids_are_scored_once_and_conflicting_ones_refused(model, voc, tmp_path):
    root, ids = voc
    listing = tmp_path / "list.txt"
    listing.write_text(f"{ids[0]}\n{ids[1]}\n{ids[0]}\n/JPEGImages/{ids[1]}.jpg /SegmentationClass/{ids[1]}.png\n")
    result = deeplab_eval("--onnx", model, "--voc-root", root, "--list", listing, "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert f"{listing}:3: repeats line 1 ({ids[0]}): scored once" in result.output
    assert f"{listing}:4: repeats line 2" in result.output and "2 image(s) scored" in result.output
    assert json.loads((tmp_path / "r" / "results.json").read_text())["images"] == 2
    listing.write_text(f"{ids[0]}\n/JPEGImages/{ids[1]}.jpg /SegmentationClass/{ids[0]}.png\n"
                       f"/JPEGImages/{ids[0]}.jpg /SegmentationClass/{ids[1]}.png\n")
    conflict = deeplab_eval("--onnx", model, "--voc-root", root, "--list", listing, "-o", tmp_path / "r2")
    assert conflict.exit_code == 2 and f"{listing}:3: id '{ids[0]}' is already used on line 1" in conflict.output


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00binary"), "not UTF-8"),
    (lambda p: os.truncate(p.open("w").name, 65 << 20), "over"),
    (lambda p: os.mkfifo(p), "not a regular file"),
])
def test_list_files_that_are_not_lists_are_refused(model, voc, tmp_path, make, message):
    root, _ = voc
    listing = tmp_path / "list.txt"
    make(listing)
    result = deeplab_eval("--onnx", model, "--voc-root", root, "--list", listing, "-o", tmp_path / "r")
    assert result.exit_code == 2 and message in result.output, result.output


def test_when_no_image_can_be_scored_there_is_no_score(model, voc, tmp_path):
    root, ids = voc
    for image_id in ids:
        (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"broken")
    out = tmp_path / "r"
    result = deeplab_eval("--onnx", model, "--voc-root", root, "-o", out)
    assert result.exit_code == 1, result.output
    assert "0 image(s) scored, 3 skipped" in result.output and "no image could be scored" in result.output
    assert "0.00" not in result.output and "mIoU" not in result.output
    data = json.loads((out / "results.json").read_text())
    assert data["scores"] is None and data["images"] == 0 and len(data["skipped"]) == 3
    assert "No image could be scored" in (out / "report.md").read_text()


def test_labels_are_read_by_value_and_bad_ones_skip_their_image(model, voc, tmp_path):
    root, ids = voc
    labels = np.asarray(Image.open(root / "SegmentationClass" / f"{ids[0]}.png")).astype(np.uint16)
    (root / "SegmentationClass" / f"{ids[0]}.png").unlink()
    png16(root / "SegmentationClass" / f"{ids[0]}.png", labels)  # 16-bit, same values
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "SegmentationClass" / f"{ids[1]}.png")  # colours
    png_with_header(root / "SegmentationClass" / f"{ids[2]}.png", 4000, 3000)  # a bomb beside a 32x24 image
    result = deeplab_eval("--onnx", model, "--voc-root", root, "-o", tmp_path / "r", "--jobs", "2")
    assert result.exit_code == 1, result.output
    assert "1 image(s) scored, 2 skipped" in result.output
    assert f"{ids[1]}.png: label image has mode RGB" in result.output
    assert f"{ids[2]}.png: the label image is 4000x3000 but the image is 32x24" in result.output


def test_outputs_may_not_overwrite_inputs(model, voc, tmp_path):
    root, ids = voc
    out = tmp_path / "r"
    labels = out / "predictions" / "no_crf"
    labels.mkdir(parents=True)
    for image_id in ids:
        (labels / f"{image_id}.png").write_bytes((root / "SegmentationClass" / f"{image_id}.png").read_bytes())
    before = tree_digest(labels)
    result = deeplab_eval("--onnx", model, "--voc-root", root, "--labels", labels, "-o", out, "--no-resume")
    assert result.exit_code == 2 and "would be overwritten" in result.output and tree_digest(labels) == before
    listing = out / "report.md"
    listing.write_text(f"{ids[0]}\n")
    result = deeplab_eval("--onnx", model, "--voc-root", root, "--list", listing, "-o", out)
    assert result.exit_code == 2 and "report.md" in result.output and listing.read_text() == f"{ids[0]}\n"


def test_a_corrupt_run_record_is_a_located_error(model, voc, tmp_path):
    root, _ = voc
    out = tmp_path / "r"
    out.mkdir()
    (out / "run.json").write_text("[not json")
    result = deeplab_eval("--onnx", model, "--voc-root", root, "-o", out)
    assert result.exit_code == 2 and "run.json: cannot read the settings of the earlier run" in result.output


def test_prediction_files_are_checked_like_labels(voc, tmp_path):
    root, ids = voc
    predictions = tmp_path / "preds"
    predictions.mkdir()
    for image_id in ids:
        (predictions / f"{image_id}.png").write_bytes((root / "SegmentationClass" / f"{image_id}.png").read_bytes())
    png_with_header(predictions / f"{ids[1]}.png", 30000, 30000)
    result = deeplab_eval("--predictions", predictions, "--voc-root", root, "-o", tmp_path / "r")
    assert result.exit_code == 1 and "2 image(s) scored, 1 skipped" in result.output
    assert f"{ids[1]}.png: the label image is over the limit" in result.output


def test_bad_options_are_usage_errors(model, voc, tmp_path):
    root, _ = voc
    for args in (["--scales", "nan"], ["--limit", "0"], ["--max-pixels", "-5"], ["--split", "../x"],
                 ["--crf-params", "bi_xy_std=1e-30"]):
        result = deeplab_eval("--onnx", model, "--voc-root", root, "-o", tmp_path / "r", *args)
        assert result.exit_code == 2, (args, result.output)


def test_a_full_disk_stops_eval_with_exit_2_and_how_to_resume(model, voc, tmp_path, monkeypatch):
    import errno

    import caffe2torch.util as util

    real = util._publish

    def no_space_for_predictions(tmp, path):
        if "predictions" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tmp, path)

    monkeypatch.setattr(util, "_publish", no_space_for_predictions)
    root, ids = voc
    out = tmp_path / "r"
    result = deeplab_eval("--onnx", model, "--voc-root", root, "-o", out)
    assert result.exit_code == 2, result.output
    assert f"{ids[0]}.png: cannot write: No space left on device; running the same command again resumes" \
        in result.output
    assert not list(out.rglob("*.part")) and not (out / "results.json").exists()
