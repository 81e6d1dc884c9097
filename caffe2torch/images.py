"""Images in and label maps out: reading (RGB uint8, as decoded; DeepLab used OpenCV, which ignores EXIF
orientation, and so do we), VOC palette PNGs, overlays. Every file is written atomically.

Reading is defensive, because an image file is untrusted input: only regular files are opened (a FIFO would
block, a folder is not an image); the size in the header is checked against a pixel limit before anything is
decoded (a 400 KB PNG can claim 30,000 x 30,000 pixels); animated and multi-page files are refused (which frame
to segment is ambiguous); every pixel format is read by value or refused (`to_rgb8`), never clipped.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from caffe2torch.errors import CaffeError, Location
from caffe2torch.util import atomic_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}

# The default limit on an image's pixels (width x height), checked in the header before decoding: 4096 x 4096.
# The cost of an image grows with its pixels everywhere downstream (about 64 bytes per pixel for the demo net in
# onnxruntime, several hundred for VGG-16 DeepLab at full resolution, 4 bytes x labels x 4 or more in the CRF),
# and DeepLab's nets were trained on 321-513 pixel crops. deeplab-run/-eval --max-pixels raises it.
DEFAULT_MAX_PIXELS = 4096 * 4096

# Pillow modes converted by Pillow itself, exactly: 1-bit, grey, palette, colour, alpha dropped (as OpenCV's
# IMREAD_COLOR does), CMYK and YCbCr by Pillow's conversion (no colour management, as OpenCV).
_CONVERTED_MODES = {"1", "L", "P", "PA", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"}

_FILE_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket",
               stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}

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


@contextlib.contextmanager
def open_image_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image",
                    size: tuple[int, int] | None = None) -> Iterator[Image.Image]:
    """A Pillow image whose header has been read but nothing decoded yet, after checking that `path` is a
    regular file (checked on the open descriptor, so nothing can be swapped in between), that Pillow knows its
    format, that it is 1..max_pixels pixels, single-frame, and, when `size` (height, width) is given, that it
    has that size. Every refusal is a CaffeError naming the file."""
    location = Location(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CaffeError(f"no such {what}", location) from None
    except OSError as exc:
        raise CaffeError(f"cannot open the {what}: {exc.strerror or exc}", location) from None
    kind = stat.S_IFMT(os.fstat(fd).st_mode)
    if kind != stat.S_IFREG:
        os.close(fd)
        raise CaffeError(f"is {_FILE_KINDS.get(kind, 'not a regular file')}, not an {what} file", location)
    with os.fdopen(fd, "rb") as handle:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit speaks below
                image = Image.open(handle)
        except Image.DecompressionBombError as exc:
            raise CaffeError(f"the {what} is over the limit of {max_pixels} pixels (--max-pixels raises it); "
                             f"nothing was decoded (Pillow: {exc})", location) from None
        except UnidentifiedImageError:
            raise CaffeError(f"not an {what} file Pillow can read (unknown format, or corrupt)", location) from None
        except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types on corrupt headers
            raise CaffeError(f"cannot read the {what}: {type(exc).__name__}: {exc}", location) from None
        with image:
            width, height = image.size
            if width < 1 or height < 1:
                raise CaffeError(f"the {what} is {width}x{height}: it has no pixels", location)
            if width * height > max_pixels:
                raise CaffeError(f"the {what} is {width}x{height} = {width * height} pixels, over the limit of "
                                 f"{max_pixels} (--max-pixels raises it); nothing was decoded", location)
            if getattr(image, "is_animated", False) or getattr(image, "n_frames", 1) > 1:
                raise CaffeError(f"the {what} has several frames (animated or multi-page): which one to use is "
                                 "ambiguous; extract one frame first", location)
            if size is not None and (height, width) != tuple(size):
                raise CaffeError(f"the {what} is {width}x{height} but the image is {size[1]}x{size[0]}", location)
            yield image


def _decode(image: Image.Image, path: str | Path, what: str) -> None:
    try:
        image.load()
    except Exception as exc:  # noqa: BLE001 - truncated data, bad compression, MemoryError, plugin errors
        raise CaffeError(f"cannot decode the {what}: {type(exc).__name__}: {exc}", Location(str(path))) from None


def high_byte(values: np.ndarray) -> np.ndarray:
    """16-bit samples to 8 bits by their high byte (v >> 8): how Pillow reads 16-bit colour PNGs and what
    libpng's png_set_strip_16 (OpenCV's 8-bit PNG path, DeepLab's loader) does; within one level of v/257."""
    return (np.asarray(values).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)


def to_rgb8(image: Image.Image, path: str | Path = "") -> np.ndarray:
    """(H, W, 3) uint8 RGB, by value: 8-bit modes through Pillow's exact conversions; 16-bit grey (PNG/TIFF
    'I;16', PGM 'I', which Pillow scales to 16 bits from its maxval) by the high byte, like 16-bit colour;
    anything else refused: a float image has no defined value range (0..1? 0..255?), and 32-bit integers
    neither."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode in _CONVERTED_MODES:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if mode.startswith("I;16") or (mode == "I" and image.format == "PPM"):
        grey = high_byte(np.asarray(image))
        return np.repeat(grey[:, :, None], 3, axis=2)
    reason = {"F": "32-bit floating point: its value range is not defined (0..1? 0..255?)",
              "I": "32-bit integer: its value range is not defined"}.get(mode, "a pixel format not read by value")
    raise CaffeError(f"image mode {mode} ({reason}); convert it to an 8- or 16-bit image", Location(str(path)))


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """RGB uint8 array (H, W, 3), read by value (`to_rgb8`), after the checks of `open_image_file`."""
    with open_image_file(path, max_pixels) as image:
        _decode(image, path, "image")
        return to_rgb8(image, path)


def image_size(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) from the header, with the checks of `open_image_file`; nothing decoded."""
    with open_image_file(path, max_pixels) as image:
        return image.size[1], image.size[0]


# Label formats whose stored values are not the values written: JPEG is lossy; Pillow rescales PGM/PPM
# samples to their maxval.
_ALTERED_LABEL_FORMATS = {"JPEG", "MPO", "PPM"}


def read_label_image(path: str | Path, size: tuple[int, int] | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Class indices of a label image, by value: palette ('P', VOC's SegmentationClass), single-channel 8-bit
    ('L', SBD's SegmentationClassAug), 1-bit, or 16/32-bit integers ('I;16', 'I'). Colours (RGB), alpha,
    floats and lossy or rescaled formats are refused. `size` (height, width) is checked in the header."""
    with open_image_file(path, max_pixels, "label image", size) as image:
        location = Location(str(path))
        if image.format in _ALTERED_LABEL_FORMATS:
            raise CaffeError(f"a {image.format} label image: its stored values are not the labels written "
                             "(JPEG is lossy; PGM/PPM are rescaled to their maxval); use PNG", location)
        mode = image.mode
        if mode not in ("P", "L", "1", "I") and not mode.startswith("I;16"):
            raise CaffeError(f"label image has mode {mode}; expected a palette (P) or single-channel (L, 1, I;16, "
                             "I) image of class indices (RGB colours are not labels)", location)
        _decode(image, path, "label image")
        labels = np.asarray(image)
        return labels.astype(np.uint8) if mode == "1" else labels


def write_label_png(path: str | Path, labels: np.ndarray, palette: np.ndarray | None = None) -> None:
    """A palette ('P' mode) PNG whose pixel values are the labels, as VOC's SegmentationClass files."""
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise CaffeError("a palette PNG holds labels 0..255; these labels reach "
                         f"{int(labels.min())}..{int(labels.max())}", Location(str(path)))
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
    """Paths as given (whatever their suffix or kind: reading reports what is wrong with each), and the
    entries of folders whose names have an image suffix, sorted (not recursive). A folder entry that is not a
    regular file (a FIFO named x.jpg, a folder named y.png) is listed too, so that it is reported, not
    silently passed over."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            try:
                names = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            except OSError as exc:
                raise CaffeError(f"cannot list the folder: {exc.strerror or exc}", Location(str(entry))) from None
            found += names
        else:
            found.append(entry)
    return found
