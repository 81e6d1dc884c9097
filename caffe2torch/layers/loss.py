"""Loss layers, for nets built with their training layers (`deploy=False`) to fine-tune in PyTorch.

SoftmaxWithLoss follows Caffe: softmax over `axis` (channels), labels at every other position, an optional
`ignore_label` (upstream `loss_param.ignore_label`, DeepLab v1 `softmaxloss_param.ignore_label`), and
normalisation VALID (by the number of non-ignored labels; the default), FULL, BATCH_SIZE or NONE, scaled by
`loss_weight` as Caffe does. Accuracy, SegAccuracy and the weak-supervision layers are not differentiable
training objectives and are not built; the build names them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from caffe2torch.layers.registry import CaffeLayer, LayerConverter, count, register


def _ignore_labels(spec) -> list[int]:
    labels = []
    if "ignore_label" in spec.param("loss_param"):
        labels.append(int(spec.param("loss_param")["ignore_label"]))
    labels += [int(v) for v in spec.param("softmaxloss_param").get("ignore_label", [])]
    return labels


@register("SoftmaxWithLoss")
class SoftmaxWithLossConverter(LayerConverter):
    exportable = False
    bottom_counts = (2, 2)  # (scores, labels)
    top_counts = (1, 2)  # the loss, and optionally the probabilities

    def check(self, spec, ctx):
        problems = []
        if len(spec.tops) > 1:
            problems.append("a second top (the softmax probabilities) is not supported")
        if spec.param("softmaxloss_param").get("weight_source"):
            problems.append("softmaxloss_param.weight_source (per-class loss weights from a file)")
        if spec.param("softmax_param").get("axis", 1) != 1:
            problems.append("SoftmaxWithLoss over an axis other than channels")
        return problems

    def output_shapes(self, spec, bottoms, ctx):
        return [()]

    def build(self, spec, bottoms, ctx):
        loss = spec.param("loss_param")
        mode = loss.get("normalization", "VALID" if loss.get("normalize", True) else "BATCH_SIZE")
        return CaffeSoftmaxWithLoss(_ignore_labels(spec), mode)


class CaffeSoftmaxWithLoss(CaffeLayer):
    def __init__(self, ignore_labels: list[int], normalization: str):
        super().__init__()
        self.ignore_labels, self.normalization = ignore_labels, normalization

    def forward(self, scores, labels):
        target = labels.reshape(scores.shape[0], *scores.shape[2:]).long()
        valid = torch.ones_like(target, dtype=torch.bool)
        for ignore in self.ignore_labels:
            valid &= target != ignore
        log_prob = F.log_softmax(scores, dim=1)
        picked = log_prob.gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
        total = -(picked * valid).sum()
        if self.normalization == "VALID":
            return total / valid.sum().clamp(min=1)
        if self.normalization == "FULL":
            return total / target.numel()
        if self.normalization == "BATCH_SIZE":
            return total / scores.shape[0]
        return total


@register("EuclideanLoss")
class EuclideanLossConverter(LayerConverter):
    """Caffe: sum((a - b)^2) / (2 N)."""

    exportable = False
    bottom_counts = (2, 2)
    top_counts = (1, 1)

    def output_shapes(self, spec, bottoms, ctx):
        a, b = (count(shape[1:]) for shape in bottoms)
        if a is not None and b is not None and a != b:
            raise ValueError(f"EuclideanLoss inputs must have the same dimension per sample ({a} vs {b})")
        return [()]

    def build(self, spec, bottoms, ctx):
        return CaffeEuclideanLoss()


class CaffeEuclideanLoss(CaffeLayer):
    def forward(self, a, b):
        return ((a - b) ** 2).sum() / (2 * a.shape[0])
