"""Optional int8 ONNX (onnxruntime static quantisation, QDQ format, per-channel int8 weights, uint8
activations calibrated on real images preprocessed as at test time).

Chosen by measurement (benchmarks/inference.py, full-size DeepLab-LargeFOV on 2 AVX-512 VNNI cores):
quantising only the convolutions and keeping the classifier convolutions (the last convolution on every
path to a net output) in float keeps the logits, and so the Interp upsampling and the labels, accurate; the
percentile calibration agrees best with float. Resize, Eltwise and pooling stay float.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from caffe2torch.errors import CaffeError
from caffe2torch.netspec import NetSpec
from caffe2torch.runner import ModelInfo, preprocess
from caffe2torch.util import atomic_path


def classifier_layers(spec: NetSpec) -> set[str]:
    """Convolutions with a path to a net output that crosses no other convolution."""
    producers = {}
    for layer in spec.layers:
        for top in layer.tops:
            producers.setdefault(top, []).append(layer)
    found, seen = set(), set()
    frontier = list(spec.outputs())
    while frontier:
        blob = frontier.pop()
        if blob in seen:
            continue
        seen.add(blob)
        for layer in producers.get(blob, []):
            if layer.type == "Convolution":
                found.add(layer.name)
            else:
                frontier.extend(layer.bottoms)
    return found


def quantize_int8(fp32_path: str | Path, out_path: str | Path, spec: NetSpec, images: Iterable[np.ndarray],
                  info: ModelInfo, keep_float: Iterable[str] = ()) -> Path:
    """Write an int8 model beside a float ONNX export; `images` are RGB uint8 calibration images.
    `keep_float`: more convolution layers to leave in float, besides the classifiers."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [preprocess(np.ascontiguousarray(image), info) for image in images]
    if not batches:
        raise CaffeError("int8 calibration needs at least one image")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(batches)

        def get_next(self):
            batch = next(self.items, None)
            return None if batch is None else {info.input_name: batch}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared), load_external_data=False)
        keep_float = classifier_layers(spec) | set(keep_float)
        exclude = [node.name for node in model.graph.node if node.op_type == "Conv"
                   and any(f"/{name}/" in node.name + "/" for name in keep_float)]
        del model
        with atomic_path(out_path) as out, contextlib.redirect_stdout(io.StringIO()):  # the quantizer prints
            quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv"], nodes_to_exclude=exclude,
                            calibrate_method=CalibrationMethod.Percentile)
    return Path(out_path)
