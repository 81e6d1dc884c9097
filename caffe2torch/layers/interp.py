"""DeepLab's Interp (bilinear, align-corners, over a region cropped by negative pads) and v1's Padding.

Sizes come from `caffe_math.interp_output_size` on the live tensor's shape, so the module follows any input
size. Interp maps output pixel x to (in_eff-1)/(out-1) * x: torch's align_corners=True bilinear. When the
effective input already has the output size, Caffe copies (a pure crop); we do the same."""

from __future__ import annotations

import torch.nn.functional as F

from caffe2torch.caffe_math import interp_output_size, padding_output_size
from caffe2torch.layers.registry import CaffeLayer, LayerConverter, register


def interp_crop_and_resize(x, out_h: int, out_w: int, pad_beg: int, pad_end: int):
    """Crop [-pad_beg, size+pad_end) in H and W, then align-corners bilinear to (out_h, out_w)."""
    h, w = x.shape[-2], x.shape[-1]
    if pad_beg or pad_end:
        x = x[..., -pad_beg : h + pad_end, -pad_beg : w + pad_end]
    if x.shape[-2] == out_h and x.shape[-1] == out_w:
        return x
    return F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=True)


def _four_axes(spec, shape) -> None:
    if len(shape) != 4:
        raise ValueError(f"{spec.type} needs a 4-D bottom (N, C, H, W), not {len(shape)}-D")


@register("Interp")
class InterpConverter(LayerConverter):
    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def validate(self, spec, ctx):
        """InterpLayer::LayerSetUp/Reshape's parameter CHECKs (pads <= 0, factors >= 1, one way to size)."""
        try:
            interp_output_size(17, 17, spec.param("interp_param"), ctx.dialect)
        except ValueError as exc:
            return [str(exc)]
        return []

    def output_shapes(self, spec, bottoms, ctx):
        _four_axes(spec, bottoms[0])
        n, c, h, w = bottoms[0]
        out_h, out_w = interp_output_size(h, w, spec.param("interp_param"), ctx.dialect)
        return [(n, c, out_h, out_w)]

    def scale_change(self, spec, bottoms, tops):
        h_in, h_out = bottoms[0][2], tops[0][2]
        if not h_in or not h_out or h_in <= 1 or h_out <= 1:
            return None
        return (h_out - 1) / (h_in - 1)

    def build(self, spec, bottoms, ctx):
        return CaffeInterp(dict(spec.param("interp_param")), ctx.dialect)


class CaffeInterp(CaffeLayer):
    def __init__(self, param: dict, dialect: str):
        super().__init__()
        self.param, self.dialect = param, dialect
        self.pad_beg, self.pad_end = int(param.get("pad_beg", 0)), int(param.get("pad_end", 0))

    def forward(self, x):
        out_h, out_w = interp_output_size(x.shape[-2], x.shape[-1], self.param, self.dialect)
        return interp_crop_and_resize(x, out_h, out_w, self.pad_beg, self.pad_end)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.param.items())


@register("Padding")
class PaddingConverter(LayerConverter):
    """DeepLab v1 PADDING: out(h, w) = in(h - pad_beg, w - pad_beg); positive pads add zeros, negative crop."""

    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def output_shapes(self, spec, bottoms, ctx):
        p = spec.param("padding_param")
        _four_axes(spec, bottoms[0])
        n, c, h, w = bottoms[0]
        return [(n, c, padding_output_size(h, p["pad_beg"], p["pad_end"]),
                 padding_output_size(w, p["pad_beg"], p["pad_end"]))]

    def build(self, spec, bottoms, ctx):
        p = spec.param("padding_param")
        return CaffePadding(int(p["pad_beg"]), int(p["pad_end"]))


class CaffePadding(CaffeLayer):
    def __init__(self, pad_beg: int, pad_end: int):
        super().__init__()
        self.pad_beg, self.pad_end = pad_beg, pad_end

    def forward(self, x):
        return F.pad(x, (self.pad_beg, self.pad_end, self.pad_beg, self.pad_end))
