"""The data path in one place: parse → upgrade → build → load weights → verify, as plain functions that the
CLI commands call."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from caffe2torch.caffemodel import CaffeModel, read_caffemodel
from caffe2torch.errors import CaffeError, Location
from caffe2torch.load_weights import LoadReport, load_caffemodel_weights
from caffe2torch.net import CaffeNet, build_net
from caffe2torch.netspec import NetSpec, Shape
from caffe2torch.parse import parse_prototxt
from caffe2torch.upgrade import upgrade_net
from caffe2torch.verify import DEFAULT_TOLERANCE, VerifyReport, compare_blobs


def read_net(
    prototxt: str | Path,
    defines: Mapping[str, str] | None = None,
    phase: str = "test",
    input_shapes: Mapping[str, Shape] | None = None,
    dialect: str | None = None,
    deploy: bool = True,
) -> NetSpec:
    """Parse and upgrade a prototxt of any dialect into a NetSpec: for inference (`deploy`, the default:
    training-only layers dropped and listed) or with its losses, to fine-tune in PyTorch."""
    parsed = parse_prototxt(prototxt, defines=dict(defines or {}), dialect=dialect)
    return upgrade_net(parsed, phase=phase, input_shapes=dict(input_shapes or {}), deploy=deploy)


def set_input_shapes(spec: NetSpec, shapes: Mapping[str, Shape]) -> NetSpec:
    """Give the net's inputs the shapes of actual arrays (names the net does not take are ignored)."""
    for inp in spec.inputs:
        if inp.name in shapes:
            inp.shape = tuple(shapes[inp.name])
    return spec


def convert(
    prototxt: str | Path | NetSpec,
    caffemodel: str | Path | CaffeModel,
    defines: Mapping[str, str] | None = None,
    phase: str = "test",
    input_shapes: Mapping[str, Shape] | None = None,
    strict: bool = True,
) -> tuple[CaffeNet, LoadReport]:
    """A CaffeNet with the caffemodel's weights, in eval mode."""
    spec = prototxt if isinstance(prototxt, NetSpec) else read_net(prototxt, defines, phase, input_shapes)
    net = build_net(spec)
    model = caffemodel if isinstance(caffemodel, CaffeModel) else read_caffemodel(caffemodel)
    report = load_caffemodel_weights(net, model, strict=strict)
    return net, report


def input_shapes_of(inputs: Mapping[str, np.ndarray]) -> dict[str, Shape]:
    return {name: tuple(int(d) for d in array.shape) for name, array in inputs.items()}


def run_all_blobs(net: CaffeNet, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    tensors = {name: torch.from_numpy(np.ascontiguousarray(inputs[name], dtype=np.float32))
               for name in net.input_names}
    with torch.no_grad():
        blobs = net.run(tensors, all_blobs=True)
    return {name: value.numpy() for name, value in blobs.items()}


def verify_torch(
    net: CaffeNet, inputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
    tol: float = DEFAULT_TOLERANCE,
) -> VerifyReport:
    """Run the net on `inputs` and compare every blob present in `reference`."""
    ours = run_all_blobs(net, inputs)
    return compare_blobs(ours, reference, net.execution_order(), tol)


def verify_onnx(
    net: CaffeNet, inputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
    tol: float = DEFAULT_TOLERANCE, onnx_path: str | Path | None = None, runtime: str = "onnxruntime",
) -> VerifyReport:
    """Compare onnxruntime's (or, with runtime="openvino", OpenVINO's float32) blobs with the reference. Without
    `onnx_path`, the net is exported to a temporary model that exposes every reference blob it can compute (all
    of them unless a layer has no ONNX lowering); with it, the outputs that model exposes are compared."""
    import tempfile

    import onnxruntime as ort

    from caffe2torch.onnx_export import export_onnx, required_layers

    names = set(net.input_names)
    with tempfile.TemporaryDirectory() as tmp:
        if onnx_path is None:
            from caffe2torch.layers import get_converter

            blocked = {layer.name for layer in net.spec.layers if not get_converter(layer.type).exportable}
            wanted = [b for b in net.execution_order() if b in reference and b not in names
                      and not (required_layers(net, [b]) & blocked)]
            onnx_path = Path(tmp) / "verify.onnx"
            export_onnx(net, onnx_path, wanted)
        if runtime == "openvino":
            from caffe2torch.runner.openvino_backend import run_onnx_outputs

            ours = run_onnx_outputs(onnx_path, inputs)
        else:
            session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            missing = [i.name for i in session.get_inputs() if i.name not in inputs]
            if missing:
                raise CaffeError(f"the inputs lack {', '.join(missing)}, which the ONNX model takes",
                                 Location(str(onnx_path)))
            feeds = {i.name: np.ascontiguousarray(inputs[i.name], dtype=np.float32) for i in session.get_inputs()}
            outputs = [o.name for o in session.get_outputs()]
            ours = dict(zip(outputs, session.run(outputs, feeds)))
    ours.update({n: np.asarray(inputs[n]) for n in names if n in inputs})
    compared = [b for b in reference if b in ours]
    return compare_blobs(ours, reference, net.execution_order(), tol, only=compared)
