"""Shape inference and receptive fields over a NetSpec, by the registry's Caffe rules (no tensors run).

Also the one place that checks a net before anything is built: `check_definitions` applies what Caffe's own
Net::Init and LayerSetUp refuse (bottom/top counts, in-place rules, parameter CHECKs), `check_supported`
collects every unknown type and every unsupported parameter value, `infer_shapes` applies Caffe's Reshape
CHECKs and its blob size limit, and `check_weights_budget` / `check_blobs_budget` refuse a net whose
parameters or blobs would not fit a sane memory bound, in human terms, before a tensor exists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from caffe2torch import limits
from caffe2torch.caffe_math import receptive_field_step
from caffe2torch.errors import InvalidNetError, LimitError, Location, NetDefinitionError, UnsupportedError
from caffe2torch.layers import BuildContext, get_converter
from caffe2torch.layers.registry import count, count_problems, shape_text
from caffe2torch.netspec import LayerSpec, NetSpec, Shape
from caffe2torch.upgrade import check_graph, describe_unknown


def layer_location(spec: NetSpec, layer: LayerSpec) -> Location:
    return Location(file=spec.source, line=layer.line, layer=layer.file_name, layer_type=layer.type)


def info_location(spec: NetSpec, info: LayerInfo) -> Location:
    """Where a layer of a shape report is, by the name its file gives it."""
    names = {layer.name: layer.file_name for layer in spec.layers}
    return Location(file=spec.source, line=info.line, layer=names.get(info.name, info.name), layer_type=info.type)


def context_of(spec: NetSpec) -> BuildContext:
    return BuildContext(dialect=spec.dialect, phase=spec.phase)


def definition_problems(spec: NetSpec) -> list[tuple[Location, str]]:
    """Every layer Caffe itself would refuse before running: wrong bottom or top counts for its type, in-place
    use where the type forbids it, parameter values its LayerSetUp CHECKs. Unknown types are left to
    support_problems."""
    ctx = context_of(spec)
    problems: list[tuple[Location, str]] = []
    for layer in spec.layers:
        converter = get_converter(layer.type)
        if converter is None:
            continue
        where = layer_location(spec, layer)
        problems += [(where, message) for message in count_problems(converter, layer)]
        problems += [(where, message) for message in converter.validate(layer, ctx)]
    return problems


def check_definitions(spec: NetSpec) -> None:
    """Raise one InvalidNetError listing every layer Caffe itself would refuse (definition_problems)."""
    problems = definition_problems(spec)
    if problems:
        raise InvalidNetError(problems, spec.source)


def check_input_shapes(spec: NetSpec) -> None:
    """Net inputs: known dimensions positive, and within Caffe's blob limits."""
    for inp in spec.inputs:
        where = Location(file=spec.source, layer=inp.source_layer, layer_type=inp.source_type)
        if any(d is not None and d <= 0 for d in inp.shape):
            raise NetDefinitionError(f"input '{inp.name}' has shape {shape_text(inp.shape)}: every dimension "
                                     "must be at least 1", where)
        problem = limits.blob_problem(inp.shape)
        if problem:
            raise NetDefinitionError(f"input '{inp.name}' of shape {shape_text(inp.shape)} would hold {problem}",
                                     where)


def unsized_input_message(spec: NetSpec, names: list[str], shapes: list[Shape]) -> str | None:
    """A layer failed on a bottom whose very rank is unknown: a net input the prototxt gives no shape (a data
    layer's extra top, from a fork that adds one, or a layer whose tops depend on files on disk). Say so, and
    how to size it, rather than the layer's complaint about a 1-D '?' blob."""
    inputs = {inp.name: inp for inp in spec.inputs}
    for name, shape in zip(names, shapes):
        inp = inputs.get(name)
        if inp is None or len(shape) != 1 or shape[0] is not None:
            continue
        made = "a net-level input"
        if inp.source_layer:
            made = f"top '{name}' of layer '{inp.source_layer}' ({inp.source_type})"
        return (f"the shape of bottom '{name}' is unknown: it is {made}, which the prototxt does not size; "
                f"give it with --input-shape {name}=N,C,H,W")
    return None


def support_problems(spec: NetSpec) -> list[tuple[Location, str]]:
    """Every unknown layer type, field no schema has, and parameter value we cannot reproduce exactly."""
    ctx = context_of(spec)
    problems: list[tuple[Location, str]] = []
    for layer in spec.layers:
        converter = get_converter(layer.type)
        where = layer_location(spec, layer)
        if layer.unknown_fields:
            problems.append((where, "field(s) no known Caffe schema has, so their meaning is unknown: "
                                    + describe_unknown(layer.unknown_fields)))
        if converter is None:
            problems.append((where, f"unknown or unsupported layer type '{layer.type}'"))
            continue
        problems += [(where, message) for message in converter.check(layer, ctx)]
    return problems


def check_supported(spec: NetSpec) -> None:
    """Raise one UnsupportedError listing every unknown layer type and unsupported parameter value."""
    problems = support_problems(spec)
    if problems:
        raise UnsupportedError(problems, spec.source)


def check_layers(spec: NetSpec) -> None:
    """The one error for every layer that stops the conversion, in file order: an UnsupportedError when we
    cannot convert something (listing, beside it, what Caffe itself would refuse), an InvalidNetError when
    the only problems are ones Caffe refuses too."""
    invalid = definition_problems(spec)
    unsupported = support_problems(spec)
    if unsupported:
        both = unsupported + [(where, f"{message} (Caffe refuses this too)") for where, message in invalid]
        both.sort(key=lambda item: item[0].line if item[0].line is not None else -1)
        raise UnsupportedError(both, spec.source)
    if invalid:
        raise InvalidNetError(invalid, spec.source)


@dataclass
class LayerInfo:
    """What shape inference learned about one layer."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    top_shapes: list[Shape]
    blob_shapes: list[Shape]
    params: int | None
    # Receptive field of the first top in input pixels, and its stride (input pixels per output pixel).
    field: float | None = None
    stride: float | None = None
    line: int | None = None
    # The bottoms' shapes when this layer runs (an in-place layer later in the net may rebind a name).
    bottom_shapes: list[Shape] = dataclasses.field(default_factory=list)  # (`field` is taken above)


@dataclass
class ShapeReport:
    blobs: dict[str, Shape] = field(default_factory=dict)
    layers: list[LayerInfo] = field(default_factory=list)

    def total_params(self) -> int | None:
        counts = [layer.params for layer in self.layers]
        return None if None in counts else sum(c for c in counts if c)


class ShapeMemo:
    """What infer_shapes learned about each layer, for later calls on copies of the same net that differ only in
    their input shapes (input_sizes probes dozens of sizes). A layer's shapes depend only on the layer and its
    bottoms' shapes, and beyond the first strided layers most probed sizes meet again, so most layers are
    looked up instead of computed. Only results that passed every check are kept. Reports made with a memo
    are for shapes only: they carry no receptive fields (LayerInfo.field and .stride are None)."""

    def __init__(self, spec: NetSpec):
        self.layers = spec.layers
        self.infos: dict[tuple, LayerInfo] = {}


def infer_shapes(spec: NetSpec, check: bool = True, memo: ShapeMemo | None = None) -> ShapeReport:
    """Propagate the inputs' shapes through every layer with Caffe's rules (None = unknown dimension).
    `memo`: reuse per-layer results across calls on nets with these same layers (ShapeMemo; the LayerInfo
    objects of such reports are shared between them: read them, do not change them)."""
    if memo is not None and memo.layers is not spec.layers:
        raise ValueError("a ShapeMemo serves the net it was made for (the same layers)")
    if check:
        check_graph(spec)
        check_layers(spec)
    check_input_shapes(spec)
    ctx = context_of(spec)
    report = ShapeReport()
    fields: dict[str, tuple[float, float]] = {}
    for inp in spec.inputs:
        report.blobs[inp.name] = tuple(inp.shape)
        fields[inp.name] = (1.0, 1.0)
    for position, layer in enumerate(spec.layers):
        bottoms = [report.blobs[b] for b in layer.bottoms]
        if memo is not None:
            key = (position, *bottoms)
            known = memo.infos.get(key)
            if known is not None:
                for top, shape in zip(layer.tops, known.top_shapes):
                    report.blobs[top] = tuple(shape)
                report.layers.append(known)
                continue
        converter = get_converter(layer.type)
        where = layer_location(spec, layer)
        if converter is None:  # only with check=False
            raise UnsupportedError([(where, f"unknown or unsupported layer type '{layer.type}'")], spec.source)
        try:
            tops = converter.output_shapes(layer, bottoms, ctx) if layer.tops else []
            blob_shapes = converter.blob_shapes(layer, bottoms)
        except (ValueError, KeyError, IndexError, TypeError, ZeroDivisionError, OverflowError) as exc:
            unsized = unsized_input_message(spec, layer.bottoms, bottoms)
            if unsized:
                raise NetDefinitionError(unsized, where) from None
            shown = ", ".join(f"'{b}' {shape_text(s)}" for b, s in zip(layer.bottoms, bottoms))
            raise NetDefinitionError(f"{exc} (bottoms: {shown})", where) from None
        if len(tops) != len(layer.tops):
            raise NetDefinitionError(f"{layer.type} makes {len(tops)} top(s) here; the layer lists {len(layer.tops)}",
                                     where)
        for index, (top, shape) in enumerate(zip(layer.tops, tops)):
            if index < len(bottoms) and layer.bottoms[index] == top and tuple(shape) != tuple(bottoms[index]):
                raise NetDefinitionError(f"top '{top}' is computed in place but would change its shape from "
                                         f"{shape_text(bottoms[index])} to {shape_text(shape)} (Caffe would "
                                         "overwrite the layer's own input); give the top another name", where)
            if any(d is not None and d <= 0 for d in shape):
                shown = ", ".join(shape_text(s) for s in bottoms)
                raise NetDefinitionError(f"top '{top}' would have shape {shape_text(shape)} (from {shown}): every "
                                         "dimension must be at least 1 (is the input too small for this layer?)",
                                         where)
            problem = limits.blob_problem(shape)
            if problem:
                raise NetDefinitionError(f"top '{top}' of shape {shape_text(shape)} would hold {problem}", where)
            report.blobs[top] = tuple(shape)
        for index, shape in enumerate(blob_shapes):
            problem = limits.blob_problem(shape)
            if problem:
                raise NetDefinitionError(f"parameter blob {index} of shape {shape_text(shape)} would hold {problem}",
                                         where)
        counts = [count(s) for s in blob_shapes]
        params = None if None in counts else sum(counts)  # type: ignore[arg-type]
        rf: float | None = None
        jump: float | None = None
        if memo is None:
            rf, jump = _grow_field(converter, layer, bottoms, tops, fields)
            for top in layer.tops:
                fields[top] = (rf, jump)
        info = LayerInfo(layer.name, layer.type, list(layer.bottoms), list(layer.tops), list(tops),
                         blob_shapes, params, rf, jump, layer.line, bottoms)
        report.layers.append(info)
        if memo is not None:
            memo.infos[key] = info
    return report


def _grow_field(converter, layer, bottoms, tops, fields) -> tuple[float, float]:
    """Receptive field (rows) of a layer's output: the widest of its bottoms, grown by its window."""
    known = [fields[b] for b in layer.bottoms if b in fields]
    if not known:
        return 1.0, 1.0
    rf = max(f for f, _ in known)
    jump = max(j for _, j in known)
    window = converter.window(layer)
    spatial = bottoms[0][2:] if bottoms and len(bottoms[0]) >= 3 else ()
    if converter.sees_whole_input(layer) and spatial and None not in spatial:
        rf += (max(spatial) - 1) * jump  # type: ignore[type-var, operator]  # the whole bottom, largest side
    elif window is not None:
        (kernel, _), (stride, _), (dilation, _) = window
        if kernel is not None:
            rf, jump = receptive_field_step(rf, jump, kernel, stride, dilation)
    else:
        change = converter.scale_change(layer, bottoms, tops)
        if change:
            jump = jump / change
    return rf, jump


# ---------------------------------------------------------------------------------------------------------
# Memory budgets: checked on the inferred shapes, before any tensor exists
# ---------------------------------------------------------------------------------------------------------


def owned_parameter_count(spec: NetSpec, report: ShapeReport) -> tuple[int, list[tuple[int, LayerInfo]]]:
    """Parameters a built net holds (blobs shared by ParamSpec name counted once, by their owner), and the
    count of each layer, largest first. Raises NetDefinitionError where a parameter shape is unknown."""
    ties = spec.shared_parameters()
    per_layer: list[tuple[int, LayerInfo]] = []
    for info in report.layers:
        total = 0
        for index, shape in enumerate(info.blob_shapes):
            if (info.name, index) in ties:
                continue
            size = count(shape)
            if size is None:
                where = info_location(spec, info)
                raise NetDefinitionError(f"the shape of parameter blob {index} ({shape_text(shape)}) depends on an "
                                         "input shape the net does not declare; give it with --input-shape", where)
            total += size
        if total:
            per_layer.append((total, info))
    per_layer.sort(key=lambda item: -item[0])
    return sum(n for n, _ in per_layer), per_layer


def check_weights_budget(spec: NetSpec, report: ShapeReport) -> int:
    """Refuse a net whose parameters would take more memory than the weights budget (limits.max_weights_bytes);
    returns the number of parameters."""
    total, per_layer = owned_parameter_count(spec, report)
    budget = limits.max_weights_bytes()
    needed = total * limits.FLOAT_BYTES
    if needed > budget:
        largest, info = per_layer[0]
        where = info_location(spec, info)
        raise LimitError(
            f"the net's {limits.human_count(total)} parameters would take {limits.human_bytes(needed)} "
            f"(this layer alone {limits.human_bytes(largest * limits.FLOAT_BYTES)}), over the "
            f"{limits.human_bytes(budget)} limit for weights; for a real model this large, raise it with "
            f"{limits.WEIGHTS_VARIABLE}=SIZE (e.g. {limits.WEIGHTS_VARIABLE}={_next_size(needed)})", where)
    return total


def blob_elements(report: ShapeReport) -> int | None:
    """Elements of every blob a forward pass that keeps them all holds (one value per blob name)."""
    counts = [count(shape) for shape in report.blobs.values()]
    return None if None in counts else sum(counts)  # type: ignore[arg-type]


def check_blobs_budget(spec: NetSpec, report: ShapeReport, what: str = "a forward pass keeping every blob") -> None:
    """Refuse to run a net whose blobs would take more memory than the blobs budget (limits.max_blobs_bytes)."""
    total = blob_elements(report)
    if total is None:
        return
    budget = limits.max_blobs_bytes()
    needed = total * limits.FLOAT_BYTES
    if needed > budget:
        name, shape = max(report.blobs.items(), key=lambda item: count(item[1]) or 0)
        inputs = ", ".join(f"{i.name} {shape_text(i.shape)}" for i in spec.inputs)
        raise LimitError(
            f"{what} at input size {inputs} would hold {limits.human_count(total)} values "
            f"({limits.human_bytes(needed)}; the largest blob, '{name}' {shape_text(shape)}, alone "
            f"{limits.human_bytes((count(shape) or 0) * limits.FLOAT_BYTES)}), over the "
            f"{limits.human_bytes(budget)} limit for blobs; use smaller inputs, or raise the limit with "
            f"{limits.BLOBS_VARIABLE}=SIZE (e.g. {limits.BLOBS_VARIABLE}={_next_size(needed)})",
            Location(file=spec.source))


def _next_size(needed: int) -> str:
    """A round size above `needed`, for the hint in a limit error."""
    gib = -(-needed // (1 << 30))
    return f"{gib}G"
