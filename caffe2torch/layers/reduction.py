"""Reduction: SUM, ASUM, SUMSQ or MEAN over every axis from `axis` on, times `coeff`."""

from __future__ import annotations

from caffe2torch.caffe_math import canonical_axis
from caffe2torch.layers.registry import CaffeLayer, LayerConverter, register

OPERATIONS = ("SUM", "ASUM", "SUMSQ", "MEAN")


@register("Reduction")
class ReductionConverter(LayerConverter):
    """ReductionLayer: the top keeps the axes before `axis` (default 0: a scalar); each of its values reduces
    the trailing count(axis) values, then is scaled by coeff (MEAN: coeff / count, applied after the sum)."""

    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def _params(self, spec) -> tuple[int, str, float]:
        p = spec.param("reduction_param")
        return int(p.get("axis", 0)), p.get("operation", "SUM"), float(p.get("coeff", 1.0))

    def check(self, spec, ctx):
        _, operation, _ = self._params(spec)
        return [] if operation in OPERATIONS else [f"reduction_param.operation: {operation}"]

    def sees_whole_input(self, spec):
        return self._params(spec)[0] in (0, 1, 2)

    def output_shapes(self, spec, bottoms, ctx):
        axis, _, _ = self._params(spec)
        return [tuple(bottoms[0][: canonical_axis(axis, len(bottoms[0]))])]

    def build(self, spec, bottoms, ctx):
        axis, operation, coeff = self._params(spec)
        return CaffeReduction(canonical_axis(axis, len(bottoms[0])), operation, coeff)


class CaffeReduction(CaffeLayer):
    def __init__(self, axis: int, operation: str, coeff: float):
        super().__init__()
        self.axis, self.operation, self.coeff = axis, operation, coeff

    def forward(self, x):
        flat = x.flatten(self.axis)
        if self.operation == "ASUM":
            flat = flat.abs()
        elif self.operation == "SUMSQ":
            flat = flat * flat
        total = flat.sum(dim=-1)
        if self.operation == "MEAN":
            return total * (self.coeff / flat.shape[-1])
        return total if self.coeff == 1.0 else total * self.coeff

    def extra_repr(self) -> str:
        return f"{self.operation} from axis {self.axis}, coeff={self.coeff}"
