"""Segmentation scores the way PASCAL VOC and DeepLab computed them: one confusion matrix over the whole
dataset (never per-image averages), pixels labelled 255 ignored.

From the matrix M (rows: ground truth, columns: prediction):
  IoU_c = M_cc / (sum_j M_cj + sum_i M_ic - M_cc); mIoU averages the classes that occur in the ground truth
  or the predictions (a class absent from both has no IoU); pixel accuracy = trace / total; mean class
  accuracy averages M_cc / sum_j M_cj over classes present in the ground truth; frequency-weighted IoU weights
  IoU_c by the ground-truth frequency of c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_LABEL = 255


def confusion_matrix(truth: np.ndarray, prediction: np.ndarray, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """(num_classes x num_classes) int64 counts for one image; truth pixels equal to ignore_label are skipped."""
    if truth.shape != prediction.shape:
        raise ValueError(f"label map {truth.shape} and prediction {prediction.shape} differ in size")
    truth = truth.astype(np.int64).ravel()
    prediction = prediction.astype(np.int64).ravel()
    keep = truth != ignore_label
    truth, prediction = truth[keep], prediction[keep]
    bad = (truth < 0) | (truth >= num_classes)
    if bad.any():
        raise ValueError(f"ground truth holds label(s) {sorted(set(truth[bad].tolist()))[:5]} outside "
                         f"0..{num_classes - 1} (and not the ignore label {ignore_label})")
    if ((prediction < 0) | (prediction >= num_classes)).any():
        raise ValueError(f"prediction holds labels outside 0..{num_classes - 1}")
    return np.bincount(truth * num_classes + prediction, minlength=num_classes**2).reshape(num_classes, num_classes)


@dataclass
class Scores:
    miou: float
    per_class_iou: list[float | None]
    pixel_accuracy: float
    mean_class_accuracy: float
    frequency_weighted_iou: float
    pixels: int

    def to_dict(self, class_names: list[str] | None = None) -> dict:
        names = class_names or [str(i) for i in range(len(self.per_class_iou))]
        return {
            "mIoU": self.miou, "pixel_accuracy": self.pixel_accuracy,
            "mean_class_accuracy": self.mean_class_accuracy, "frequency_weighted_IoU": self.frequency_weighted_iou,
            "per_class_IoU": dict(zip(names, self.per_class_iou)), "pixels": self.pixels,
        }


def scores_from_confusion(matrix: np.ndarray) -> Scores:
    matrix = matrix.astype(np.float64)
    true_positive = np.diag(matrix)
    truth_count = matrix.sum(axis=1)
    predicted_count = matrix.sum(axis=0)
    union = truth_count + predicted_count - true_positive
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
        class_accuracy = np.where(truth_count > 0, true_positive / truth_count, np.nan)
    total = matrix.sum()
    frequency = truth_count / total if total else truth_count
    return Scores(
        miou=float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
        per_class_iou=[None if np.isnan(v) else float(v) for v in iou],
        pixel_accuracy=float(true_positive.sum() / total) if total else 0.0,
        mean_class_accuracy=float(np.nanmean(class_accuracy)) if np.any(truth_count > 0) else 0.0,
        frequency_weighted_iou=float(np.nansum(frequency * np.nan_to_num(iou))),
        pixels=int(total),
    )
