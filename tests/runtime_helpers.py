"""Shared by the hostile-input tests of deeplab-run/-eval: a tiny converted model, images and a VOC layout.

The model is one 3x3 convolution to 21 classes (output = input size), so a run costs milliseconds per image
and nothing depends on ../shared.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from caffe2torch.images import voc_palette

from .conftest import net_from_text, write_random_weights

TINY_NET = """name: "tiny_seg"
input: "data"
input_shape { dim: 1 dim: 3 dim: 17 dim: 17 }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 21 kernel_size: 3 pad: 1 } }
"""


def convert_tiny_model(folder: Path) -> Path:
    """model.onnx and model.safetensors of TINY_NET (random weights) in `folder`."""
    from caffe2torch.cli import convert

    folder.mkdir(parents=True, exist_ok=True)
    prototxt = folder / "tiny.prototxt"
    prototxt.write_text(TINY_NET)
    caffemodel = folder / "tiny.caffemodel"
    write_random_weights(net_from_text(TINY_NET), caffemodel, seed=5)
    result = CliRunner().invoke(convert.main, [str(prototxt), str(caffemodel), "-o", str(folder)])
    assert result.exit_code == 0, result.output
    return folder


def photo(seed: int, height: int = 24, width: int = 32) -> np.ndarray:
    """A small RGB image with a few flat regions (so labels and the CRF have edges to work on)."""
    rng = np.random.default_rng(seed)
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:] = rng.integers(0, 255, 3)
    rgb[height // 3:, width // 2:] = rng.integers(0, 255, 3)
    rgb[: height // 2, : width // 3] = rng.integers(0, 255, 3)
    return rgb


def save_photo(path: Path, seed: int, height: int = 24, width: int = 32) -> Path:
    Image.fromarray(photo(seed, height, width)).save(path)
    return path


def png_with_header(path: Path, width: int, height: int, bit_depth: int = 8, colour_type: int = 0,
                    idat: bytes | None = None) -> Path:
    """A PNG whose IHDR claims width x height, with the given IDAT (default: a few compressed zero rows, far
    fewer than claimed): what a decompression bomb looks like before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    if idat is None:
        idat = zlib.compress(b"\0" * (width + 1) * 4, 9)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def png16(path: Path, values: np.ndarray) -> Path:
    """A 16-bit PNG (grey for (H, W), colour for (H, W, 3)) written byte by byte, big-endian as PNG stores it."""
    colour = values.ndim == 3
    rows = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(values.shape[0]))
    return png_with_header(path, values.shape[1], values.shape[0], 16, 2 if colour else 0, zlib.compress(rows))


def save_palette(path: Path, labels: np.ndarray) -> Path:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(voc_palette().reshape(-1).tolist())
    image.save(path)
    return path


def voc_layout(root: Path, count: int = 3, size: tuple[int, int] = (24, 32)) -> list[str]:
    """A VOC-style dataset of `count` images with palette labels and a val list; returns the ids."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for index in range(count):
        image_id = f"2007_{index:06d}"
        Image.fromarray(photo(index, *size)).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        labels = np.zeros(size, np.uint8)
        labels[size[0] // 3:, size[1] // 2:] = 15
        labels[0] = 255
        save_palette(root / "SegmentationClass" / f"{image_id}.png", labels)
        ids.append(image_id)
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    return ids


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path: equal before and after means untouched."""
    digests = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = Path(dirpath) / name
            digests[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests
