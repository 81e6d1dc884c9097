"""Every golden case in ../shared/reference (made with DeepLab's own Caffe): inferred shapes equal Caffe's
blob shapes, and every blob matches within the default tolerance. New cases are picked up automatically."""

from __future__ import annotations

import json

import numpy as np
import pytest

from caffe2torch.caffemodel import read_caffemodel
from caffe2torch.layers import get_converter
from caffe2torch.pipeline import convert, read_net, set_input_shapes, verify_torch
from caffe2torch.shapes import infer_shapes

from .conftest import REFERENCE, reference_cases, require_shared


def case_files(case: str, v1: bool = False):
    folder = require_shared(REFERENCE / case)
    prototxt = folder / ("net_v1.prototxt" if v1 else "net.prototxt")
    caffemodel = folder / ("weights_v1.caffemodel" if v1 else "weights.caffemodel")
    inputs = dict(np.load(folder / "inputs.npz"))
    blobs = np.load(folder / "blobs.npz")
    meta = json.loads((folder / "case.json").read_text())
    return prototxt, caffemodel, inputs, {k: blobs[k] for k in blobs.files}, meta


def has_unsupported_layers(prototxt) -> list[str]:
    spec = read_net(prototxt)
    return [layer.type for layer in spec.layers if get_converter(layer.type) is None]


@pytest.mark.parametrize("case", reference_cases())
def test_inferred_shapes_equal_caffe_blob_shapes(case):
    prototxt, _, inputs, blobs, _ = case_files(case)
    if missing := has_unsupported_layers(prototxt):
        pytest.fail(f"layer types not converted yet: {missing}")
    spec = read_net(prototxt)
    shapes = infer_shapes(spec).blobs
    for name, value in blobs.items():
        assert shapes[name] == value.shape, name


@pytest.mark.parametrize("case", reference_cases())
def test_every_blob_matches_caffe(case):
    prototxt, caffemodel, inputs, blobs, meta = case_files(case)
    spec = set_input_shapes(read_net(prototxt), {k: v.shape for k, v in inputs.items()})
    net, _ = convert(spec, read_caffemodel(caffemodel))
    report = verify_torch(net, inputs, blobs)
    assert report.ok, f"first divergent blob: {report.first_divergent}"
    assert len(report.blobs) == len(blobs)
    for output in meta["outputs"]:
        assert any(b.name == output and b.ok for b in report.blobs)


@pytest.mark.parametrize("case", [c for c in reference_cases() if c.startswith("v1_")] or ["v1_largefov"])
def test_v1_dialect_files_match_caffe(case):
    prototxt, caffemodel, inputs, blobs, _ = case_files(case, v1=True)
    spec = read_net(prototxt)
    assert spec.dialect == "deeplab_v1"
    net, report = convert(spec, read_caffemodel(caffemodel))
    assert report.ok
    assert verify_torch(net, inputs, blobs).ok


def test_training_net_builds_for_fine_tuning_with_its_loss():
    import torch

    from caffe2torch.net import build_net

    from .conftest import CORPUS

    prototxt = require_shared(CORPUS / "c_v2_tpami/DeepLabv2-VGG16-ASPP-L/train.prototxt")
    spec = read_net(prototxt, defines={"NUM_LABELS": "21"}, phase="train", deploy=False,
                    input_shapes={"data": (1, 3, 65, 65), "label": (1, 1, 65, 65)})
    dropped = {d.name: d.reason for d in spec.dropped}
    assert "not a differentiable" in dropped["accuracy"] and "silence" in dropped
    net = build_net(spec).train()
    label = torch.randint(0, 21, (1, 1, 65, 65)).float()
    label[..., :5, :] = 255  # DeepLab's ignore label
    loss = net.run({"data": torch.randn(1, 3, 65, 65), "label": label}, outputs=["loss"])["loss"]
    loss.backward()
    assert torch.isfinite(loss) and net.module("fc8_${EXP}_1").weight.grad is not None
