"""CaffeNet → ONNX for onnxruntime, with dynamic batch, height and width where the net accepts other sizes, and
the metadata `deeplab-run` needs (preprocessing, input sizes, class names, palette, CRF setting, source hashes)
in `metadata_props`.

Every size rule of the net is computed from tensor shapes, so tracing records them as graph arithmetic and
the exported model accepts every size the net does (input_sizes.py works out which); a net that runs at one
size only is traced and exported at that size, with fixed dims. The copies of a shared branch (DeepLab's
multi-scale trunks) are traced once and copied in the graph (shared_branches.py). Lowerings that matter for
Caffe parity (pinned by tests against the goldens): Interp → Resize with align_corners and sizes from the
input shape; AVE pooling with ceil mode and count_include_pad at opset >= 18 (onnxruntime's divisor for the
ceil overhang is Caffe's there); BatchNorm's factor folded into constants; Softmax over channels (opset >= 13
semantics); ArgMax → TopK on the reversed axis (Caffe's tie rule).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from caffe2torch import __version__, shared_branches, wire
from caffe2torch.errors import Location, NetDefinitionError, UnsupportedError
from caffe2torch.input_sizes import (
    InputSizes,
    accepted_input_sizes,
    spatial_inputs,
    tracing_side,
    with_input_sizes,
)
from caffe2torch.layers import get_converter
from caffe2torch.net import CaffeNet
from caffe2torch.shapes import infer_shapes, layer_location
from caffe2torch.shared_branches import SharedBranch
from caffe2torch.util import atomic_path, loads_json, single_threaded

OPSET = 18
# Up to this size the written file is checked whole as well (onnx.checker loads every weight to do it).
FULL_CHECK_BYTES = 64 << 20
METADATA_PREFIX = "caffe2torch."
AXIS_NAMES = {0: "batch", 1: "channels", 2: "height", 3: "width"}


class _BlobsModule(nn.Module):
    """Runs a CaffeNet and returns the named blobs, in order: lets the export expose any blob. Takes only the
    net inputs those blobs depend on, in the net's order."""

    def __init__(self, net: CaffeNet, outputs: Sequence[str]):
        super().__init__()
        self.net, self.outputs = net, list(outputs)
        self.needed = required_layers(net, outputs)
        self.keys = {net.layer_keys[name] for name in self.needed}
        used = set(self.outputs) | {b for layer in net.spec.layers if layer.name in self.needed for b in layer.bottoms}
        self.input_names = [name for name in net.input_names if name in used]
        # Set while tracing with shared branches (trace_graph): the copies and their outputs' traced shapes.
        self.branches: tuple[list[SharedBranch], dict] | None = None

    def forward(self, *inputs):
        blobs = dict(zip(self.input_names, inputs))
        if self.branches is not None:
            blobs = shared_branches.execute(self.net, blobs, self.keys, *self.branches)
        else:
            blobs = self.net._execute(blobs, only=self.keys)
        return tuple(blobs[name] for name in self.outputs)


@contextlib.contextmanager
def folded_batchnorm(net: CaffeNet):
    """Within the block, every CaffeBatchNorm computes x * scale + shift from constants folded beforehand."""
    from caffe2torch.layers.normalization import CaffeBatchNorm

    layers = [m for m in net.modules() if isinstance(m, CaffeBatchNorm)]
    for layer in layers:
        layer.export_affine = layer.folded_affine()
    try:
        yield
    finally:
        for layer in layers:
            layer.export_affine = None


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
    for name in outputs:
        writer = inplace_input_writer(net, name)
        if writer is not None:
            problems.append((layer_location(net.spec, writer),
                             f"blob '{name}' is a net input that {writer.type} '{writer.file_name}' rewrites in place: "
                             "an ONNX output cannot take its graph input's name; export a blob computed from it, "
                             "or give the layer a top of its own"))
    if problems:
        raise UnsupportedError(problems, net.spec.source)


def inplace_input_writer(net: CaffeNet, blob: str):
    """The last layer that writes a net input in place (Caffe's blob of that name then holds its result), or None
    when `blob` is no such input."""
    if blob not in net.input_names:
        return None
    return next((layer for layer in reversed(net.spec.layers) if blob in layer.tops), None)


def tracing_shapes(net: CaffeNet, sizes: InputSizes | None = None,
                   outputs: Sequence[str] | None = None) -> list[tuple[int, ...]]:
    """Input shapes to trace with. Every size rule is traced symbolically, so where the net accepts other sizes
    the trace need not run at its full crop size (a 513x513 ResNet-101 MSC forward pass costs seconds): a
    small side the net accepts (input_sizes.tracing_side). A net that runs at one size only (or whose
    weights fix its size) is traced, and exported, at its declared size."""
    declared = [tuple(i.shape) for i in net.spec.inputs]
    for inp, shape in zip(net.spec.inputs, declared):
        if any(d is None for d in shape):
            raise UnsupportedError([(Location(file=net.spec.source), f"input '{inp.name}' has an unknown shape "
                                     f"{shape}; give --input-shape {inp.name}=N,C,H,W")])
    wanted = list(outputs or net.output_names)
    if sizes is None or not spatial_inputs(net.spec, wanted):
        return declared
    side = tracing_side(net.spec, sizes, wanted)
    if side is None:
        return declared
    return [tuple(int(d) for d in i.shape) for i in with_input_sizes(net.spec, side=side, outputs=wanted).inputs]


def dynamic_axes_of(net: CaffeNet, sizes: InputSizes | None, inputs: Sequence[str],
                    outputs: Sequence[str]) -> dict[str, dict[int, str]]:
    """The dynamic dimensions of the exported model: batch where the batch size is free, height and width of
    the image inputs and 4-D outputs where the net accepts other sizes."""
    if sizes is None:  # no image input: nothing to vary but what the graph computes
        return {name: {0: f"{name}_batch", 2: f"{name}_height", 3: f"{name}_width"}
                if len(net.shapes.blobs.get(name, ())) == 4 else {} for name in outputs}
    image_like = {net.spec.inputs[i].name for i in spatial_inputs(net.spec, list(outputs))}
    # One batch name per blob: inputs may have different batch sizes (a shared name would tell onnxruntime
    # they are equal, and it plans buffers by that).
    dynamic: dict[str, dict[int, str]] = {}
    ranks = {inp.name: len(inp.shape) for inp in net.spec.inputs}
    for name in inputs:
        dynamic[name] = {0: f"{name}_batch"} if sizes.batch_free and ranks.get(name, 0) >= 1 else {}
        if name in image_like and sizes.size_free:
            dynamic[name] |= {2: "height", 3: "width"}
    for name in outputs:
        shape = net.shapes.blobs.get(name, ())
        dynamic[name] = {0: f"{name}_batch"} if sizes.batch_free and len(shape) >= 1 else {}
        if sizes.size_free and len(shape) == 4:
            dynamic[name] |= {2: f"{name}_height", 3: f"{name}_width"}
    return dynamic


def export_onnx(
    net: CaffeNet,
    path: str | Path,
    outputs: Sequence[str] | None = None,
    metadata: Mapping[str, object] | None = None,
    opset: int = OPSET,
    sizes: InputSizes | None = None,
) -> Path:
    """Write `net` as ONNX (atomically) and check it with onnx.checker. Returns the path. Height and width are
    dynamic where the net accepts other sizes (`sizes`, default: input_sizes.accepted_input_sizes), fixed at
    the declared size otherwise; the metadata records which (`dynamic_axes`, `input_sizes`)."""
    import onnx

    outputs = list(outputs or net.output_names)
    unknown = [name for name in outputs if name not in net.shapes.blobs]
    if unknown:
        raise NetDefinitionError(f"no blob named {', '.join(unknown)} to export; the net's blobs include "
                                 f"{', '.join(list(net.shapes.blobs)[-5:])}", Location(net.spec.source))
    check_exportable(net, outputs)
    if sizes is None and spatial_inputs(net.spec, outputs):
        sizes = accepted_input_sizes(net.spec, outputs)
    module = _BlobsModule(net, outputs).eval()
    shapes = dict(zip(net.input_names, tracing_shapes(net, sizes, outputs)))
    dynamic = dynamic_axes_of(net, sizes, module.input_names, outputs)
    props = {"converter": f"caffe2torch {__version__}", "netspec_name": net.spec.name,
             "dynamic_axes": {name: [AXIS_NAMES[a] for a in sorted(axes)] for name, axes in dynamic.items()},
             **({"input_sizes": sizes.to_metadata()} if sizes is not None else {}), **(metadata or {})}
    model = trace_graph(module, shapes, dynamic, opset, share_branches=sizes is not None and sizes.size_free)
    check_graph(model)
    tensors = dict(module.named_parameters(remove_duplicate=False)) | dict(module.named_buffers(remove_duplicate=False))
    with atomic_path(path) as tmp:
        _write_model(model, tensors, set(module.input_names), props, tmp)
        if tmp.stat().st_size <= FULL_CHECK_BYTES:
            onnx.checker.check_model(str(tmp))  # loading a large model just to check it would double its memory
    return Path(path)


def trace_graph(module: _BlobsModule, shapes: Mapping[str, tuple[int, ...]], dynamic: dict[str, dict[int, str]],
                opset: int, share_branches: bool = True):
    """The ONNX graph of the module traced at the input `shapes`, as a ModelProto without the weights (they are
    graph inputs, so that the exporter never holds the model serialised in memory; _write_model streams them
    in). With `share_branches`, each copy of a shared branch (DeepLab's MSC copies of the trunk) is traced as
    one placeholder node and then written as a copy of its original's nodes (shared_branches); the graph is
    traced plainly where that cannot be done. Only for a graph whose height and width are symbolic: then no
    node of the original can depend on the size it was traced at (with fixed sizes the exporter may fold
    shape arithmetic into constants, which would not be the copy's)."""
    net = module.net
    branches = shared_branches.find_shared_branches(net, module.outputs, module.needed) if share_branches else []
    if branches:
        at_size = dataclasses.replace(net.spec, inputs=[dataclasses.replace(inp, shape=tuple(shapes[inp.name]))
                                                        for inp in net.spec.inputs])
        layers = infer_shapes(at_size, check=False).layers
        exit_shapes = {vc: tuple(layers[vc[0]].top_shapes[net.spec.layers[vc[0]].tops.index(vc[1])])
                       for branch in branches for vc, _ in branch.exits}
        module.branches = (branches, exit_shapes)
        try:
            model = _traced_model(module, shapes, dynamic, opset)
            shared_branches.graft(model, set(module.input_names), shared_branches.copy_scopes(net, branches))
            return model
        except shared_branches.GraftError:
            pass  # a copy the traced graph does not allow: the plain trace below computes the same
        finally:
            module.branches = None
    return _traced_model(module, shapes, dynamic, opset)


def _traced_model(module: _BlobsModule, shapes: Mapping[str, tuple[int, ...]], dynamic, opset: int):
    import onnx

    args = tuple(torch.zeros(shapes[name]) for name in module.input_names)
    graph_only = io.BytesIO()
    # One thread: the trace runs at a small size, where parallel operators only wait for each other.
    with single_threaded(), warnings.catch_warnings(), folded_batchnorm(module.net):
        warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes: intended
        with torch.no_grad():
            # BatchNorm is folded by hand and the shape arithmetic cannot be folded, so constant folding
            # would only cost time.
            torch.onnx.export(module, args, graph_only, input_names=module.input_names,
                              output_names=module.outputs, opset_version=opset, dynamic_axes=dynamic,
                              do_constant_folding=False, export_params=False, keep_initializers_as_inputs=True,
                              dynamo=False, custom_opsets={shared_branches.DOMAIN: 1} if module.branches else None)
    return onnx.load_from_string(graph_only.getvalue())


def check_graph(model) -> None:
    """onnx.checker on the graph, with the weights still as typed graph inputs."""
    import onnx

    onnx.checker.check_model(model)


_ONNX_FLOAT, _ONNX_INT64 = 1, 7


def _tensor_header(name: str, tensor: torch.Tensor) -> tuple[bytes, int]:
    """TensorProto (dims 1, data_type 2, name 8) and the key and length of raw_data (9); the data follow."""
    kinds = {torch.float32: _ONNX_FLOAT, torch.int64: _ONNX_INT64}
    if tensor.dtype not in kinds:
        raise TypeError(f"cannot write a {tensor.dtype} initializer")
    nbytes = tensor.numel() * tensor.element_size()
    head = b"".join(wire.key(1, wire.VARINT) + wire.varint(d) for d in tensor.shape)
    head += wire.key(2, wire.VARINT) + wire.varint(kinds[tensor.dtype]) + wire.string_field(8, name)
    head += wire.key(9, wire.LENGTH_DELIMITED) + wire.varint(nbytes)
    return head, nbytes


def _write_model(model, tensors: Mapping[str, torch.Tensor], net_inputs: set[str],
                 props: Mapping[str, object], path: Path) -> None:
    """Write `model` (a graph whose weights are graph inputs) to `path` with the weights as initializers,
    streamed one tensor at a time: a 170 MB net is never held serialised in memory. The ModelProto is written
    as its fields except the graph, then the graph (field 7) as the small graph message followed by one
    initializer field (5) per weight; protobuf merges a message written in parts."""
    graph = model.graph
    weights = [value.name for value in graph.input if value.name not in net_inputs]
    missing = [name for name in weights if name not in tensors]
    if missing:
        raise RuntimeError(f"exported graph inputs without a tensor: {missing[:5]}")
    kept = [value for value in graph.input if value.name in net_inputs]
    del graph.input[:]
    graph.input.extend(kept)
    model.producer_name, model.producer_version = "caffe2torch", __version__
    for name, value in props.items():
        entry = model.metadata_props.add()
        entry.key = METADATA_PREFIX + name
        entry.value = value if isinstance(value, str) else json.dumps(value)
    graph_bytes = graph.SerializeToString()
    model.ClearField("graph")
    parts = []
    for name in weights:
        tensor = tensors[name].detach().contiguous().cpu()
        head, nbytes = _tensor_header(name, tensor)
        parts.append((wire.key(5, wire.LENGTH_DELIMITED) + wire.varint(len(head) + nbytes) + head, tensor))
    graph_length = len(graph_bytes) + sum(len(head) + t.numel() * t.element_size() for head, t in parts)
    with open(path, "wb") as handle:
        handle.write(model.SerializeToString())
        handle.write(wire.key(7, wire.LENGTH_DELIMITED) + wire.varint(graph_length) + graph_bytes)
        for head, tensor in parts:
            handle.write(head)
            handle.write(tensor.numpy().tobytes() if tensor.dtype != torch.float32 else memoryview(
                tensor.numpy()).cast("B"))


def decode_metadata(props: Mapping[str, str]) -> dict[str, object]:
    """The caffe2torch.* entries of an ONNX model's metadata_props, JSON values decoded."""
    out: dict[str, object] = {}
    for key, value in props.items():
        if key.startswith(METADATA_PREFIX):
            try:
                out[key[len(METADATA_PREFIX):]] = loads_json(value)
            except ValueError:
                out[key[len(METADATA_PREFIX):]] = value
    return out


def read_onnx_metadata(path: str | Path) -> dict[str, object]:
    """The caffe2torch.* metadata of an exported model file (loads the model; a running onnxruntime session
    has the same map in session.get_modelmeta().custom_metadata_map)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return decode_metadata({entry.key: entry.value for entry in model.metadata_props})
