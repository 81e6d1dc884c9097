"""PASCAL VOC 2012 evaluation with DeepLab's protocol.

Inference is the runner's (DeepLab's preprocessing, the net's own upsampling, crop back to the image); with a
CRF the same logits give both results in one pass. Scores come from one dataset-level confusion matrix per
variant (metrics.py). Per-image predictions are palette PNGs written atomically under RESULTS/predictions/;
they are also the run's state: an interrupted run resumes by scoring the predictions already on disk, and a
kill at any moment leaves no corrupt file (a `.part` file is never read back). Each image's own mIoU is kept
(a float per variant) to choose the panels of the worst images (eval_report.py); on resume it is computed
again from the saved predictions.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from caffe2torch.batch import describe_failure
from caffe2torch.crf import CRFParams, crf_probabilities
from caffe2torch.errors import CaffeError, Location, OutputError
from caffe2torch.executors.base import Executor, ImageJob
from caffe2torch.images import DEFAULT_MAX_PIXELS, read_label_image, write_label_png
from caffe2torch.metrics import Scores, confusion_matrix, scores_from_confusion
from caffe2torch.progress import Progress, Silent
from caffe2torch.runner import crf_image, softmax

# A list file larger than this is refused before it is read (VOC's largest, train_aug, is 0.6 MB).
MAX_LIST_BYTES = 64 << 20

VARIANTS = ("no_crf", "crf")


@dataclass
class Sample:
    id: str
    image: Path
    label: Path


def _read_list(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of each non-empty line of a text list file. A byte-order
    mark (an editor's UTF-8 BOM) is dropped, and lines starting with '#' are comments: neither names a file."""
    location = Location(str(path))
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise CaffeError("the list is not a regular file", location)
        if info.st_size > MAX_LIST_BYTES:
            raise CaffeError(f"the list is {info.st_size} bytes, over {MAX_LIST_BYTES}: not a list file?", location)
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise CaffeError("no such list file", location) from None
    except UnicodeDecodeError as exc:
        raise CaffeError(f"the list is not UTF-8 text (byte {exc.start})", location) from None
    except OSError as exc:
        raise CaffeError(f"cannot read the list: {exc.strerror or exc}", location) from None
    return [(number, line.split()) for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def _plain_name_problem(name: str) -> str | None:
    """Why `name` cannot be used as a file name inside a folder, or None."""
    if name in ("", ".", ".."):
        return f"'{name}' is not a file name"
    if "/" in name or "\\" in name:
        return f"'{name}' holds a path separator (ids are plain file names)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"{name!r} holds control characters"
    return None


def _inside_root(root: Path, entry: str) -> tuple[Path | None, str | None]:
    """DeepLab's list paths are relative to the root even when they start with '/': the path inside the
    root, or why it is refused (it climbs out with '..', or holds control characters)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in entry):
        return None, f"{entry!r} holds control characters"
    relative = posixpath.normpath(entry.lstrip("/"))
    if relative == ".." or relative.startswith("../"):
        return None, f"'{entry}' points outside the dataset root"
    return root / relative, None


def voc_samples(
    voc_root: str | Path,
    split: str | None = "val",
    list_file: str | Path | None = None,
    label_dir: str | Path | None = None,
    image_dir: str | Path | None = None,
    notes: list[str] | None = None,
) -> list[Sample]:
    """Samples of a VOC-layout dataset. A list file holds one image id per line, or DeepLab's two paths per
    line (`/JPEGImages/x.jpg /SegmentationClassAug/x.png`, relative to the root). `label_dir` points at other
    label folders (e.g. SBD's SegmentationClassAug). Bad lines (see the module's docstring) and missing
    folders or files are reported together; repeated lines are dropped with a note appended to `notes`."""
    root = Path(voc_root)
    if not root.is_dir():
        raise CaffeError("the VOC root is not a folder (expected VOCdevkit/VOC2012)", Location(str(root)))
    images = Path(image_dir) if image_dir else root / "JPEGImages"
    labels = Path(label_dir) if label_dir else root / "SegmentationClass"
    if split is not None and not list_file:
        problem = _plain_name_problem(split)
        if problem:
            raise CaffeError(f"--split {problem}", Location(str(root)))
    listing = Path(list_file) if list_file else root / "ImageSets" / "Segmentation" / f"{split}.txt"
    missing_dirs = [str(p) for p in (images, labels) if not p.is_dir()]
    if missing_dirs:
        raise CaffeError("missing folder(s): " + ", ".join(missing_dirs), Location(str(root)))
    samples: list[Sample] = []
    problems, missing = [], []
    first_line: dict[str, tuple[int, Sample]] = {}
    for number, parts in _read_list(listing):
        where = f"{listing}:{number}"
        if len(parts) > 2:
            problems.append(f"{where}: {len(parts)} fields; expected an id, or an image path and a label path")
            continue
        if len(parts) == 2:  # DeepLab's list format: image path and label path, relative to the root
            (image, bad_image), (label, bad_label) = _inside_root(root, parts[0]), _inside_root(root, parts[1])
            if bad_image or bad_label:
                problems.append(f"{where}: {bad_image or bad_label}")
                continue
            if label_dir:
                label = labels / f"{Path(parts[1]).stem}.png"
            sample = Sample(image.stem, image, label)
        else:
            sample = Sample(parts[0], images / f"{parts[0]}.jpg", labels / f"{parts[0]}.png")
        problem = _plain_name_problem(sample.id)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        key = sample.id.casefold()  # ids name files: ids equal but for case collide on some file systems
        if key in first_line:
            line, earlier = first_line[key]
            if (earlier.id, earlier.image, earlier.label) == (sample.id, sample.image, sample.label):
                if notes is not None:
                    notes.append(f"{where}: repeats line {line} ({sample.id}): scored once")
                continue
            problems.append(f"{where}: id '{sample.id}' is already used on line {line} for other files "
                            "(their predictions would overwrite each other)")
            continue
        first_line[key] = (number, sample)
        for path in (sample.image, sample.label):
            if not os.path.isfile(path):
                missing.append(str(path))
        samples.append(sample)
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise CaffeError(f"{len(problems)} bad line(s) in the list:\n  {shown}", Location(str(listing)))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CaffeError(f"{len(missing)} file(s) named by the list are missing (or not files): {shown}",
                         Location(str(listing)))
    if not samples:
        raise CaffeError("the list names no images", Location(str(listing)))
    return samples


def read_label(path: Path, size: tuple[int, int] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Class indices of a label PNG, by value (`images.read_label_image`): palette ('P', VOC's
    SegmentationClass), single-channel ('L', SBD's SegmentationClassAug), 1-bit or 16-bit. An RGB label would
    be read as colours, not classes: refused. `size` (height, width) is checked before decoding."""
    return read_label_image(path, size, max_pixels)


def score_prediction(sample: Sample, prediction: np.ndarray, num_classes: int,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    truth = read_label(sample.label, prediction.shape, max_pixels)
    try:
        return confusion_matrix(truth, prediction, num_classes)
    except ValueError as exc:
        raise CaffeError(str(exc), Location(str(sample.label))) from None


def finish_sample(sample: Sample, logits: np.ndarray | None, rgb: np.ndarray | None, crf: CRFParams | None,
                  out: str, num_classes: int, variants: tuple[str, ...],
                  crf_device: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, np.ndarray]:
    """Labels for each variant (computed from logits, or read back from a finished run), written atomically,
    then scored against the ground truth. Runs in a worker process with --jobs, or a Ray task."""
    matrices = {}
    for variant in variants:
        path = Path(out) / "predictions" / variant / f"{sample.id}.png"
        if logits is None:
            truth = read_label(sample.label, None, max_pixels)
            prediction = read_label(path, truth.shape, max_pixels)
            try:
                matrices[variant] = confusion_matrix(truth, prediction, num_classes)
            except ValueError as exc:
                raise CaffeError(f"{exc} (a prediction saved by an earlier run; --no-resume computes it again)",
                                 Location(str(path))) from None
            continue
        if variant == "crf":
            probabilities = crf_probabilities(logits, crf_image(rgb, crf), crf, crf_device)
        else:
            probabilities = softmax(logits)
        prediction = probabilities.argmax(axis=0).astype(np.uint8)
        write_label_png(path, prediction)
        matrices[variant] = score_prediction(sample, prediction, num_classes, max_pixels)
    return matrices


@dataclass
class EvalResult:
    scores: dict[str, Scores]
    images: int
    skipped: list[str] = field(default_factory=list)
    resumed: int = 0
    confusion: dict[str, np.ndarray] = field(default_factory=dict)  # per variant, summed over the images
    # Each scored image's own mIoU per variant (None: no scored pixel), in the order of the samples.
    per_image: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # Where each variant's label PNGs are, to draw panels from ({"no_crf": RESULTS/predictions/no_crf, ...}).
    prediction_dirs: dict[str, Path] = field(default_factory=dict)


def image_miou(matrix: np.ndarray) -> float | None:
    """One image's mIoU (over the classes in its ground truth or prediction), None when no pixel is scored."""
    return scores_from_confusion(matrix).miou if matrix.sum() else None


def _ordered(per_image: dict[str, dict[str, float | None]], samples: list[Sample]) -> dict:
    """Per-image scores in the order of the samples (workers finish out of order)."""
    return {s.id: per_image[s.id] for s in samples if s.id in per_image}


def evaluate_model(
    executor: Executor,
    samples: list[Sample],
    out: str | Path,
    num_classes: int,
    crf: CRFParams | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    crf_device: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> EvalResult:
    """Run the model on every sample (through `executor`: here, or on a Ray cluster) and score it, with and
    without CRF when `crf` is given; the per-image confusion matrices are summed here. Any failure of one
    sample (unreadable image or label, an error of the net or the CRF, a worker that dies) skips that sample
    with a message; a write that fails for the whole folder (disk full) stops the run (OutputError).
    `progress` (progress.Progress) is told of each image when it is scored or skipped."""
    progress = progress or Silent()
    out = Path(out)
    variants = ("no_crf", "crf") if crf is not None else ("no_crf",)
    totals = {v: np.zeros((num_classes, num_classes), np.int64) for v in variants}
    result = EvalResult({}, 0, prediction_dirs={v: out / "predictions" / v for v in variants})
    by_id = {sample.id: sample for sample in samples}
    reused: set[str] = set()

    def jobs() -> Iterator[ImageJob]:
        for sample in samples:
            # Absolute paths: a Ray worker's working directory is not this one.
            where = Sample(sample.id, sample.image.absolute(), sample.label.absolute())
            kwargs = {"sample": where, "crf": crf, "out": str(out.absolute()), "num_classes": num_classes,
                      "variants": variants, "crf_device": crf_device, "max_pixels": max_pixels}
            if resume and all((out / "predictions" / v / f"{sample.id}.png").is_file() for v in variants):
                result.resumed += 1  # scored again from the predictions on disk
                reused.add(sample.id)
                yield ImageJob(sample.id, finish_sample, kwargs)
                continue
            yield ImageJob(sample.id, finish_sample, kwargs, where.image)

    def skip(sample: Sample, exc: BaseException) -> None:
        result.skipped.append(describe_failure(sample.image, exc))
        progress.advance(done=0, skipped=1)

    progress.start(len(samples))
    try:
        for outcome in executor.map(jobs()):
            if outcome.error is None:
                for variant, matrix in outcome.result.items():
                    totals[variant] += matrix
                result.per_image[outcome.key] = {v: image_miou(m) for v, m in outcome.result.items()}
                result.images += 1
                progress.advance(done=0 if outcome.key in reused else 1, reused=int(outcome.key in reused))
            elif isinstance(outcome.error, OutputError) and outcome.error.fatal:
                raise OutputError(f"{outcome.error.message}; running the same command again resumes from the "
                                  "predictions saved so far", outcome.error.location, fatal=True)
            else:
                skip(by_id[outcome.key], outcome.error)
    except KeyboardInterrupt as exc:
        finished = result.images
        raise type(exc)(f"{finished} of {len(samples)} image(s) were scored and their predictions saved in "
                        f"{out / 'predictions'}; running the same command again resumes from them") from None
    finally:
        progress.close()
    result.per_image = _ordered(result.per_image, samples)
    result.scores = {v: scores_from_confusion(totals[v]) for v in variants} if result.images else {}
    result.confusion = totals
    return result


def evaluate_predictions(samples: list[Sample], predictions: str | Path, num_classes: int,
                         max_pixels: int = DEFAULT_MAX_PIXELS, progress: Progress | None = None) -> EvalResult:
    """Score label PNGs made elsewhere (one <id>.png per sample, palette or single-channel)."""
    folder = Path(predictions)
    if not folder.is_dir():
        raise CaffeError("the predictions folder does not exist", Location(str(folder)))
    progress = progress or Silent()
    total = np.zeros((num_classes, num_classes), np.int64)
    result = EvalResult({}, 0, prediction_dirs={"predictions": folder})
    with progress.start(len(samples)):
        for sample in samples:
            path = folder / f"{sample.id}.png"
            try:
                truth = read_label(sample.label, None, max_pixels)
                prediction = read_label(path, truth.shape, max_pixels)
                try:
                    matrix = confusion_matrix(truth, prediction, num_classes)
                except ValueError as exc:
                    raise CaffeError(str(exc), Location(str(path))) from None
                total += matrix
                result.per_image[sample.id] = {"predictions": image_miou(matrix)}
                result.images += 1
                progress.advance()
            except Exception as exc:  # noqa: BLE001 - one bad file skips one sample
                result.skipped.append(describe_failure(path, exc))
                progress.advance(done=0, skipped=1)
    result.scores = {"predictions": scores_from_confusion(total)} if result.images else {}
    return result
