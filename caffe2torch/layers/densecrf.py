"""DeepLab's DenseCRF layer: bottoms (scores upsampled to the input size, data_dim[, data]).

It runs `crf.dense_crf` on each image's valid region: the whole blob when data_dim is at least the blob size
in both dimensions, otherwise the top-left data_dim region; outside it the output is exactly 0. The bilateral
kernel uses the `data` blob (mean-subtracted BGR, scale 1) as colours. The top is Q, or log(max(Q, FLT_MIN))
with output_probability: false (zeros outside the region either way). CPU only; no backward, as in Caffe.

Settings pydensecrf cannot run correctly (NaN, non-positive or vanishing standard deviations, unbounded
iterations: `CRFParams.validate`) are refused when the net is checked, with the layer's file and line; inputs
it cannot take (NaN scores or colours, colours or sizes whose lattice coordinates overflow) are refused at
forward time, naming the layer, before any value reaches the native code.
"""

from __future__ import annotations

import numpy as np
import torch

from caffe2torch.crf import CRFInputError, CRFParams, dense_crf
from caffe2torch.errors import Location
from caffe2torch.layers.registry import CaffeLayer, LayerConverter, register

FLT_MIN = np.finfo(np.float32).tiny


def crf_params_from_layer(param: dict) -> CRFParams:
    return CRFParams(
        max_iter=int(param.get("max_iter", 10)),  # an int32 in every schema
        pos_xy_std=[float(v) for v in param.get("pos_xy_std", [])],
        pos_w=[float(v) for v in param.get("pos_w", [])],
        bi_xy_std=[float(v) for v in param.get("bi_xy_std", [])],
        bi_rgb_std=[float(v) for v in param.get("bi_rgb_std", [])],
        bi_w=[float(v) for v in param.get("bi_w", [])],
    )


def crf_region(data_dim: np.ndarray, height: int, width: int) -> tuple[int, int]:
    """The region DeepLab's layer processes: the blob when data_dim covers it in both dimensions, else the
    top-left data_dim (height, width)."""
    dim_h, dim_w = (int(v) for v in np.asarray(data_dim).reshape(-1)[:2])
    if dim_h >= height and dim_w >= width:
        return height, width
    return min(dim_h, height), min(dim_w, width)


@register("DenseCRF")
class DenseCRFConverter(LayerConverter):
    exportable = False
    bottom_counts = (2, 3)  # scores, data_dim[, data]
    top_counts = (1, 1)

    def validate(self, spec, ctx):
        """DenseCRFLayer::LayerSetUp: with the image as third bottom, a bilateral kernel must be given."""
        p = spec.param("dense_crf_param")
        if len(spec.bottoms) == 3 and not p.get("bi_w"):
            return ["the image is a bottom, but no bilateral kernel is given (bi_w, bi_xy_std, bi_rgb_std): "
                    "DeepLab's DenseCRF refuses that"]
        return []

    def output_shapes(self, spec, bottoms, ctx):
        """DenseCRFLayer::Reshape: one data_dim (and image) per score map, an image of 3 channels and the
        scores' height and width."""
        scores = bottoms[0]
        if len(scores) != 4:
            raise ValueError(f"the scores must be 4-D (N, C, H, W), not {len(scores)}-D")
        for index, other in enumerate(bottoms[1:], start=1):
            if other and None not in (other[0], scores[0]) and other[0] != scores[0]:
                raise ValueError(f"bottom {index} holds {other[0]} item(s) for {scores[0]} score map(s)")
        if len(bottoms) == 3:
            image = bottoms[2]
            if len(image) != 4 or image[1] not in (3, None):
                raise ValueError(f"the image bottom must be (N, 3, H, W), not {tuple(image)}")
            if any(a is not None and b is not None and a != b for a, b in zip(image[2:], scores[2:])):
                raise ValueError(f"the image is {image[2]}x{image[3]} but the scores are {scores[2]}x{scores[3]}")
        return [scores]

    def check(self, spec, ctx):
        problems = crf_params_from_layer(spec.param("dense_crf_param")).validate()
        try:
            import pydensecrf.densecrf  # noqa: F401
        except ImportError:
            problems.append("DenseCRF needs the pydensecrf module (pip install pydensecrf2)")
        return problems

    def build(self, spec, bottoms, ctx):
        param = spec.param("dense_crf_param")
        return CaffeDenseCRF(crf_params_from_layer(param), bool(param.get("output_probability", True)),
                             Location(line=spec.line, layer=spec.name, layer_type=spec.type))


class CaffeDenseCRF(CaffeLayer):
    def __init__(self, params: CRFParams, output_probability: bool, location: Location | None = None):
        super().__init__()
        self.params, self.output_probability = params, output_probability
        self.location = location or Location(layer_type="DenseCRF")

    def forward(self, scores, data_dim, data=None):
        s = scores.detach().cpu().numpy()
        dims = data_dim.detach().cpu().numpy()
        image = None if data is None else data.detach().cpu().numpy()
        out = np.zeros_like(s)
        height, width = s.shape[-2:]
        for n in range(s.shape[0]):
            h, w = crf_region(dims[n], height, width)
            if h <= 0 or w <= 0:
                continue  # an empty region: Caffe's layer writes zeros everywhere
            colours = None if image is None else image[n, :3, :h, :w]
            try:
                q = dense_crf(s[n, :, :h, :w], colours, self.params)
            except CRFInputError as exc:
                raise CRFInputError(f"image {n} of the batch: {exc.message}", self.location) from None
            out[n, :, :h, :w] = q if self.output_probability else np.log(np.maximum(q, FLT_MIN))
        return torch.from_numpy(out).to(scores.device)
