"""Element-wise layers: ReLU, PReLU, Sigmoid, TanH, AbsVal, Power, Exp, Log, ELU, BNLL, Threshold, Dropout, Clip,
Swish."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from caffe2torch.layers.registry import CaffeLayer, LayerConverter, register


class NeuronConverter(LayerConverter):
    """Caffe's NeuronLayer: one bottom, one top of the same shape, in place allowed."""

    bottom_counts = (1, 1)
    top_counts = (1, 1)


def log_base_problem(message: str, base: float) -> list[str]:
    """ExpLayer/LogLayer::LayerSetUp: base > 0 (or -1 for e), and log(base) finite (Log also: nonzero)."""
    if base == -1.0:
        return []
    if not base > 0:
        return [f"{message}.base={base} (must be > 0, or -1 for e)"]
    if math.isinf(base):
        return [f"{message}.base={base}: log(base) is not finite"]
    if message == "log_param" and base == 1.0:
        return ["log_param.base=1: 1/log(base) is not finite"]
    return []


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
class ReLUConverter(NeuronConverter):
    def build(self, spec, bottoms, ctx):
        slope = float(spec.param("relu_param").get("negative_slope", 0.0))
        if slope == 0.0:
            return Elementwise(F.relu, "relu")
        return Elementwise(lambda x: F.leaky_relu(x, slope), f"negative_slope={slope}")


@register("PReLU")
class PReLUConverter(NeuronConverter):
    def output_shapes(self, spec, bottoms, ctx):
        if len(bottoms[0]) < 2:
            raise ValueError(f"PReLU needs a bottom with at least 2 axes, not {len(bottoms[0])}")
        return [bottoms[0]]

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
class SigmoidConverter(NeuronConverter):
    def build(self, spec, bottoms, ctx):
        return Elementwise(torch.sigmoid, "sigmoid")


@register("TanH")
class TanHConverter(NeuronConverter):
    def build(self, spec, bottoms, ctx):
        return Elementwise(torch.tanh, "tanh")


@register("AbsVal")
class AbsValConverter(NeuronConverter):
    in_place = False

    def build(self, spec, bottoms, ctx):
        return Elementwise(torch.abs, "abs")


@register("BNLL")
class BNLLConverter(NeuronConverter):
    def build(self, spec, bottoms, ctx):
        return Elementwise(F.softplus, "log(1 + exp(x))")


@register("Dropout")
class DropoutConverter(NeuronConverter):
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
class ThresholdConverter(NeuronConverter):
    def build(self, spec, bottoms, ctx):
        t = float(spec.param("threshold_param").get("threshold", 0.0))
        return Elementwise(lambda x: (x > t).to(x.dtype), f"x > {t}")


@register("ELU")
class ELUConverter(NeuronConverter):
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
class PowerConverter(NeuronConverter):
    """y = (shift + scale * x) ^ power."""

    def build(self, spec, bottoms, ctx):
        p = spec.param("power_param")
        power, scale, shift = float(p.get("power", 1.0)), float(p.get("scale", 1.0)), float(p.get("shift", 0.0))
        inner = _affine(scale, shift)
        if power == 1.0:
            return Elementwise(inner, f"{scale}*x + {shift}")
        return Elementwise(lambda x: torch.pow(inner(x), power), f"({scale}*x + {shift})^{power}")


@register("Exp")
class ExpConverter(NeuronConverter):
    """y = base ^ (shift + scale * x); base -1 means e."""

    def build(self, spec, bottoms, ctx):
        p = spec.param("exp_param")
        base, scale, shift = float(p.get("base", -1.0)), float(p.get("scale", 1.0)), float(p.get("shift", 0.0))
        log_base = 1.0 if base == -1.0 else math.log(base)
        inner = _affine(scale * log_base, shift * log_base)
        return Elementwise(lambda x: torch.exp(inner(x)), f"base={base} scale={scale} shift={shift}")

    def validate(self, spec, ctx):
        return log_base_problem("exp_param", float(spec.param("exp_param").get("base", -1.0)))


@register("Log")
class LogConverter(NeuronConverter):
    """y = log_base(shift + scale * x); base -1 means e."""

    def build(self, spec, bottoms, ctx):
        p = spec.param("log_param")
        base, scale, shift = float(p.get("base", -1.0)), float(p.get("scale", 1.0)), float(p.get("shift", 0.0))
        inv_log_base = 1.0 if base == -1.0 else 1.0 / math.log(base)
        inner = _affine(scale, shift)
        return Elementwise(lambda x: torch.log(inner(x)) * inv_log_base, f"base={base} scale={scale} shift={shift}")

    def validate(self, spec, ctx):
        return log_base_problem("log_param", float(spec.param("log_param").get("base", -1.0)))


@register("Clip")
class ClipConverter(NeuronConverter):
    """ClipLayer: max(min, min(x, max)); both bounds are required fields of clip_param."""

    def validate(self, spec, ctx):
        p = spec.param("clip_param")
        missing = [name for name in ("min", "max") if name not in p]
        return [f"clip_param needs {' and '.join(missing)} (required fields)"] if missing else []

    def build(self, spec, bottoms, ctx):
        p = spec.param("clip_param")
        low, high = float(p["min"]), float(p["max"])
        # std::max(min, std::min(x, max)): with min > max every value becomes min, as here.
        return Elementwise(lambda x: torch.clamp(torch.clamp(x, max=high), min=low), f"clip to [{low}, {high}]")


@register("Swish")
class SwishConverter(NeuronConverter):
    """SwishLayer: x * sigmoid(beta * x)."""

    def build(self, spec, bottoms, ctx):
        beta = float(spec.param("swish_param").get("beta", 1.0))
        if beta == 1.0:
            return Elementwise(lambda x: x * torch.sigmoid(x), "x * sigmoid(x)")
        return Elementwise(lambda x: x * torch.sigmoid(x * beta), f"x * sigmoid({beta} * x)")
