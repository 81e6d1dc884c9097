"""Pictures for people (issue 13): legends, deeplab-run's overlays with a legend, deeplab-eval's panels (image |
ground truth | without CRF | with CRF) for the first and the worst images, and the per-class IoU chart."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from caffe2torch.cli import eval as eval_cli
from caffe2torch.cli import run as run_cli
from caffe2torch.eval_report import choose_panels
from caffe2torch.evaluate import EvalResult, Sample
from caffe2torch.images import overlay, voc_palette
from caffe2torch.pictures import (
    VARIANT_COLOURS,
    Column,
    legend_entries,
    legend_strip,
    overlay_with_legend,
    panel,
    per_class_chart,
)

from .runtime_helpers import convert_tiny_model, photo, save_photo, voc_layout

PALETTE = voc_palette()
NAMES = ["background", "disc", "box", "triangle", "ring"]


def colour_count(image, rgb) -> int:
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    return int(np.all(array == np.array(rgb, np.uint8), axis=-1).sum())


def has_swatch(region: np.ndarray, rgb, side: int = 11) -> bool:
    """A filled square of at least side x side pixels of exactly `rgb` (a legend swatch) in `region`."""
    mask = np.all(region == np.array(rgb, np.uint8), axis=-1).astype(np.int32)
    if mask.sum() < side * side:
        return False
    table = mask.cumsum(0).cumsum(1)
    table = np.pad(table, ((1, 0), (1, 0)))
    sums = table[side:, side:] - table[:-side, side:] - table[side:, :-side] + table[:-side, :-side]
    return bool((sums == side * side).any())


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return convert_tiny_model(tmp_path_factory.mktemp("tiny")) / "model.onnx"


def test_legend_entries_name_what_is_present():
    labels = np.array([[0, 2, 255], [2, 7, 0]], np.uint8)
    entries = legend_entries([labels], NAMES)
    assert [(e.label, e.name) for e in entries] == [(0, "background"), (2, "box"), (7, "label 7"),
                                                   (255, "void (not scored)")]
    assert entries[1].rgb == tuple(PALETTE[2])


def test_a_legend_strip_has_a_swatch_of_each_colour_and_wraps():
    entries = legend_entries([np.arange(5, dtype=np.uint8)[None]], NAMES)
    wide = np.asarray(legend_strip(entries, 900, 15))
    narrow = np.asarray(legend_strip(entries, 120, 15))
    for entry in entries:
        assert has_swatch(wide, entry.rgb, 13) and has_swatch(narrow, entry.rgb, 13), entry.name
    assert narrow.shape[0] > 3 * wide.shape[0]  # one entry a row
    assert wide.shape[1] == 900


def test_the_run_overlay_keeps_the_image_and_carries_a_legend_of_the_classes_present():
    rgb = photo(3, 60, 200)
    labels = np.zeros((60, 200), np.uint8)
    labels[10:40, 20:90] = 1
    labels[30:, 120:] = 4
    picture = overlay_with_legend(rgb, labels, NAMES)
    assert picture.shape[1] == 200 and picture.shape[0] > 60
    assert np.array_equal(picture[:60, :200], overlay(rgb, labels))  # the image rows are untouched
    legend = picture[60:]
    for label in (0, 1, 4):
        assert has_swatch(legend, PALETTE[label], 10), label
    for absent in (2, 3):
        assert colour_count(legend, PALETTE[absent]) == 0


def test_a_panel_shows_each_column_at_one_scale_and_a_legend():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    truth = np.zeros((30, 40), np.uint8)
    truth[5:20, 5:20] = 3
    truth[0] = 255
    prediction = np.zeros((30, 40), np.uint8)
    prediction[5:25, 10:30] = 2
    picture = panel([Column("image", rgb), Column("ground truth", truth), Column("without CRF", prediction)],
                    "an id", NAMES, "a subtitle")
    array = np.asarray(picture)
    factor = 6  # 40 pixels wide: enlarged by a whole factor to at least 240
    assert array.shape[1] == 2 * 16 + 3 * 40 * factor + 2 * 12
    # triangle (3) is only in the ground truth: its tile pixels (enlarged) plus the legend's swatch
    assert colour_count(array, PALETTE[3]) >= 15 * 15 * factor**2 + 13 * 13
    assert colour_count(array, PALETTE[2]) >= 20 * 20 * factor**2 + 13 * 13
    legend = array[-40:]
    for label in (0, 2, 3, 255):
        assert has_swatch(legend, PALETTE[label], 11), label
    assert not has_swatch(legend, PALETTE[1], 11)  # disc is in no label map
    large = panel([Column("image", rng.integers(0, 255, (900, 1200, 3), dtype=np.uint8)),
                   Column("ground truth", np.zeros((900, 1200), np.uint8))], "big", NAMES)
    assert large.width == 2 * 16 + 2 * 420 + 12  # reduced to 420 pixels on the longer side
    with pytest.raises(ValueError, match="same size"):
        panel([Column("image", rgb), Column("ground truth", truth[:10])], "x", NAMES)


def test_the_chart_draws_bars_in_proportion_to_the_iou():
    chart = np.asarray(per_class_chart({"no_crf": [0.5, None], "crf": [1.0, 0.25]}, ["a", "b"]))
    legend_swatch = 13 * 13
    no_crf = colour_count(chart, VARIANT_COLOURS["no_crf"]) - legend_swatch
    crf = colour_count(chart, VARIANT_COLOURS["crf"]) - legend_swatch
    # crf: one bar of 1.0 and one of 0.25 (1.25 in all); no_crf: 0.5 (the None class has no bar)
    assert crf / no_crf == pytest.approx(1.25 / 0.5, rel=0.02)
    with_mean = per_class_chart({"no_crf": [0.5, None]}, ["a", "b"], {"no_crf": 0.5})
    assert with_mean.height > chart.shape[0] - 20


def test_panels_are_the_first_images_and_the_worst_by_miou():
    samples = [Sample(f"i{n}", None, None) for n in range(6)]
    result = EvalResult({}, 6, per_image={"i0": {"no_crf": 0.9, "crf": 0.8}, "i1": {"no_crf": 0.2, "crf": 0.7},
                                          "i3": {"no_crf": 0.5, "crf": 0.1}, "i4": {"no_crf": 0.1, "crf": 0.7},
                                          "i5": {"no_crf": 0.3, "crf": None}},
                        prediction_dirs={"no_crf": "a", "crf": "b"})
    chosen = choose_panels(samples, result, first=2, worst=3)
    assert [(r.id, r.first, r.worst_rank) for r in chosen] == [
        ("i0", True, None), ("i1", True, 2), ("i3", False, 1), ("i4", False, 3)]  # ranked with CRF; ties: order
    assert choose_panels(samples, result, 0, 0) == []


def test_eval_writes_panels_chart_and_links_and_resume_draws_the_same(model, tmp_path):
    root = tmp_path / "VOC"
    ids = voc_layout(root, count=7)
    out = tmp_path / "r"
    args = ["--onnx", str(model), "--voc-root", str(root), "-o", str(out), "--crf", "--crf-params", "max_iter=2",
            "--panels", "2", "--worst-panels", "3"]
    result = CliRunner().invoke(eval_cli.main, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert list(data["per_image_mIoU"]) == ids and set(data["per_image_mIoU"][ids[0]]) == {"no_crf", "crf"}
    ranked = sorted(ids, key=lambda i: (data["per_image_mIoU"][i]["crf"], ids.index(i)))
    worst = [p["id"] for p in data["panels"] if p["worst_rank"]]
    assert worst == [i for i in ranked[:3]]
    expected = set(ids[:2]) | set(ranked[:3])
    assert {p.stem for p in (out / "panels").glob("*.png")} == expected
    picture = np.asarray(Image.open(out / "panels" / f"{ids[0]}.png").convert("RGB"))
    assert picture.shape[1] == 2 * 16 + 4 * 32 * 8 + 3 * 12  # image | truth | no CRF | CRF, 32 px enlarged 8x
    legend = picture[16 + 30 + 22 + 26 + 24 * 8:]  # below the title, subtitle, headings and tiles
    assert has_swatch(legend, PALETTE[15], 11) and has_swatch(legend, PALETTE[255], 11)
    report = (out / "report.md").read_text()
    assert "![IoU per class, without CRF, with CRF](per_class_iou.png)" in report
    assert all(f"(panels/{i}.png)" in report for i in expected)
    assert Image.open(out / "per_class_iou.png").size[0] > 500
    assert f"{len(expected)} panel(s)" in result.output
    # resume: per-image scores come back from the saved predictions, so the same panels are drawn
    again = CliRunner().invoke(eval_cli.main, args)
    assert again.exit_code == 0 and "resumed: 7" in again.output
    assert json.loads((out / "results.json").read_text())["panels"] == data["panels"]
    # fewer panels asked: the others are removed
    fewer = CliRunner().invoke(eval_cli.main, [*args[:-4], "--panels", "1", "--worst-panels", "0"])
    assert fewer.exit_code == 0 and [p.stem for p in (out / "panels").glob("*.png")] == [ids[0]]
    without_crf = tmp_path / "r2"
    plain = CliRunner().invoke(eval_cli.main, ["--onnx", str(model), "--voc-root", str(root), "-o", str(without_crf),
                                               "--panels", "1", "--worst-panels", "0"])
    assert plain.exit_code == 0
    picture = Image.open(without_crf / "panels" / f"{ids[0]}.png")
    assert picture.width == 2 * 16 + 3 * 32 * 8 + 2 * 12  # no CRF column without --crf


def test_predictions_mode_draws_panels_of_the_given_labels(tmp_path):
    root = tmp_path / "VOC"
    ids = voc_layout(root, count=2)
    result = CliRunner().invoke(eval_cli.main, ["--predictions", str(root / "SegmentationClass"), "--voc-root",
                                                str(root), "-o", str(tmp_path / "r"), "--panels", "1"])
    assert result.exit_code == 0, result.output
    picture = Image.open(tmp_path / "r" / "panels" / f"{ids[0]}.png")
    assert picture.width == 2 * 16 + 3 * 32 * 8 + 2 * 12  # image | ground truth | predictions


def test_a_panel_that_cannot_be_drawn_is_a_note_not_a_failure(model, tmp_path, monkeypatch):
    import caffe2torch.eval_report as eval_report

    def broken(*args, **kwargs):
        raise OSError("no room for pictures")

    monkeypatch.setattr(eval_report, "draw_panel", broken)
    root = tmp_path / "VOC"
    ids = voc_layout(root, count=2)
    result = CliRunner().invoke(eval_cli.main, ["--onnx", str(model), "--voc-root", str(root), "-o",
                                                str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert f"note: no panel for {ids[0]}: no room for pictures" in result.output
    assert json.loads((tmp_path / "r" / "results.json").read_text())["scores"] is not None


def test_run_overlays_carry_the_legend(model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    save_photo(folder / "a.png", 1, 48, 240)
    result = CliRunner().invoke(run_cli.main, ["--onnx", str(model), str(folder), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    labels = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert Image.open(tmp_path / "out" / "a.png").mode == "P" and labels.shape == (48, 240)  # still pure labels
    picture = np.asarray(Image.open(tmp_path / "out" / "a_overlay.png").convert("RGB"))
    assert picture.shape[0] > 48 and picture.shape[1] == 240
    legend = picture[48:]
    for label in np.unique(labels):
        assert has_swatch(legend, PALETTE[label], 10), label
