"""Shape inference and receptive fields over a NetSpec, by the registry's Caffe rules (no tensors run).

Also the one place that checks a net is convertible: `check_supported` collects every unknown type and every
unsupported parameter value of every layer, and raises them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caffe2torch.caffe_math import receptive_field_step
from caffe2torch.errors import Location, NetDefinitionError, UnsupportedError
from caffe2torch.layers import BuildContext, get_converter
from caffe2torch.layers.registry import count
from caffe2torch.netspec import LayerSpec, NetSpec, Shape
from caffe2torch.upgrade import check_graph, describe_unknown


def layer_location(spec: NetSpec, layer: LayerSpec) -> Location:
    return Location(file=spec.source, line=layer.line, layer=layer.name, layer_type=layer.type)


def context_of(spec: NetSpec) -> BuildContext:
    return BuildContext(dialect=spec.dialect, phase=spec.phase)


def check_supported(spec: NetSpec) -> None:
    """Raise one UnsupportedError listing every unknown layer type and unsupported parameter value."""
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
    if problems:
        raise UnsupportedError(problems, spec.source)


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


@dataclass
class ShapeReport:
    blobs: dict[str, Shape] = field(default_factory=dict)
    layers: list[LayerInfo] = field(default_factory=list)

    def total_params(self) -> int | None:
        counts = [layer.params for layer in self.layers]
        return None if None in counts else sum(c for c in counts if c)


def infer_shapes(spec: NetSpec, check: bool = True) -> ShapeReport:
    """Propagate the inputs' shapes through every layer with Caffe's rules (None = unknown dimension)."""
    if check:
        check_graph(spec)
        check_supported(spec)
    ctx = context_of(spec)
    report = ShapeReport()
    fields: dict[str, tuple[float, float]] = {}
    for inp in spec.inputs:
        report.blobs[inp.name] = tuple(inp.shape)
        fields[inp.name] = (1.0, 1.0)
    for layer in spec.layers:
        converter = get_converter(layer.type)
        assert converter is not None
        bottoms = [report.blobs[b] for b in layer.bottoms]
        try:
            tops = converter.output_shapes(layer, bottoms, ctx) if layer.tops else []
            blob_shapes = converter.blob_shapes(layer, bottoms)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            shown = ", ".join(f"{b} {s}" for b, s in zip(layer.bottoms, bottoms))
            raise NetDefinitionError(f"cannot infer shapes from bottoms {shown}: {exc}",
                                     layer_location(spec, layer)) from None
        for top, shape in zip(layer.tops, tops):
            if any(d is not None and d <= 0 for d in shape):
                raise NetDefinitionError(f"top '{top}' would have shape {shape}; the input is too small",
                                         layer_location(spec, layer))
            report.blobs[top] = tuple(shape)
        counts = [count(s) for s in blob_shapes]
        params = None if None in counts else sum(counts)  # type: ignore[arg-type]
        rf, jump = _grow_field(converter, layer, bottoms, tops, fields)
        for top in layer.tops:
            fields[top] = (rf, jump)
        report.layers.append(LayerInfo(layer.name, layer.type, list(layer.bottoms), list(layer.tops), list(tops),
                                       blob_shapes, params, rf, jump, layer.line))
    return report


def _grow_field(converter, layer, bottoms, tops, fields) -> tuple[float, float]:
    """Receptive field (rows) of a layer's output: the widest of its bottoms, grown by its window."""
    known = [fields[b] for b in layer.bottoms if b in fields]
    if not known:
        return 1.0, 1.0
    rf = max(f for f, _ in known)
    jump = max(j for _, j in known)
    window = converter.window(layer)
    if window is not None:
        (kernel, _), (stride, _), (dilation, _) = window
        if kernel is not None:
            rf, jump = receptive_field_step(rf, jump, kernel, stride, dilation)
    else:
        change = converter.scale_change(layer, bottoms, tops)
        if change:
            jump = jump / change
    return rf, jump
