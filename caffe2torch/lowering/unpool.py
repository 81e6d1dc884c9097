"""Max-unpooling's scatter, deterministic and exportable.

SegNet's Upsample writes bottom value i to top position mask[i], for i in increasing order, so where two
values name the same position the later one stays. torch's scatter_ and ONNX's ScatterElements leave that
order unspecified, so the last writer is made explicit: every target position takes the largest source position
that names it (a max-reduction, which is order-free), and then gathers that source's value.

`last_writer` is that reduction: eagerly `scatter_reduce(amax)`; in an ONNX export one ScatterElements
(reduction "max", opset >= 18) instead of the shape-generic graph torch's exporter writes for scatter_reduce.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _LastWriter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, base: Tensor, index: Tensor, positions: Tensor) -> Tensor:
        return base.scatter_reduce(2, index, positions, "amax", include_self=True)

    @staticmethod
    def symbolic(g, base, index, positions):
        return g.op("ScatterElements", base, index, positions, axis_i=2, reduction_s="max")


def last_writer(index: Tensor, out_size: int) -> Tensor:
    """For (N, C, L) int64 target positions: (N, C, out_size) with, at each target, the largest source position
    l that writes it, or -1 where none does."""
    n, c, length = index.shape
    base = torch.full((n, c, out_size), -1, dtype=torch.int64, device=index.device)
    positions = torch.arange(length, dtype=torch.int64, device=index.device).expand(n, c, length)
    return _LastWriter.apply(base, index, positions)


def scatter_last_wins(values: Tensor, index: Tensor, out_size: int) -> Tensor:
    """(N, C, out_size): values[..., l] at index[..., l], zero elsewhere, the largest l winning a shared target."""
    writer = last_writer(index, out_size)
    gathered = torch.gather(values, 2, writer.clamp(min=0))
    return torch.where(writer >= 0, gathered, torch.zeros_like(gathered))
