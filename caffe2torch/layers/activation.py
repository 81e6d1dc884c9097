"""Element-wise layers: ReLU, PReLU, Sigmoid, TanH, AbsVal, Power, Exp, Log, ELU, BNLL, Threshold, Dropout."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from caffe2torch.layers.registry import CaffeLayer, LayerConverter, register


class Elementwise(CaffeLayer):
    """A parameter-free element-wise function of one bottom."""

    def __init__(self, fn, description: str = ""):
        super().__init__()
        self.fn, self.description = fn, description

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.description


@register("ReLU")
class ReLUConverter(LayerConverter):
    def build(self, spec, bottoms, ctx):
        slope = float(spec.param("relu_param").get("negative_slope", 0.0))
        if slope == 0.0:
            return Elementwise(F.relu, "relu")
        return Elementwise(lambda x: F.leaky_relu(x, slope), f"negative_slope={slope}")


@register("PReLU")
class PReLUConverter(LayerConverter):
    def blob_shapes(self, spec, bottoms):
        shared = spec.param("prelu_param").get("channel_shared", False)
        return [(1,) if shared else (bottoms[0][1],)]

    def build(self, spec, bottoms, ctx):
        shared = spec.param("prelu_param").get("channel_shared", False)
        return CaffePReLU(1 if shared else int(bottoms[0][1]))


class CaffePReLU(CaffeLayer):
    blob_names = ("weight",)

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), 0.25))

    def forward(self, x):
        return F.prelu(x, self.weight)


@register("Sigmoid")
class SigmoidConverter(LayerConverter):
    def build(self, spec, bottoms, ctx):
        return Elementwise(torch.sigmoid, "sigmoid")


@register("TanH")
class TanHConverter(LayerConverter):
    def build(self, spec, bottoms, ctx):
        return Elementwise(torch.tanh, "tanh")


@register("AbsVal")
class AbsValConverter(LayerConverter):
    def build(self, spec, bottoms, ctx):
        return Elementwise(torch.abs, "abs")


@register("BNLL")
class BNLLConverter(LayerConverter):
    def build(self, spec, bottoms, ctx):
        return Elementwise(F.softplus, "log(1 + exp(x))")


@register("Dropout")
class DropoutConverter(LayerConverter):
    """Identity at test time: Caffe's Dropout scales during training (scale_train), not at test."""

    def check(self, spec, ctx):
        # SegNet's and ENet's Caffe: sample_weights_test drops at TEST too (Bayesian SegNet's Monte Carlo dropout).
        if spec.param("dropout_param").get("sample_weights_test"):
            return ["dropout_param.sample_weights_test: true (random dropout at test time, Bayesian SegNet's "
                    "sampling; remove it for the deterministic SegNet)"]
        return []

    def build(self, spec, bottoms, ctx):
        return Elementwise(lambda x: x, "identity at test time")


@register("Threshold")
class ThresholdConverter(LayerConverter):
    def build(self, spec, bottoms, ctx):
        t = float(spec.param("threshold_param").get("threshold", 0.0))
        return Elementwise(lambda x: (x > t).to(x.dtype), f"x > {t}")


@register("ELU")
class ELUConverter(LayerConverter):
    def build(self, spec, bottoms, ctx):
        alpha = float(spec.param("elu_param").get("alpha", 1.0))
        return Elementwise(lambda x: F.elu(x, alpha), f"alpha={alpha}")


def _affine(scale: float, shift: float):
    if scale == 1.0 and shift == 0.0:
        return lambda x: x
    if shift == 0.0:
        return lambda x: x * scale
    return lambda x: x * scale + shift


@register("Power")
class PowerConverter(LayerConverter):
    """y = (shift + scale * x) ^ power."""

    def build(self, spec, bottoms, ctx):
        p = spec.param("power_param")
        power, scale, shift = float(p.get("power", 1.0)), float(p.get("scale", 1.0)), float(p.get("shift", 0.0))
        inner = _affine(scale, shift)
        if power == 1.0:
            return Elementwise(inner, f"{scale}*x + {shift}")
        return Elementwise(lambda x: torch.pow(inner(x), power), f"({scale}*x + {shift})^{power}")


@register("Exp")
class ExpConverter(LayerConverter):
    """y = base ^ (shift + scale * x); base -1 means e."""

    def build(self, spec, bottoms, ctx):
        p = spec.param("exp_param")
        base, scale, shift = float(p.get("base", -1.0)), float(p.get("scale", 1.0)), float(p.get("shift", 0.0))
        log_base = 1.0 if base == -1.0 else math.log(base)
        inner = _affine(scale * log_base, shift * log_base)
        return Elementwise(lambda x: torch.exp(inner(x)), f"base={base} scale={scale} shift={shift}")

    def check(self, spec, ctx):
        base = spec.param("exp_param").get("base", -1.0)
        return [] if base == -1.0 or base > 0 else [f"exp_param.base={base} (must be > 0 or -1)"]


@register("Log")
class LogConverter(LayerConverter):
    """y = log_base(shift + scale * x); base -1 means e."""

    def build(self, spec, bottoms, ctx):
        p = spec.param("log_param")
        base, scale, shift = float(p.get("base", -1.0)), float(p.get("scale", 1.0)), float(p.get("shift", 0.0))
        inv_log_base = 1.0 if base == -1.0 else 1.0 / math.log(base)
        inner = _affine(scale, shift)
        return Elementwise(lambda x: torch.log(inner(x)) * inv_log_base, f"base={base} scale={scale} shift={shift}")

    def check(self, spec, ctx):
        base = spec.param("log_param").get("base", -1.0)
        return [] if base == -1.0 or base > 0 else [f"log_param.base={base} (must be > 0 or -1)"]
