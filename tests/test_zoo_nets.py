"""The segmentation zoo of Caffe forks converts exactly: each net of tests/zoo_nets.py (written from its published
deploy file's structure) with random weights from our writer goes through deeplab-convert to an artifact and
ONNX, and every blob matches OpenCV 4's Caffe importer, in torch (from the reloaded artifact) and in onnxruntime.
The fork layers OpenCV lacks are replaced in its copy of the net by OpenCV layers computing the same thing by
the fork's source (see zoo_nets.py); the fork layers themselves are pinned by tests/test_zoo_layers.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import caffe2torch
from caffe2torch.caffemodel import write_caffemodel
from caffe2torch.cli import convert as convert_cli
from caffe2torch.net import build_net
from caffe2torch.pipeline import read_net, verify_onnx, verify_torch

from .opencv_reference import opencv_blobs, require_opencv
from .zoo_nets import ZOO, fcn8s, zoo_weights

# The layers whose tops the ONNX model returns besides the outputs.
FORK_TYPES = {"BN", "Upsample", "Pooling", "Interp", "Deconvolution", "Crop", "PReLU"}


def write_zoo(zoo, tmp_path):
    """The fork's files (prototxt, caffemodel with random blobs) and OpenCV's equivalents."""
    prototxt, cv_prototxt = tmp_path / f"{zoo.key}.prototxt", tmp_path / f"{zoo.key}.opencv.prototxt"
    prototxt.write_text(zoo.text())
    cv_prototxt.write_text(zoo.cv_text())
    spec = read_net(prototxt, input_shapes=zoo.inputs)
    layers = zoo_weights(build_net(spec), seed=7)
    caffemodel, cv_caffemodel = tmp_path / f"{zoo.key}.caffemodel", tmp_path / f"{zoo.key}.opencv.caffemodel"
    write_caffemodel(caffemodel, layers, name=zoo.key)
    write_caffemodel(cv_caffemodel, zoo.opencv_weights(layers), name=zoo.key)
    return spec, prototxt, caffemodel, cv_prototxt, cv_caffemodel


@pytest.mark.parametrize("key", sorted(ZOO))
def test_zoo_net_converts_and_matches_opencv(key, tmp_path):
    require_opencv()
    zoo = ZOO[key]()
    spec, prototxt, caffemodel, cv_prototxt, cv_caffemodel = write_zoo(zoo, tmp_path)
    assert spec.dialect == zoo.dialect
    rng = np.random.default_rng(11)
    inputs = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in zoo.inputs.items()}
    blobs = [b for b in spec_blobs(spec) if b not in inputs]
    reference = opencv_blobs(cv_prototxt, cv_caffemodel, inputs, blobs)
    assert set(reference) >= set(blobs)  # OpenCV computed every blob the fork's net has
    np.savez(tmp_path / "inputs.npz", **inputs)
    np.savez(tmp_path / "reference.npz", **reference)

    shapes = [f"--input-shape={name}={','.join(map(str, shape))}" for name, shape in zoo.inputs.items()]
    # The ONNX model returns the net's outputs and the tops of the forks' layers, the masks that drive them
    # and the resamplings around them.
    outputs = spec.outputs()
    checked = outputs + [t for layer in spec.layers if layer.type in FORK_TYPES for t in layer.tops
                         if t not in outputs]
    out = tmp_path / "converted"
    result = CliRunner().invoke(convert_cli.main, [str(prototxt), str(caffemodel), "-o", str(out), *shapes,
                                                   "--onnx-outputs", ",".join(checked),
                                                   "--inputs", str(tmp_path / "inputs.npz"),
                                                   "--reference", str(tmp_path / "reference.npz")])
    assert result.exit_code == 0, result.output
    parity = json.loads((out / "parity.json").read_text())
    assert parity["ok"] and len(parity["blobs"]) == len(reference)

    net = caffe2torch.load(out / "model.safetensors")
    torch_report = verify_torch(net, inputs, reference)
    assert torch_report.ok, torch_report.first_divergent
    onnx_report = verify_onnx(net, inputs, reference, onnx_path=out / "model.onnx")
    assert onnx_report.ok, onnx_report.first_divergent
    assert {b.name for b in onnx_report.blobs} == set(checked) | set(inputs)
    worst_torch = max(b.rel_err for b in torch_report.blobs)
    worst_onnx = max(b.rel_err for b in onnx_report.blobs)
    print(f"\n{key}: vs OpenCV {cv_version()}: max rel err torch {worst_torch:.2g} ({len(torch_report.blobs)} "
          f"blobs), onnxruntime {worst_onnx:.2g} ({len(onnx_report.blobs)} blobs)")
    assert max(worst_torch, worst_onnx) <= 1e-4


def spec_blobs(spec) -> list[str]:
    order = [i.name for i in spec.inputs]
    for layer in spec.layers:
        order += [t for t in layer.tops if t not in order]
    return order


def cv_version() -> str:
    return require_opencv().__version__


def test_fcn_python_data_layer_is_the_deploy_input(tmp_path):
    # val.prototxt's Python VOCSegDataLayer gives the same net as deploy.prototxt's Input layer: its "data" top
    # is the input (with FCN's BGR mean from param_str), "label" goes with the loss, the dropouts are identities.
    val, deploy = fcn8s(deploy=False), fcn8s(deploy=True)
    (tmp_path / "val.prototxt").write_text(val.text())
    (tmp_path / "deploy.prototxt").write_text(deploy.text())
    spec = read_net(tmp_path / "val.prototxt", input_shapes=val.inputs)
    reference = read_net(tmp_path / "deploy.prototxt")
    assert [i.name for i in spec.inputs] == ["data"] and spec.inputs[0].role == "image"
    assert spec.inputs[0].transform == {"mean_value": [104.00699, 116.66877, 122.67892], "channel_order": "BGR"}
    assert any("Python layer 'data' (voc_layers.VOCSegDataLayer, line 3) reads the data" in n for n in spec.notes)
    dropped = {d.name: d.reason for d in spec.dropped}
    assert dropped["data"].startswith("Python data layer (voc_layers.VOCSegDataLayer)")
    assert "loss" in dropped
    assert [(lay.name, lay.type) for lay in spec.layers if lay.type != "Dropout"] == \
        [(lay.name, lay.type) for lay in reference.layers]
    layers = zoo_weights(build_net(reference), seed=3)
    write_caffemodel(tmp_path / "w.caffemodel", layers)
    x = np.random.default_rng(0).standard_normal(val.inputs["data"]).astype(np.float32)
    ours = caffe2torch.pipeline.convert(spec, tmp_path / "w.caffemodel")[0]
    theirs = caffe2torch.pipeline.convert(reference, tmp_path / "w.caffemodel")[0]
    a = caffe2torch.pipeline.run_all_blobs(ours, {"data": x})["score"]
    b = caffe2torch.pipeline.run_all_blobs(theirs, {"data": x})["score"]
    np.testing.assert_array_equal(a, b)
