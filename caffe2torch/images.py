"""Images in and label maps out: reading (RGB uint8, as decoded; DeepLab used OpenCV, which ignores EXIF
orientation, and so do we), VOC palette PNGs, overlays. Every file is written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from caffe2torch.errors import CaffeError, Location
from caffe2torch.util import atomic_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]


def voc_palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC's colour map: the bits of the label spread over R, G and B (labels 0..255; 255 is white-ish)."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for label in range(n):
        value, r, g, b = label, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[label] = (r, g, b)
    return palette


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 array (H, W, 3). Grey and RGBA images are converted."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise CaffeError("no such image", Location(str(path))) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise CaffeError(f"cannot read the image: {exc}", Location(str(path))) from None


def write_label_png(path: str | Path, labels: np.ndarray, palette: np.ndarray | None = None) -> None:
    """A palette ('P' mode) PNG whose pixel values are the labels, as VOC's SegmentationClass files."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette((voc_palette() if palette is None else palette).reshape(-1).tolist())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5, palette: np.ndarray | None = None) -> np.ndarray:
    colours = (voc_palette() if palette is None else palette)[labels.astype(np.uint8)]
    mixed = rgb.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha
    mixed[labels == 0] = rgb[labels == 0]  # background stays the photograph
    return mixed.round().clip(0, 255).astype(np.uint8)


def write_rgb_png(path: str | Path, rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG")


def resize_rgb(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with OpenCV INTER_LINEAR's convention (half-pixel centres, no antialiasing), which
    DeepLab's scale_factors used; Pillow's BILINEAR would low-pass when shrinking."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1)[None].float()
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def list_images(paths: list[str | Path]) -> list[Path]:
    """Files as given (whatever their suffix) and the image files inside folders, sorted."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found += sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(entry)
    return found
