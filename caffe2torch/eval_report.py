"""What deeplab-eval leaves for people to read: results.json, report.md with the per-class IoU chart beside its
table (per_class_iou.png), and panels (panels/<id>.png: image | ground truth | without CRF | with CRF) for
the first images and for the images with the lowest mIoU.

Panels are drawn after scoring, from the files on disk (the image, its label and each variant's saved
prediction), so a resumed run draws the same panels as an uninterrupted one. The worst images are ranked by
their own mIoU (evaluate.image_miou) with the CRF when there is one, else without.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from caffe2torch.evaluate import EvalResult, Sample, read_label
from caffe2torch.images import DEFAULT_MAX_PIXELS, read_image
from caffe2torch.pictures import Column, panel, per_class_chart, variant_title
from caffe2torch.util import atomic_path, atomic_write_text

PANELS_DIR = "panels"
CHART = "per_class_iou.png"
DEFAULT_FIRST_PANELS = 3
DEFAULT_WORST_PANELS = 5


@dataclass
class PanelRecord:
    id: str
    file: str  # relative to the results folder
    position: int  # 1-based place in the list of samples
    worst_rank: int | None = None  # 1 = the lowest mIoU
    first: bool = False
    miou: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "file": self.file, "first": self.first, "worst_rank": self.worst_rank,
                "mIoU": self.miou}


def ranking_variant(result: EvalResult) -> str | None:
    """The variant the worst images are ranked by: with the CRF when there is one."""
    variants = list(result.prediction_dirs) or list(result.scores)
    return "crf" if "crf" in variants else (variants[0] if variants else None)


def choose_panels(samples: list[Sample], result: EvalResult, first: int, worst: int) -> list[PanelRecord]:
    """The first `first` scored images, then the `worst` images with the lowest mIoU (ties: list order), one
    record per image (an image can be both)."""
    position = {s.id: index + 1 for index, s in enumerate(samples)}
    chosen: dict[str, PanelRecord] = {}
    for image_id in list(result.per_image)[:first]:
        chosen[image_id] = PanelRecord(image_id, f"{PANELS_DIR}/{image_id}.png", position[image_id], first=True)
    key = ranking_variant(result)
    ranked = sorted((value, position[i], i) for i, scores in result.per_image.items()
                    if (value := scores.get(key)) is not None)
    for rank, (_, _, image_id) in enumerate(ranked[:worst], 1):
        record = chosen.setdefault(image_id, PanelRecord(image_id, f"{PANELS_DIR}/{image_id}.png",
                                                         position[image_id]))
        record.worst_rank = rank
    for record in chosen.values():
        record.miou = dict(result.per_image[record.id])
    return sorted(chosen.values(), key=lambda r: (0, r.position) if r.first else (1, r.worst_rank))


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def draw_panel(sample: Sample, record: PanelRecord, result: EvalResult, class_names: list[str], total: int,
               max_pixels: int = DEFAULT_MAX_PIXELS):
    """The panel of one image (a PIL image): image | ground truth | each variant's prediction."""
    rgb = read_image(sample.image, max_pixels)
    columns = [Column("image", rgb), Column("ground truth", read_label(sample.label, rgb.shape[:2], max_pixels))]
    for variant, folder in result.prediction_dirs.items():
        value = record.miou.get(variant)
        head = variant_title(variant) + (f" · mIoU {100 * value:.1f}" if value is not None else "")
        columns.append(Column(head, read_label(Path(folder) / f"{sample.id}.png", rgb.shape[:2], max_pixels)))
    subtitle = f"image {record.position} of {total}"
    if record.worst_rank:
        which = "the lowest" if record.worst_rank == 1 else f"the {_ordinal(record.worst_rank)} lowest"
        subtitle += f" · {which} mIoU {variant_title(ranking_variant(result))} of {len(result.per_image)} scored"
    return panel(columns, sample.id, class_names, subtitle)


def write_panels(out: str | Path, samples: list[Sample], result: EvalResult, class_names: list[str],
                 first: int = DEFAULT_FIRST_PANELS, worst: int = DEFAULT_WORST_PANELS,
                 max_pixels: int = DEFAULT_MAX_PIXELS, notes: list[str] | None = None) -> list[PanelRecord]:
    """Draw the chosen panels into RESULTS/panels/ (panels of an earlier run that are not chosen now are
    removed). An image whose panel cannot be drawn gets a note, not a failure: its score stands."""
    out = Path(out)
    folder = out / PANELS_DIR
    by_id = {s.id: s for s in samples}
    written: list[PanelRecord] = []
    for record in choose_panels(samples, result, first, worst) if result.scores else []:
        try:
            picture = draw_panel(by_id[record.id], record, result, class_names, len(samples), max_pixels)
            with atomic_path(out / record.file) as tmp:
                picture.save(tmp, format="PNG", optimize=True)
        except Exception as exc:  # noqa: BLE001 - a picture never costs the scores
            if notes is not None:
                notes.append(f"no panel for {record.id}: {exc}")
            continue
        written.append(record)
    if folder.is_dir():
        keep = {Path(r.file).name for r in written}
        for stale in folder.glob("*.png"):
            if stale.name not in keep:
                stale.unlink(missing_ok=True)
    return written


def write_chart(out: Path, result: EvalResult, class_names: list[str]) -> Path:
    """per_class_iou.png: each class's IoU, one bar per variant, under the mean."""
    chart = per_class_chart({v: s.per_class_iou for v, s in result.scores.items()}, class_names,
                            {v: s.miou for v, s in result.scores.items()})
    with atomic_path(out / CHART) as tmp:
        chart.save(tmp, format="PNG", optimize=True)
    return out / CHART


def _markdown_text(text: str) -> str:
    """Table-cell-safe text (an id or class name with a '|' must not split the cell)."""
    return text.replace("|", "\\|")


def write_reports(out: str | Path, result: EvalResult, class_names: list[str], header: dict,
                  published: dict | None = None, panels: list[PanelRecord] | None = None) -> tuple[Path, Path]:
    """results.json and report.md (ours beside the published numbers when the model is known), the per-class
    chart beside its table, and links to the panels."""
    out = Path(out)
    panels = panels or []
    chart = write_chart(out, result, class_names) if result.scores else None
    data = {**header, "images": result.images, "skipped": result.skipped,
            "scores": {k: v.to_dict(class_names) for k, v in result.scores.items()} if result.scores else None}
    if published:
        data["published"] = published
    if result.scores:
        data["chart"] = CHART
        data["panels"] = [p.to_dict() for p in panels]
        data["per_image_mIoU"] = result.per_image
    atomic_write_text(out / "results.json", json.dumps(data, indent=1))
    lines = [f"# Evaluation: {header.get('model', '')}", "",
             f"{result.images} images of {header.get('dataset', '')}"
             + (f"; {len(result.skipped)} skipped" if result.skipped else ""), ""]
    if not result.scores:  # nothing was scored: no number is a result
        lines += ["**No image could be scored**: there are no scores.", ""]
        lines += ["## Skipped", ""] + [f"- {s}" for s in result.skipped]
        atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
        return out / "results.json", out / "report.md"
    lines += ["| | mIoU | pixel acc. | mean class acc. | fw IoU |" + (" published mIoU |" if published else ""),
              "|---|---|---|---|---|" + ("---|" if published else "")]
    for variant, s in result.scores.items():
        row = (f"| {variant} | {100 * s.miou:.2f} | {100 * s.pixel_accuracy:.2f} | "
               f"{100 * s.mean_class_accuracy:.2f} | {100 * s.frequency_weighted_iou:.2f} |")
        if published:
            value = published.get(variant)
            row += f" {value if value is not None else '-'} |"
        lines.append(row)
    # The chart beside the per-class table: an HTML table of two cells, each holding Markdown (GitHub and most
    # Markdown viewers render it; plain text still reads as a table and an image link).
    lines += ["", "## IoU per class", "", "<table><tr><td>", "",
              "| class | " + " | ".join(result.scores) + " |", "|---|" + "---|" * len(result.scores)]
    for index, name in enumerate(class_names):
        cells = []
        for s in result.scores.values():
            iou = s.per_class_iou[index] if index < len(s.per_class_iou) else None
            cells.append("-" if iou is None else f"{100 * iou:.2f}")
        lines.append(f"| {_markdown_text(name)} | " + " | ".join(cells) + " |")
    lines += ["", "</td><td>", "", f"![IoU per class, {', '.join(map(variant_title, result.scores))}]({chart.name})",
              "", "</td></tr></table>"]
    if panels:
        lines += _panel_section(panels, result)
    if result.skipped:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in result.skipped]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return out / "results.json", out / "report.md"


def _panel_section(panels: list[PanelRecord], result: EvalResult) -> list[str]:
    variants = list(result.prediction_dirs)
    heads = " | ".join(f"mIoU {variant_title(v)}" for v in variants)
    lines = ["", "## Panels", "",
             "Each panel shows the image, its ground truth (void: not scored) and the prediction "
             + " and ".join(variant_title(v) for v in variants) + ", with a legend of the classes shown. The "
             f"lowest mIoU: each image's own mIoU {variant_title(ranking_variant(result))}, over the classes in "
             "its ground truth or prediction.", "",
             f"| image | why | {heads} |", "|---|---|" + "---|" * len(variants)]
    for record in panels:
        why = ", ".join(w for w in ("first images" if record.first else "",
                                    f"lowest mIoU #{record.worst_rank}" if record.worst_rank else "") if w)
        values = " | ".join("-" if record.miou.get(v) is None else f"{100 * record.miou[v]:.1f}" for v in variants)
        lines.append(f"| [{_markdown_text(record.id)}]({record.file}) | {why} | {values} |")
    for record in panels:
        lines += ["", f"![{record.id}]({record.file})"]
    return lines
