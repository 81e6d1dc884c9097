"""Procedurally generated segmentation scenes for the demo model: textured backgrounds and a handful of
object classes with soft and sharp boundaries. Deterministic for a given seed.

Classes: 0 background, 1 disc, 2 box, 3 triangle, 4 ring. Labels carry a 255 "void" band one pixel wide on
sharp object boundaries and wider on soft ones, as PASCAL VOC marks its object outlines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caffe2torch.util import atomic_write_text

CLASS_NAMES = ["background", "disc", "box", "triangle", "ring"]
IGNORE = 255


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random colour field plus stripes and noise, float RGB in [0, 255]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 215, 3)
    field = np.zeros((height, width, 3), np.float32) + base
    for _ in range(3):
        fx, fy = rng.uniform(-0.25, 0.25, 2)
        phase = rng.uniform(0, 2 * np.pi)
        amplitude = rng.uniform(5, 35, 3)
        field += np.sin(fx * x + fy * y + phase)[..., None] * amplitude
    field += rng.normal(0, rng.uniform(2, 12), (height, width, 3))
    return field


def _shape_mask(kind: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Signed distance-like field (positive inside) of one object of the given class."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
    size = rng.uniform(0.12, 0.3) * min(height, width)
    if kind == 1:  # disc
        return size - np.hypot(y - cy, x - cx)
    if kind == 2:  # box, rotated
        angle = rng.uniform(0, np.pi)
        u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
        aspect = rng.uniform(0.6, 1.4)
        return np.minimum(size * aspect - np.abs(u), size / aspect - np.abs(v))
    if kind == 3:  # triangle
        angle = rng.uniform(0, 2 * np.pi)
        distances = []
        for k in range(3):
            a = angle + k * 2 * np.pi / 3
            distances.append(size * 0.6 - ((x - cx) * np.cos(a) + (y - cy) * np.sin(a)))
        return np.minimum.reduce(distances)
    # ring
    radius = np.hypot(y - cy, x - cx)
    return size * 0.35 - np.abs(radius - size * 0.8)


def make_scene(rng: np.random.Generator, height: int = 129, width: int = 129) -> tuple[np.ndarray, np.ndarray]:
    """One scene: RGB uint8 image and uint8 labels (0-4, 255 on object boundaries)."""
    image = _texture(rng, height, width)
    labels = np.zeros((height, width), np.uint8)
    boundary = np.zeros((height, width), bool)
    for _ in range(rng.integers(1, 4)):
        kind = int(rng.integers(1, len(CLASS_NAMES)))
        distance = _shape_mask(kind, rng, height, width)
        soft = rng.random() < 0.4
        width_px = rng.uniform(2.0, 4.0) if soft else 0.75
        alpha = np.clip(0.5 + distance / (2 * width_px), 0, 1)[..., None]
        colour = rng.uniform(0, 255, 3)
        texture = _texture(rng, height, width) * 0.35 + colour * 0.65
        image = image * (1 - alpha) + texture * alpha
        inside = distance > 0
        labels[inside] = kind
        boundary &= ~inside  # a later object hides earlier outlines under it
        boundary |= np.abs(distance) < (width_px if soft else 1.0)
    labels[boundary] = IGNORE
    return np.clip(image, 0, 255).round().astype(np.uint8), labels


def make_batch(seed: int, count: int, height: int = 129, width: int = 129) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scenes = [make_scene(rng, height, width) for _ in range(count)]
    return np.stack([s[0] for s in scenes]), np.stack([s[1] for s in scenes])


def write_voc_layout(root: str | Path, seed: int, count: int, split: str = "val") -> Path:
    """A held-out set in the PASCAL VOC layout (JPEG-free: PNG images named .jpg would lie, so .png images and
    a list of DeepLab-style path pairs), for deeplab-eval --list."""
    from caffe2torch.images import write_label_png, write_rgb_png

    root = Path(root)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for index in range(count):
        image, labels = make_scene(rng)
        name = f"synthetic_{index:04d}"
        write_rgb_png(root / "JPEGImages" / f"{name}.png", image)
        write_label_png(root / "SegmentationClass" / f"{name}.png", labels)
        lines.append(f"/JPEGImages/{name}.png /SegmentationClass/{name}.png")
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    atomic_write_text(listing, "\n".join(lines) + "\n")
    return listing
