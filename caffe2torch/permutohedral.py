"""The permutohedral lattice (Adams, Baek and Davis 2010) in torch, as Krähenbühl's dense CRF code builds it
(pydensecrf's permutohedral.cpp), so that the same Gaussian filtering runs on any torch device.

The construction follows that code step by step (elevation with its scale factors, rounding to the nearest
remainder-0 point, ranks, barycentric weights with the wrap-around, the canonical simplex, one blur pass per
lattice axis with weights 1/2, and the "alpha" rescaling) so that the filtered values agree with pydensecrf to
float rounding; what differs is only the order of some float additions (scatter-adds instead of loops).
"""

from __future__ import annotations

import math

import torch


def _encode(keys: torch.Tensor, low: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """Mixed-radix int64 code of integer lattice keys (K, d) whose coordinates lie in [low, low + span)."""
    code = torch.zeros(keys.shape[0], dtype=torch.int64, device=keys.device)
    for axis in range(keys.shape[1]):
        code = code * span[axis] + (keys[:, axis] - low[axis])
    return code


class PermutohedralLattice:
    """Splat-blur-slice Gaussian filter over points with features `features` (N, d), unit standard deviation
    in every feature (scale the features to set the widths)."""

    def __init__(self, features: torch.Tensor):
        if features.dim() != 2 or features.shape[0] == 0:
            raise ValueError(f"features must be (N, d) with N > 0, got {tuple(features.shape)}")
        features = features.float()
        points, d = features.shape
        device = features.device
        self.points, self.d = points, d

        # Elevate onto the hyperplane x . 1 = 0 of R^(d+1) (p.5 of Adams et al.), with the code's scale factors.
        inv_std_dev = math.sqrt(2.0 / 3.0) * (d + 1)
        scale = torch.tensor([1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev for i in range(d)],
                             dtype=torch.float32, device=device)
        cf = features * scale
        suffix = torch.flip(torch.cumsum(torch.flip(cf, [1]), 1), [1])  # sum of cf[j:], as the code's loop
        suffix = torch.cat([suffix, torch.zeros(points, 1, device=device)], 1)
        steps = torch.arange(d + 1, device=device, dtype=torch.float32)
        shifted = torch.cat([torch.zeros(points, 1, device=device), cf], 1)  # cf[j - 1] at column j
        elevated = suffix - steps * shifted

        # The closest remainder-0 lattice point, by rounding (to even, as _mm_round_ps does).
        down = torch.round(elevated * (1.0 / (d + 1)))
        rem0 = down * (d + 1)
        total = down.sum(1).to(torch.int64)

        # Rank of each coordinate of the difference (ties go to the later coordinate, as in the code).
        diff = elevated - rem0
        greater = diff[:, None, :] > diff[:, :, None]  # [n, i, j]: diff[j] > diff[i]
        upper = torch.triu(torch.ones(d + 1, d + 1, dtype=torch.bool, device=device), 1)
        rank = (greater & upper).sum(2) + (~greater & upper).sum(1)
        rank = rank + total[:, None]
        below, above = rank < 0, rank > d
        rank = torch.where(below, rank + d + 1, torch.where(above, rank - d - 1, rank))
        rem0 = torch.where(below, rem0 + d + 1, torch.where(above, rem0 - d - 1, rem0))

        # Barycentric coordinates (p.10), with the wrap-around of the last one onto the first.
        v = (elevated - rem0) * (1.0 / (d + 1))
        barycentric = torch.zeros(points, d + 2, device=device)
        barycentric.scatter_add_(1, d - rank, v)
        barycentric.scatter_add_(1, d - rank + 1, -v)
        barycentric[:, 0] += 1.0 + barycentric[:, d + 1]
        weights = barycentric[:, : d + 1]

        # The d+1 vertices of each point's simplex: rem0 + the canonical simplex's vertex r, in rank order.
        remainders = torch.arange(d + 1, device=device)[:, None]  # r
        ranks = rank[:, None, :d]  # (N, 1, d)
        canonical = torch.where(ranks <= d - remainders, remainders, remainders - (d + 1))  # (N, d+1, d)
        keys = (rem0[:, None, :d].to(torch.int64) + canonical).reshape(-1, d)

        # Number the distinct vertices; code them as int64 for the neighbour lookups.
        low = keys.min(0).values - (d + 1)
        span = keys.max(0).values + (d + 1) - low + 1
        if float(torch.prod(span.double())) >= 2.0 ** 62:
            raise ValueError("lattice too large to index: feature values span too wide a range")
        codes = _encode(keys, low, span)
        lattice_codes, offsets = torch.unique(codes, sorted=True, return_inverse=True)
        vertices = lattice_codes.shape[0]
        self.vertices = vertices
        self.offsets = offsets.reshape(points, d + 1) + 1  # row 0 of the value table is the "no vertex" zero
        self.weights = weights.contiguous()

        # Blur neighbours along each lattice axis j: key - 1 everywhere, key[j] + d (and the opposite).
        unique_keys = self._decode(lattice_codes, low, span, d)
        self.neighbours = []
        for axis in range(d + 1):
            n1, n2 = unique_keys - 1, unique_keys + 1
            if axis < d:
                n1[:, axis] = unique_keys[:, axis] + d
                n2[:, axis] = unique_keys[:, axis] - d
            self.neighbours.append((self._find(n1, lattice_codes, low, span),
                                    self._find(n2, lattice_codes, low, span)))
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))

    @staticmethod
    def _decode(codes: torch.Tensor, low: torch.Tensor, span: torch.Tensor, d: int) -> torch.Tensor:
        keys = torch.empty(codes.shape[0], d, dtype=torch.int64, device=codes.device)
        rest = codes.clone()
        for axis in reversed(range(d)):
            keys[:, axis] = rest % span[axis] + low[axis]
            rest = rest // span[axis]
        return keys

    @staticmethod
    def _find(keys: torch.Tensor, lattice_codes: torch.Tensor, low: torch.Tensor, span: torch.Tensor):
        """Row of each key in the value table (1-based), 0 where the lattice has no such vertex."""
        inside = ((keys >= low) & (keys < low + span)).all(1)
        codes = _encode(torch.where(inside[:, None], keys, low), low, span)
        position = torch.searchsorted(lattice_codes, codes).clamp(max=lattice_codes.shape[0] - 1)
        found = inside & (lattice_codes[position] == codes)
        rows = torch.where(found, position + 1, torch.zeros_like(position))
        return torch.cat([torch.zeros(1, dtype=rows.dtype, device=rows.device), rows])  # row 0 stays zero

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Gaussian-filter `values` (N, C): splat onto the lattice, blur along each axis, slice back."""
        channels = values.shape[1]
        table = torch.zeros(self.vertices + 1, channels, dtype=values.dtype, device=values.device)
        spread = (self.weights[:, :, None] * values[:, None, :]).reshape(-1, channels)
        table.index_add_(0, self.offsets.reshape(-1), spread)
        for n1, n2 in self.neighbours:
            table = table + 0.5 * (table[n1] + table[n2])
        gathered = table[self.offsets.reshape(-1)].reshape(self.points, self.d + 1, channels)
        return (gathered * self.weights[:, :, None]).sum(1) * self.alpha
