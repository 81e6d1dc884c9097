"""MAX Pooling's second top, the mask (upstream Caffe and its forks; SegNet's and ENet's Upsample read it).

With two tops, Caffe's MAX pooling writes to the second, as floats, the index h * W + w of each window's maximum
in its channel's input plane, scanning the window row by row and keeping the first of equal maxima (a strict
`>`). torch's max_pool2d with return_indices numbers and scans the same way (its index is in the unpadded
input plane, and it replaces a maximum only by a strictly greater value), so the mask is its indices as floats.
Where torch's pooling cannot express Caffe's windows (pad > kernel/2, round_mode FLOOR, kernel < stride), the
input is padded explicitly with -FLT_MAX (layers/pooling.py) and each index is mapped back from the padded plane;
a window with nothing above -FLT_MAX then gets Caffe's -FLT_MAX and mask -1. NaN differs (Caffe skips it,
torch takes it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from caffe2torch.layers.pooling import FLT_MAX, needs_explicit_padding, pad_to_caffe_windows
from caffe2torch.layers.registry import CaffeLayer


class CaffeMaxPoolingWithMask(CaffeLayer):
    """MAX pooling (Caffe's sizes, as layers/pooling.py) returning (pooled, mask); kernel None = global."""

    def __init__(self, kernel, stride, pad, round_mode: str = "CEIL"):
        super().__init__()
        self.kernel, self.stride, self.pad, self.round_mode = kernel, stride, pad, round_mode
        self.explicit = kernel is not None and needs_explicit_padding(kernel, stride, pad, round_mode)

    def forward(self, x):
        if self.explicit:
            return self._explicit(x)
        kernel = self.kernel if self.kernel is not None else (x.shape[2], x.shape[3])
        pooled, index = F.max_pool2d(x, kernel, self.stride, self.pad, ceil_mode=self.round_mode == "CEIL",
                                     return_indices=True)
        return pooled, index.to(x.dtype)

    def _explicit(self, x):
        padded, _ = pad_to_caffe_windows(x, self.kernel, self.stride, self.pad, self.round_mode, -FLT_MAX)
        pooled, index = F.max_pool2d(padded, self.kernel, self.stride, return_indices=True)
        padded_width = padded.shape[3]
        row = torch.div(index, padded_width, rounding_mode="floor") - self.pad[0]
        column = index - (row + self.pad[0]) * padded_width - self.pad[1]
        mask = (row * x.shape[3] + column).to(x.dtype)
        pooled = pooled.clamp(min=-FLT_MAX)
        return pooled, torch.where(pooled > -FLT_MAX, mask, torch.full_like(mask, -1.0))

    def extra_repr(self) -> str:
        return (f"MAX with mask, kernel={self.kernel or 'global'}, stride={self.stride}, pad={self.pad}, "
                f"{self.round_mode.lower()}")
