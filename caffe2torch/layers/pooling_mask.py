"""MAX Pooling's second top, the mask (upstream Caffe and its forks; SegNet's and ENet's Upsample read it).

With two tops, Caffe's MAX pooling writes to the second, as floats, the index h * W + w of each window's maximum
in its channel's input plane, scanning the window row by row and keeping the first of equal maxima (a strict
`>`). torch's max_pool2d with return_indices numbers and scans the same way (its index is in the unpadded
input plane, and it replaces a maximum only by a strictly greater value), so the mask is its indices as floats.
Two inputs differ, both outside what Caffe defines usefully: NaN (Caffe skips it, torch takes it) and a window
of nothing above -FLT_MAX (Caffe: -FLT_MAX and mask -1, which Upsample cannot use; torch: -inf and the first
index)."""

from __future__ import annotations

import torch.nn.functional as F

from caffe2torch.layers.registry import CaffeLayer


class CaffeMaxPoolingWithMask(CaffeLayer):
    """MAX pooling (Caffe's ceil sizes, as layers/pooling.py) returning (pooled, mask); kernel None = global."""

    def __init__(self, kernel, stride, pad):
        super().__init__()
        self.kernel, self.stride, self.pad = kernel, stride, pad

    def forward(self, x):
        kernel = self.kernel if self.kernel is not None else (x.shape[2], x.shape[3])
        pooled, index = F.max_pool2d(x, kernel, self.stride, self.pad, ceil_mode=True, return_indices=True)
        return pooled, index.to(x.dtype)

    def extra_repr(self) -> str:
        return f"MAX with mask, kernel={self.kernel or 'global'}, stride={self.stride}, pad={self.pad}, ceil"
