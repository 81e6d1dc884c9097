"""SegNet's `Upsample` (caffe-segnet and caffe-enet upsample_layer.cpp, identical): max-unpooling driven by the
mask top of a MAX Pooling layer.

Bottoms (data, mask) of equal shape; the mask holds, as floats, the index h * W + w of each pooled maximum in
its channel's input plane. The top is zero except top[mask[i]] = data[i], written for i = 0, 1, ... in order,
so a later value wins a position named twice (overlapping pooling windows). Output size (`upsample_output_size`):
upsample_h x upsample_w when both are given; otherwise in x scale_h - pad_out_h (scale_h and scale_w, or
`scale` for both, default 2; pad_out_h/w subtract one row/column and need scale 2). Caffe stops on an index at
or past the top's plane size; a negative index (a mask of -1: a window with no value above -FLT_MAX) is
undefined behaviour there, and an error here."""

from __future__ import annotations

import torch

from caffe2torch.errors import NetDefinitionError
from caffe2torch.layers.registry import CaffeLayer, LayerConverter, register
from caffe2torch.lowering.unpool import scatter_last_wins


def upsample_geometry(param: dict) -> tuple[tuple[int, int] | None, tuple[int, int], tuple[int, int]]:
    """(fixed (height, width) or None, (scale_h, scale_w), (pad_out_h, pad_out_w)) by UpsampleLayer::LayerSetUp,
    whose checks raise ValueError here."""
    has = param.__contains__
    if not ((has("upsample_h") and has("upsample_w")) or (not has("scale") and has("scale_h") and has("scale_w"))
            or (not has("scale_h") and not has("scale_w"))):
        raise ValueError("upsample_param needs upsample_h and upsample_w, or scale, or scale_h and scale_w "
                         "(without scale)")
    if has("upsample_h") and has("upsample_w"):
        fixed = (int(param["upsample_h"]), int(param["upsample_w"]))
        if min(fixed) <= 1:
            raise ValueError(f"upsample_h and upsample_w must be > 1, got {fixed}")
        return fixed, (1, 1), (0, 0)
    if not has("scale_h"):
        scale = (int(param.get("scale", 2)),) * 2
    else:
        scale = (int(param["scale_h"]), int(param["scale_w"]))
    if min(scale) <= 1:
        raise ValueError(f"the upsampling scale must be > 1, got {scale}")
    pad_out = (int(bool(param.get("pad_out_h", False))), int(bool(param.get("pad_out_w", False))))
    for axis, (s, p) in zip("hw", zip(scale, pad_out)):
        if p and s != 2:
            raise ValueError(f"pad_out_{axis} needs scale_{axis} == 2, got {s}")
    return None, scale, pad_out


def upsample_output_size(height: int | None, width: int | None, param: dict) -> tuple[int | None, int | None]:
    """The top's (height, width): upsample_h/_w when given, else in * scale - pad_out (UpsampleLayer::Reshape)."""
    fixed, scale, pad_out = upsample_geometry(param)
    if fixed is not None:
        return fixed
    return tuple(None if size is None else size * s - p for size, s, p in zip((height, width), scale, pad_out))


@register("Upsample")
class UpsampleConverter(LayerConverter):
    bottom_counts = (2, 2)  # data, pooling mask
    top_counts = (1, 1)

    def check(self, spec, ctx):
        problems = []
        try:
            upsample_geometry(spec.param("upsample_param"))
        except ValueError as exc:
            problems.append(str(exc))
        return problems

    def output_shapes(self, spec, bottoms, ctx):
        data, mask = bottoms
        if len(data) != 4 or len(mask) != 4:
            raise ValueError("Upsample's bottoms must be 4-D (N, C, H, W)")
        if any(a is not None and b is not None and a != b for a, b in zip(data, mask)):
            raise ValueError(f"Upsample's data {data} and mask {mask} must have the same shape")
        out_h, out_w = upsample_output_size(data[2], data[3], spec.param("upsample_param"))
        return [(data[0], data[1], out_h, out_w)]

    def scale_change(self, spec, bottoms, tops):
        # Each value goes back to its pooling window: the pooling's factor (the scale), also where pad_out or
        # upsample_h trims the last row.
        param = spec.param("upsample_param")
        fixed, scale, _ = upsample_geometry(param)
        if fixed is None or "scale" in param:
            return float(scale[0] if fixed is None else param["scale"])
        h_in, h_out = bottoms[0][2], tops[0][2]
        return h_out / h_in if h_in and h_out else None

    def build(self, spec, bottoms, ctx):
        return CaffeUpsample(dict(spec.param("upsample_param")), spec.name)


class CaffeUpsample(CaffeLayer):
    def __init__(self, param: dict, name: str = ""):
        super().__init__()
        self.param, self.layer_name = param, name

    def forward(self, x, mask):
        n, c, h, w = x.shape
        out_h, out_w = upsample_output_size(h, w, self.param)
        # static_cast<int>(float): truncation towards zero, as .to(int64)
        index = mask.reshape(n, c, h * w).to(torch.int64)
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            check_unpool_indices(index, out_h * out_w, self.layer_name)
        top = scatter_last_wins(x.reshape(n, c, h * w), index, out_h * out_w)
        return top.reshape(n, c, out_h, out_w)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.param.items())


def check_unpool_indices(index: torch.Tensor, plane: int, layer: str = "") -> None:
    """Caffe's 'upsample top index out of range' (LOG(FATAL)) as an error; negative indices too."""
    if index.numel() == 0:
        return
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= plane:
        bad = low if low < 0 else high
        raise NetDefinitionError(
            f"Upsample{f' {layer!r}' if layer else ''}: mask index {bad} is outside the top's plane of {plane} "
            "values: the mask does not come from a MAX Pooling whose input has the Upsample's output size "
            "(check scale / upsample_h / upsample_w against the pooling layer)")
