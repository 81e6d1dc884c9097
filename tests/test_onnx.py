"""ONNX export: onnxruntime reproduces Caffe's blobs on every golden case; dynamic sizes; metadata."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from caffe2torch.errors import UnsupportedError
from caffe2torch.onnx_export import export_onnx, read_onnx_metadata
from caffe2torch.pipeline import convert, read_net, set_input_shapes, verify_onnx

from .conftest import REFERENCE, net_from_text, reference_cases, require_shared


@pytest.mark.parametrize("case", reference_cases())
def test_onnxruntime_matches_caffe_on_every_exportable_blob(case):
    folder = require_shared(REFERENCE / case)
    inputs = dict(np.load(folder / "inputs.npz"))
    blobs = np.load(folder / "blobs.npz")
    reference = {k: blobs[k] for k in blobs.files}
    spec = set_input_shapes(read_net(folder / "net.prototxt"), {k: v.shape for k, v in inputs.items()})
    net, _ = convert(spec, folder / "weights.caffemodel")
    report = verify_onnx(net, inputs, reference)
    assert report.ok, report.first_divergent
    crf_blobs = {layer.tops[0] for layer in net.spec.layers if layer.type == "DenseCRF"}
    assert {b.name for b in report.blobs} == set(reference) - crf_blobs


TINY = """input: "data" input_shape { dim: 1 dim: 3 dim: 33 dim: 33 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "score" type: "Convolution" bottom: "pool" top: "score"
        convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "up" type: "Interp" bottom: "score" top: "up" interp_param { zoom_factor: 2 } }
layer { name: "label" type: "ArgMax" bottom: "up" top: "label" argmax_param { axis: 1 } }
"""


def test_dynamic_height_width_and_batch(tmp_path):
    net = net_from_text(TINY)
    path = export_onnx(net, tmp_path / "m.onnx", metadata={"crop_size": 33})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 33, 33), (2, 3, 41, 57), (1, 3, 6, 10)]:  # 6x10: pooling's ceil overhang
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        ours = session.run(None, {"data": x})
        with torch.no_grad():
            expected = net(torch.from_numpy(x))
        assert ours[0].shape == expected.shape
        np.testing.assert_allclose(ours[0], expected.numpy(), atol=1e-5)
    assert read_onnx_metadata(path)["crop_size"] == 33


def test_layers_without_onnx_lowering_are_named(tmp_path):
    net = net_from_text(TINY.replace('dim: 33 dim: 33 }', 'dim: 33 dim: 33 }\ninput: "dim" input_shape '
                                     '{ dim: 1 dim: 1 dim: 1 dim: 2 }') +
                        'layer { name: "crf" type: "DenseCRF" bottom: "up" bottom: "dim" top: "crf" '
                        'dense_crf_param { pos_xy_std: 3 pos_w: 3 } }')
    with pytest.raises(UnsupportedError, match="DenseCRF has no ONNX lowering"):
        export_onnx(net, tmp_path / "crf.onnx", ["crf"])
    export_onnx(net, tmp_path / "up.onnx", ["up"])  # the blobs before it export fine
    assert not list(tmp_path.glob("*.part"))
