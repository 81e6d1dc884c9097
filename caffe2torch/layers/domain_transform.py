"""DeepLab v2's DomainTransform and DomainTransformForwardOnly (DT-EdgeNet, CVPR'16): a recursive
edge-preserving filter of the features, guided by an edge map, over each image's valid data_dim region.

As deeplab-public-ver2 `src/caffe/layers/domain_transform_layer.cpp` (CPU path) computes it, in float32:
- bottoms: features (N, C, H, W), edge map (N, 1, H, W), data_dim (valid height, width of each image: the first
  two values of image n's slice, e.g. an (N, 1, 1, 2) blob; truncated to integers);
- iteration i of N: sigma_i = float(spatial_sigma * sqrt(3) * 2^(N-i-1) / sqrt(4^N - 1)) (in double), and per
  pixel w = exp(m1 * (1 + edge * m2)) with m1 = float(-sqrt(2) / sigma_i), m2 = spatial_sigma / range_sigma
  (float); DomainTransform clamps w to [min_weight, 1], DomainTransformForwardOnly does not clamp at all;
- four passes per iteration, each channel alike: left→right, right→left, top→bottom, bottom→top. The weight
  of the edge between two neighbours is stored at the later (right / lower) pixel and both directions use it:
  y[x] += w[x] * (y[x-1] - y[x]), then y[x] += w[x+1] * (y[x+1] - y[x]); the same along rows;
- only the top-left data_dim region is filtered; outside it the output is the input.

Vectorised: the recursion is sequential along its own axis only, so each pass runs over that axis with
every image, channel and line of the other axis at once (`lowering.domain_transform.recursion`, an onnx::Loop
when exported). The images' regions are applied as weights forced to 0 outside them (a step with weight 0
changes nothing, which also cuts the recursion at the region's border, as Caffe's loop bounds do); the
filtered values outside are then replaced by the input.

Differences from Caffe, where Caffe has no defined result: data_dim larger than the blob filters the whole
blob (Caffe aborts on CHECK_LE), and data_dim may be left out (Caffe reads a third bottom unconditionally).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from caffe2torch.layers.registry import CaffeLayer, LayerConverter, register
from caffe2torch.lowering.domain_transform import recursion

# More iterations than this are refused: they would be unrolled into the exported graph one by one, and no
# DT-EdgeNet model uses more than a handful (sigma_i halves with every iteration).
MAX_ITERATIONS = 100


def domain_transform_sigmas(spatial_sigma: float, num_iter: int) -> list[np.float32]:
    """sigma_i of each iteration, as Caffe's ComputeSigma: computed in double, stored as float."""
    ss = np.float64(np.float32(spatial_sigma))
    with np.errstate(over="ignore"):
        denominator = np.sqrt(np.power(4.0, np.float64(num_iter)) - 1.0)
        return [np.float32(ss * np.sqrt(3.0) * np.power(2.0, num_iter - (i + 1.0)) / denominator)
                for i in range(num_iter)]


def weight_multipliers(sigma_i: np.float32, spatial_sigma: float, range_sigma: float) -> tuple[float, float]:
    """(m1, m2) of SetUpWeightImage: m1 = float(-sqrt(2) / sigma_i) in double, m2 in float arithmetic."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        m1 = np.float32(-np.sqrt(2.0) / np.float64(sigma_i))
        m2 = np.float32(spatial_sigma) / np.float32(range_sigma)
    return float(m1), float(m2)


def edge_weights(edges: Tensor, m1: float, m2: float, min_weight: float | None) -> Tensor:
    """w = exp(m1 * (1 + edge * m2)) in float32, clamped to [min_weight, 1] unless min_weight is None
    (DomainTransformForwardOnly)."""
    weights = torch.exp((edges * m2 + 1.0) * m1)
    if min_weight is not None:
        weights = weights.clamp(float(np.float32(min_weight)), 1.0)
    return weights


def valid_region(data_dim: Tensor, batch: int, height: int, width: int) -> Tensor:
    """(N, 1, H, W) mask of each image's top-left data_dim region: rows < int(data_dim[n][0]) and
    columns < int(data_dim[n][1]) (C's truncation towards zero); a region larger than the blob covers it.
    floor stands in for the truncation (ONNX has no Trunc): a pixel index r >= 0 is below floor(d) exactly when
    it is below trunc(d), negative d included."""
    dims = torch.floor(data_dim.reshape(batch, -1)[:, :2].to(torch.float32))
    rows = torch.arange(height, dtype=torch.float32, device=data_dim.device).reshape(1, 1, height, 1)
    cols = torch.arange(width, dtype=torch.float32, device=data_dim.device).reshape(1, 1, 1, width)
    return (rows < dims[:, 0].reshape(batch, 1, 1, 1)) & (cols < dims[:, 1].reshape(batch, 1, 1, 1))


def _owned(view: Tensor) -> Tensor:
    """A fresh contiguous copy: the eager recursion filters it in place."""
    return view.clone(memory_format=torch.contiguous_format)


def filter_iteration(y: Tensor, weights: Tensor) -> Tensor:
    """The four passes of one iteration on y (N, C, H, W), which the eager recursion consumes; weights are
    (N, 1, H, W). The horizontal passes run on the H/W-transposed copy, so that both kinds of pass step over
    axis 2 with contiguous lines (a transposed copy costs about one clone; stepping along W in place is 4x
    slower at 513x513)."""
    y = _owned(y.transpose(2, 3))  # (N, C, W, H)
    by_column = weights.transpose(2, 3).contiguous()
    y = recursion(y, by_column, reverse=False)  # left → right
    y = recursion(y, by_column, reverse=True)  # right → left
    y = _owned(y.transpose(2, 3))  # (N, C, H, W)
    y = recursion(y, weights, reverse=False)  # top → bottom
    return recursion(y, weights, reverse=True)  # bottom → top


def domain_transform(
    features: Tensor, edges: Tensor, data_dim: Tensor | None = None,
    num_iter: int = 3, spatial_sigma: float = 50.0, range_sigma: float = 5.0, min_weight: float | None = 0.0,
) -> Tensor:
    """DeepLab's DomainTransform on features (N, C, H, W) with edges (N, 1, H, W); min_weight None gives
    DomainTransformForwardOnly (no clamping). Without data_dim the whole blob is filtered."""
    batch, _, height, width = features.shape
    features = features.to(torch.float32)
    edges = edges.to(torch.float32)
    region = None if data_dim is None else valid_region(data_dim, batch, height, width)
    # Outside the regions the working copy holds zeros (whatever the input holds there cannot reach a
    # filtered pixel through a weight-0 step) and the output takes the input back at the end.
    y = features if region is None else torch.where(region, features, 0.0)
    for sigma in domain_transform_sigmas(spatial_sigma, num_iter):
        weights = edge_weights(edges, *weight_multipliers(sigma, spatial_sigma, range_sigma), min_weight)
        if region is not None:
            weights = torch.where(region, weights, 0.0)
        y = filter_iteration(y, weights)
    return y if region is None else torch.where(region, y, features)


@register("DomainTransform", "DomainTransformForwardOnly")
class DomainTransformConverter(LayerConverter):
    exportable = True
    bottom_counts = (2, 3)  # features, edge map[, data_dim]
    top_counts = (1, 1)

    def check(self, spec, ctx):
        p = spec.param("domain_transform_param")
        problems = []
        if len(spec.bottoms) not in (2, 3):
            problems.append(f"{spec.type} needs bottoms (features, edge map[, data_dim]), got {len(spec.bottoms)}")
        if len(spec.tops) != 1:
            problems.append(f"{spec.type} has exactly one top, got {len(spec.tops)}")
        num_iter = p.get("num_iter", 3)
        if not 1 <= num_iter <= MAX_ITERATIONS:
            problems.append(f"domain_transform_param.num_iter must be in 1..{MAX_ITERATIONS}, got {num_iter}")
        for key, default in (("spatial_sigma", 50.0), ("range_sigma", 5.0)):
            value = float(p.get(key, default))
            if not (math.isfinite(value) and value > 0):
                problems.append(f"domain_transform_param.{key} must be positive and finite, got {value}")
        min_weight = float(p.get("min_weight", 0.0))
        if not (math.isfinite(min_weight) and min_weight >= 0):  # checked by both layer types in Caffe
            problems.append(f"domain_transform_param.min_weight must be >= 0 and finite, got {min_weight}")
        return problems

    def output_shapes(self, spec, bottoms, ctx):
        features, edges = bottoms[0], bottoms[1]
        if len(features) != 4 or len(edges) != 4:
            raise ValueError("features and edge map must be 4-D (N, C, H, W)")
        expected = (features[0], 1, features[2], features[3])
        if any(a is not None and b is not None and a != b for a, b in zip(edges, expected)):
            raise ValueError(f"the edge map must have shape (N, 1, H, W) = {expected} (one channel, the "
                             f"features' size), got {tuple(edges)}")
        if len(bottoms) == 3:
            data_dim = bottoms[2]
            per_image = None if None in data_dim[1:] else int(np.prod(data_dim[1:], dtype=np.int64))
            if not data_dim or (data_dim[0] is not None and features[0] is not None and data_dim[0] != features[0]):
                raise ValueError(f"data_dim must hold one (height, width) per image ({features[0]}), got shape "
                                 f"{tuple(data_dim)}")
            if per_image is not None and per_image < 2:
                raise ValueError(f"data_dim must hold (height, width) for each image, got shape {tuple(data_dim)}")
        return [features]

    def build(self, spec, bottoms, ctx):
        p = spec.param("domain_transform_param")
        clamp = spec.type == "DomainTransform"
        return CaffeDomainTransform(int(p.get("num_iter", 3)), float(p.get("spatial_sigma", 50.0)),
                                    float(p.get("range_sigma", 5.0)),
                                    float(p.get("min_weight", 0.0)) if clamp else None)


class CaffeDomainTransform(CaffeLayer):
    """min_weight None: DomainTransformForwardOnly (weights not clamped)."""

    def __init__(self, num_iter: int, spatial_sigma: float, range_sigma: float, min_weight: float | None):
        super().__init__()
        self.num_iter, self.spatial_sigma = num_iter, spatial_sigma
        self.range_sigma, self.min_weight = range_sigma, min_weight

    def forward(self, features, edges, data_dim=None):
        return domain_transform(features, edges, data_dim, self.num_iter, self.spatial_sigma, self.range_sigma,
                                self.min_weight)
