"""Pictures for people: legends of the classes present, eval panels (image | ground truth | without CRF |
with CRF) and the per-class IoU chart, drawn with Pillow alone.

Text uses Pillow's own scalable font (`ImageFont.load_default(size=...)`, Pillow >= 10.1), so the pictures look
the same on a fresh machine without system fonts; it covers ASCII (a class name in another script shows as
boxes; its colour and label value still identify it). Label colours are the model's palette (images.voc_palette,
as in the label PNGs); the ignore label 255 of a ground truth is drawn in its palette colour and named 'void'.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from caffe2torch.images import voc_palette

IGNORE_LABEL = 255
WHITE, INK, SOFT_INK, RULE, OUTLINE = (255, 255, 255), (34, 34, 34), (90, 90, 90), (222, 222, 222), (120, 120, 120)
# The bars of each variant in the chart: a blue and an orange that stay apart for colour-blind readers.
VARIANT_COLOURS = {"no_crf": (86, 119, 164), "crf": (221, 132, 82), "predictions": (86, 119, 164)}
VARIANT_TITLES = {"no_crf": "without CRF", "crf": "with CRF", "predictions": "predictions"}
# Panel tiles: small images are enlarged by a whole factor (pixels stay square and sharp) to at least this
# many pixels on their longer side; large ones are reduced to at most TILE_MAX.
TILE_MIN, TILE_MAX = 240, 420


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def text_width(text: str, size: int) -> int:
    return math.ceil(font(size).getlength(text))


def variant_title(variant: str) -> str:
    return VARIANT_TITLES.get(variant, variant.replace("_", " "))


@dataclass
class LegendEntry:
    label: int
    name: str
    rgb: tuple[int, int, int]


def legend_entries(label_maps: Iterable[np.ndarray], class_names: Sequence[str],
                   palette: np.ndarray | None = None) -> list[LegendEntry]:
    """One entry per label value present in any of the maps, in label order: its class name (label 255:
    'void (not scored)'; a label beyond the names: 'label N') and its palette colour."""
    palette = voc_palette() if palette is None else palette
    present: set[int] = set()
    for labels in label_maps:
        present.update(int(v) for v in np.unique(labels))
    entries = []
    for label in sorted(present):
        if label < len(class_names):
            name = class_names[label]
        elif label == IGNORE_LABEL:
            name = "void (not scored)"
        else:
            name = f"label {label}"
        entries.append(LegendEntry(label, name, tuple(int(c) for c in palette[label % len(palette)])))
    return entries


def legend_strip(entries: Sequence[LegendEntry], width: int, size: int = 15, padding: int | None = None) -> Image.Image:
    """The entries as colour swatches with names, left to right, wrapped to `width` pixels (at least one entry
    a row). Each swatch has a grey outline, so that black (background) and white entries show on white."""
    padding = round(size * 0.7) if padding is None else padding
    swatch, gap, row_height = size, round(size * 0.4), round(size * 1.6)
    widths = [swatch + gap + text_width(e.name, size) for e in entries]
    rows: list[list[int]] = [[]]
    used = padding
    for index, item in enumerate(widths):
        if rows[-1] and used + item > width - padding:
            rows.append([])
            used = padding
        rows[-1].append(index)
        used += item + 2 * size
    canvas_width = max(width, max((padding * 2 + w for w in widths), default=width))
    strip = Image.new("RGB", (canvas_width, padding * 2 + row_height * len(rows) - (row_height - size)), WHITE)
    draw = ImageDraw.Draw(strip)
    for row_index, row in enumerate(rows):
        x, y = padding, padding + row_index * row_height
        for index in row:
            entry = entries[index]
            draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=entry.rgb, outline=OUTLINE)
            draw.text((x + swatch + gap, y + swatch / 2), entry.name, font=font(size), fill=INK, anchor="lm")
            x += widths[index] + 2 * size
    return strip


def colour_labels(labels: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8: each label's palette colour, as a viewer shows the label PNG."""
    palette = voc_palette() if palette is None else palette
    return palette[labels.astype(np.uint8)]


def overlay_with_legend(rgb: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                        alpha: float = 0.5) -> np.ndarray:
    """deeplab-run's overlay: the image with the label colours blended in (background stays the image), and
    below it a legend of the classes present. The image keeps its own size and place (rows 0..H-1, columns
    0..W-1); the canvas is widened (white) only when a narrow image cannot hold one legend entry."""
    from caffe2torch.images import overlay

    height, width = labels.shape
    size = min(32, max(12, round(width / 45)))
    strip = legend_strip(legend_entries([labels], class_names), width, size)
    canvas = Image.new("RGB", (max(width, strip.width), height + strip.height), WHITE)
    canvas.paste(Image.fromarray(overlay(rgb, labels, alpha)), (0, 0))
    canvas.paste(strip, (0, height))
    return np.asarray(canvas)


def _tile_size(height: int, width: int) -> tuple[int, int]:
    longer = max(height, width)
    if longer < TILE_MIN:
        factor = math.ceil(TILE_MIN / longer)
        return height * factor, width * factor
    if longer > TILE_MAX:
        factor = TILE_MAX / longer
        return max(1, round(height * factor)), max(1, round(width * factor))
    return height, width


def _tile(array: np.ndarray, size: tuple[int, int], smooth: bool) -> Image.Image:
    image = Image.fromarray(array)
    if image.size == (size[1], size[0]):
        return image
    shrinking = size[0] < array.shape[0]
    method = Image.Resampling.LANCZOS if smooth and shrinking else Image.Resampling.NEAREST
    return image.resize((size[1], size[0]), method)


@dataclass
class Column:
    """One column of a panel: a title and either an image (H, W, 3) or a label map (H, W)."""

    title: str
    image: np.ndarray

    @property
    def is_labels(self) -> bool:
        return self.image.ndim == 2


def panel(columns: Sequence[Column], title: str, class_names: Sequence[str], subtitle: str = "",
          palette: np.ndarray | None = None) -> Image.Image:
    """Columns side by side (label maps in their palette colours), each titled, under a title line and an
    optional subtitle, with a legend of every label present in the label maps underneath. All columns show
    the same scene at the same scale: small images are enlarged by a whole factor, large ones reduced."""
    height, width = columns[0].image.shape[:2]
    if any(c.image.shape[:2] != (height, width) for c in columns):
        raise ValueError("the columns of a panel must have the same size")
    tile_h, tile_w = _tile_size(height, width)
    margin, gap, title_size, head_size, legend_size = 16, 12, 20, 15, 15
    tiles = [_tile(colour_labels(c.image, palette) if c.is_labels else c.image, (tile_h, tile_w), not c.is_labels)
             for c in columns]
    heads = [c.title for c in columns]
    column_width = max(tile_w, *(text_width(h, head_size) for h in heads))
    body_width = len(columns) * column_width + (len(columns) - 1) * gap
    width_px = max(body_width, text_width(title, title_size), text_width(subtitle, head_size)) + 2 * margin
    entries = legend_entries([c.image for c in columns if c.is_labels], class_names, palette)
    strip = legend_strip(entries, width_px, legend_size, padding=margin)
    title_h = round(title_size * 1.5) + (round(head_size * 1.5) if subtitle else 0)
    head_h = round(head_size * 1.7)
    top = margin + title_h + head_h
    canvas = Image.new("RGB", (max(width_px, strip.width), top + tile_h + strip.height), WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((margin, margin), title, font=font(title_size), fill=INK)
    if subtitle:
        draw.text((margin, margin + round(title_size * 1.5)), subtitle, font=font(head_size), fill=SOFT_INK)
    for index, (head, tile) in enumerate(zip(heads, tiles)):
        x = margin + index * (column_width + gap)
        draw.text((x + column_width / 2, top - head_h / 2), head, font=font(head_size), fill=INK, anchor="mm")
        left = x + (column_width - tile_w) // 2
        canvas.paste(tile, (left, top))
        draw.rectangle([left - 1, top - 1, left + tile_w, top + tile_h], outline=RULE)
    canvas.paste(strip, (0, top + tile_h))
    return canvas


def per_class_chart(per_class: dict[str, Sequence[float | None]], class_names: Sequence[str],
                    means: dict[str, float] | None = None, title: str = "IoU per class (%)",
                    palette: np.ndarray | None = None) -> Image.Image:
    """Horizontal bars of each class's IoU (0..1 in, percent shown), one bar per variant (e.g. no_crf, crf)
    and a first row for the mean (mIoU) when `means` is given; each class name with its palette swatch. A
    class without an IoU (absent from ground truth and prediction) shows 'n/a'."""
    palette = voc_palette() if palette is None else palette
    variants = list(per_class)
    size, small = 15, 13
    bar_h, bar_gap, row_gap = 13, 2, 9
    row_h = len(variants) * bar_h + (len(variants) - 1) * bar_gap + row_gap
    rows: list[tuple[str, int | None, list[float | None]]] = []
    if means:
        rows.append(("mean (mIoU)", None, [means.get(v) for v in variants]))
    for index, name in enumerate(class_names):
        values = [per_class[v][index] if index < len(per_class[v]) else None for v in variants]
        rows.append((name, index, values))
    margin, swatch = 18, 13
    label_w = swatch + 8 + max(text_width(name, size) for name, _, _ in rows)
    plot_w = 520
    value_w = text_width("100.0", small) + 8
    legend_h = round(size * 2.2)
    top = margin + round(size * 1.8) + legend_h
    plot_x = margin + label_w + 12
    width = plot_x + plot_w + value_w + margin
    height = top + len(rows) * row_h + 6 + round(small * 2.2) + margin
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((margin, margin), title, font=font(size + 3), fill=INK)
    x = margin
    for variant in variants:  # the variants' legend, under the title
        y = margin + round(size * 1.8) + 4
        draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=VARIANT_COLOURS.get(variant, (128, 128, 128)))
        draw.text((x + swatch + 6, y + swatch / 2), variant_title(variant), font=font(size), fill=INK, anchor="lm")
        x += swatch + 6 + text_width(variant_title(variant), size) + 24
    plot_bottom = top + len(rows) * row_h
    for tick in range(0, 101, 20):  # grid and axis
        tx = plot_x + plot_w * tick / 100
        draw.line([tx, top - 4, tx, plot_bottom], fill=RULE if tick else OUTLINE)
        draw.text((tx, plot_bottom + 6), str(tick), font=font(small), fill=SOFT_INK, anchor="mt")
    for row_index, (name, label, values) in enumerate(rows):
        y = top + row_index * row_h
        middle = y + (row_h - row_gap) / 2
        if label is not None:
            colour = tuple(int(c) for c in palette[label % len(palette)])
            draw.rectangle([margin, middle - swatch / 2, margin + swatch - 1, middle + swatch / 2 - 1], fill=colour,
                           outline=OUTLINE)
        draw.text((margin + swatch + 8, middle), name, font=font(size), fill=INK, anchor="lm")
        for bar_index, (variant, value) in enumerate(zip(variants, values)):
            by = y + bar_index * (bar_h + bar_gap)
            if value is None:
                draw.text((plot_x + 4, by + bar_h / 2), "n/a", font=font(small), fill=SOFT_INK, anchor="lm")
                continue
            end = plot_x + plot_w * max(0.0, min(1.0, value))
            if end > plot_x:
                draw.rectangle([plot_x, by, end, by + bar_h - 1], fill=VARIANT_COLOURS.get(variant, (128, 128, 128)))
            draw.text((end + 4, by + bar_h / 2), f"{100 * value:.1f}", font=font(small), fill=INK, anchor="lm")
        if label is None and means:  # the mean row is set apart from the classes
            draw.line([margin, y + row_h - row_gap / 2, plot_x + plot_w, y + row_h - row_gap / 2], fill=RULE)
    return canvas
