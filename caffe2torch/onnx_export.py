"""CaffeNet → ONNX for onnxruntime, with dynamic batch, height and width, and the metadata `deeplab-run`
needs (preprocessing, class names, palette, CRF preset, source hashes) in `metadata_props`.

Every size rule of the net is computed from tensor shapes, so tracing records them as graph arithmetic and
the exported model accepts any input size. Lowerings that matter for Caffe parity (pinned by tests against
the goldens): Interp → Resize with align_corners and sizes from the input shape; AVE pooling with ceil mode
and count_include_pad at opset >= 18 (onnxruntime's divisor for the ceil overhang is Caffe's there);
BatchNorm's factor folded into constants; Softmax over channels (opset >= 13 semantics); ArgMax → TopK on the
reversed axis (Caffe's tie rule).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from caffe2torch import __version__
from caffe2torch.errors import Location, UnsupportedError
from caffe2torch.layers import get_converter
from caffe2torch.net import CaffeNet
from caffe2torch.shapes import layer_location
from caffe2torch.util import atomic_path

OPSET = 18
METADATA_PREFIX = "caffe2torch."


class _BlobsModule(nn.Module):
    """Runs a CaffeNet and returns the named blobs, in order: lets the export expose any blob."""

    def __init__(self, net: CaffeNet, outputs: Sequence[str]):
        super().__init__()
        self.net, self.outputs = net, list(outputs)
        needed = required_layers(net, outputs)
        self.keys = {net.layer_keys[name] for name in needed}

    def forward(self, *inputs):
        blobs = self.net._execute(dict(zip(self.net.input_names, inputs)), only=self.keys)
        return tuple(blobs[name] for name in self.outputs)


def required_layers(net: CaffeNet, outputs: Sequence[str]) -> set[str]:
    """Names of the layers the given blobs depend on (walking the program backwards)."""
    needed, layers = set(outputs), set()
    for layer in reversed(net.spec.layers):
        if needed & set(layer.tops):
            layers.add(layer.name)
            needed |= set(layer.bottoms)
    return layers


def check_exportable(net: CaffeNet, outputs: Sequence[str]) -> None:
    needed = required_layers(net, outputs)
    problems = []
    for layer in net.spec.layers:
        converter = get_converter(layer.type)
        if layer.name in needed and converter is not None and not converter.exportable:
            problems.append((layer_location(net.spec, layer),
                             f"{layer.type} has no ONNX lowering (it runs in the torch backend, or as the "
                             f"runner's CRF); export the blobs before it with --onnx-outputs"))
    if problems:
        raise UnsupportedError(problems, net.spec.source)


def example_inputs(net: CaffeNet) -> tuple[torch.Tensor, ...]:
    tensors = []
    for inp in net.spec.inputs:
        if any(d is None for d in inp.shape):
            raise UnsupportedError([(Location(file=net.spec.source), f"input '{inp.name}' has an unknown shape "
                                     f"{inp.shape}; give --input-shape {inp.name}=N,C,H,W")])
        tensors.append(torch.zeros(tuple(inp.shape)))
    return tuple(tensors)


def export_onnx(
    net: CaffeNet,
    path: str | Path,
    outputs: Sequence[str] | None = None,
    metadata: Mapping[str, object] | None = None,
    opset: int = OPSET,
) -> Path:
    """Write `net` as ONNX (atomically) and check it with onnx.checker. Returns the path."""
    import onnx

    outputs = list(outputs or net.output_names)
    check_exportable(net, outputs)
    args = example_inputs(net)
    dynamic = {}
    for inp, tensor in zip(net.spec.inputs, args):
        if tensor.dim() == 4 and inp.role in ("image", "tensor"):
            dynamic[inp.name] = {0: "batch", 2: "height", 3: "width"}
    for name in outputs:
        shape = net.shapes.blobs.get(name, ())
        dynamic[name] = {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} if len(shape) == 4 else {}
    module = _BlobsModule(net, outputs).eval()
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes: intended
        with torch.no_grad():
            torch.onnx.export(module, args, str(tmp), input_names=net.input_names, output_names=outputs,
                              opset_version=opset, dynamic_axes=dynamic, do_constant_folding=True,
                              dynamo=False)
        model = onnx.load(str(tmp))
        props = {"converter": f"caffe2torch {__version__}", "netspec_name": net.spec.name,
                 **{k: v for k, v in (metadata or {}).items()}}
        for key, value in props.items():
            entry = model.metadata_props.add()
            entry.key = METADATA_PREFIX + key
            entry.value = value if isinstance(value, str) else json.dumps(value)
        model.producer_name = "caffe2torch"
        model.producer_version = __version__
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    return Path(path)


def read_onnx_metadata(path: str | Path) -> dict[str, object]:
    """The caffe2torch.* metadata of an exported model, JSON values decoded."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out: dict[str, object] = {}
    for entry in model.metadata_props:
        if entry.key.startswith(METADATA_PREFIX):
            key = entry.key[len(METADATA_PREFIX):]
            try:
                out[key] = json.loads(entry.value)
            except ValueError:
                out[key] = entry.value
    return out
