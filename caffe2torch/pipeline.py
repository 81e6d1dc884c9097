"""The data path in one place: parse → upgrade → build → load weights → verify, as plain functions that the
CLI commands call.

Everything that can be checked without tensors is checked before any tensor exists: the net (Caffe's own
rules, shape inference, blob limits), the caffemodel against the net's inferred blob shapes, the weights
budget, the input arrays against the net's inputs, and the blobs budget of a verify run."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from caffe2torch.caffemodel import CaffeModel, read_caffemodel
from caffe2torch.errors import ArgumentTypeError, CaffeError, Location, NetDefinitionError, WeightsMismatchError
from caffe2torch.layers.registry import shape_text
from caffe2torch.load_weights import LoadReport, load_plan, match_weights
from caffe2torch.net import CaffeNet, build_net
from caffe2torch.netspec import NetSpec, Shape
from caffe2torch.parse import parse_prototxt
from caffe2torch.shapes import check_blobs_budget, check_input_shapes, check_weights_budget, infer_shapes
from caffe2torch.upgrade import upgrade_net
from caffe2torch.util import single_threaded
from caffe2torch.verify import DEFAULT_TOLERANCE, VerifyReport, compare_blobs


def read_net(
    prototxt: str | Path,
    defines: Mapping[str, str] | None = None,
    phase: str = "test",
    input_shapes: Mapping[str, Shape] | None = None,
    dialect: str | None = None,
    deploy: bool = True,
    stages: Iterable[str] = (),
) -> NetSpec:
    """Parse and upgrade a prototxt of any dialect into a NetSpec: for inference (`deploy`, the default:
    training-only layers dropped and listed) or with its losses, to fine-tune in PyTorch. `phase` and `stages`
    are Caffe's NetState for the include/exclude rules (the file's own `state` stages are added)."""
    defines, input_shapes = checked_defines(defines), checked_input_shapes(input_shapes)
    if not isinstance(phase, str):
        raise ArgumentTypeError(f"phase must be 'test' or 'train', not {type(phase).__name__}")
    try:
        stages = [stages] if isinstance(stages, str) else list(stages)
    except TypeError:
        stages = [stages]
    if not all(isinstance(stage, str) for stage in stages):
        raise ArgumentTypeError(f"stages must be stage names (strings), such as ['test-on-test'], not {stages!r}")
    parsed = parse_prototxt(prototxt, defines=defines, dialect=dialect)
    spec = upgrade_net(parsed, phase=phase, stages=set(stages), input_shapes=input_shapes, deploy=deploy)
    check_input_shapes(spec)  # an absurd input_dim or --input-shape is refused here, before anything else
    return spec


def checked_defines(defines: object) -> dict[str, str]:
    """`defines` of the Python API: a mapping of placeholder names to values (str, or numbers written as
    text); ArgumentTypeError for anything else, instead of a TypeError from deep inside the parser."""
    if defines is None:
        return {}
    if not isinstance(defines, Mapping):
        raise ArgumentTypeError(f"defines must be a mapping such as {{'NUM_LABELS': '21'}}, not "
                                f"{type(defines).__name__}")
    checked = {}
    for name, value in defines.items():
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ArgumentTypeError(f"defines: {name!r}: {value!r} is not NAME (a string) = VALUE (a string)")
        checked[name] = str(value)
    return checked


def checked_input_shapes(shapes: object) -> dict[str, tuple[int, ...]]:
    """`input_shapes` of the Python API: a mapping of input names to sequences of integers (1.5, '3' or True
    are refused, not truncated); the dims' values are checked with the net (check_input_shapes)."""
    if shapes is None:
        return {}
    if not isinstance(shapes, Mapping):
        raise ArgumentTypeError(f"input_shapes must be a mapping such as {{'data': (1, 3, 513, 513)}}, not "
                                f"{type(shapes).__name__}")
    checked = {}
    for name, dims in shapes.items():
        ok = isinstance(name, str) and isinstance(dims, Sequence) and not isinstance(dims, (str, bytes))
        dims_list = list(dims) if ok else []
        if not ok or not dims_list or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                              for d in dims_list):
            raise ArgumentTypeError(f"input_shapes: {name!r}: {dims!r} is not a sequence of integers such as "
                                    "(1, 3, 513, 513)")
        checked[name] = tuple(int(d) for d in dims_list)
    return checked


def set_input_shapes(spec: NetSpec, shapes: Mapping[str, Shape]) -> NetSpec:
    """Give the net's inputs the shapes of actual arrays (names the net does not take are ignored)."""
    for inp in spec.inputs:
        if inp.name in shapes:
            inp.shape = tuple(shapes[inp.name])
    return spec


def check_input_arrays(spec: NetSpec, arrays: Mapping[str, np.ndarray], source: str | None = None) -> None:
    """Arrays for every net input, numeric, with the net's number of axes and its declared sizes on every
    axis but the batch and (for images) height and width, which may differ from the prototxt."""
    where = Location(source)
    missing = [i.name for i in spec.inputs if i.name not in arrays]
    if missing:
        raise CaffeError(f"no array for net input(s) {', '.join(missing)}; the net takes "
                         f"{', '.join(spec.input_names())}, the file holds {', '.join(sorted(arrays)) or 'nothing'}",
                         where)
    for inp in spec.inputs:
        array = np.asarray(arrays[inp.name])
        if array.dtype.kind not in "fiub":
            raise CaffeError(f"input '{inp.name}' has dtype {array.dtype}; net inputs must be numeric", where)
        declared = tuple(inp.shape)
        if all(d is None for d in declared):
            continue
        if array.ndim != len(declared):
            raise CaffeError(f"input '{inp.name}' has shape {tuple(array.shape)}, but the net declares "
                             f"{len(declared)} axes ({shape_text(declared)})", where)
        free = {0, 2, 3} if len(declared) == 4 else {0}
        for axis, (have, want) in enumerate(zip(array.shape, declared)):
            if axis not in free and want is not None and have != want:
                raise CaffeError(f"input '{inp.name}' has shape {tuple(array.shape)}, but the net declares "
                                 f"{shape_text(declared)}: axis {axis} must be {want}", where)


def check_blob_names(net: CaffeNet, names: Sequence[str], what: str) -> None:
    """Every name is a blob a layer of the net computes (for --onnx-outputs), or a clear error listing them."""
    blobs = [b for b in net.execution_order() if b not in net.input_names]
    inputs = [n for n in names if n in net.input_names]
    if inputs:
        raise CaffeError(f"{what}: {', '.join(repr(i) for i in inputs)} is a net input, not a blob the net computes",
                         Location(net.spec.source))
    unknown = [n for n in names if n not in blobs]
    if unknown:
        shown = ", ".join(blobs) if len(blobs) <= 40 else ", ".join(blobs[:20]) + f", ... ({len(blobs)} in all)"
        raise CaffeError(f"{what}: no blob named {', '.join(repr(u) for u in unknown)}; the net computes {shown}",
                         Location(net.spec.source))


def convert(
    prototxt: str | Path | NetSpec,
    caffemodel: str | Path | CaffeModel,
    defines: Mapping[str, str] | None = None,
    phase: str = "test",
    input_shapes: Mapping[str, Shape] | None = None,
    strict: bool = True,
    stages: Iterable[str] = (),
) -> tuple[CaffeNet, LoadReport]:
    """A CaffeNet with the caffemodel's weights, in eval mode. The caffemodel is matched against the net's
    inferred blob shapes, and the weights budget checked, before the net is built; with `strict`, any
    missing, unused or mismatched layer is an error (WeightsMismatchError)."""
    spec = (prototxt if isinstance(prototxt, NetSpec)
            else read_net(prototxt, defines, phase, input_shapes, stages=stages))
    shapes = infer_shapes(spec)
    model = caffemodel if isinstance(caffemodel, CaffeModel) else read_caffemodel(caffemodel)
    report, plan = match_weights(spec, shapes, model, nonfinite=False)
    if strict and not report.ok:
        raise WeightsMismatchError(report.missing, report.unused, report.mismatched, model.source)
    check_weights_budget(spec, shapes)
    # The layers the caffemodel gives every blob of are built without memory and receive their weights in
    # one copy each (no random initialisation to overwrite); one thread, as copying needs no more.
    with single_threaded():
        net = build_net(spec, shapes, loaded=plan)
        load_plan(net, model, plan, report)
    return net, report


def input_shapes_of(inputs: Mapping[str, np.ndarray]) -> dict[str, Shape]:
    return {name: tuple(int(d) for d in array.shape) for name, array in inputs.items()}


def check_run_budget(net: CaffeNet, inputs: Mapping[str, np.ndarray], source: str | None = None) -> None:
    """Before running the net on `inputs` keeping every blob: the inputs fit the net, and the blobs fit the
    blobs budget (shapes inferred at the inputs' sizes, no tensor made)."""
    check_input_arrays(net.spec, inputs, source)
    trial = copy.deepcopy(net.spec)
    set_input_shapes(trial, input_shapes_of({i: inputs[i] for i in net.input_names}))
    try:
        shapes = infer_shapes(trial, check=False)
    except NetDefinitionError as exc:
        raise CaffeError(f"the net cannot run at the inputs' shapes: {exc}", Location(source)) from None
    check_blobs_budget(trial, shapes, "verifying (a forward pass keeping every blob)")


def run_all_blobs(net: CaffeNet, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    check_run_budget(net, inputs)
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
    from caffe2torch.verify import UncheckedBlob, no_lowering_reason

    names = set(net.input_names)
    check_run_budget(net, inputs)
    given = onnx_path
    unchecked: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if onnx_path is None:
            from caffe2torch.layers import get_converter

            blocked = [layer for layer in net.spec.layers if not get_converter(layer.type).exportable]
            wanted = []
            for blob in net.execution_order():
                if blob not in reference or blob in names:
                    continue
                # the first layer without lowering on the blob's path (the nearest the inputs) is the reason
                needed = required_layers(net, [blob])
                culprit = next((layer for layer in blocked if layer.name in needed), None)
                if culprit is None:
                    wanted.append(blob)
                else:
                    unchecked[blob] = no_lowering_reason(culprit.name, culprit.type, blob, list(culprit.tops))
            onnx_path = Path(tmp) / "verify.onnx"
            export_onnx(net, onnx_path, wanted)
        if runtime == "openvino":
            from caffe2torch.runner.openvino_backend import run_onnx_outputs

            ours = run_onnx_outputs(onnx_path, inputs)
        else:
            try:
                session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
                raise CaffeError(f"cannot load the ONNX model: {exc}", Location(str(onnx_path))) from None
            missing = [i.name for i in session.get_inputs() if i.name not in inputs]
            if missing:
                raise CaffeError(f"the inputs lack {', '.join(missing)}, which the ONNX model takes",
                                 Location(str(onnx_path)))
            feeds = {i.name: np.ascontiguousarray(inputs[i.name], dtype=np.float32) for i in session.get_inputs()}
            outputs = [o.name for o in session.get_outputs()]
            ours = dict(zip(outputs, session.run(outputs, feeds)))
    from caffe2torch.onnx_export import inplace_input_writer

    for n in names:
        writer = inplace_input_writer(net, n)
        if writer is None:
            if n in inputs:
                ours[n] = np.asarray(inputs[n])
        elif n in reference:
            # Caffe's blob holds the in-place layer's result; the ONNX graph input keeps the given array
            unchecked[n] = (f"a net input that {writer.type} '{writer.file_name}' rewrites in place: the ONNX model "
                            "takes it as given, and checks its final value through the blobs computed from it")
    compared = [b for b in reference if b in ours]
    order = {b: i for i, b in enumerate(net.execution_order())}
    for blob in reference:
        if blob not in ours and blob not in unchecked:
            unchecked[blob] = (f"not an output of {Path(given).name} (without --onnx, every blob is exported)"
                               if given is not None and blob in order else "not a blob of the converted net")
    report = compare_blobs(ours, reference, net.execution_order(), tol, only=compared)
    report.unchecked = [UncheckedBlob(b, unchecked[b]) for b in sorted(unchecked, key=lambda b: order.get(b, 1e9))]
    report.backend = "onnx"
    return report
