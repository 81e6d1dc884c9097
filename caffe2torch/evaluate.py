"""PASCAL VOC 2012 evaluation with DeepLab's protocol.

Inference is the runner's (DeepLab's preprocessing, the net's own upsampling, crop back to the image); with a
CRF the same logits give both results in one pass. Scores come from one dataset-level confusion matrix per
variant (metrics.py). Per-image predictions are palette PNGs written atomically under RESULTS/predictions/;
they are also the run's state: an interrupted run resumes by scoring the predictions already on disk, and a
kill at any moment leaves no corrupt file (a `.part` file is never read back).
"""

from __future__ import annotations

import concurrent.futures as futures
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from caffe2torch.crf import CRFParams, crf_probabilities
from caffe2torch.errors import CaffeError, Location
from caffe2torch.images import overlay, read_image, write_label_png, write_rgb_png
from caffe2torch.metrics import Scores, confusion_matrix, scores_from_confusion
from caffe2torch.runner import crf_image, softmax
from caffe2torch.util import worker_pool

VARIANTS = ("no_crf", "crf")


@dataclass
class Sample:
    id: str
    image: Path
    label: Path


def _read_list(path: Path) -> list[list[str]]:
    """The whitespace-separated fields of each non-empty line."""
    try:
        return [line.split() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise CaffeError("no such list file", Location(str(path))) from None


def voc_samples(
    voc_root: str | Path,
    split: str | None = "val",
    list_file: str | Path | None = None,
    label_dir: str | Path | None = None,
    image_dir: str | Path | None = None,
) -> list[Sample]:
    """Samples of a VOC-layout dataset. A list file holds one image id per line, or DeepLab's two paths per
    line (`/JPEGImages/x.jpg /SegmentationClassAug/x.png`, relative to the root). `label_dir` points at other
    label folders (e.g. SBD's SegmentationClassAug). Every missing folder or file is reported together."""
    root = Path(voc_root)
    if not root.is_dir():
        raise CaffeError("the VOC root is not a folder (expected VOCdevkit/VOC2012)", Location(str(root)))
    images = Path(image_dir) if image_dir else root / "JPEGImages"
    labels = Path(label_dir) if label_dir else root / "SegmentationClass"
    listing = Path(list_file) if list_file else root / "ImageSets" / "Segmentation" / f"{split}.txt"
    missing_dirs = [str(p) for p in (images, labels) if not p.is_dir()]
    if missing_dirs:
        raise CaffeError("missing folder(s): " + ", ".join(missing_dirs), Location(str(root)))
    samples, missing = [], []
    for parts in _read_list(listing):
        if len(parts) >= 2:  # DeepLab's list format: image path and label path, relative to the root
            image, label = root / parts[0].lstrip("/"), root / parts[1].lstrip("/")
            if label_dir:
                label = labels / f"{Path(parts[1]).stem}.png"
            sample = Sample(Path(parts[0]).stem, image, label)
        else:
            sample = Sample(parts[0], images / f"{parts[0]}.jpg", labels / f"{parts[0]}.png")
        for path in (sample.image, sample.label):
            if not path.exists():
                missing.append(str(path))
        samples.append(sample)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CaffeError(f"{len(missing)} file(s) named by the list are missing: {shown}", Location(str(listing)))
    if not samples:
        raise CaffeError("the list names no images", Location(str(listing)))
    return samples


def read_label(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Class indices of a label PNG: palette ('P', VOC's SegmentationClass) or single-channel ('L', SBD's
    SegmentationClassAug). An RGB label would be read as colours, not classes: refused."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise CaffeError(f"label image has mode {image.mode}; expected a palette (P) or single-channel (L) "
                                 "PNG of class indices (RGB colours are not labels)", Location(str(path)))
            labels = np.asarray(image)
    except (UnidentifiedImageError, OSError) as exc:
        raise CaffeError(f"cannot read the label image: {exc}", Location(str(path))) from None
    if size is not None and labels.shape != size:
        raise CaffeError(f"label is {labels.shape[1]}x{labels.shape[0]} but the image is {size[1]}x{size[0]}",
                         Location(str(path)))
    return labels


def score_prediction(sample: Sample, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    truth = read_label(sample.label, prediction.shape)
    try:
        return confusion_matrix(truth, prediction, num_classes)
    except ValueError as exc:
        raise CaffeError(str(exc), Location(str(sample.label))) from None


def finish_sample(sample: Sample, logits: np.ndarray | None, rgb: np.ndarray | None, crf: CRFParams | None,
                  out: str, num_classes: int, variants: tuple[str, ...],
                  crf_device: str | None = None) -> dict[str, np.ndarray]:
    """Labels for each variant (computed from logits, or read back from a finished run), written atomically,
    then scored against the ground truth. Runs in a worker process with --jobs."""
    matrices = {}
    for variant in variants:
        path = Path(out) / "predictions" / variant / f"{sample.id}.png"
        if logits is None:
            prediction = read_label(path)
        else:
            if variant == "crf":
                probabilities = crf_probabilities(logits, crf_image(rgb, crf), crf, crf_device)
            else:
                probabilities = softmax(logits)
            prediction = probabilities.argmax(axis=0).astype(np.uint8)
            write_label_png(path, prediction)
        matrices[variant] = score_prediction(sample, prediction, num_classes)
    return matrices


@dataclass
class EvalResult:
    scores: dict[str, Scores]
    images: int
    skipped: list[str] = field(default_factory=list)
    resumed: int = 0


def evaluate_model(
    backend,
    samples: list[Sample],
    out: str | Path,
    num_classes: int,
    crf: CRFParams | None = None,
    logits_fn: Callable[[object, np.ndarray], np.ndarray] | None = None,
    jobs: int = 1,
    resume: bool = True,
    overlays: int = 5,
    progress: Callable[[Iterable], Iterable] = lambda x: x,
    crf_device: str | None = None,
) -> EvalResult:
    """Run the model on every sample and score it, with and without CRF when `crf` is given."""
    from caffe2torch.runner import image_logits

    logits_fn = logits_fn or (lambda b, rgb: image_logits(b, rgb))
    out = Path(out)
    variants = ("no_crf", "crf") if crf is not None else ("no_crf",)
    totals = {v: np.zeros((num_classes, num_classes), np.int64) for v in variants}
    result = EvalResult({}, 0)
    pool = worker_pool(jobs) if jobs > 1 else None
    pending: dict[futures.Future, Sample] = {}

    def collect(done) -> None:
        for future in done:
            sample = pending.pop(future)
            try:
                for variant, matrix in future.result().items():
                    totals[variant] += matrix
                result.images += 1
            except CaffeError as exc:
                result.skipped.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - report, count, and go on with the other images
                result.skipped.append(f"{sample.id}: {type(exc).__name__}: {exc}")

    def submit(sample: Sample, *args) -> None:
        if pool is None:
            future: futures.Future = futures.Future()
            try:
                future.set_result(finish_sample(sample, *args, str(out), num_classes, variants, crf_device))
            except Exception as exc:  # noqa: BLE001
                future.set_exception(exc)
            pending[future] = sample
            collect([future])
            return
        pending[pool.submit(finish_sample, sample, *args, str(out), num_classes, variants, crf_device)] = sample
        if len(pending) >= 2 * jobs:
            collect(futures.wait(pending, return_when=futures.FIRST_COMPLETED).done)

    try:
        for index, sample in enumerate(progress(samples)):
            done_before = resume and all((out / "predictions" / v / f"{sample.id}.png").exists() for v in variants)
            if done_before:
                result.resumed += 1
                submit(sample, None, None, crf)
                continue
            try:
                rgb = read_image(sample.image)
                logits = logits_fn(backend, rgb)
            except CaffeError as exc:
                result.skipped.append(str(exc))
                continue
            if index < overlays:
                labels = logits.argmax(axis=0).astype(np.uint8)
                write_rgb_png(out / "overlays" / f"{sample.id}.png", overlay(rgb, labels))
            submit(sample, logits, rgb, crf)
        collect(futures.wait(pending).done if pool is not None else [])
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    result.scores = {v: scores_from_confusion(totals[v]) for v in variants}
    return result


def evaluate_predictions(samples: list[Sample], predictions: str | Path, num_classes: int) -> EvalResult:
    """Score label PNGs made elsewhere (one <id>.png per sample, palette or single-channel)."""
    folder = Path(predictions)
    if not folder.is_dir():
        raise CaffeError("the predictions folder does not exist", Location(str(folder)))
    total = np.zeros((num_classes, num_classes), np.int64)
    result = EvalResult({}, 0)
    for sample in samples:
        try:
            total += score_prediction(sample, read_label(folder / f"{sample.id}.png"), num_classes)
            result.images += 1
        except CaffeError as exc:
            result.skipped.append(str(exc))
    result.scores = {"predictions": scores_from_confusion(total)}
    return result


def write_reports(out: str | Path, result: EvalResult, class_names: list[str], header: dict,
                  published: dict | None = None) -> tuple[Path, Path]:
    """results.json and report.md (ours beside the published numbers when the model is known)."""
    from caffe2torch.util import atomic_write_text

    out = Path(out)
    data = {**header, "images": result.images, "skipped": result.skipped,
            "scores": {k: v.to_dict(class_names) for k, v in result.scores.items()}}
    if published:
        data["published"] = published
    atomic_write_text(out / "results.json", json.dumps(data, indent=1))
    lines = [f"# Evaluation: {header.get('model', '')}", "",
             f"{result.images} images of {header.get('dataset', '')}"
             + (f"; {len(result.skipped)} skipped" if result.skipped else ""), "",
             "| | mIoU | pixel acc. | mean class acc. | fw IoU |" + (" published mIoU |" if published else ""),
             "|---|---|---|---|---|" + ("---|" if published else "")]
    for variant, s in result.scores.items():
        row = (f"| {variant} | {100 * s.miou:.2f} | {100 * s.pixel_accuracy:.2f} | "
               f"{100 * s.mean_class_accuracy:.2f} | {100 * s.frequency_weighted_iou:.2f} |")
        if published:
            value = published.get(variant)
            row += f" {value if value is not None else '-'} |"
        lines.append(row)
    lines += ["", "| class | " + " | ".join(result.scores) + " |", "|---|" + "---|" * len(result.scores)]
    for index, name in enumerate(class_names):
        cells = []
        for s in result.scores.values():
            iou = s.per_class_iou[index] if index < len(s.per_class_iou) else None
            cells.append("-" if iou is None else f"{100 * iou:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if result.skipped:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in result.skipped]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return out / "results.json", out / "report.md"
