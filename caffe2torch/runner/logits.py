"""From an image to class scores through any backend's one `logits(batch, valid)` call: preprocessing, the
net's own upsampling, crop back to the image, optional multi-scale and flip."""

from __future__ import annotations

import numpy as np

from caffe2torch.errors import CaffeError
from caffe2torch.images import resize_rgb
from caffe2torch.runner.model_info import interp_stride
from caffe2torch.runner.preprocess import preprocess


def resize_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(logits))[None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0].numpy()


def upsample_like_interp(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scores on a stride-s grid brought to the net's input size as DeepLab's Interp (zoom_factor s) does:
    bilinear with aligned corners, so output cell i lands on input pixel s·i (caffe_math.interp_output_size:
    (out − 1)·s + 1 = the input size)."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(logits))[None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=True)[0].numpy()


def image_logits(backend, rgb: np.ndarray, scales=(1.0,), flip: bool = False, fuse: str = "max") -> np.ndarray:
    """Class scores (C, H, W) for an image: the net's output cropped to the image (a fixed-size net: the
    image resized to the net's size, the scores resized back, both bilinear); with several scales or flip,
    the maps are brought back to the image size and fused by `fuse` (max or mean)."""
    height, width = rgb.shape[:2]
    info = backend.info
    fixed = info.sizes is not None and not info.sizes.size_free
    maps = []
    for scale in scales:
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        scaled = rgb if (h, w) == (height, width) else resize_rgb(rgb, h, w)
        for flipped in ((False, True) if flip else (False,)):
            image = np.ascontiguousarray(scaled[:, ::-1] if flipped else scaled)
            valid = info.sizes.declared if fixed else (h, w)
            batch = preprocess(image, info)
            out = backend.logits(batch, valid)[0]
            if fixed:
                out = resize_logits(out, h, w) if out.shape[-2:] != (h, w) else out
            elif out.shape[-2:] != batch.shape[-2:] and interp_stride(batch.shape[-2:], out.shape[-2:]):
                out = upsample_like_interp(out, *batch.shape[-2:])  # a stride-s grid of the input
            elif out.shape[-2] < h or out.shape[-1] < w:
                raise CaffeError(f"the net's output {tuple(out.shape[-2:])} is smaller than the image ({h}, {w}) "
                                 f"and no stride grid of its input {tuple(batch.shape[-2:])}: is "
                                 f"'{info.output_name}' upsampled to the input size?")
            out = out[:, :h, :w]
            if flipped:
                out = out[:, :, ::-1]
            maps.append(out if (h, w) == (height, width) else resize_logits(out, height, width))
    if len(maps) == 1:
        return np.ascontiguousarray(maps[0])
    stack = np.stack(maps)
    return stack.max(axis=0) if fuse == "max" else stack.mean(axis=0)
