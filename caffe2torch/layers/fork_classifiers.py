"""The layers of the later classifiers' Caffe forks (caffe2torch/dialects: mobilenet, shufflenet, senet), each
read from its fork's CPU forward:

- `ConvolutionDepthwise` (farmingyard/caffe-mobilenet conv_dw_layer.cpp, f7d7d13): one k_h x k_w filter per
  input channel. It reads convolution_param's kernel, stride, pad and dilation (the first one or two values;
  kernel_h/kernel_w etc. where both are given) and bias_term, and nothing else: num_output, group and axis are
  ignored. The top has the bottom's channels (legacy N, C, H, W accessors: a 4-D bottom), the weight blob is
  (C, 1, k_h, k_w), the bias (C), and out = (in + 2p - (d(k-1)+1)) / s + 1, as Convolution's. That is torch's
  convolution with groups = C. Where a file leaves stride or pad unset, the layer reads element 0 of an empty
  list (undefined behaviour in Caffe); we take upstream's defaults, 1 and 0.
- `ShuffleChannel` (farmingyard/ShuffleNet shuffle_channel_layer.cpp, b962444; OpenCV 4's ShuffleChannelLayer
  computes the same): channel i * (C / g) + j of the bottom goes to channel j * g + i of the top, that is the
  channels seen as a (g, C / g) matrix, transposed. shuffle_channel_param.group > 0 (LayerSetUp) must divide C
  (Forward's CHECK_EQ). The top is shaped (N, C, H, W) by legacy accessors: a 2-D or 3-D bottom gains axes of 1,
  more than 4 axes Caffe refuses. It copies blocks from bottom to top in another order, so in place it would
  read what it has overwritten: refused.
- `Axpy` (hujie-frank/SENet axpy_layer.cpp, 0262d43): bottoms a, x, y; top = a * x + y with a's value for
  (n, c) over every position of x's plane. Reshape CHECKs a.shape(0), a.shape(1) against x's, a 4-D a to be
  (N, C, 1, 1), and x and y to have the same shape; the top is shaped like x. Forward reads a as N * C values: an
  `a` with more values than that (a 3-D a of (N, C, k > 1), which Caffe does not refuse) is refused here. In
  place (top 0 on bottom 0, a) the top reshapes a's memory and the forward copies y there first: refused.
"""

from __future__ import annotations

from torch import nn

from caffe2torch.caffe_math import conv_output_size
from caffe2torch.layers.conv import ConvolutionConverter
from caffe2torch.layers.registry import (
    CaffeLayer,
    LayerConverter,
    count,
    param_bool,
    register,
    same_shape,
    shape_text,
)
from caffe2torch.netspec import LayerSpec, Shape


def _first_two(values: list[int]) -> tuple[int, int]:
    """ConvolutionDepthwiseLayer::LayerSetUp: one value serves both axes, otherwise the first two are (h, w)."""
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def depthwise_geometry(spec: LayerSpec) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, pad, dilation) as (h, w) pairs."""
    p = spec.param("convolution_param")
    return tuple(_first_two(list(p.get(key, [default]))) for key, default in
                 (("kernel", None), ("stride", 1), ("pad", 0), ("dilation", 1)))


@register("ConvolutionDepthwise")
class ConvolutionDepthwiseConverter(LayerConverter):
    # ExactNumBottomBlobs 1, ExactNumTopBlobs 1 (conv_dw_layer.hpp).
    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def validate(self, spec, ctx):
        kernel = spec.param("convolution_param").get("kernel", [None])
        if not kernel or None in kernel:
            return ["convolution_param needs kernel_size (or kernel_h and kernel_w)"]
        (kh, kw), (sh, sw), _, _ = depthwise_geometry(spec)
        problems = []
        if min(kh, kw) < 1:
            problems.append(f"kernel size {kh}x{kw}: every filter dimension must be > 0")
        if min(sh, sw) < 1:
            problems.append(f"stride {sh}x{sw}: every stride must be > 0 (the layer divides by it)")
        return problems

    def check(self, spec, ctx):
        if 0 in depthwise_geometry(spec)[3]:
            return ["dilation 0 (every tap reads the same pixel; torch requires dilation >= 1)"]
        return []

    def window(self, spec):
        kernel, stride, _, dilation = depthwise_geometry(spec)
        return kernel, stride, dilation

    def output_shapes(self, spec, bottoms, ctx):
        bottom = bottoms[0]
        if len(bottom) != 4:
            raise ValueError(f"ConvolutionDepthwise reads its bottom as (N, C, H, W); this one is "
                             f"{shape_text(bottom)}")
        kernel, stride, pad, dilation = depthwise_geometry(spec)
        spatial = [conv_output_size(size, k, q, s, d) for size, k, q, s, d in
                   zip(bottom[2:], kernel, pad, stride, dilation)]
        return [(bottom[0], bottom[1], *spatial)]

    def blob_shapes(self, spec, bottoms):
        channels = bottoms[0][1] if len(bottoms[0]) > 1 else None
        shapes: list[Shape] = [(channels, 1, *depthwise_geometry(spec)[0])]
        if param_bool(spec, "convolution_param", "bias_term", True):
            shapes.append((channels,))
        return shapes

    def build(self, spec, bottoms, ctx):
        channels = bottoms[0][1]
        if channels is None:
            raise ValueError("the input channel count is unknown; give --input-shape")
        kernel, stride, pad, dilation = depthwise_geometry(spec)
        return CaffeConvolutionDepthwise(channels, kernel, stride, pad, dilation,
                                         param_bool(spec, "convolution_param", "bias_term", True))


class CaffeConvolutionDepthwise(nn.Conv2d, CaffeLayer):
    """torch's convolution with one group per channel: weights (C, 1, k_h, k_w), as the fork stores them."""

    def __init__(self, channels, kernel, stride, pad, dilation, bias):
        nn.Conv2d.__init__(self, channels, channels, kernel, stride, pad, dilation, channels, bias)
        self.blob_names = ("weight", "bias") if bias else ("weight",)


@register("ShuffleChannel")
class ShuffleChannelConverter(LayerConverter):
    # The layer declares no counts; its forward reads bottom 0 and writes top 0.
    bottom_counts = (1, 1)
    top_counts = (1, 1)
    in_place = False

    def _group(self, spec: LayerSpec) -> int:
        return int(spec.param("shuffle_channel_param").get("group", 1))

    def validate(self, spec, ctx):
        group = self._group(spec)
        return [] if group > 0 else [f"shuffle_channel_param.group {group}: must be greater than 0"]

    def output_shapes(self, spec, bottoms, ctx):
        bottom = bottoms[0]
        if not 2 <= len(bottom) <= 4:
            raise ValueError(f"ShuffleChannel reads its bottom by Caffe's legacy (N, C, H, W) accessors, which "
                             f"take 2 to 4 axes; this one is {shape_text(bottom)}")
        group, channels = self._group(spec), bottom[1]
        if channels is not None and channels % group:
            raise ValueError(f"the input's {channels} channels are not a multiple of group {group}")
        return [tuple(bottom) + (1,) * (4 - len(bottom))]

    def build(self, spec, bottoms, ctx):
        return CaffeShuffleChannel(self._group(spec))


class CaffeShuffleChannel(CaffeLayer):
    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, x):
        while x.dim() < 4:
            x = x.unsqueeze(-1)
        n, c, h, w = x.shape
        return x.reshape(n, self.group, c // self.group, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"group={self.group}"


@register("Axpy")
class AxpyConverter(LayerConverter):
    # ExactNumBottomBlobs 3, ExactNumTopBlobs 1 (axpy_layer.hpp).
    bottom_counts = (3, 3)
    top_counts = (1, 1)

    def check(self, spec, ctx):
        # In place is top 0 on bottom 0 (Caffe's Net): the top, shaped like x, replaces a's memory.
        if spec.tops and spec.bottoms and spec.tops[0] == spec.bottoms[0]:
            return ["Axpy in place on a (bottom 0): Caffe's forward copies y into the top before it reads a and x, "
                    "so the result is not a * x + y"]
        return []

    def output_shapes(self, spec, bottoms, ctx):
        a, x, y = bottoms
        if len(a) < 2 or len(x) < 2:
            raise ValueError(f"Axpy needs a and x of at least 2 axes (N, C); they are {shape_text(a)} and "
                             f"{shape_text(x)}")
        if len(x) > 4:
            raise ValueError(f"Axpy reads x by Caffe's legacy (N, C, H, W) accessors; x is {shape_text(x)}")
        if not same_shape(a[:2], x[:2]):
            raise ValueError(f"Axpy's scale a ({shape_text(a)}) must have x's ({shape_text(x)}) first two axes")
        if len(a) == 4 and any(d is not None and d != 1 for d in a[2:]):
            raise ValueError(f"Axpy's 4-D scale a must be (N, C, 1, 1); it is {shape_text(a)}")
        if not same_shape(x, y):
            raise ValueError(f"Axpy's x and y must have the same shape; they are {shape_text(x)} and "
                             f"{shape_text(y)}")
        rest = count(a[2:])
        if rest is not None and rest != 1:
            raise ValueError(f"Axpy's scale a is {shape_text(a)}: the layer reads only its first N x C values, "
                             "which caffe2torch does not reproduce")
        return [x]

    def build(self, spec, bottoms, ctx):
        return CaffeAxpy()


class CaffeAxpy(CaffeLayer):
    def forward(self, a, x, y):
        scale = a.reshape(a.shape[0], a.shape[1], *([1] * (x.dim() - 2)))
        return scale * x + y


@register("DepthwiseConvolution")
class DepthwiseConvolutionConverter(ConvolutionConverter):
    """`DepthwiseConvolution` (yonghenglh6/DepthwiseConvolution and the MobileNet ports that copied it): several
    forks register a layer of this name over upstream's convolution_param, and they compute one filter per input
    channel only where the file says so (group = num_output = the input's channels): some run upstream's
    grouped convolution on the CPU, some a per-channel loop that ignores group and dilation, and their GPU
    kernels assume a true depthwise filter. Where the file is that depthwise convolution they all agree, and it
    converts as Convolution (weights (C, 1, k_h, k_w)); any other group, num_output or dilation is refused, since
    the forks disagree on it."""

    def check(self, spec, ctx):
        problems = super().check(spec, ctx)
        p = spec.param("convolution_param")
        if any(d != 1 for d in p.get("dilation", [1])):
            problems.append(f"dilation {'x'.join(str(d) for d in p['dilation'])}: the forks' DepthwiseConvolution "
                            "kernels differ on dilation (some ignore it); only dilation 1 is read alike")
        if int(p.get("group", 1)) != int(p.get("num_output", 0)):
            problems.append(f"group {p.get('group', 1)} with num_output {p.get('num_output')}: a DepthwiseConvolution "
                            "the forks compute alike has group = num_output = the input's channels")
        return problems

    def output_shapes(self, spec, bottoms, ctx):
        channels = bottoms[0][1] if len(bottoms[0]) > 1 else None
        group = int(spec.param("convolution_param").get("group", 1))
        if channels is not None and channels != group:
            raise ValueError(f"the input has {channels} channels but group is {group}: a DepthwiseConvolution the "
                             "forks compute alike has one group per input channel")
        return super().output_shapes(spec, bottoms, ctx)
