"""Caffe's size arithmetic, written once and shared by shape inference, the torch modules and the tests.

Every function takes plain ints (or None for "unknown", which propagates) so that the same rule serves
`deeplab-info` on a prototxt and the modules on live tensors. Sources: DeepLab's Caffe forks; see
../shared/docs/deeplab-caffe-facts.md sections 3 and 5.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def conv_output_size(size: int | None, kernel: int, pad: int, stride: int, dilation: int = 1) -> int | None:
    """Convolution: floor((in + 2p - (d(k-1)+1)) / s) + 1. DeepLab v1's `hole` is this dilation."""
    if size is None:
        return None
    effective = dilation * (kernel - 1) + 1
    return (size + 2 * pad - effective) // stride + 1


def deconv_output_size(size: int | None, kernel: int, pad: int, stride: int, dilation: int = 1) -> int | None:
    """Deconvolution: s(in-1) + d(k-1) + 1 - 2p."""
    if size is None:
        return None
    return stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad


def as_count(flag):
    """A comparison's outcome as 0 or 1, for Python ints and for the traced shape values of an ONNX export
    alike (tracing records shapes as tensors, and torch cannot subtract a bool tensor)."""
    return flag.to(torch.int64) if isinstance(flag, torch.Tensor) else int(flag)


def pool_output_size(size, kernel: int, pad: int, stride: int, round_mode: str = "CEIL"):
    """Caffe's PoolingLayer::Reshape: ceil((in + 2p - k)/s) + 1 (round_mode FLOOR: floor), then, with padding,
    minus 1 if the last window would start in the bottom/right padding ((out-1)*s >= in + p). Integer
    arithmetic only, so a traced export records it for any input size; `size` None gives None."""
    if size is None:
        return None
    span = size + 2 * pad - kernel
    out = (span + stride - 1) // stride + 1 if round_mode == "CEIL" else span // stride + 1
    if pad > 0:
        out = out - as_count((out - 1) * stride >= size + pad)
    return out


def pool_average_divisors(size: int, kernel: int, pad: int, stride: int, round_mode: str = "CEIL") -> list[int]:
    """Caffe's AVE divisor per output position along one axis: the window clipped to [-p, in+p) *before*
    clipping to the image, so padding cells count and the ceil-mode overhang past in+p does not:
    min(k, in + 2p - i*s). Without padding a window that starts past the input (kernel < stride) gets a
    divisor <= 0, as in Caffe (0/0 is NaN there, 0/negative is -0)."""
    out = pool_output_size(size, kernel, pad, stride, round_mode)
    return [min(kernel, size + 2 * pad - i * stride) for i in range(out or 0)]


def pool_pads_torch_cannot_express(kernel: int, pad: int, stride: int, round_mode: str = "CEIL") -> bool:
    """Whether torch's own pooling (padding, ceil_mode, count_include_pad) differs from Caffe's on this axis:
    torch requires pad <= kernel/2, and in ceil mode it drops a last window starting past the input even
    without padding, which Caffe keeps (possible only when kernel < stride)."""
    if 2 * pad > kernel:
        return True
    return round_mode == "CEIL" and pad == 0 and kernel < stride


def interp_output_size(
    height: int | None, width: int | None, param: dict[str, Any], dialect: str = "deeplab_v2"
) -> tuple[int | None, int | None]:
    """DeepLab's Interp output size for an input of height x width.

    `param` holds only the fields the prototxt set (presence matters: `zoom_factor: 1` counts as given).
    The effective input is in + pad_beg + pad_end (pads <= 0: crop only). The v2 fork checks, in order:
    shrink only; zoom only; height+width; shrink and zoom (shrink first, then zoom). DeepLab v1 demands
    exactly one of zoom, shrink or height+width, which gives the same sizes.
    """
    pad_beg, pad_end = param.get("pad_beg", 0), param.get("pad_end", 0)
    has_zoom, has_shrink = "zoom_factor" in param, "shrink_factor" in param
    has_size = "height" in param and "width" in param
    if dialect == "deeplab_v1" and int(has_zoom) + int(has_shrink) + int(has_size) != 1:
        raise ValueError("DeepLab v1 Interp needs exactly one of zoom_factor, shrink_factor or height+width")
    if pad_beg > 0 or pad_end > 0:
        raise ValueError("Interp supports only pad_beg <= 0 and pad_end <= 0 (cropping)")
    zoom, shrink = param.get("zoom_factor", 1), param.get("shrink_factor", 1)
    if (has_zoom and zoom < 1) or (has_shrink and shrink < 1):
        raise ValueError("Interp zoom_factor and shrink_factor must be >= 1")

    def one(size: int | None, explicit: int | None) -> int | None:
        if size is None:
            return None if explicit is None else explicit
        eff = size + pad_beg + pad_end
        if eff <= 0:
            raise ValueError(f"Interp crops an input of size {size} to nothing")
        if has_shrink and not has_zoom:
            return (eff - 1) // shrink + 1
        if has_zoom and not has_shrink:
            return eff + (eff - 1) * (zoom - 1)
        if explicit is not None:
            return explicit
        if has_shrink and has_zoom:
            shrunk = (eff - 1) // shrink + 1
            return shrunk + (shrunk - 1) * (zoom - 1)
        raise ValueError("Interp needs zoom_factor, shrink_factor or height and width")

    explicit_h = param["height"] if has_size else None
    explicit_w = param["width"] if has_size else None
    if not (has_zoom or has_shrink or has_size):
        raise ValueError("Interp needs zoom_factor, shrink_factor or height and width")
    return one(height, explicit_h), one(width, explicit_w)


def padding_output_size(size: int | None, pad_beg: int, pad_end: int) -> int | None:
    """DeepLab v1 PADDING: out = in + pad_beg + pad_end (negative pads crop)."""
    return None if size is None else size + pad_beg + pad_end


def canonical_axis(axis: int, ndim: int) -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end."""
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for a {ndim}-D blob")
    return axis % ndim


def reshape_output_shape(shape: tuple[int | None, ...], param: dict[str, Any]) -> tuple[int | None, ...]:
    """Caffe's Reshape: `dim` 0 copies the input dim, one -1 is inferred; `axis`/`num_axes` select the part
    of the input shape that is replaced. ReshapeLayer's CHECKs, in its words: the count must be preserved."""
    dims = [int(d) for d in param.get("shape", {}).get("dim", [])]
    ndim = len(shape)
    axis = int(param.get("axis", 0))
    start = axis if axis >= 0 else ndim + axis + 1
    if not 0 <= start <= ndim:
        raise ValueError(f"reshape_param.axis {axis} is out of range for a {ndim}-D input")
    num_axes = int(param.get("num_axes", -1))
    if num_axes < -1:
        raise ValueError(f"reshape_param.num_axes {num_axes}: must be >= 0, or -1 for all")
    end = ndim if num_axes == -1 else start + num_axes
    if end > ndim:
        raise ValueError(f"reshape_param axis + num_axes ({end}) is out of range for a {ndim}-D input")
    if dims.count(-1) > 1:
        raise ValueError("reshape_param.shape may infer only one dimension (-1)")
    if any(d < -1 for d in dims):
        raise ValueError(f"reshape_param.shape {dims}: dimensions must be positive, 0 (copy) or -1 (infer)")
    new: list[int | None] = list(shape[:start])
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= ndim:
                raise ValueError("reshape_param.shape holds a 0, but the input has no corresponding axis to copy")
            new.append(shape[start + i])
        else:
            new.append(d)
    new += list(shape[end:])
    if -1 in dims:
        inferred = start + dims.index(-1)
        known = [d for i, d in enumerate(new) if i != inferred]
        if None in known or None in shape:
            new[inferred] = None
        else:
            total, rest = math.prod(shape), math.prod(known)  # type: ignore[arg-type]
            if rest == 0 or total % rest:
                raise ValueError(f"the input's {total} elements are not divisible by the product of the specified "
                                 f"dimensions ({rest})")
            new[inferred] = total // rest
    if None not in new and None not in shape and math.prod(new) != math.prod(shape):  # type: ignore[arg-type]
        raise ValueError(f"Reshape must keep the element count: {tuple(shape)} has {math.prod(shape)} elements, "  # type: ignore[arg-type]
                         f"{tuple(new)} would have {math.prod(new)}")  # type: ignore[arg-type]
    return tuple(new)


def receptive_field_step(
    field: float, jump: float, kernel: int, stride: int, dilation: int = 1
) -> tuple[float, float]:
    """Grow a receptive field (in input pixels) through a sliding window: rf += (d(k-1)) * jump, jump *= s."""
    return field + dilation * (kernel - 1) * jump, jump * stride
