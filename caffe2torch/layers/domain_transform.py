"""DeepLab v2's DomainTransform (DT-EdgeNet, CVPR'16): a recursive edge-preserving filter of the features,
guided by a learned edge map, over each image's valid data_dim region.

Iteration i of N uses sigma_i = spatial_sigma * sqrt(3) * 2^(N-i-1) / sqrt(4^N - 1) and per-pixel weights
w = clamp(exp(-sqrt(2)/sigma_i * (1 + grad * spatial_sigma/range_sigma)), min_weight, 1); it makes four
passes (left→right, right→left, top→bottom, bottom→top), each y[i] += w[i] * (y[i-1] - y[i]) with i-1 the
previous pixel in the pass direction (facts sheet §7). Pixels outside the region keep their input value."""

from __future__ import annotations

import math

import torch

from caffe2torch.layers.registry import CaffeLayer, LayerConverter, register


def domain_transform_sigmas(spatial_sigma: float, num_iter: int) -> list[float]:
    return [
        spatial_sigma * math.sqrt(3.0) * 2.0 ** (num_iter - i - 1) / math.sqrt(4.0**num_iter - 1.0)
        for i in range(num_iter)
    ]


def _recursive_pass(y: torch.Tensor, w: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    """One causal pass along `dim` (2 = rows, 3 = columns) of y (C,H,W slice) with weights w (1,H,W)."""
    size = y.shape[dim]
    order = range(size - 2, -1, -1) if reverse else range(1, size)
    step = 1 if reverse else -1
    slices = list(y.unbind(dim))
    weights = w.unbind(dim)
    for i in order:
        slices[i] = slices[i] + weights[i] * (slices[i + step] - slices[i])
    return torch.stack(slices, dim)


def domain_transform(
    features: torch.Tensor, grad: torch.Tensor, data_dim: torch.Tensor | None,
    num_iter: int = 3, spatial_sigma: float = 50.0, range_sigma: float = 5.0, min_weight: float = 0.0,
) -> torch.Tensor:
    out = features.clone()
    height, width = features.shape[-2:]
    for n in range(features.shape[0]):
        h, w = height, width
        if data_dim is not None:
            h = min(int(data_dim[n].reshape(-1)[0]), height)
            w = min(int(data_dim[n].reshape(-1)[1]), width)
        y = features[n, :, :h, :w]
        g = grad[n, :1, :h, :w]
        for sigma in domain_transform_sigmas(spatial_sigma, num_iter):
            weight = torch.exp(-math.sqrt(2.0) / sigma * (1.0 + g * (spatial_sigma / range_sigma)))
            weight = weight.clamp(min_weight, 1.0)
            y = _recursive_pass(y, weight, 2, reverse=False)
            y = _recursive_pass(y, weight, 2, reverse=True)
            y = _recursive_pass(y, weight, 1, reverse=False)
            y = _recursive_pass(y, weight, 1, reverse=True)
        out[n, :, :h, :w] = y
    return out


@register("DomainTransform", "DomainTransformForwardOnly")
class DomainTransformConverter(LayerConverter):
    exportable = False
    bottom_counts = (2, 3)  # features, edge map[, data_dim]
    top_counts = (1, 1)

    def check(self, spec, ctx):
        p = spec.param("domain_transform_param")
        problems = []
        if len(spec.bottoms) not in (2, 3):
            problems.append("DomainTransform needs bottoms (features, edge map[, data_dim])")
        if p.get("num_iter", 3) < 1:
            problems.append("domain_transform_param.num_iter must be >= 1")
        return problems

    def build(self, spec, bottoms, ctx):
        p = spec.param("domain_transform_param")
        return CaffeDomainTransform(int(p.get("num_iter", 3)), float(p.get("spatial_sigma", 50.0)),
                                    float(p.get("range_sigma", 5.0)), float(p.get("min_weight", 0.0)))


class CaffeDomainTransform(CaffeLayer):
    def __init__(self, num_iter, spatial_sigma, range_sigma, min_weight):
        super().__init__()
        self.num_iter, self.spatial_sigma = num_iter, spatial_sigma
        self.range_sigma, self.min_weight = range_sigma, min_weight

    def forward(self, features, grad, data_dim=None):
        return domain_transform(features, grad, data_dim, self.num_iter, self.spatial_sigma, self.range_sigma,
                                self.min_weight)
