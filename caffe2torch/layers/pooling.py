"""Pooling and SPP.

Pooling with Caffe's rounding (PoolingLayer::Reshape): ceil (or round_mode FLOOR), then, with padding, minus a
last window that would start in the bottom/right padding. MAX ignores padded cells; AVE divides by the window
clipped to [-pad, in+pad) (caffe_math.pool_average_divisors); STOCHASTIC at test time is Caffe's GPU kernel
(the CPU one is not implemented): sum(x^2) / sum(x) over the window, 0 where that sum is not positive.

Where torch's pooling computes the same (pad <= kernel/2, and no window starting past an unpadded input), it is
used as it is: ceil_mode for CEIL, count_include_pad for AVE. Elsewhere (Caffe allows any pad < kernel) the
input is padded explicitly to cover exactly Caffe's windows (-FLT_MAX for MAX: Caffe starts every window at
-FLT_MAX and takes strictly greater values; zeros for AVE and STOCHASTIC) and pooled without padding, with
Caffe's divisors computed from the input size; both trace into ONNX for any input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from caffe2torch.caffe_math import pool_output_size, pool_pads_torch_cannot_express
from caffe2torch.layers.registry import CaffeLayer, LayerConverter, register
from caffe2torch.netspec import LayerSpec

FLT_MAX = 3.4028234663852886e38  # numeric_limits<float>::max(), Caffe's starting value for every MAX window
FLT_MIN = 1.1754943508222875e-38  # Caffe's starting value of the STOCHASTIC sum
METHODS = ("MAX", "AVE", "STOCHASTIC")


def needs_explicit_padding(kernel, stride, pad, round_mode: str) -> bool:
    """Whether torch's pooling cannot reproduce Caffe's on either axis (then caffe_pool2d pads explicitly)."""
    return any(pool_pads_torch_cannot_express(k, p, s, round_mode) for k, p, s in zip(kernel, pad, stride))


def pad_to_caffe_windows(x: torch.Tensor, kernel, stride, pad, round_mode: str, value: float):
    """x padded with `value` so that unpadded, floor-mode pooling gives exactly Caffe's windows: `pad` cells
    before, and after as many as the last window reaches past the input (negative: cut, when FLOOR leaves
    a remainder). Returns (padded, (out_h, out_w))."""
    outs, after = [], []
    for axis, (k, s, p) in enumerate(zip(kernel, stride, pad)):
        size = x.shape[2 + axis]
        out = pool_output_size(size, k, p, s, round_mode)
        outs.append(out)
        after.append((out - 1) * s + k - size - p)
    return F.pad(x, (pad[1], after[1], pad[0], after[0]), value=value), tuple(outs)


def window_sums(x: torch.Tensor, kernel, stride, pad, round_mode: str) -> torch.Tensor:
    """The sum of each Caffe window (padding counts as zeros)."""
    padded, _ = pad_to_caffe_windows(x, kernel, stride, pad, round_mode, 0.0)
    return F.avg_pool2d(padded, kernel, stride) * float(kernel[0] * kernel[1])


def average_divisors(x: torch.Tensor, kernel, stride, pad, round_mode: str) -> torch.Tensor:
    """Caffe's AVE divisor of every output position, (out_h, out_w): per axis min(k, in + 2p - i*s), as in
    caffe_math.pool_average_divisors, computed from the (possibly traced) input size."""
    sides = []
    for axis, (k, s, p) in enumerate(zip(kernel, stride, pad)):
        size = x.shape[2 + axis]
        out = pool_output_size(size, k, p, s, round_mode)
        starts = torch.arange(out, dtype=x.dtype, device=x.device) * float(s)
        sides.append(torch.clamp((size + 2 * p) - starts, max=float(k)))
    return sides[0].reshape(-1, 1) * sides[1].reshape(1, -1)


def caffe_pool2d(x: torch.Tensor, method: str, kernel, stride, pad, round_mode: str = "CEIL") -> torch.Tensor:
    """Caffe's PoolingLayer::Forward for any pad < kernel and either round mode (STOCHASTIC: its TEST kernel)."""
    if method == "MAX":
        padded, _ = pad_to_caffe_windows(x, kernel, stride, pad, round_mode, -FLT_MAX)
        # -inf inputs: Caffe keeps -FLT_MAX (nothing is greater); the clamp gives the same.
        return F.max_pool2d(padded, kernel, stride).clamp(min=-FLT_MAX)
    if method == "AVE":
        return window_sums(x, kernel, stride, pad, round_mode) / average_divisors(x, kernel, stride, pad, round_mode)
    # STOCHASTIC at TEST (StoPoolForwardTest): cumsum starts at FLT_MIN; top = cumsum > 0 ? sum(x^2)/cumsum : 0.
    return stochastic_test_value(window_sums(x, kernel, stride, pad, round_mode),
                                 window_sums(x * x, kernel, stride, pad, round_mode))


def stochastic_test_value(sums: torch.Tensor, squares: torch.Tensor) -> torch.Tensor:
    """Caffe's StoPoolForwardTest from a window's sum and sum of squares: the sum starts at FLT_MIN, and the
    value is sum(x^2) / sum(x) where that is positive, else 0."""
    total = sums + FLT_MIN
    positive = total > 0
    return torch.where(positive, squares / torch.where(positive, total, torch.ones_like(total)),
                       torch.zeros_like(total))


def pool2d(x: torch.Tensor, method: str, kernel, stride, pad, round_mode: str = "CEIL") -> torch.Tensor:
    """Caffe's pooling: torch's own where it computes the same, else caffe_pool2d's explicit padding."""
    if method == "STOCHASTIC" or needs_explicit_padding(kernel, stride, pad, round_mode):
        return caffe_pool2d(x, method, kernel, stride, pad, round_mode)
    ceil = round_mode == "CEIL"
    if method == "MAX":
        return F.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil)
    return F.avg_pool2d(x, kernel, stride, pad, ceil_mode=ceil, count_include_pad=True)


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
        method = spec.param("pooling_param").get("pool", "MAX")
        if method not in METHODS:
            return [f"pool: {method} (Caffe's pooling methods are MAX, AVE and STOCHASTIC)"]
        if method == "STOCHASTIC" and ctx.phase != "test":
            return ["pool: STOCHASTIC in the TRAIN phase samples each window at random (at TEST it is the "
                    "deterministic weighted average caffe2torch computes)"]
        return []

    def output_shapes(self, spec, bottoms, ctx):
        if len(bottoms[0]) != 4:
            raise ValueError(f"Pooling needs a 4-D bottom (N, C, H, W), not {len(bottoms[0])}-D")
        n, c, h, w = bottoms[0]
        p = spec.param("pooling_param")
        if p.get("global_pooling"):
            return [(n, c, 1, 1)] * len(spec.tops)  # the mask top, if any, is shaped like the pooled one
        kernel, stride, pad = self._geometry(spec, h, w)
        round_mode = p.get("round_mode", "CEIL")
        sizes = [pool_output_size(size, k, q, s, round_mode)
                 for size, k, q, s in ((h, kernel[0], pad[0], stride[0]), (w, kernel[1], pad[1], stride[1]))]
        return [(n, c, *sizes)] * len(spec.tops)  # the mask top, if any, is shaped like the pooled one

    def sees_whole_input(self, spec):
        return bool(spec.param("pooling_param").get("global_pooling"))

    def window(self, spec):
        if spec.param("pooling_param").get("global_pooling"):
            return None
        kernel, stride, _ = self._geometry(spec)
        return tuple(kernel), tuple(stride), (1, 1)

    def build(self, spec, bottoms, ctx):
        p = spec.param("pooling_param")
        method, round_mode = p.get("pool", "MAX"), p.get("round_mode", "CEIL")
        if len(spec.tops) == 2:  # MAX with its mask top
            from caffe2torch.layers.pooling_mask import CaffeMaxPoolingWithMask

            if p.get("global_pooling"):
                return CaffeMaxPoolingWithMask(None, (1, 1), (0, 0))
            kernel, stride, pad = self._geometry(spec)
            return CaffeMaxPoolingWithMask(tuple(kernel), tuple(stride), tuple(pad), round_mode)
        if p.get("global_pooling"):
            return CaffeGlobalPooling(method)
        kernel, stride, pad = self._geometry(spec)
        return CaffePooling(method, tuple(kernel), tuple(stride), tuple(pad), round_mode)


class CaffePooling(CaffeLayer):
    def __init__(self, method: str, kernel, stride, pad, round_mode: str = "CEIL"):
        super().__init__()
        self.method, self.kernel, self.stride, self.pad, self.round_mode = method, kernel, stride, pad, round_mode
        self.explicit = method == "STOCHASTIC" or needs_explicit_padding(kernel, stride, pad, round_mode)

    def forward(self, x):
        return pool2d(x, self.method, self.kernel, self.stride, self.pad, self.round_mode)

    def extra_repr(self) -> str:
        how = "explicit padding" if self.explicit else "torch pooling"
        return (f"{self.method}, kernel={self.kernel}, stride={self.stride}, pad={self.pad}, "
                f"{self.round_mode.lower()}, {how}")


class CaffeGlobalPooling(CaffeLayer):
    def __init__(self, method: str):
        super().__init__()
        self.method = method

    def forward(self, x):
        if self.method == "MAX":
            return x.amax(dim=(2, 3), keepdim=True)
        if self.method == "AVE":
            return x.mean(dim=(2, 3), keepdim=True)
        return stochastic_test_value(x.sum(dim=(2, 3), keepdim=True), (x * x).sum(dim=(2, 3), keepdim=True))


def spp_level(size: int, level: int) -> tuple[int, int]:
    """SPPLayer::GetPoolingParam along one axis, for pyramid level `level` (2^level bins): kernel
    ceil(size / bins) (also the stride) and pad (kernel * bins - size + 1) / 2."""
    bins = 2 ** level
    kernel = -(-size // bins)
    return kernel, (kernel * bins - size + 1) // 2


def spp_levels(height: int, width: int, pyramid_height: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(kernel, pad) pairs of every pyramid level, with the CHECK Caffe's inner PoolingLayer applies
    (pad < kernel: some input sizes make a level invalid, and Caffe stops there)."""
    levels = []
    for level in range(pyramid_height):
        (kh, ph), (kw, pw) = spp_level(height, level), spp_level(width, level)
        if ph >= kh or pw >= kw:
            raise ValueError(f"SPP level {level} ({2 ** level} bins) of a {height}x{width} input needs pad "
                             f"{ph}x{pw} with kernel {kh}x{kw}: Caffe's pooling requires pad < kernel")
        levels.append(((kh, kw), (ph, pw)))
    return levels


@register("SPP")
class SPPConverter(LayerConverter):
    """SPPLayer: for each pyramid level i, a pooling of 2^i x 2^i bins (kernel = stride = ceil(in / 2^i),
    pad (kernel * 2^i - in + 1) / 2, Caffe's ceil sizes and clipping), each flattened, then concatenated:
    (N, C * sum of each level's out_h * out_w). With pyramid_height 1 the top is that one pooling, unflattened
    (N, C, 1, 1). The windows follow the input size, so an exported model keeps the traced size."""

    bottom_counts = (1, 1)
    top_counts = (1, 1)
    fixes_input_size = True

    def _params(self, spec) -> tuple[int, str]:
        p = spec.param("spp_param")
        return int(p.get("pyramid_height", 0)), p.get("pool", "MAX")

    def validate(self, spec, ctx):
        height, _ = self._params(spec)
        return [] if height >= 1 else ["spp_param needs pyramid_height >= 1"]

    def check(self, spec, ctx):
        _, method = self._params(spec)
        if method == "STOCHASTIC" and ctx.phase != "test":
            return ["spp_param.pool: STOCHASTIC in the TRAIN phase samples each window at random"]
        return []

    def output_shapes(self, spec, bottoms, ctx):
        if len(bottoms[0]) != 4:
            raise ValueError(f"SPP needs a 4-D bottom (N, C, H, W), not {len(bottoms[0])}-D")
        n, c, h, w = bottoms[0]
        pyramid_height, method = self._params(spec)
        if h is None or w is None:
            return [(n, c, 1, 1) if pyramid_height == 1 else (n, None)]
        cells = 0
        for kernel, pad in spp_levels(h, w, pyramid_height):
            if method == "STOCHASTIC" and any(pad):
                raise ValueError(f"SPP with pool: STOCHASTIC of a {h}x{w} input pads a level by {pad[0]}x{pad[1]}: "
                                 "Caffe pads only AVE and MAX pooling")
            cells += pool_output_size(h, kernel[0], pad[0], kernel[0]) * pool_output_size(w, kernel[1], pad[1],
                                                                                          kernel[1])
        if pyramid_height == 1:
            return [(n, c, 1, 1)]
        return [(n, None if c is None else c * cells)]

    def sees_whole_input(self, spec):
        return True

    def build(self, spec, bottoms, ctx):
        return CaffeSPP(*self._params(spec))


class CaffeSPP(CaffeLayer):
    def __init__(self, pyramid_height: int, method: str):
        super().__init__()
        self.pyramid_height, self.method = pyramid_height, method

    def forward(self, x):
        pooled = [pool2d(x, self.method, kernel, kernel, pad)
                  for kernel, pad in spp_levels(int(x.shape[2]), int(x.shape[3]), self.pyramid_height)]
        if self.pyramid_height == 1:
            return pooled[0]
        return torch.cat([p.flatten(1) for p in pooled], dim=1)

    def extra_repr(self) -> str:
        return f"pyramid_height={self.pyramid_height}, {self.method}"
