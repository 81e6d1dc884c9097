"""The bundled demo model: a real caffemodel that our reader, manifest and runner handle like a released one,
and that segments held-out generated scenes well."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from caffe2torch.caffemodel import read_caffemodel
from caffe2torch.definitions import bundled_definition
from caffe2torch.demo.__main__ import main as demo_cli
from caffe2torch.demo.synthetic import CLASS_NAMES, IGNORE, make_batch, make_scene
from caffe2torch.demo.train import CAFFEMODEL, bundled, miou, predict
from caffe2torch.known_models import identify
from caffe2torch.pipeline import convert


def test_scenes_are_deterministic_and_labelled():
    a, b = make_scene(np.random.default_rng(5)), make_scene(np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    values = set(np.unique(make_batch(3, 8)[1]).tolist())
    assert values <= set(range(len(CLASS_NAMES))) | {IGNORE} and IGNORE in values and len(values) > 3


def test_demo_caffemodel_is_recognised_and_segments_held_out_scenes():
    model = read_caffemodel(bundled(CAFFEMODEL))
    assert identify(model).id == "deeplab-demo-synthetic"
    net, report = convert(bundled_definition("deeplab-demo-synthetic"), model)
    assert report.ok and not report.missing
    images, labels = make_batch(2024, 12)  # the held-out seed: never seen in training
    assert miou(predict(net, images), labels) > 0.6


def test_demo_helpers_write_their_files(tmp_path):
    result = CliRunner().invoke(demo_cli, ["heldout", str(tmp_path / "voc"), "--count", "3"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "voc" / "SegmentationClass").glob("*.png"))) == 3
    result = CliRunner().invoke(demo_cli, ["parity", str(tmp_path / "parity")])
    assert result.exit_code == 0, result.output
    blobs = np.load(tmp_path / "parity" / "blobs.npz")
    assert blobs["fc8_interp"].shape == (1, 5, 129, 129)
