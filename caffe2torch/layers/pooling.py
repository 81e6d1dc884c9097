"""Pooling with Caffe's rounding: ceil, minus a last window that would start in the padding. MAX ignores
padded cells; AVE divides by the window clipped to [-pad, in+pad), i.e. torch's ceil_mode=True with
count_include_pad=True (see caffe_math.pool_average_divisors, pinned by tests)."""

from __future__ import annotations

import math

import torch.nn.functional as F

from caffe2torch.caffe_math import pool_output_size
from caffe2torch.layers.pooling_mask import CaffeMaxPoolingWithMask
from caffe2torch.layers.registry import CaffeLayer, LayerConverter, register
from caffe2torch.netspec import LayerSpec


def torch_ceil_pool_size(size: int, kernel: int, pad: int, stride: int) -> int:
    """torch's ceil_mode size rule: it drops a window starting past in+pad even when pad == 0, which Caffe
    does only for pad > 0. They differ only when kernel < stride; we refuse those nets rather than guess."""
    out = math.ceil((size + 2 * pad - kernel) / stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


@register("Pooling")
class PoolingConverter(LayerConverter):
    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def counts(self, spec):
        # MAX pooling may have a second top, the argmax mask (PoolingLayer::MaxTopBlobs).
        method = spec.param("pooling_param").get("pool", "MAX")
        return self.bottom_counts, (1, 2) if method == "MAX" else self.top_counts

    def validate(self, spec, ctx):
        """PoolingLayer::LayerSetUp's CHECKs, and a stride of 0, which Caffe divides by."""
        p = spec.param("pooling_param")
        kernel, pad, stride = p.get("kernel", [None, None]), p.get("pad", [0, 0]), p.get("stride", [1, 1])
        problems = []
        if min(stride) < 1:
            problems.append(f"stride {stride[0]}x{stride[1]}: every stride must be > 0")
        if min(pad) < 0:
            problems.append(f"pad {pad[0]}x{pad[1]}: must not be negative")
        if p.get("global_pooling"):
            if kernel != [None, None]:
                problems.append("global_pooling with a kernel size (the window is the whole input)")
            if any(pad) or any(s != 1 for s in stride):
                problems.append("global_pooling allows only pad 0 and stride 1")
            return problems
        if None in kernel:
            problems.append("pooling_param needs kernel_size (or kernel_h and kernel_w) or global_pooling")
            return problems
        if min(kernel) < 1:
            problems.append(f"kernel size {kernel[0]}x{kernel[1]}: Caffe requires filter dimensions > 0")
            return problems
        if any(pad):
            if p.get("pool", "MAX") not in ("MAX", "AVE"):
                problems.append(f"padding with pool: {p['pool']} (Caffe pads only AVE and MAX pooling)")
            for k, q in zip(kernel, pad):
                if q >= k:
                    problems.append(f"pad {q} >= kernel {k} (Caffe requires pad < kernel)")
                    break
        return problems

    def _geometry(self, spec: LayerSpec, height=None, width=None):
        p = spec.param("pooling_param")
        if p.get("global_pooling"):
            return [height, width], [1, 1], [0, 0]
        return list(p["kernel"]), list(p["stride"]), list(p["pad"])

    def check(self, spec, ctx):
        p = spec.param("pooling_param")
        problems = []
        method = p.get("pool", "MAX")
        if method not in ("MAX", "AVE"):
            problems.append(f"pool: {method} (only MAX and AVE are defined at test time)")
        if p.get("round_mode", "CEIL") != "CEIL":
            # Upstream's round_mode (not in the DeepLab forks, which always ceil): FLOOR sizes are not implemented.
            problems.append(f"round_mode: {p['round_mode']} (only CEIL, Caffe's default, is implemented)")
        if p.get("global_pooling") or None in p.get("kernel", [None]):
            return problems
        for k, q in zip(p["kernel"], p["pad"]):
            if 0 < k < 2 * q < 2 * k:
                problems.append(f"pad {q} > kernel/2 ({k}); torch pooling cannot express it")
        return problems

    def output_shapes(self, spec, bottoms, ctx):
        if len(bottoms[0]) != 4:
            raise ValueError(f"Pooling needs a 4-D bottom (N, C, H, W), not {len(bottoms[0])}-D")
        n, c, h, w = bottoms[0]
        kernel, stride, pad = self._geometry(spec, h, w)
        if spec.param("pooling_param").get("global_pooling"):
            return [(n, c, 1, 1)] * len(spec.tops)  # the mask top, if any, is shaped like the pooled one
        sizes = []
        for size, k, q, s in ((h, kernel[0], pad[0], stride[0]), (w, kernel[1], pad[1], stride[1])):
            out = pool_output_size(size, k, q, s)
            if size is not None and out != torch_ceil_pool_size(size, k, q, s):
                raise ValueError(f"Caffe's last pooling window (kernel {k}, stride {s}) would start past the "
                                 f"end of an input of size {size}: an empty window Caffe leaves undefined")
            sizes.append(out)
        return [(n, c, *sizes)] * len(spec.tops)  # the mask top, if any, is shaped like the pooled one

    def window(self, spec):
        if spec.param("pooling_param").get("global_pooling"):
            return None
        kernel, stride, _ = self._geometry(spec)
        return tuple(kernel), tuple(stride), (1, 1)

    def build(self, spec, bottoms, ctx):
        p = spec.param("pooling_param")
        if len(spec.tops) == 2:  # MAX with its mask top (layers/pooling_mask.py)
            kernel, stride, pad = ([None, None], [1, 1], [0, 0]) if p.get("global_pooling") else self._geometry(spec)
            return CaffeMaxPoolingWithMask(None if None in kernel else tuple(kernel), tuple(stride), tuple(pad))
        if p.get("global_pooling"):
            return CaffeGlobalPooling(p.get("pool", "MAX"))
        kernel, stride, pad = self._geometry(spec)
        return CaffePooling(p.get("pool", "MAX"), tuple(kernel), tuple(stride), tuple(pad))


class CaffePooling(CaffeLayer):
    def __init__(self, method: str, kernel, stride, pad):
        super().__init__()
        self.method, self.kernel, self.stride, self.pad = method, kernel, stride, pad

    def forward(self, x):
        if self.method == "MAX":
            return F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=True)
        return F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=True, count_include_pad=True)

    def extra_repr(self) -> str:
        return f"{self.method}, kernel={self.kernel}, stride={self.stride}, pad={self.pad}, ceil"


class CaffeGlobalPooling(CaffeLayer):
    def __init__(self, method: str):
        super().__init__()
        self.method = method

    def forward(self, x):
        if self.method == "MAX":
            return x.amax(dim=(2, 3), keepdim=True)
        return x.mean(dim=(2, 3), keepdim=True)
