"""BatchNorm, Scale, Bias, LRN, MVN.

Caffe's BatchNorm keeps three blobs: mean*f, variance*f and the moving-average factor f, and divides by f
at use; a factor of 0 means mean 0 and variance 0, not a division by zero (`batchnorm_statistics`).
Scale and Bias carry the affine part (ResNet's BatchNorm → Scale pairs)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from caffe2torch.caffe_math import canonical_axis
from caffe2torch.layers.registry import CaffeLayer, LayerConverter, count, register, shape_text
from caffe2torch.limits import INT_MAX
from caffe2torch.netspec import LayerSpec, Shape


def batchnorm_statistics(mean, variance, factor):
    """Effective (mean, variance) from Caffe's stored blobs: blob / f, where f == 0 gives 0, not a division by
    zero (Caffe's `scale_factor = f == 0 ? 0 : 1 / f`). Works on numpy arrays and torch tensors alike."""
    if isinstance(factor, torch.Tensor):
        f = factor.reshape(-1)[:1]
        scale = torch.where(f == 0, torch.zeros_like(f), 1.0 / torch.where(f == 0, torch.ones_like(f), f))
        return mean * scale, variance * scale
    f = float(np.asarray(factor).reshape(-1)[0])
    scale = np.float32(0.0 if f == 0 else 1.0 / f)
    return np.asarray(mean, np.float32) * scale, np.asarray(variance, np.float32) * scale


@register("BatchNorm")
class BatchNormConverter(LayerConverter):
    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def output_shapes(self, spec, bottoms, ctx):
        if len(bottoms[0]) < 2:
            raise ValueError(f"BatchNorm of a {len(bottoms[0])}-D blob is not supported (it needs N, C, ...)")
        return [bottoms[0]]

    def _global_stats(self, spec: LayerSpec, phase: str) -> bool:
        # Caffe: use_global_stats defaults to true in TEST and false in TRAIN.
        return bool(spec.param("batch_norm_param").get("use_global_stats", phase == "test"))

    def blob_shapes(self, spec, bottoms):
        c = bottoms[0][1]
        return [(c,), (c,), (1,)]

    def build(self, spec, bottoms, ctx):
        eps = float(spec.param("batch_norm_param").get("eps", 1e-5))
        return CaffeBatchNorm(int(bottoms[0][1]), eps, self._global_stats(spec, ctx.phase))


class CaffeBatchNorm(CaffeLayer):
    """Keeps Caffe's three blobs as they are stored (mean*f, variance*f, f), so shared parameters and
    round trips stay exact; the factor is applied in forward (a constant the ONNX export folds)."""

    blob_names = ("mean", "variance", "factor")

    def __init__(self, channels: int, eps: float, use_global_stats: bool):
        super().__init__()
        self.eps, self.use_global_stats = eps, use_global_stats
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("variance", torch.ones(channels))
        self.register_buffer("factor", torch.ones(1))
        # Set during ONNX export only: (scale, shift) computed eagerly, so the graph holds x * scale + shift
        # with the moving-average factor folded in, not the arithmetic that folds it.
        self.export_affine: tuple[torch.Tensor, torch.Tensor] | None = None

    def folded_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) with y = x * scale + shift, for channels-first 4-D input."""
        with torch.no_grad():
            mean, var = batchnorm_statistics(self.mean, self.variance, self.factor)
            scale = 1.0 / torch.sqrt(var + self.eps)
            return scale.reshape(1, -1, 1, 1).clone(), (-mean * scale).reshape(1, -1, 1, 1).clone()

    def forward(self, x):
        if self.export_affine is not None and self.use_global_stats:
            scale, shift = self.export_affine
            if x.dim() != 4:
                view = (1, -1) + (1,) * (x.dim() - 2)
                scale, shift = scale.reshape(view), shift.reshape(view)
            return x * scale + shift
        if not self.use_global_stats:
            # Caffe's TRAIN behaviour (or use_global_stats: false): statistics of this batch over N and every
            # axis after C (BatchNormLayer's spatial_dim), variance E((x - mean)^2), then sqrt(var + eps).
            axes = (0, *range(2, x.dim()))
            mean = x.mean(dim=axes, keepdim=True)
            centered = x - mean
            var = (centered * centered).mean(dim=axes, keepdim=True)
            return centered / torch.sqrt(var + self.eps)
        mean, var = batchnorm_statistics(self.mean, self.variance, self.factor)
        # (x - mean) / sqrt(var + eps) in one fused pass over the activations
        return F.batch_norm(x, mean, var, None, None, False, 0.0, self.eps)


def _param_shape(spec: LayerSpec, message: str, bottom: Shape) -> tuple[int, Shape]:
    p = spec.param(message)
    axis = canonical_axis(p.get("axis", 1), len(bottom)) if bottom else 0
    num_axes = p.get("num_axes", 1)
    end = len(bottom) if num_axes == -1 else axis + num_axes
    if end > len(bottom):
        raise ValueError(f"{message}: axis {axis} + num_axes {num_axes} extends past the bottom's {len(bottom)} axes")
    return axis, tuple(bottom[axis:end])


class _AffineConverter(LayerConverter):
    """Scale and Bias: the learned blob, or a second bottom, broadcast over bottom 0 from `axis`."""

    message: str = ""
    bottom_counts = (1, 2)
    top_counts = (1, 1)

    def validate(self, spec, ctx):
        num_axes = spec.param(self.message).get("num_axes", 1)
        return [] if num_axes >= -1 else [f"{self.message}.num_axes={num_axes}: must be >= 0, or -1 for all"]

    def learned_shape(self, spec, bottoms) -> tuple[int, Shape]:
        if len(bottoms) > 1:
            # ScaleLayer::Reshape: a scalar second bottom applies from axis 0; else its axes must equal
            # bottom 0's from `axis` on.
            factor = tuple(bottoms[1])
            axis = 0 if not factor else canonical_axis(spec.param(self.message).get("axis", 1), len(bottoms[0]))
            part = tuple(bottoms[0][axis : axis + len(factor)])
            if len(part) != len(factor) or any(a is not None and b is not None and a != b
                                               for a, b in zip(part, factor)):
                raise ValueError(f"{spec.type}'s second bottom {shape_text(factor)} does not match the first bottom "
                                 f"{shape_text(bottoms[0])} from axis {axis} on")
            return axis, factor
        return _param_shape(spec, self.message, bottoms[0])

    def output_shapes(self, spec, bottoms, ctx):
        self.learned_shape(spec, bottoms)
        return [bottoms[0]]


@register("Scale")
class ScaleConverter(_AffineConverter):
    message = "scale_param"

    def blob_shapes(self, spec, bottoms):
        _, shape = self.learned_shape(spec, bottoms)
        bias = spec.param("scale_param").get("bias_term", False)
        learned = [] if len(bottoms) > 1 else [shape]
        return learned + ([shape] if bias else [])

    def build(self, spec, bottoms, ctx):
        axis, shape = self.learned_shape(spec, bottoms)
        bias = spec.param("scale_param").get("bias_term", False)
        return CaffeScale(axis, shape, len(bottoms[0]), learned=len(bottoms) == 1, bias=bias)


class CaffeScale(CaffeLayer):
    """top = bottom * scale (+ bias), scale learned or given as the second bottom, broadcast from `axis`."""

    def __init__(self, axis: int, shape: Shape, ndim: int, learned: bool, bias: bool):
        super().__init__()
        self.view = (1,) * axis + tuple(shape) + (1,) * (ndim - axis - len(shape))
        names = []
        if learned:
            self.weight = nn.Parameter(torch.ones(shape))
            names.append("weight")
        if bias:
            self.bias = nn.Parameter(torch.zeros(shape))
            names.append("bias")
        self.learned, self.has_bias = learned, bias
        self.blob_names = tuple(names)

    def forward(self, x, scale=None):
        scale = self.weight if self.learned else scale
        if self.has_bias:
            return torch.addcmul(self.bias.reshape(self.view), x, scale.reshape(self.view))  # one pass
        return x * scale.reshape(self.view)


@register("Bias")
class BiasConverter(_AffineConverter):
    message = "bias_param"

    def blob_shapes(self, spec, bottoms):
        _, shape = self.learned_shape(spec, bottoms)
        return [] if len(bottoms) > 1 else [shape]

    def build(self, spec, bottoms, ctx):
        axis, shape = self.learned_shape(spec, bottoms)
        return CaffeBias(axis, shape, len(bottoms[0]), learned=len(bottoms) == 1)


class CaffeBias(CaffeLayer):
    def __init__(self, axis: int, shape: Shape, ndim: int, learned: bool):
        super().__init__()
        self.view = (1,) * axis + tuple(shape) + (1,) * (ndim - axis - len(shape))
        self.learned = learned
        if learned:
            self.bias = nn.Parameter(torch.zeros(shape))
            self.blob_names = ("bias",)

    def forward(self, x, bias=None):
        bias = self.bias if self.learned else bias
        return x + bias.reshape(self.view)


@register("LRN")
class LRNConverter(LayerConverter):
    """ACROSS_CHANNELS: x / (k + alpha/n * sum(x^2 over n channels))^beta, torch's local_response_norm.
    WITHIN_CHANNEL (LRNLayer::WithinChannelForward, the CAFFE engine): x * (1 + alpha * avg)^-beta, where avg is
    an AVE pooling of x^2 over a size x size window with pad (size-1)/2, i.e. the window's sum / size^2 (padding
    counts); `k` is not used there."""

    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def validate(self, spec, ctx):
        size = spec.param("lrn_param").get("local_size", 5)
        return [] if size >= 1 and size % 2 == 1 else [f"lrn_param.local_size={size}: Caffe supports only odd sizes"]

    def check(self, spec, ctx):
        p = spec.param("lrn_param")
        region = p.get("norm_region", "ACROSS_CHANNELS")
        if region == "WITHIN_CHANNEL" and p.get("engine") == "CUDNN":
            return ["lrn_param.engine: CUDNN with WITHIN_CHANNEL runs cuDNN's divisive normalisation "
                    "(CuDNNLCNLayer), whose arithmetic caffe2torch does not reproduce; the CAFFE engine's is"]
        return []

    def output_shapes(self, spec, bottoms, ctx):
        if len(bottoms[0]) != 4:
            raise ValueError(f"LRN needs a 4-D bottom (N, C, H, W), not {len(bottoms[0])}-D")
        p = spec.param("lrn_param")
        if p.get("norm_region", "ACROSS_CHANNELS") == "WITHIN_CHANNEL":
            return [bottoms[0]]
        # LRNLayer::Reshape makes a scratch blob of (1, C + size - 1, H, W): within Caffe's INT_MAX limit.
        _, c, h, w = bottoms[0]
        size = p.get("local_size", 5)
        scratch = count((1, None if c is None else c + size - 1, h, w))
        if scratch is not None and scratch > INT_MAX:
            raise ValueError(f"lrn_param.local_size={size}: Caffe's padded scratch blob of {scratch:,} elements "
                             f"exceeds INT_MAX")
        return [bottoms[0]]

    def build(self, spec, bottoms, ctx):
        p = spec.param("lrn_param")
        size, alpha = int(p.get("local_size", 5)), float(p.get("alpha", 1.0))
        beta, k = float(p.get("beta", 0.75)), float(p.get("k", 1.0))
        if p.get("norm_region", "ACROSS_CHANNELS") == "WITHIN_CHANNEL":
            return CaffeWithinChannelLRN(size, alpha, beta)
        return CaffeLRN(size, alpha, beta, k)


def lrn_window(size: int, alpha: float, channels: int) -> tuple[int, float]:
    """(window, alpha) for torch's local_response_norm. A window wider than 2C + 1 channels sums every
    channel for every output, like the window 2C + 1 with alpha scaled by the ratio (torch divides by the
    window size); without this, torch would pad the input by size/2 zero channels (terabytes for a hostile
    local_size). Real nets (size 5) keep their exact arguments."""
    widest = 2 * channels + 1
    if size <= widest:
        return size, alpha
    return widest, alpha * widest / size


class CaffeLRN(CaffeLayer):
    def __init__(self, size, alpha, beta, k):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x):
        size, alpha = lrn_window(self.size, self.alpha, x.shape[1])
        return F.local_response_norm(x, size, alpha, self.beta, self.k)


class CaffeWithinChannelLRN(CaffeLayer):
    def __init__(self, size: int, alpha: float, beta: float):
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x):
        # torch's pooling visits only the window's cells inside the plane: a huge local_size costs no memory.
        average = F.avg_pool2d(x * x, self.size, 1, (self.size - 1) // 2, count_include_pad=True)
        return x * torch.pow(1.0 + self.alpha * average, -self.beta)

    def extra_repr(self) -> str:
        return f"WITHIN_CHANNEL, size={self.size}, alpha={self.alpha}, beta={self.beta}"


@register("MVN")
class MVNConverter(LayerConverter):
    """MVNLayer: per sample and channel (across_channels: per sample) subtract the mean, and with
    normalize_variance (default) divide by sqrt(E((x - mean)^2)) + eps: eps is added to the standard deviation,
    not to the variance (default 1e-9). The top has Caffe's legacy 4-D shape (num, channels, height, width)
    of the bottom: a (N, C) bottom gives (N, C, 1, 1)."""

    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def output_shapes(self, spec, bottoms, ctx):
        shape = tuple(bottoms[0])
        if len(shape) > 4:
            raise ValueError(f"MVN reads its bottom as (num, channels, height, width); a {len(shape)}-D bottom "
                             "has no such legacy shape (Caffe's LegacyShape check)")
        return [shape + (1,) * (4 - len(shape))]

    def build(self, spec, bottoms, ctx):
        p = spec.param("mvn_param")
        return CaffeMVN(bool(p.get("normalize_variance", True)), bool(p.get("across_channels", False)),
                        float(p.get("eps", 1e-9)))


class CaffeMVN(CaffeLayer):
    def __init__(self, normalize_variance: bool, across_channels: bool, eps: float):
        super().__init__()
        self.normalize_variance, self.across_channels, self.eps = normalize_variance, across_channels, eps

    def forward(self, x):
        while x.dim() < 4:
            x = x.unsqueeze(-1)
        axes = (1, 2, 3) if self.across_channels else (2, 3)
        centered = x - x.mean(dim=axes, keepdim=True)
        if not self.normalize_variance:
            return centered
        std = torch.sqrt((centered * centered).mean(dim=axes, keepdim=True))
        return centered / (std + self.eps)

    def extra_repr(self) -> str:
        return (f"normalize_variance={self.normalize_variance}, across_channels={self.across_channels}, "
                f"eps={self.eps}")
