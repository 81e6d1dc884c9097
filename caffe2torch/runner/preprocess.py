"""Preprocessing as DeepLab's test did it (facts sheet §6): RGB → BGR, minus the per-channel mean, times `scale`
(1), padded at the bottom and right with 0 (the mean, after subtraction) to the net's crop size. An image larger
than the crop size is padded to the next size of the form 32k+1 that the net accepts instead (DeepLab's test
would have cropped it; 8k+1 and 32k+1 sizes keep every Interp grid aligned, and MSC nets need 32k+1..32k+6). A
net that runs at one size only (input_sizes.py) gets the image resized to that size. Net inputs with the role
data_dim get each image's valid (height, width)."""

from __future__ import annotations

import numpy as np

from caffe2torch.images import resize_rgb
from caffe2torch.input_sizes import InputSizes
from caffe2torch.runner.model_info import ModelInfo


def padded_size(height: int, width: int, crop: int | None, sizes: InputSizes | None = None) -> tuple[int, int]:
    """The net input size for an image: the crop size when the image fits (DeepLab's test), else, per side,
    the next 32k+1 size the net accepts; a fixed-size net's own size."""
    if sizes is not None and not sizes.size_free:
        return sizes.declared
    if crop and height <= crop and width <= crop and (sizes is None or sizes.accepts(crop, crop)):
        return crop, crop
    if sizes is not None and sizes.height is not None and sizes.width is not None:
        return sizes.height.at_least(height), sizes.width.at_least(width)

    def up(size: int) -> int:
        return ((max(size, 2) - 2) // 32 + 1) * 32 + 1

    return up(height), up(width)


def net_image(rgb: np.ndarray, info: ModelInfo) -> np.ndarray:
    """The image as the net takes it: resized (bilinear) to the size of a net that runs at one size only,
    unchanged otherwise."""
    if info.sizes is not None and not info.sizes.size_free and rgb.shape[:2] != info.sizes.declared:
        return resize_rgb(rgb, *info.sizes.declared)
    return rgb


def net_colours(rgb: np.ndarray, info: ModelInfo) -> np.ndarray:
    """(H, W, 3) float32: the image as the net's data blob holds it (channel order, minus the mean, times
    scale)."""
    image = rgb[..., ::-1] if info.channel_order.upper() == "BGR" else rgb
    return (image.astype(np.float32) - np.asarray(info.mean, np.float32)) * np.float32(info.scale)


def preprocess(rgb: np.ndarray, info: ModelInfo) -> np.ndarray:
    """(1, 3, Hp, Wp) float32 net input for an RGB uint8 image, padded at the bottom/right with zeros (a
    fixed-size net's input: the image resized to its size)."""
    rgb = net_image(rgb, info)
    height, width = rgb.shape[:2]
    pad_h, pad_w = padded_size(height, width, info.crop_size, info.sizes)
    batch = np.zeros((1, 3, pad_h, pad_w), dtype=np.float32)
    batch[0, :, :height, :width] = net_colours(rgb, info).transpose(2, 0, 1)
    return batch


def data_dim_blob(batch: np.ndarray, valid: tuple[int, int] | None) -> np.ndarray:
    """DeepLab's data_dim for a batch: each image's valid (height, width), shape (N, 1, 1, 2) float32."""
    height, width = valid if valid is not None else batch.shape[2:]
    return np.tile(np.asarray([height, width], np.float32).reshape(1, 1, 1, 2), (batch.shape[0], 1, 1, 1))
