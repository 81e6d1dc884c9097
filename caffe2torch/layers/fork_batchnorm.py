"""The `BN` layer of the segmentation forks: one type string, two different layers.

- SegNet's and ENet's (caffe-segnet and caffe-enet bn_layer.cpp, identical): two blobs, scale and shift, of
  shape (1, C, 1, 1). `bn_param.bn_mode` INFERENCE computes x * scale + shift and nothing else: SegNet's
  compute_bn_statistics.py (and ENet's BN-absorber) fold the dataset statistics into those two blobs of the
  released caffemodels. LEARN, the default in every phase, normalises by the statistics of the batch itself:
  mean and E(x^2) - mean^2 over (N, H, W) (Caffe's one-pass formula, biased), eps 1e-9 (fixed in the code),
  then scale and shift; optional tops 1 and 2 are that mean and variance (1, C, 1, 1), before the eps (only in
  LEARN mode: BNLayer::MaxTopBlobs).
- PSPNet's and ICNet's (hszhao/PSPNet bn_layer.cpp): four blobs, slope, bias, moving mean, moving variance,
  each (1, C, 1, 1); at TEST (or with `frozen`) (x - mean) * (variance + eps)^-1/2 * slope + bias, eps from
  bn_param (default 1e-5). In TRAIN without `frozen` it normalises by the batch and updates the moving averages
  (momentum), which a converted module does not reproduce: refused.

Which one a layer is shows in its bn_param fields (`bn_kind`); where a file sets none, the upgrade chain writes
out its dialect's default (bn_mode LEARN for SegNet and ENet, eps 1e-5 for PSPNet: Dialect.param_defaults)."""

from __future__ import annotations

import torch
from torch import nn

from caffe2torch.layers.registry import CaffeLayer, LayerConverter, register
from caffe2torch.netspec import LayerSpec

# The bn_param fields only one of the two forks has: they tell the layers apart. Where a file sets none, its
# dialect's `param_defaults` (caffe2torch/dialects: segnet, enet, pspnet) write out bn_mode or eps in the
# upgrade chain, so the kind is always visible in the layer's own parameters.
SEGNET_BN_FIELDS = frozenset({"bn_mode", "scale_filler", "shift_filler"})
PSPNET_BN_FIELDS = frozenset({"slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine"})
SCALE_SHIFT, SLOPE_BIAS_STATISTICS = "SegNet/ENet", "PSPNet"
# caffe-segnet / caffe-enet BNLayer::LayerSetUp: var_eps_ = 1e-9, not a parameter.
SEGNET_BN_EPS = 1e-9
PSPNET_BN_EPS = 1e-5


def bn_kind(spec: LayerSpec) -> str | None:
    """Which fork's BN a layer is, from its bn_param fields; None when they do not say or say both."""
    fields = set(spec.param("bn_param"))
    segnet, pspnet = bool(fields & SEGNET_BN_FIELDS), bool(fields & PSPNET_BN_FIELDS)
    if segnet == pspnet:
        return None
    return SCALE_SHIFT if segnet else SLOPE_BIAS_STATISTICS


def unknown_bn_kind(param: dict, dialect: str) -> str:
    """Why a BN layer's fork cannot be told."""
    segnet, pspnet = sorted(set(param) & SEGNET_BN_FIELDS), sorted(set(param) & PSPNET_BN_FIELDS)
    if segnet and pspnet:
        return f"bn_param mixes fields of SegNet's BN ({', '.join(segnet)}) and PSPNet's ({', '.join(pspnet)})"
    return ("BN is a layer of SegNet's and ENet's Caffe (scale, shift) and of PSPNet's (slope, bias, mean, "
            f"variance): two different layers under one name, and this file, read as dialect '{dialect}', does "
            "not say which (bn_mode or scale_filler: SegNet/ENet; slope_filler, frozen or eps: PSPNet)")


def segnet_batch_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SegNet's LEARN-mode statistics per channel, shaped (1, C, 1, 1): the mean over (N, H, W) and the biased
    variance as E(x^2) - E(x)^2 (Caffe's formula, which is what the layer divides by, cancellation and all)."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    variance = (x * x).mean(dim=(0, 2, 3), keepdim=True) - mean * mean
    return mean, variance


@register("BN")
class ForkBNConverter(LayerConverter):
    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def counts(self, spec):
        # SegNet's BNLayer::MaxTopBlobs: 3 in LEARN mode (the output, batch mean and variance), else 1.
        if bn_kind(spec) == SCALE_SHIFT and spec.param("bn_param").get("bn_mode", "LEARN") == "LEARN":
            return self.bottom_counts, (1, 3)
        return self.bottom_counts, self.top_counts

    def check(self, spec, ctx):
        kind = bn_kind(spec)
        p = spec.param("bn_param")
        if kind is None:
            return [unknown_bn_kind(p, ctx.dialect)]
        if kind == SCALE_SHIFT:
            mode = p.get("bn_mode", "LEARN")
            if mode not in ("LEARN", "INFERENCE"):
                return [f"bn_param.bn_mode: {mode}"]
            return []
        problems = []
        if ctx.phase == "train" and not p.get("frozen", False):
            problems.append("PSPNet BN in TRAIN phase without frozen: it normalises by the batch and updates its "
                            "moving averages, which the converted net does not do (convert for TEST)")
        return problems

    def output_shapes(self, spec, bottoms, ctx):
        shape = bottoms[0]
        if len(shape) != 4:
            raise ValueError(f"BN needs a 4-D bottom (N, C, H, W), got {shape}")
        statistics = (1, shape[1], 1, 1)
        return [shape, statistics, statistics][: len(spec.tops)]

    def blob_shapes(self, spec, bottoms):
        # Both forks store (1, C, 1, 1) blobs: SegNet's scale and shift; PSPNet's slope, bias, mean, variance.
        count = 4 if bn_kind(spec) == SLOPE_BIAS_STATISTICS else 2
        return [(1, bottoms[0][1], 1, 1)] * count

    def build(self, spec, bottoms, ctx):
        channels = int(bottoms[0][1])
        p = spec.param("bn_param")
        if bn_kind(spec) == SLOPE_BIAS_STATISTICS:
            return PSPNetBN(channels, float(p.get("eps", PSPNET_BN_EPS)))
        return SegNetBN(channels, inference=p.get("bn_mode", "LEARN") == "INFERENCE", tops=len(spec.tops))


class SegNetBN(CaffeLayer):
    """caffe-segnet / caffe-enet BN: y = x * scale + shift (INFERENCE), or batch-normalised first (LEARN)."""

    blob_names = ("scale", "shift")

    def __init__(self, channels: int, inference: bool, tops: int = 1):
        super().__init__()
        self.inference, self.tops = inference, tops
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        if self.inference:
            return torch.addcmul(self.shift, x, self.scale)
        mean, variance = segnet_batch_statistics(x)
        normalised = (x - mean) / torch.sqrt(variance + SEGNET_BN_EPS)
        y = torch.addcmul(self.shift, normalised, self.scale)
        return (y, mean, variance)[: self.tops] if self.tops > 1 else y

    def extra_repr(self) -> str:
        return "INFERENCE: x * scale + shift" if self.inference else "LEARN: batch statistics, eps 1e-9"


class PSPNetBN(CaffeLayer):
    """hszhao/PSPNet BN at TEST: (x - mean) * (variance + eps)^-1/2 * slope + bias, all blobs (1, C, 1, 1)."""

    blob_names = ("slope", "bias", "mean", "variance")

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.slope = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("variance", torch.ones(1, channels, 1, 1))

    def folded_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) with y = x * scale + shift."""
        with torch.no_grad():
            scale = torch.pow(self.variance + self.eps, -0.5) * self.slope
            return scale, self.bias - self.mean * scale

    def forward(self, x):
        inverse_std = torch.pow(self.variance + self.eps, -0.5)
        return torch.addcmul(self.bias, (x - self.mean) * inverse_std, self.slope)

    def extra_repr(self) -> str:
        return f"TEST: (x - mean) / sqrt(variance + {self.eps}) * slope + bias"
