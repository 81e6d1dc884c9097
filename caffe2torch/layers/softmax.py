"""Softmax (over `axis`, channels by default) and ArgMax with Caffe's tie rule and output layout."""

from __future__ import annotations

import torch

from caffe2torch.caffe_math import canonical_axis
from caffe2torch.layers.registry import CaffeLayer, LayerConverter, count, register


@register("Softmax")
class SoftmaxConverter(LayerConverter):
    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def output_shapes(self, spec, bottoms, ctx):
        canonical_axis(spec.param("softmax_param").get("axis", 1), len(bottoms[0]))
        return [bottoms[0]]

    def build(self, spec, bottoms, ctx):
        return CaffeSoftmax(canonical_axis(spec.param("softmax_param").get("axis", 1), len(bottoms[0])))


class CaffeSoftmax(CaffeLayer):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        return torch.softmax(x, dim=self.axis)


def caffe_topk(x: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Caffe sorts (value, index) pairs with std::greater, so among equal values the LARGER index wins.
    Sorting the reversed axis with a stable sort gives exactly that order."""
    size = x.shape[dim]
    if torch.onnx.is_in_onnx_export():
        # ONNX TopK orders equal values by the lower index of the (here reversed) axis: the same rule.
        values, rev_index = torch.topk(x.flip(dim), k, dim=dim, largest=True, sorted=True)
        return values, (size - 1) - rev_index
    values, rev_index = torch.sort(x.flip(dim), dim=dim, descending=True, stable=True)
    values = values.narrow(dim, 0, k)
    index = (size - 1) - rev_index.narrow(dim, 0, k)
    return values, index


def argmax_flat_shape(ndim: int, batch, top_k: int, out_max_val: bool) -> tuple:
    """ArgMaxLayer::Reshape without an axis: max(ndim, 3) axes of 1, then (N, 1 or 2, top_k)."""
    shape = [1] * max(ndim, 3)
    shape[0], shape[1], shape[2] = batch, 2 if out_max_val else 1, top_k
    return tuple(shape)


@register("ArgMax")
class ArgMaxConverter(LayerConverter):
    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def _params(self, spec):
        p = spec.param("argmax_param")
        return p.get("axis"), int(p.get("top_k", 1)), bool(p.get("out_max_val", False))

    def validate(self, spec, ctx):
        _, top_k, _ = self._params(spec)
        return [] if top_k >= 1 else [f"argmax_param.top_k={top_k}: must be >= 1"]

    def output_shapes(self, spec, bottoms, ctx):
        """ArgMaxLayer::LayerSetUp/Reshape: top_k at most the size it ranks over."""
        axis, top_k, out_max_val = self._params(spec)
        shape = list(bottoms[0])
        if axis is None:
            # Without an axis Caffe works on the flattened C*H*W of each sample: (N, 1 or 2, top_k[, 1...]).
            ranked = count(shape[1:])
            if ranked is not None and top_k > ranked:
                raise ValueError(f"argmax_param.top_k={top_k} exceeds the {ranked} values of each sample")
            return [argmax_flat_shape(len(shape), shape[0], top_k, out_max_val)]
        axis = canonical_axis(axis, len(shape))
        if shape[axis] is not None and top_k > shape[axis]:
            raise ValueError(f"argmax_param.top_k={top_k} exceeds the size {shape[axis]} of axis {axis}")
        shape[axis] = top_k
        return [tuple(shape)]

    def build(self, spec, bottoms, ctx):
        axis, top_k, out_max_val = self._params(spec)
        return CaffeArgMax(None if axis is None else canonical_axis(axis, len(bottoms[0])), top_k, out_max_val)


class CaffeArgMax(CaffeLayer):
    """Indices as float (Caffe blobs are float). With an axis and out_max_val the top holds the values only;
    without an axis it holds indices then values."""

    def __init__(self, axis: int | None, top_k: int, out_max_val: bool):
        super().__init__()
        self.axis, self.top_k, self.out_max_val = axis, top_k, out_max_val

    def forward(self, x):
        if self.axis is None:
            flat = x.reshape(x.shape[0], -1)
            values, index = caffe_topk(flat, self.top_k, 1)
            flat = argmax_flat_shape(x.dim(), x.shape[0], self.top_k, False)
            index = index.to(x.dtype).reshape(flat)
            if self.out_max_val:
                return torch.cat([index, values.reshape(flat)], dim=1)
            return index
        values, index = caffe_topk(x, self.top_k, self.axis)
        return values if self.out_max_val else index.to(x.dtype)
