"""deeplab-eval on a small synthetic dataset in the VOC layout: every metric against an independent
computation, ignore handling, a class missing from an image, predictions mode == model mode, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from caffe2torch.cli import convert
from caffe2torch.cli import eval as eval_cli
from caffe2torch.errors import CaffeError
from caffe2torch.evaluate import read_label, voc_samples
from caffe2torch.images import voc_palette
from caffe2torch.metrics import confusion_matrix, scores_from_confusion

from .conftest import REFERENCE, require_shared


def independent_scores(truths, preds, num_classes):
    """Per-class IoU from flattened pixel lists, written without a confusion matrix."""
    t = np.concatenate([x.ravel() for x in truths]).astype(int)
    p = np.concatenate([x.ravel() for x in preds]).astype(int)
    keep = t != 255
    t, p = t[keep], p[keep]
    ious, accs = [], []
    for c in range(num_classes):
        inter = np.sum((t == c) & (p == c))
        union = np.sum((t == c) | (p == c))
        if union:
            ious.append(inter / union)
        if np.sum(t == c):
            accs.append(inter / np.sum(t == c))
    freq = [np.sum(t == c) / t.size for c in range(num_classes)]
    fw = sum(f * (np.sum((t == c) & (p == c)) / max(np.sum((t == c) | (p == c)), 1)) for c, f in enumerate(freq))
    return np.mean(ious), np.mean(t == p), np.mean(accs), fw


def save_palette(path, labels):
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(voc_palette().reshape(-1).tolist())
    image.save(path)


@pytest.fixture()
def voc(tmp_path):
    """Three images with palette labels, 255 borders, one image without class 15, a val list."""
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    truths, ids = [], []
    for index, (h, w) in enumerate([(40, 52), (33, 47), (50, 30)]):
        image_id = f"2007_{index:06d}"
        labels = np.zeros((h, w), np.uint8)
        labels[5:20, 8:30] = 15 if index != 1 else 7  # image 1 has no "person"
        labels[22:, :12] = 3
        labels[0, :] = 255  # VOC's void border
        labels[:, -1] = 255
        save_palette(root / "SegmentationClass" / f"{image_id}.png", labels)
        rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        truths.append(labels)
        ids.append(image_id)
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    return root, ids, truths


def test_metrics_against_independent_computation(voc):
    _, _, truths = voc
    rng = np.random.default_rng(1)
    preds = []
    for t in truths:
        p = t.copy()
        p[p == 255] = 0
        noise = rng.random(t.shape) < 0.2
        p[noise] = rng.integers(0, 21, noise.sum())
        preds.append(p)
    matrix = sum(confusion_matrix(t, p, 21) for t, p in zip(truths, preds))
    s = scores_from_confusion(matrix)
    miou, pixel, mean_acc, fw = independent_scores(truths, preds, 21)
    assert s.miou == pytest.approx(miou) and s.pixel_accuracy == pytest.approx(pixel)
    assert s.mean_class_accuracy == pytest.approx(mean_acc) and s.frequency_weighted_iou == pytest.approx(fw)
    assert s.pixels == sum(int(np.sum(t != 255)) for t in truths)  # 255 ignored
    # per-image averaging (a common mistake) gives a different number here
    per_image = np.mean([scores_from_confusion(confusion_matrix(t, p, 21)).miou for t, p in zip(truths, preds)])
    assert abs(per_image - s.miou) > 1e-3


def test_labels_must_be_class_indices(tmp_path):
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(rgb)
    with pytest.raises(CaffeError, match="RGB colours are not labels|mode RGB"):
        read_label(rgb)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((4, 5), 7, np.uint8), mode="L").save(grey)  # SBD's SegmentationClassAug
    assert read_label(grey).max() == 7
    with pytest.raises(CaffeError, match="the image is"):
        read_label(grey, (4, 4))


def test_missing_files_are_listed(voc):
    root, ids, _ = voc
    (root / "SegmentationClass" / f"{ids[1]}.png").unlink()
    with pytest.raises(CaffeError, match="1 file"):
        voc_samples(root, "val")
    with pytest.raises(CaffeError, match="missing folder"):
        voc_samples(root, "val", label_dir=root / "nope")


def test_predictions_mode_equals_model_mode_and_resume(voc, tmp_path):
    root, ids, truths = voc
    folder = require_shared(REFERENCE / "v2_vgg16_aspp")
    model = tmp_path / "model"
    assert CliRunner().invoke(convert.main, [str(folder / "net.prototxt"), str(folder / "weights.caffemodel"),
                                             "-o", str(model)]).exit_code == 0
    out = tmp_path / "results"
    args = ["--onnx", str(model / "model.onnx"), "--voc-root", str(root), "-o", str(out), "--crf"]
    result = CliRunner().invoke(eval_cli.main, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert set(data["scores"]) == {"no_crf", "crf"} and data["images"] == 3
    assert (out / "report.md").read_text().count("|") > 20 and len(list((out / "panels").glob("*.png"))) == 3
    # the same predictions, scored by --predictions mode
    for variant in ("no_crf", "crf"):
        again = CliRunner().invoke(eval_cli.main, ["--predictions", str(out / "predictions" / variant), "--voc-root",
                                                   str(root), "-o", str(tmp_path / f"p_{variant}")])
        assert again.exit_code == 0, again.output
        other = json.loads((tmp_path / f"p_{variant}" / "results.json").read_text())
        assert other["scores"]["predictions"]["mIoU"] == pytest.approx(data["scores"][variant]["mIoU"])
    # resume: a second run scores the existing predictions without recomputing them
    stamp = (out / "predictions" / "crf" / f"{ids[0]}.png").stat().st_mtime_ns
    resumed = CliRunner().invoke(eval_cli.main, args)
    assert resumed.exit_code == 0 and "resumed: 3" in resumed.output
    assert (out / "predictions" / "crf" / f"{ids[0]}.png").stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["scores"] == data["scores"]
    # other settings in the same folder are refused
    changed = CliRunner().invoke(eval_cli.main, [*args, "--flip"])
    assert changed.exit_code == 2 and "other settings" in changed.output


def test_unreadable_image_is_counted_and_skipped(voc, tmp_path):
    root, ids, _ = voc
    (root / "JPEGImages" / f"{ids[2]}.jpg").write_bytes(b"broken")
    folder = require_shared(REFERENCE / "v2_vgg16_aspp")
    model = tmp_path / "model"
    CliRunner().invoke(convert.main, [str(folder / "net.prototxt"), str(folder / "weights.caffemodel"),
                                      "-o", str(model), "--no-onnx"])
    result = CliRunner().invoke(eval_cli.main, ["--model", str(model / "model.safetensors"), "--voc-root", str(root),
                                                "-o", str(tmp_path / "r"), "--jobs", "2", "--crf"])
    assert result.exit_code == 1, result.output  # a skipped image makes the exit status 1 (issue 12)
    assert "2 image(s) scored, 1 skipped" in result.output
    assert result.output.count(f"{ids[2]}.jpg") == 1


def test_resume_refuses_a_folder_of_other_settings_either_way(tmp_path):
    from caffe2torch.cli.eval import check_resume
    from caffe2torch.errors import CaffeError

    base = {"model": "m.onnx", "crf": {"max_iter": 10}}
    check_resume(tmp_path, {**base, "crf_device": "cuda"}, resume=True)
    with pytest.raises(CaffeError, match="crf_device"):  # a setting the new run does not have
        check_resume(tmp_path, base, resume=True)
    check_resume(tmp_path, base, resume=False)
    check_resume(tmp_path, base, resume=True)
    with pytest.raises(CaffeError, match="crf_device"):  # a setting the old run did not have
        check_resume(tmp_path, {**base, "crf_device": "cpu"}, resume=True)
