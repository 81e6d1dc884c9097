"""Layers that move data without arithmetic: Concat, Slice, Split, Flatten, Reshape, Crop, Tile, BatchReindex,
Filter, Parameter."""

from __future__ import annotations

import torch
from torch import nn

from caffe2torch.caffe_math import canonical_axis, reshape_output_shape
from caffe2torch.layers.registry import CaffeLayer, LayerConverter, count, register, shape_text


def _add(values):
    if any(v is None for v in values):
        return None
    return sum(values)


@register("Concat")
class ConcatConverter(LayerConverter):
    bottom_counts = (1, None)
    top_counts = (1, 1)

    def output_shapes(self, spec, bottoms, ctx):
        """ConcatLayer::Reshape: the same number of axes, and equal sizes on every axis but the concat axis."""
        axis = canonical_axis(spec.param("concat_param").get("axis", 1), len(bottoms[0]))
        first = bottoms[0]
        for index, other in enumerate(bottoms[1:], 1):
            if len(other) != len(first):
                raise ValueError(f"Concat inputs must have the same number of axes: bottom 0 is {shape_text(first)}, "
                                 f"bottom {index} {shape_text(other)}")
            for j, (a, b) in enumerate(zip(first, other)):
                if j != axis and a is not None and b is not None and a != b:
                    raise ValueError(f"Concat inputs must match in every axis but the concat axis {axis}: bottom 0 "
                                     f"is {shape_text(first)}, bottom {index} {shape_text(other)} (axis {j} differs)")
        shape = list(first)
        shape[axis] = _add([b[axis] for b in bottoms])
        return [tuple(shape)]

    def build(self, spec, bottoms, ctx):
        return CaffeConcat(canonical_axis(spec.param("concat_param").get("axis", 1), len(bottoms[0])))


class CaffeConcat(CaffeLayer):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *xs):
        return torch.cat(xs, dim=self.axis)


def slice_sizes(total: int | None, points: list[int], tops: int) -> list[int | None]:
    """Caffe's Slice: explicit slice points (strictly increasing, inside the axis), or an equal split into as
    many parts as there are tops (SliceLayer::Reshape's CHECKs)."""
    if points:
        if len(points) != tops - 1:
            raise ValueError(f"{len(points)} slice point(s) for {tops} top(s); Slice needs one fewer point than tops")
        previous = 0
        for point in points:
            if point <= previous:
                raise ValueError(f"slice points {points} must increase strictly, from above 0")
            previous = point
        if total is None:
            bounds = [0, *points]
            return [b - a for a, b in zip(bounds, bounds[1:])] + [None]
        if tops > total:
            raise ValueError(f"{tops} tops cannot slice an axis of size {total}")
        if points[-1] >= total:
            raise ValueError(f"slice point {points[-1]} is not inside the sliced axis of size {total}")
        bounds = [0, *points, total]
        return [b - a for a, b in zip(bounds, bounds[1:])]
    if total is None:
        return [None] * tops
    if total % tops:
        raise ValueError(f"{tops} tops do not divide the sliced axis of size {total} evenly")
    return [total // tops] * tops


@register("Slice")
class SliceConverter(LayerConverter):
    bottom_counts = (1, 1)
    top_counts = (1, None)

    def _axis_points(self, spec, ndim):
        p = spec.param("slice_param")
        return canonical_axis(p.get("axis", 1), ndim), list(p.get("slice_point", []))

    def output_shapes(self, spec, bottoms, ctx):
        axis, points = self._axis_points(spec, len(bottoms[0]))
        shapes = []
        for size in slice_sizes(bottoms[0][axis], points, len(spec.tops)):
            shape = list(bottoms[0])
            shape[axis] = size
            shapes.append(tuple(shape))
        return shapes

    def build(self, spec, bottoms, ctx):
        axis, points = self._axis_points(spec, len(bottoms[0]))
        return CaffeSlice(axis, points, len(spec.tops))


class CaffeSlice(CaffeLayer):
    def __init__(self, axis: int, points: list[int], tops: int):
        super().__init__()
        self.axis, self.points, self.tops = axis, points, tops

    def forward(self, x):
        sizes = slice_sizes(x.shape[self.axis], self.points, self.tops)
        return tuple(torch.split(x, sizes, dim=self.axis))


@register("Split")
class SplitConverter(LayerConverter):
    bottom_counts = (1, 1)
    top_counts = (1, None)
    in_place = False

    def output_shapes(self, spec, bottoms, ctx):
        return [bottoms[0]] * len(spec.tops)

    def build(self, spec, bottoms, ctx):
        return CaffeSplit(len(spec.tops))


class CaffeSplit(CaffeLayer):
    def __init__(self, tops: int):
        super().__init__()
        self.tops = tops

    def forward(self, x):
        return tuple(x for _ in range(self.tops)) if self.tops != 1 else x


@register("Flatten")
class FlattenConverter(LayerConverter):
    bottom_counts = (1, 1)
    top_counts = (1, 1)
    in_place = False

    def _axes(self, spec, ndim):
        p = spec.param("flatten_param")
        start, end = canonical_axis(p.get("axis", 1), ndim), canonical_axis(p.get("end_axis", -1), ndim)
        if end + 1 < start:
            raise ValueError(f"flatten_param.end_axis {p.get('end_axis', -1)} comes before axis {p.get('axis', 1)}")
        return start, end

    def output_shapes(self, spec, bottoms, ctx):
        start, end = self._axes(spec, len(bottoms[0]))
        size = count(bottoms[0][start : end + 1])
        return [tuple(bottoms[0][:start]) + (size,) + tuple(bottoms[0][end + 1 :])]

    def build(self, spec, bottoms, ctx):
        start, end = self._axes(spec, len(bottoms[0]))
        return CaffeFlatten(start, end)


class CaffeFlatten(CaffeLayer):
    def __init__(self, start: int, end: int):
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x):
        if self.end < self.start:  # Caffe's count over an empty axis range: a new axis of size 1
            return x.unsqueeze(self.start)
        return torch.flatten(x, self.start, self.end)


@register("Reshape")
class ReshapeConverter(LayerConverter):
    bottom_counts = (1, 1)
    top_counts = (1, 1)
    in_place = False

    def output_shapes(self, spec, bottoms, ctx):
        return [reshape_output_shape(tuple(bottoms[0]), spec.param("reshape_param"))]

    def build(self, spec, bottoms, ctx):
        return CaffeReshape(spec.param("reshape_param"))


class CaffeReshape(CaffeLayer):
    def __init__(self, param: dict):
        super().__init__()
        self.param = param

    def forward(self, x):
        return x.reshape(reshape_output_shape(tuple(x.shape), self.param))


@register("Crop")
class CropConverter(LayerConverter):
    """Upstream Crop: bottom0 cut to bottom1's size from `axis` on, at `offset` (one for all, or one each)."""

    bottom_counts = (2, 2)
    top_counts = (1, 1)

    def _offsets(self, spec, ndim):
        p = spec.param("crop_param")
        axis = canonical_axis(p.get("axis", 2), ndim)
        offsets = list(p.get("offset", []))
        count = ndim - axis
        if len(offsets) == 1:
            offsets = offsets * count
        elif not offsets:
            offsets = [0] * count
        elif len(offsets) != count:
            raise ValueError(f"crop_param has {len(offsets)} offsets for {count} cropped axes (give one for all, "
                             "or one per axis from crop_param.axis on)")
        if min(offsets) < 0:
            raise ValueError(f"crop offsets {offsets} must not be negative")
        return axis, offsets

    def output_shapes(self, spec, bottoms, ctx):
        """CropLayer::LayerSetUp/Reshape: same number of axes; each cropped axis offset + size <= the input's."""
        if len(bottoms[0]) != len(bottoms[1]):
            raise ValueError(f"Crop's bottoms must have the same number of axes: {shape_text(bottoms[0])} and "
                             f"{shape_text(bottoms[1])}")
        axis, offsets = self._offsets(spec, len(bottoms[0]))
        shape = list(bottoms[0][:axis]) + list(bottoms[1][axis:])
        for i, off in enumerate(offsets):
            big, small = bottoms[0][axis + i], bottoms[1][axis + i]
            if big is not None and small is not None and off + small > big:
                raise ValueError(f"Crop of axis {axis + i}: offset {off} + size {small} exceeds the input's {big}")
        return [tuple(shape)]

    def build(self, spec, bottoms, ctx):
        axis, offsets = self._offsets(spec, len(bottoms[0]))
        return CaffeCrop(axis, offsets)


class CaffeCrop(CaffeLayer):
    def __init__(self, axis: int, offsets: list[int]):
        super().__init__()
        self.axis, self.offsets = axis, offsets

    def forward(self, x, reference):
        for i, off in enumerate(self.offsets):
            dim = self.axis + i
            x = x.narrow(dim, off, reference.shape[dim])
        return x


@register("Tile")
class TileConverter(LayerConverter):
    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def validate(self, spec, ctx):
        tiles = spec.param("tile_param").get("tiles")
        if tiles is None:
            return ["tile_param needs tiles"]
        return [] if tiles >= 1 else [f"tile_param.tiles {tiles}: must be > 0"]

    def output_shapes(self, spec, bottoms, ctx):
        p = spec.param("tile_param")
        axis = canonical_axis(p.get("axis", 1), len(bottoms[0]))
        shape = list(bottoms[0])
        shape[axis] = None if shape[axis] is None else shape[axis] * int(p["tiles"])
        return [tuple(shape)]

    def build(self, spec, bottoms, ctx):
        p = spec.param("tile_param")
        return CaffeTile(canonical_axis(p.get("axis", 1), len(bottoms[0])), int(p["tiles"]))


class CaffeTile(CaffeLayer):
    def __init__(self, axis: int, tiles: int):
        super().__init__()
        self.axis, self.tiles = axis, tiles

    def forward(self, x):
        reps = [1] * x.dim()
        reps[self.axis] = self.tiles
        return x.repeat(*reps)


@register("BatchReindex")
class BatchReindexConverter(LayerConverter):
    """BatchReindexLayer: top[i] = bottom0[int(bottom1[i])] along the first axis; bottom1 is 1-D. An index
    outside [0, N) stops Caffe (its CHECKs) and is an error here too."""

    bottom_counts = (2, 2)
    top_counts = (1, 1)

    def output_shapes(self, spec, bottoms, ctx):
        data, index = bottoms
        if len(index) != 1:
            raise ValueError(f"BatchReindex's second bottom must be 1-D (the indices), not {shape_text(index)}")
        if not data:
            raise ValueError("BatchReindex needs a first bottom with at least one axis")
        return [(index[0], *data[1:])]

    def build(self, spec, bottoms, ctx):
        return CaffeBatchReindex()


class CaffeBatchReindex(CaffeLayer):
    def forward(self, x, index):
        order = index.to(torch.int64)  # Caffe's static_cast<int>: truncation toward zero
        if not torch.jit.is_tracing() and order.numel() and (order.min() < 0 or order.max() >= x.shape[0]):
            raise ValueError(f"BatchReindex index out of range [0, {x.shape[0]}): Caffe stops here too")
        return x.index_select(0, order)


@register("Filter")
class FilterConverter(LayerConverter):
    """FilterLayer: the last bottom selects items (first-axis entries whose selector value is nonzero); every
    other bottom is filtered to them, in order. The output's first axis depends on the data (unknown here)."""

    bottom_counts = (2, None)
    top_counts = (1, None)

    def validate(self, spec, ctx):
        if len(spec.tops) != len(spec.bottoms) - 1:
            return [f"Filter makes one top per bottom but the last (the selector): {len(spec.bottoms)} bottoms "
                    f"need {len(spec.bottoms) - 1} tops, this layer has {len(spec.tops)}"]
        return []

    def output_shapes(self, spec, bottoms, ctx):
        selector = bottoms[-1]
        if not selector or any(d is not None and d != 1 for d in selector[1:]):
            raise ValueError(f"Filter's selector (last bottom) {shape_text(selector)} must be (N, 1, ...): every "
                             "axis but the first a singleton")
        for index, shape in enumerate(bottoms[:-1]):
            if not shape or (shape[0] is not None and selector[0] is not None and shape[0] != selector[0]):
                raise ValueError(f"bottom {index} {shape_text(shape)} must have the selector's first axis "
                                 f"({selector[0]})")
        return [(None, *shape[1:]) for shape in bottoms[:-1]]

    def build(self, spec, bottoms, ctx):
        return CaffeFilter(len(spec.tops))


class CaffeFilter(CaffeLayer):
    def __init__(self, tops: int):
        super().__init__()
        self.tops = tops

    def forward(self, *xs):
        *data, selector = xs
        keep = torch.nonzero(selector.reshape(selector.shape[0]) != 0).reshape(-1)
        picked = tuple(x.index_select(0, keep) for x in data)
        return picked if self.tops != 1 else picked[0]


@register("Parameter")
class ParameterConverter(LayerConverter):
    """ParameterLayer: no bottoms; its one blob, shaped by parameter_param.shape, is its top."""

    bottom_counts = (0, 0)
    top_counts = (1, 1)

    def _shape(self, spec) -> tuple[int, ...]:
        return tuple(int(d) for d in spec.param("parameter_param").get("shape", {}).get("dim", []))

    def validate(self, spec, ctx):
        shape = self._shape(spec)
        return [f"parameter_param.shape {list(shape)}: dimensions must be positive"] if any(d < 1 for d in shape) \
            else []

    def output_shapes(self, spec, bottoms, ctx):
        return [self._shape(spec)]

    def blob_shapes(self, spec, bottoms):
        return [self._shape(spec)]

    def build(self, spec, bottoms, ctx):
        return CaffeParameter(self._shape(spec))


class CaffeParameter(CaffeLayer):
    blob_names = ("value",)

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(shape))

    def forward(self):
        return self.value.clone()  # the top is a blob of its own (Caffe shares its data; nothing writes to it)
