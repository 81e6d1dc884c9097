"""Bundled definitions: each equals its original DeepLab prototxt (after upgrade, TEST phase, data and IO
layers aside); a released-model-shaped caffemodel converts with --model and is recognised."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from click.testing import CliRunner

from caffe2torch.caffemodel import WeightsLayer, read_caffemodel, write_caffemodel
from caffe2torch.cli import convert, info
from caffe2torch.definitions import bundled_definition, bundled_names, compare_definitions
from caffe2torch.known_models import identify, known_models
from caffe2torch.pipeline import read_net
from caffe2torch.shapes import infer_shapes

from .conftest import CORPUS, REPO, require_shared

ORIGINALS = {
    "deeplab-v1-largefov": "a_v1_iclr15/DeepLab-LargeFOV/test.prototxt",
    "deeplab-v1": "a_v1_iclr15/DeepLab/test.prototxt",
    "deeplab-v2-vgg16-aspp-l": "c_v2_tpami/DeepLabv2-VGG16-ASPP-L/test.prototxt",
    "deeplab-v2-resnet101-msc": "c_v2_tpami/DeepLabv2-ResNet101-MSC-ASPP/test.prototxt",
}
RELEASED = {"NUM_LABELS": "21", "EXP": "voc12"}


@pytest.mark.parametrize("name", sorted(ORIGINALS))
def test_bundled_definition_equals_the_original(name):
    original = read_net(require_shared(CORPUS / ORIGINALS[name]), defines=RELEASED)
    ours = read_net(bundled_definition(name))
    assert compare_definitions(ours, original) == []
    assert ours.dialect == original.dialect
    assert [i.shape for i in ours.inputs] == [i.shape for i in original.inputs]
    assert ours.inputs[0].transform["mean_value"] == pytest.approx(original.inputs[0].transform["mean_value"])


def test_comparison_notices_a_change():
    original = read_net(require_shared(CORPUS / ORIGINALS["deeplab-v2-vgg16-aspp-l"]), defines=RELEASED)
    ours = read_net(bundled_definition("deeplab-v2-vgg16-aspp-l"))
    ours.layer("fc6_2").params["convolution_param"]["dilation"] = [6, 6]
    assert len(compare_definitions(ours, original)) == 1


def test_every_bundled_definition_builds_and_every_known_model_has_one():
    for name in bundled_names():
        spec = read_net(bundled_definition(name))
        out = infer_shapes(spec).blobs[spec.outputs()[0]]
        assert out[2:] == spec.inputs[0].shape[2:], name  # full-resolution scores
    assert {m.definition for m in known_models().values()} <= set(bundled_names())


def test_generated_files_are_current():
    spec = importlib.util.spec_from_file_location("write_definitions", REPO / "scripts" / "write_definitions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, build in module.DEFINITIONS.items():
        assert bundled_definition(name).read_text() == build().text(), f"{name}: run scripts/write_definitions.py"


def test_released_shaped_caffemodel_converts_with_model_and_is_recognised(tmp_path):
    spec = read_net(bundled_definition("deeplab-v1-largefov"))
    rng = np.random.default_rng(0)
    layers = [WeightsLayer(info.name, info.type, [rng.standard_normal(s).astype(np.float32) * 0.01
                                                  for s in info.blob_shapes])
              for info in infer_shapes(spec).layers if info.blob_shapes]
    caffemodel = tmp_path / "train_iter_6000.caffemodel"
    write_caffemodel(caffemodel, layers, dialect="v1")  # released v1 models are v1 binaries
    assert identify(read_caffemodel(caffemodel)).id == "deeplab-v1-largefov"
    described = CliRunner().invoke(info.main, [str(caffemodel)])
    assert described.exit_code == 0 and "DeepLab-LargeFOV" in described.output and "62.25" in described.output
    result = CliRunner().invoke(convert.main, ["--model", "deeplab-v1-largefov", str(caffemodel),
                                               "-o", str(tmp_path / "out"), "--no-onnx"])
    assert result.exit_code == 0, result.output
    assert "recognised DeepLab-LargeFOV" in result.output
    bad = CliRunner().invoke(convert.main, ["--model", "nope", str(caffemodel)])
    assert bad.exit_code == 2 and "unknown model" in bad.output
