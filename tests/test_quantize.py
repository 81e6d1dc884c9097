"""int8 ONNX: which layers stay float, and that a trained net keeps its labels."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from click.testing import CliRunner

from caffe2torch.cli import convert
from caffe2torch.definitions import bundled_definition
from caffe2torch.demo.synthetic import make_batch
from caffe2torch.demo.train import CAFFEMODEL, bundled
from caffe2torch.pipeline import read_net
from caffe2torch.quantize import classifier_layers
from caffe2torch.runner import model_info, preprocess


def test_classifier_layers_are_the_last_convolutions_before_each_output():
    assert classifier_layers(read_net(bundled_definition("deeplab-v1-largefov"))) == {"fc8_voc12"}
    msc = classifier_layers(read_net(bundled_definition("deeplab-v1-msc-largefov")))
    assert msc == {"data_ms", "pool1_ms", "pool2_ms", "pool3_ms", "pool4_ms", "fc8_voc12"}
    assert len(classifier_layers(read_net(bundled_definition("deeplab-v2-resnet101-msc")))) == 12


def test_int8_model_of_a_trained_net_keeps_its_labels(tmp_path):
    out = tmp_path / "demo"
    samples = bundled(CAFFEMODEL).parents[1] / "demo" / "samples"
    result = CliRunner().invoke(convert.main, ["--model", "deeplab-demo-synthetic", str(bundled(CAFFEMODEL)),
                                               "-o", str(out), "--int8", str(samples)])
    assert result.exit_code == 0, result.output
    float_model = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    int8_model = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    nodes = onnx.load(str(out / "model.int8.onnx")).graph.node
    assert any(n.op_type == "DequantizeLinear" for n in nodes)
    info = model_info(read_net(bundled_definition("deeplab-demo-synthetic")))
    images, _ = make_batch(2024, 6)
    agreement = [
        (float_model.run(None, {"data": preprocess(im, info)})[0].argmax(1)
         == int8_model.run(None, {"data": preprocess(im, info)})[0].argmax(1)).mean()
        for im in images
    ]
    assert np.mean(agreement) > 0.99


def test_int8_needs_the_onnx_export(tmp_path):
    result = CliRunner().invoke(convert.main, ["--model", "deeplab-demo-synthetic", str(bundled(CAFFEMODEL)),
                                               "-o", str(tmp_path), "--no-onnx", "--int8", str(tmp_path)])
    assert result.exit_code == 2 and "--int8 needs the ONNX export" in result.output


def test_keep_float_leaves_the_named_convolutions_unquantised(tmp_path):
    from caffe2torch.onnx_export import export_onnx
    from caffe2torch.pipeline import convert as convert_net
    from caffe2torch.quantize import quantize_int8

    net, _ = convert_net(bundled_definition("deeplab-demo-synthetic"), bundled(CAFFEMODEL))
    export_onnx(net, tmp_path / "model.onnx")
    images, _ = make_batch(11, 2)
    first = next(layer.name for layer in net.spec.layers if layer.type == "Convolution")

    def quantised_convolutions(keep_float):
        quantize_int8(tmp_path / "model.onnx", tmp_path / "int8.onnx", net.spec, list(images),
                      model_info(net.spec), keep_float)
        graph = onnx.load(str(tmp_path / "int8.onnx")).graph
        dequantised = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
        return {n.name for n in graph.node if n.op_type == "Conv" and n.input[1] in dequantised}

    assert f"/{first}/Conv" in quantised_convolutions([])
    assert f"/{first}/Conv" not in quantised_convolutions([first])
