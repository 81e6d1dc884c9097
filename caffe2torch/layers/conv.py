"""Convolution, Deconvolution, InnerProduct, and the layers built on their arithmetic: Im2col (a convolution's
input columns) and Embed (an InnerProduct of one-hot inputs). Caffe's blob layouts equal torch's: convolution
weights are (out, in/group, kh, kw), deconvolution weights (in, out/group, kh, kw)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from caffe2torch.caffe_math import canonical_axis, conv_output_size, deconv_output_size
from caffe2torch.layers.registry import (
    BuildContext,
    CaffeLayer,
    LayerConverter,
    count,
    param_bool,
    register,
    same_shape,
    shape_text,
)
from caffe2torch.netspec import LayerSpec, Shape


def _pair_text(values) -> str:
    return "x".join(str(v) for v in values)


def _conv_geometry(spec: LayerSpec) -> tuple[list[int], list[int], list[int], list[int]]:
    p = spec.param("convolution_param")
    return list(p["kernel"]), list(p["stride"]), list(p["pad"]), list(p["dilation"])


def per_axis(values: list[int], axes: int, name: str) -> list[int]:
    """BaseConvolutionLayer::LayerSetUp's rule for one of kernel/stride/pad/dilation with `axes` spatial axes:
    given once (the upgrade stores it twice) or once per axis. Three equal values for two axes are refused as
    Caffe refuses them (the count, not the values, must fit)."""
    if len(values) == axes:
        return list(values)
    if len(values) == 2 and values[0] == values[1]:  # given once: the upgrade's [v, v]
        return [values[0]] * axes
    raise ValueError(f"{name} {_pair_text(values)}: must be given once, or once per spatial axis ({axes})")


def conv_axes(spec: LayerSpec, bottom: Shape) -> tuple[int, int]:
    """(channel axis, number of spatial axes after it): Caffe's convolution_param.axis, canonical."""
    axis = canonical_axis(spec.param("convolution_param").get("axis", 1), len(bottom))
    return axis, len(bottom) - axis - 1


class _ConvBase(LayerConverter):
    """Convolution and Deconvolution differ only in their size rule, weight layout and module. Several bottoms
    give as many tops, each filtered with the same weights (Caffe's EqualNumBottomTopBlobs). The channel axis is
    convolution_param.axis (default 1); every axis after it is spatial (0 to 3 of them here: Caffe's N-D
    convolution), and the axes before it are independent samples."""

    size_rule = staticmethod(conv_output_size)
    bottom_counts = (1, None)
    top_counts = (1, None)
    equal_bottoms_tops = True

    def validate(self, spec: LayerSpec, ctx: BuildContext) -> list[str]:
        """BaseConvolutionLayer::LayerSetUp's CHECKs."""
        p = spec.param("convolution_param")
        problems = []
        kernel = p.get("kernel", [None])
        if None in kernel:
            problems.append("convolution_param needs kernel_size (or kernel_h and kernel_w)")
        elif min(kernel) < 1:
            problems.append(f"kernel size {_pair_text(kernel)}: Caffe requires every filter dimension to be > 0")
        if min(p.get("stride", [1])) < 1:
            problems.append(f"stride {_pair_text(p['stride'])}: Caffe requires every stride to be > 0")
        if min(p.get("pad", [0])) < 0 or min(p.get("dilation", [1])) < 0:
            problems.append("pad and dilation must not be negative")
        num_output = p.get("num_output", 0)
        group = p.get("group", 1)
        if num_output < 1:
            problems.append("convolution_param needs num_output > 0")
        if group < 1:
            problems.append(f"group {group}: must be at least 1")
        elif num_output >= 1 and num_output % group:
            problems.append(f"num_output {num_output} is not a multiple of group {group}")
        return problems

    def check(self, spec: LayerSpec, ctx: BuildContext) -> list[str]:
        p = spec.param("convolution_param")
        if 0 in p.get("dilation", [1]):
            return ["dilation 0 (every tap reads the same pixel; torch requires dilation >= 1)"]
        return []

    def window(self, spec: LayerSpec):
        kernel, stride, _, dilation = _conv_geometry(spec)
        if len(kernel) != 2 or spec.param("convolution_param").get("axis", 1) != 1:
            return None
        return tuple(kernel), tuple(stride), tuple(dilation)

    def geometry(self, spec: LayerSpec, bottom: Shape) -> tuple[int, int, list[int], list[int], list[int], list[int]]:
        """(channel axis, spatial axes, kernel, stride, pad, dilation) per spatial axis, for this bottom."""
        axis, axes = conv_axes(spec, bottom)
        if axes > 3:
            raise ValueError(f"a {axes}-D convolution (channel axis {axis} of a {len(bottom)}-D bottom): "
                             "caffe2torch runs 0- to 3-D ones")
        kernel, stride, pad, dilation = _conv_geometry(spec)
        return (axis, axes, per_axis(kernel, axes, "kernel size"), per_axis(stride, axes, "stride"),
                per_axis(pad, axes, "pad"), per_axis(dilation, axes, "dilation"))

    def _channels(self, spec: LayerSpec, bottoms: list[Shape]) -> tuple[int | None, int, int]:
        p = spec.param("convolution_param")
        axis, _ = conv_axes(spec, bottoms[0])
        return bottoms[0][axis], int(p["num_output"]), int(p.get("group", 1))

    def weight_shape(self, cin: int | None, out: int, group: int, kernel: list[int]) -> Shape:
        raise NotImplementedError

    def module_class(self) -> type:
        raise NotImplementedError

    def output_shapes(self, spec, bottoms, ctx):
        axis, axes, kernel, stride, pad, dilation = self.geometry(spec, bottoms[0])
        cin, out, group = self._channels(spec, bottoms)
        for index, other in enumerate(bottoms[1:], 1):
            if not same_shape(bottoms[0], other):
                raise ValueError(f"every bottom of a {spec.type} must have the same shape: bottom 0 is "
                                 f"{shape_text(bottoms[0])}, bottom {index} {shape_text(other)}")
        if cin is not None and cin % group:
            raise ValueError(f"the input's {cin} channels are not a multiple of group {group}")
        spatial = [self.size_rule(size, k, q, s, d) for size, k, q, s, d in
                   zip(bottoms[0][axis + 1:], kernel, pad, stride, dilation)]
        return [(*bottoms[0][:axis], out, *spatial)] * len(bottoms)

    def blob_shapes(self, spec, bottoms):
        _, _, kernel, *_ = self.geometry(spec, bottoms[0])
        cin, out, group = self._channels(spec, bottoms)
        shapes: list[Shape] = [self.weight_shape(cin, out, group, kernel)]
        if param_bool(spec, "convolution_param", "bias_term", True):
            shapes.append((out,))
        return shapes

    def build(self, spec, bottoms, ctx):
        axis, axes, kernel, stride, pad, dilation = self.geometry(spec, bottoms[0])
        cin, out, group = self._channels(spec, bottoms)
        if cin is None:
            raise ValueError("the input channel count is unknown; give --input-shape")
        bias = param_bool(spec, "convolution_param", "bias_term", True)
        if axis == 1 and axes == 2:
            return self.module_class()(cin, out, tuple(kernel), tuple(stride), tuple(pad), tuple(dilation), group,
                                       bias)
        return CaffeConvolutionND(self.weight_shape(cin, out, group, kernel), axis, stride, pad, dilation, group,
                                  bias, transposed=isinstance(self, DeconvolutionConverter))


@register("Convolution")
class ConvolutionConverter(_ConvBase):
    """Weights (out, in/group, *kernel), as torch's."""

    def weight_shape(self, cin, out, group, kernel):
        return (out, None if cin is None else cin // group, *kernel)

    def module_class(self):
        return CaffeConvolution


class CaffeConvolution(nn.Conv2d, CaffeLayer):
    def __init__(self, cin, cout, kernel, stride, pad, dilation, group, bias):
        nn.Conv2d.__init__(self, cin, cout, kernel, stride, pad, dilation, group, bias)
        self.blob_names = ("weight", "bias") if bias else ("weight",)

    def forward(self, *xs):
        if len(xs) == 1:
            return super().forward(xs[0])
        return tuple(super(CaffeConvolution, self).forward(x) for x in xs)


@register("Deconvolution")
class DeconvolutionConverter(_ConvBase):
    """Weights (in, out/group, *kernel), as torch's ConvTranspose; output s(in-1) + d(k-1) + 1 - 2p per axis."""

    size_rule = staticmethod(deconv_output_size)

    def weight_shape(self, cin, out, group, kernel):
        return (cin, out // group, *kernel)

    def module_class(self):
        return CaffeDeconvolution

    def window(self, spec):
        return None  # upsampling: handled as a scale change

    def scale_change(self, spec, bottoms, tops):
        _, stride, _, _ = _conv_geometry(spec)
        return float(stride[0])


class CaffeDeconvolution(nn.ConvTranspose2d, CaffeLayer):
    def __init__(self, cin, cout, kernel, stride, pad, dilation, group, bias):
        nn.ConvTranspose2d.__init__(self, cin, cout, kernel, stride, pad, 0, group, bias, dilation)
        self.blob_names = ("weight", "bias") if bias else ("weight",)

    def forward(self, *xs):
        if len(xs) == 1:
            return super().forward(xs[0])
        return tuple(super(CaffeDeconvolution, self).forward(x) for x in xs)


CONVOLUTIONS = {False: (F.conv1d, F.conv1d, F.conv2d, F.conv3d),
                True: (F.conv_transpose1d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)}


class CaffeConvolutionND(CaffeLayer):
    """Caffe's convolution with a channel axis other than 1 or a number of spatial axes other than 2: the axes
    before the channel axis are folded into one batch axis, torch's 1-D, 2-D or 3-D convolution runs (a 0-D one
    as a 1-D one over a single position), and the top takes back the leading axes."""

    def __init__(self, weight_shape, axis, stride, pad, dilation, group, bias, transposed):
        super().__init__()
        self.axis, self.group, self.transposed = axis, group, transposed
        self.spatial = len(weight_shape) - 2
        self.stride, self.pad, self.dilation = tuple(stride) or (1,), tuple(pad) or (0,), tuple(dilation) or (1,)
        self.weight = nn.Parameter(torch.zeros(weight_shape))
        self.bias = nn.Parameter(torch.zeros(weight_shape[1] * group if transposed else weight_shape[0])) \
            if bias else None
        self.blob_names = ("weight", "bias") if bias else ("weight",)

    def _one(self, x):
        lead = x.shape[: self.axis]
        folded = x.reshape(-1, *x.shape[self.axis:])
        weight = self.weight
        if self.spatial == 0:  # one position: a 1-D convolution of length 1
            folded, weight = folded.unsqueeze(-1), weight.unsqueeze(-1)
        fn = CONVOLUTIONS[self.transposed][self.spatial]
        if self.transposed:
            out = fn(folded, weight, self.bias, self.stride, self.pad, 0, self.group, self.dilation)
        else:
            out = fn(folded, weight, self.bias, self.stride, self.pad, self.dilation, self.group)
        if self.spatial == 0:
            out = out.squeeze(-1)
        return out.reshape(*lead, *out.shape[1:])

    def forward(self, *xs):
        return self._one(xs[0]) if len(xs) == 1 else tuple(self._one(x) for x in xs)

    def extra_repr(self) -> str:
        kind = "transposed " if self.transposed else ""
        return (f"{kind}{self.spatial}-D, weight {tuple(self.weight.shape)}, channel axis {self.axis}, "
                f"stride={self.stride}, pad={self.pad}, dilation={self.dilation}, group={self.group}")


@register("InnerProduct")
class InnerProductConverter(LayerConverter):
    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def _dims(self, spec: LayerSpec, bottom: Shape) -> tuple[int, int | None, int]:
        p = spec.param("inner_product_param")
        axis = canonical_axis(p.get("axis", 1), len(bottom))
        return axis, count(bottom[axis:]), int(p["num_output"])

    def validate(self, spec, ctx):
        return [] if spec.param("inner_product_param").get("num_output", 0) >= 1 else [
            "inner_product_param needs num_output > 0"]

    def sees_whole_input(self, spec):
        return spec.param("inner_product_param").get("axis", 1) in (0, 1, 2)

    def output_shapes(self, spec, bottoms, ctx):
        axis, _, out = self._dims(spec, bottoms[0])
        return [tuple(bottoms[0][:axis]) + (out,)]

    def blob_shapes(self, spec, bottoms):
        _, k, out = self._dims(spec, bottoms[0])
        transpose = param_bool(spec, "inner_product_param", "transpose", False)
        shapes: list[Shape] = [(k, out) if transpose else (out, k)]
        if param_bool(spec, "inner_product_param", "bias_term", True):
            shapes.append((out,))
        return shapes

    def build(self, spec, bottoms, ctx):
        axis, k, out = self._dims(spec, bottoms[0])
        if k is None:
            raise ValueError("InnerProduct needs the full input shape; give --input-shape")
        return CaffeInnerProduct(axis, k, out, param_bool(spec, "inner_product_param", "bias_term", True),
                                 param_bool(spec, "inner_product_param", "transpose", False))


class CaffeInnerProduct(CaffeLayer):
    def __init__(self, axis: int, k: int, out: int, bias: bool, transpose: bool):
        super().__init__()
        self.axis, self.transpose = axis, transpose
        self.weight = nn.Parameter(torch.zeros((k, out) if transpose else (out, k)))
        self.bias = nn.Parameter(torch.zeros(out)) if bias else None
        self.blob_names = ("weight", "bias") if bias else ("weight",)

    def forward(self, x):
        flat = x.flatten(self.axis)
        weight = self.weight.t() if self.transpose else self.weight
        return F.linear(flat, weight, self.bias)


@register("Im2col")
class Im2colConverter(LayerConverter):
    """Im2colLayer: the columns a convolution multiplies, as a blob (N, C*kh*kw, out_h, out_w); channel c's
    kernel tap (i, j) is row (c*kh + i)*kw + j, zero padding, Caffe's convolution output size. torch's unfold
    orders its rows the same way."""

    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def validate(self, spec, ctx):
        p = spec.param("convolution_param")
        kernel = p.get("kernel", [None])
        if None in kernel:
            return ["convolution_param needs kernel_size (or kernel_h and kernel_w)"]
        problems = []
        if min(kernel) < 1:
            problems.append(f"kernel size {_pair_text(kernel)}: Caffe requires every filter dimension to be > 0")
        if min(p.get("stride", [1])) < 1:
            problems.append(f"stride {_pair_text(p['stride'])}: Caffe requires every stride to be > 0")
        if min(p.get("pad", [0])) < 0 or min(p.get("dilation", [1])) < 0:
            problems.append("pad and dilation must not be negative")
        return problems

    def check(self, spec, ctx):
        p = spec.param("convolution_param")
        problems = []
        if p.get("axis", 1) != 1:
            problems.append(f"convolution_param.axis={p['axis']} (only the channel axis 1 is supported)")
        if 0 in p.get("dilation", [1]):
            problems.append("dilation 0 (every tap reads the same pixel; torch requires dilation >= 1)")
        return problems

    def window(self, spec):
        kernel, stride, _, dilation = _conv_geometry(spec)
        return tuple(kernel), tuple(stride), tuple(dilation)

    def output_shapes(self, spec, bottoms, ctx):
        if len(bottoms[0]) != 4:
            raise ValueError(f"Im2col needs a 4-D bottom (N, C, H, W), not {len(bottoms[0])}-D")
        kernel, stride, pad, dilation = _conv_geometry(spec)
        n, c, h, w = bottoms[0]
        return [(n, None if c is None else c * kernel[0] * kernel[1],
                 conv_output_size(h, kernel[0], pad[0], stride[0], dilation[0]),
                 conv_output_size(w, kernel[1], pad[1], stride[1], dilation[1]))]

    def build(self, spec, bottoms, ctx):
        kernel, stride, pad, dilation = _conv_geometry(spec)
        return CaffeIm2col(tuple(kernel), tuple(stride), tuple(pad), tuple(dilation))


class CaffeIm2col(CaffeLayer):
    def __init__(self, kernel, stride, pad, dilation):
        super().__init__()
        self.kernel, self.stride, self.pad, self.dilation = kernel, stride, pad, dilation

    def forward(self, x):
        out_h = conv_output_size(x.shape[2], self.kernel[0], self.pad[0], self.stride[0], self.dilation[0])
        out_w = conv_output_size(x.shape[3], self.kernel[1], self.pad[1], self.stride[1], self.dilation[1])
        columns = F.unfold(x, self.kernel, self.dilation, self.pad, self.stride)
        return columns.reshape(x.shape[0], columns.shape[1], out_h, out_w)


@register("Embed")
class EmbedConverter(LayerConverter):
    """EmbedLayer: each bottom value, cast to int (truncated), picks a row of the (input_dim, num_output)
    weight blob, plus the bias; the top is the bottom's shape + (num_output,). An index outside
    [0, input_dim) is undefined in Caffe (a debug-build check only) and an error here."""

    bottom_counts = (1, 1)
    top_counts = (1, 1)

    def _dims(self, spec) -> tuple[int, int, bool]:
        p = spec.param("embed_param")
        return int(p.get("input_dim", 0)), int(p.get("num_output", 0)), bool(p.get("bias_term", True))

    def validate(self, spec, ctx):
        rows, columns, _ = self._dims(spec)
        problems = []
        if columns < 1:
            problems.append("embed_param needs num_output > 0")
        if rows < 1:
            problems.append("embed_param needs input_dim > 0")
        return problems

    def output_shapes(self, spec, bottoms, ctx):
        return [(*bottoms[0], self._dims(spec)[1])]

    def blob_shapes(self, spec, bottoms):
        rows, columns, bias = self._dims(spec)
        return [(rows, columns)] + ([(columns,)] if bias else [])

    def build(self, spec, bottoms, ctx):
        return CaffeEmbed(*self._dims(spec))


class CaffeEmbed(CaffeLayer):
    def __init__(self, rows: int, columns: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(rows, columns))
        self.bias = nn.Parameter(torch.zeros(columns)) if bias else None
        self.blob_names = ("weight", "bias") if bias else ("weight",)

    def forward(self, x):
        index = x.to(torch.int64)  # static_cast<int>: truncation toward zero
        if not torch.jit.is_tracing() and index.numel() and (index.min() < 0 or index.max() >= self.weight.shape[0]):
            raise ValueError(f"Embed input outside [0, {self.weight.shape[0]}) (input_dim): undefined in Caffe")
        rows = F.embedding(index, self.weight)
        return rows + self.bias if self.bias is not None else rows
