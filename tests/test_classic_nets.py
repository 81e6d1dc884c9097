"""The classic Caffe classifiers convert exactly: each net of tests/classic_nets.py (written from its published
deploy file's structure) with random weights from our writer goes through deeplab-convert to an artifact and
ONNX, and every blob matches OpenCV 4's Caffe importer, in torch (from the reloaded artifact) and in onnxruntime
(the classifier's output and every InnerProduct, Pooling, LRN, Concat, Eltwise and Softmax top). These nets run
at their declared size only (an InnerProduct after spatial features, a fixed pooling window): the ONNX model has
a dynamic batch and fixed height and width, traced at that size."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import caffe2torch
from caffe2torch.caffemodel import write_caffemodel
from caffe2torch.cli import convert as convert_cli
from caffe2torch.net import build_net
from caffe2torch.pipeline import read_net, verify_onnx, verify_torch

from .classic_nets import CLASSICS, classic_weights
from .opencv_reference import opencv_blobs, require_opencv

CHECKED_TYPES = {"InnerProduct", "Pooling", "LRN", "Concat", "Eltwise", "Softmax"}


def write_classic(net, tmp_path):
    prototxt = tmp_path / f"{net.key}.prototxt"
    prototxt.write_text(net.text())
    spec = read_net(prototxt)
    caffemodel = tmp_path / f"{net.key}.caffemodel"
    write_caffemodel(caffemodel, classic_weights(build_net(spec), seed=3), name=net.key)
    return spec, prototxt, caffemodel


def blob_order(spec) -> list[str]:
    order = [i.name for i in spec.inputs]
    for layer in spec.layers:
        order += [t for t in layer.tops if t not in order]
    return order


@pytest.mark.parametrize("key", list(CLASSICS))
def test_classic_net_converts_and_matches_opencv(key, tmp_path):
    cv2 = require_opencv()
    net = CLASSICS[key]()
    spec, prototxt, caffemodel = write_classic(net, tmp_path)
    rng = np.random.default_rng(5)
    inputs = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in net.inputs.items()}
    blobs = [b for b in blob_order(spec) if b not in inputs]
    reference = opencv_blobs(prototxt, caffemodel, inputs, blobs)
    assert set(reference) >= set(blobs)
    np.savez(tmp_path / "inputs.npz", **inputs)
    np.savez(tmp_path / "reference.npz", **reference)

    outputs = spec.outputs()
    checked = outputs + [t for layer in spec.layers if layer.type in CHECKED_TYPES for t in layer.tops
                         if t not in outputs]
    out = tmp_path / "converted"
    result = CliRunner().invoke(convert_cli.main, [str(prototxt), str(caffemodel), "-o", str(out),
                                                   "--inputs", str(tmp_path / "inputs.npz"),
                                                   "--reference", str(tmp_path / "reference.npz")])
    assert result.exit_code == 0, result.output
    side = net.inputs["data"][2:]
    assert f"dynamic batch, fixed height and width {side[0]}x{side[1]}" in result.output
    assert "a classifier" in result.output
    parity = json.loads((out / "parity.json").read_text())
    assert parity["ok"] and len(parity["blobs"]) == len(reference)
    model = onnx.load(str(out / "model.onnx"))
    (data,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in data.type.tensor_type.shape.dim]
    assert dims[1:] == [net.inputs["data"][1], *side] and isinstance(dims[0], str)  # batch free, size fixed

    loaded = caffe2torch.load(out / "model.safetensors")
    torch_report = verify_torch(loaded, inputs, reference)
    assert torch_report.ok, torch_report.first_divergent
    export = tmp_path / "checked"
    result = CliRunner().invoke(convert_cli.main, [str(prototxt), str(caffemodel), "-o", str(export),
                                                   "--onnx-outputs", ",".join(checked)])
    assert result.exit_code == 0, result.output
    onnx_report = verify_onnx(loaded, inputs, reference, onnx_path=export / "model.onnx")
    assert onnx_report.ok, onnx_report.first_divergent
    assert {b.name for b in onnx_report.blobs} == set(checked) | set(inputs)
    worst_torch = max(b.rel_err for b in torch_report.blobs)
    worst_onnx = max(b.rel_err for b in onnx_report.blobs)
    print(f"\n{key}: vs OpenCV {cv2.__version__}: max rel err torch {worst_torch:.2g} ({len(torch_report.blobs)} "
          f"blobs), onnxruntime {worst_onnx:.2g} ({len(onnx_report.blobs)} blobs)")
    assert max(worst_torch, worst_onnx) <= 1e-4


def test_classifier_tools(tmp_path):
    # deeplab-info shows a classifier's layers with parameters and receptive fields (an InnerProduct reads its
    # whole bottom: AlexNet's fc6 sees pool5's 6x6 map of stride 32 whose RF is 195 pixels: 195 + 5*32 = 355);
    # deeplab-verify checks it blob by blob in onnxruntime; deeplab-run refuses it before the first image.
    from PIL import Image

    from caffe2torch.cli import info as info_cli
    from caffe2torch.cli import run as run_cli
    from caffe2torch.cli import verify as verify_cli

    from .classic_nets import alexnet, lenet

    net = alexnet()
    (tmp_path / "alexnet.prototxt").write_text(net.text())
    result = CliRunner().invoke(info_cli.main, [str(tmp_path / "alexnet.prototxt")])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()
            if line.startswith(("pool5 ", "fc6 "))}
    assert rows["pool5"][-2:] == ["195", "32"] and rows["fc6"][-3:] == ["295,168", "355", "32"]
    assert "23 layers, 658,392 parameters" in result.output

    small = lenet()
    spec, prototxt, caffemodel = write_classic(small, tmp_path)
    inputs = {"data": np.random.default_rng(0).standard_normal(small.inputs["data"]).astype(np.float32)}
    reference = opencv_blobs(prototxt, caffemodel, inputs)
    np.savez(tmp_path / "in.npz", **inputs)
    np.savez(tmp_path / "ref.npz", **reference)
    result = CliRunner().invoke(verify_cli.main, [str(prototxt), str(caffemodel), "--inputs",
                                                  str(tmp_path / "in.npz"), "--reference", str(tmp_path / "ref.npz"),
                                                  "--backend", "onnx"])
    assert result.exit_code == 0, result.output
    assert f"{len(reference)}/{len(reference)} blobs within" in result.output  # the input counts too

    out = tmp_path / "converted"
    assert CliRunner().invoke(convert_cli.main, [str(prototxt), str(caffemodel), "-o", str(out)]).exit_code == 0
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "digit.png")
    result = CliRunner().invoke(run_cli.main, ["--onnx", str(out / "model.onnx"), str(tmp_path / "digit.png"),
                                               "-o", str(tmp_path / "labels")])
    assert result.exit_code == 2 and "not a (N, C, H, W) score map" in result.output
    assert not (tmp_path / "labels").exists() or not any((tmp_path / "labels").iterdir())
