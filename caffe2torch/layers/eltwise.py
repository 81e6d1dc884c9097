"""Eltwise (SUM with coefficients, PROD, MAX) and DeepLab v2's SpatialProduct."""

from __future__ import annotations

from caffe2torch.layers.registry import CaffeLayer, LayerConverter, register, same_shape, shape_text


@register("Eltwise")
class EltwiseConverter(LayerConverter):
    bottom_counts = (2, None)
    top_counts = (1, 1)

    def validate(self, spec, ctx):
        """EltwiseLayer::LayerSetUp: one coefficient per bottom, and none for PROD (MAX ignores them)."""
        p = spec.param("eltwise_param")
        coeffs = p.get("coeff", [])
        problems = []
        if coeffs and p.get("operation", "SUM") == "PROD":
            problems.append("eltwise coefficients are only defined for SUM")
        if coeffs and len(coeffs) != len(spec.bottoms):
            problems.append(f"{len(coeffs)} coefficients for {len(spec.bottoms)} bottoms (Caffe takes one per bottom)")
        return problems

    def output_shapes(self, spec, bottoms, ctx):
        first = bottoms[0]
        for index, other in enumerate(bottoms[1:], 1):
            if not same_shape(first, other):
                raise ValueError(f"Eltwise bottoms must have the same shape: bottom 0 is {shape_text(first)}, "
                                 f"bottom {index} {shape_text(other)}")
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

    bottom_counts = (2, 2)
    top_counts = (1, 1)

    def output_shapes(self, spec, bottoms, ctx):
        features, weights = bottoms
        if len(features) != 4 or len(weights) != 4:
            raise ValueError(f"SpatialProduct needs 4-D bottoms, not {shape_text(features)} and {shape_text(weights)}")
        if weights[1] not in (1, None):
            raise ValueError(f"SpatialProduct's second bottom must have one channel, not {weights[1]}")
        if not same_shape((features[0], features[2], features[3]), (weights[0], weights[2], weights[3])):
            raise ValueError(f"SpatialProduct's bottoms must have the same batch, height and width: "
                             f"{shape_text(features)} and {shape_text(weights)}")
        return [features]

    def build(self, spec, bottoms, ctx):
        return CaffeSpatialProduct()


class CaffeSpatialProduct(CaffeLayer):
    def forward(self, x, weight):
        return x * weight
