"""Eltwise (SUM with coefficients, PROD, MAX) and DeepLab v2's SpatialProduct."""

from __future__ import annotations

from caffe2torch.layers.registry import CaffeLayer, LayerConverter, register


@register("Eltwise")
class EltwiseConverter(LayerConverter):
    def check(self, spec, ctx):
        p = spec.param("eltwise_param")
        coeffs = p.get("coeff", [])
        problems = []
        if coeffs and p.get("operation", "SUM") != "SUM":
            problems.append("eltwise coefficients are only defined for SUM")
        if coeffs and len(coeffs) != len(spec.bottoms):
            problems.append(f"{len(coeffs)} coefficients for {len(spec.bottoms)} bottoms")
        return problems

    def output_shapes(self, spec, bottoms, ctx):
        first = bottoms[0]
        for other in bottoms[1:]:
            if len(other) != len(first) or any(a is not None and b is not None and a != b
                                               for a, b in zip(first, other)):
                raise ValueError(f"Eltwise bottoms differ in shape: {first} vs {other}")
        return [first]

    def build(self, spec, bottoms, ctx):
        p = spec.param("eltwise_param")
        return CaffeEltwise(p.get("operation", "SUM"), [float(c) for c in p.get("coeff", [])])


class CaffeEltwise(CaffeLayer):
    def __init__(self, operation: str, coeffs: list[float]):
        super().__init__()
        self.operation, self.coeffs = operation, coeffs

    def forward(self, *xs):
        if self.operation == "SUM":
            # Caffe: top = 0, then top += coeff_i * bottom_i in order (caffe_axpy).
            if not self.coeffs:
                out = xs[0]
                for x in xs[1:]:
                    out = out + x
                return out
            out = xs[0] * self.coeffs[0]
            for c, x in zip(self.coeffs[1:], xs[1:]):
                out = out + x * c
            return out
        out = xs[0]
        for x in xs[1:]:
            out = out * x if self.operation == "PROD" else out.maximum(x)
        return out

    def extra_repr(self) -> str:
        return f"{self.operation}, coeffs={self.coeffs}" if self.coeffs else self.operation


@register("SpatialProduct")
class SpatialProductConverter(LayerConverter):
    """top = bottom0 * bottom1, bottom1 having one channel and the same H x W (attention to scale)."""

    def check(self, spec, ctx):
        return [] if len(spec.bottoms) == 2 else ["SpatialProduct needs exactly two bottoms"]

    def output_shapes(self, spec, bottoms, ctx):
        if bottoms[1][1] not in (1, None):
            raise ValueError(f"SpatialProduct's second bottom must have one channel, not {bottoms[1][1]}")
        return [bottoms[0]]

    def build(self, spec, bottoms, ctx):
        return CaffeSpatialProduct()


class CaffeSpatialProduct(CaffeLayer):
    def forward(self, x, weight):
        return x * weight
