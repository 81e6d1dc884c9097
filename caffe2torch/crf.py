"""DeepLab's fully connected CRF: one function for the DenseCRF layer, the runner and the evaluator.

The formulation is Krähenbühl's (NIPS 2011) as DeepLab used it (facts sheet §4): unary = -score (logits or
log-probabilities give the same result; probabilities would be wrong), Q initialised to softmax(score), then
`max_iter` mean-field steps Q = softmax(score + sum_k w_k * norm_k * filter_k(Q)) with Potts compatibility,
permutohedral Gaussian filtering and per-pixel normalisation after filtering (pydensecrf's NORMALIZE_AFTER,
not its symmetric default, which flips a few per cent of the labels).

Kernels: positional (x/pos_xy_std, y/pos_xy_std) and bilateral (x/bi_xy_std, y/bi_xy_std, c0/bi_rgb_std,
c1/bi_rgb_std, c2/bi_rgb_std), x the column and y the row. The colour order matters to the permutohedral
lattice: DeepLab's in-net layer feeds the BGR data blob; its offline pipeline fed RGB images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CRFParams:
    max_iter: int = 10
    pos_xy_std: list[float] = field(default_factory=lambda: [3.0])
    pos_w: list[float] = field(default_factory=lambda: [3.0])
    bi_xy_std: list[float] = field(default_factory=lambda: [49.0])
    bi_rgb_std: list[float] = field(default_factory=lambda: [5.0])
    bi_w: list[float] = field(default_factory=lambda: [4.0])

    def validate(self) -> list[str]:
        problems = []
        if not len(self.pos_xy_std) == len(self.pos_w):
            problems.append("pos_xy_std and pos_w need the same number of values")
        if not len(self.bi_xy_std) == len(self.bi_rgb_std) == len(self.bi_w):
            problems.append("bi_xy_std, bi_rgb_std and bi_w need the same number of values")
        if self.max_iter < 0:
            problems.append("max_iter must be >= 0")
        if any(s <= 0 for s in self.pos_xy_std + self.bi_xy_std + self.bi_rgb_std):
            problems.append("CRF standard deviations must be > 0")
        return problems


def kernel_features(height: int, width: int, image: np.ndarray | None,
                    params: CRFParams) -> list[tuple[np.ndarray, float]]:
    """(features (d, H*W) float32, weight) of each pairwise kernel: positional (x, y) / pos_xy_std, then
    bilateral (x, y) / bi_xy_std with the colours / bi_rgb_std."""
    pixels = height * width
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    kernels = []
    for std, weight in zip(params.pos_xy_std, params.pos_w):
        features = np.stack([xs / std, ys / std]).reshape(2, pixels)
        kernels.append((np.ascontiguousarray(features, dtype=np.float32), float(weight)))
    if image is not None:
        colours = np.asarray(image, dtype=np.float32)
        for xy_std, rgb_std, weight in zip(params.bi_xy_std, params.bi_rgb_std, params.bi_w):
            features = np.concatenate([np.stack([xs / xy_std, ys / xy_std]), colours / rgb_std]).reshape(5, pixels)
            kernels.append((np.ascontiguousarray(features, dtype=np.float32), float(weight)))
    return kernels


def _check_inputs(scores: np.ndarray, image: np.ndarray | None) -> None:
    if scores.ndim != 3 or scores.size == 0:
        raise ValueError(f"dense_crf needs a non-empty (C, H, W) score map, got {scores.shape}")
    if image is not None and tuple(image.shape[1:]) != tuple(scores.shape[1:]):
        raise ValueError(f"image {tuple(image.shape)} does not match scores {tuple(scores.shape)}")


def dense_crf(scores: np.ndarray, image: np.ndarray | None, params: CRFParams) -> np.ndarray:
    """Mean-field inference with pydensecrf's lattice and updates. scores: (C, H, W) logits; image: (3, H, W)
    colours in the order the features should use, or None for positional kernels only. Returns Q, (C, H, W)
    float32. Runs caffe2torch's native CRF when it is built (the same floats, faster; crf_native.py), else
    pydensecrf itself; CAFFE2TORCH_CRF=pydensecrf forces pydensecrf."""
    from caffe2torch.crf_native import crf_backend, dense_crf_native

    if crf_backend() == "native":
        return dense_crf_native(scores, image, params)
    import pydensecrf.densecrf as dcrf

    _check_inputs(scores, image)
    labels, height, width = scores.shape
    crf = dcrf.DenseCRF(height * width, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(-scores.reshape(labels, -1), dtype=np.float32))
    for features, weight in kernel_features(height, width, image, params):
        crf.addPairwiseEnergy(features, compat=weight, kernel=dcrf.DIAG_KERNEL,
                              normalization=dcrf.NORMALIZE_AFTER)
    q = crf.inference(params.max_iter)
    return np.asarray(q, dtype=np.float32).reshape(labels, height, width)


def dense_crf_torch(scores: np.ndarray, image: np.ndarray | None, params: CRFParams,
                    device: str | None = None) -> np.ndarray:
    """The same mean-field inference in torch on any device (caffe2torch.permutohedral): Q = softmax(scores +
    sum_k w_k * norm_k * filter_k(Q)), norm_k = 1 / filter_k(1) (pydensecrf's NORMALIZE_AFTER), Potts.
    Agrees with `dense_crf` to float rounding, not bit for bit (summation order); meant for GPUs, where it
    runs all the filtering on the device."""
    import torch

    from caffe2torch.permutohedral import PermutohedralLattice

    _check_inputs(scores, image)
    labels, height, width = scores.shape
    device = torch.device(device or "cpu")
    with torch.no_grad():
        logits = torch.as_tensor(np.ascontiguousarray(scores, dtype=np.float32), device=device)
        logits = logits.reshape(labels, -1).T.contiguous()
        kernels = []
        for features, weight in kernel_features(height, width, image, params):
            lattice = PermutohedralLattice(torch.as_tensor(features.T, device=device))
            norm = 1.0 / (lattice.filter(torch.ones(height * width, 1, device=device)) + 1e-20)
            kernels.append((lattice, weight * norm))
        q = torch.softmax(logits, 1)
        for _ in range(params.max_iter):
            energy = logits.clone()
            for lattice, scaled_norm in kernels:
                energy += scaled_norm * lattice.filter(q)
            q = torch.softmax(energy, 1)
        return q.T.reshape(labels, height, width).cpu().numpy()


def crf_probabilities(scores: np.ndarray, image: np.ndarray | None, params: CRFParams,
                      device: str | None = None) -> np.ndarray:
    """pydensecrf (`device` None: DeepLab's own code, the reference) or the torch CRF on `device`."""
    if device is None:
        return dense_crf(scores, image, params)
    return dense_crf_torch(scores, image, params, device)


def check_crf_device(device: str) -> str:
    """A torch device the CRF can run on, or ValueError saying why not."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"'{device}' is not a torch device ({exc})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"'{device}': this torch build or machine has no CUDA device")
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"'{device}': the CRF runs on cpu or cuda")
    return device


# Published DeepLab CRF settings (../shared/docs/published-numbers.md); status V = confirmed in a source,
# M = commonly quoted, unconfirmed. Each value can be overridden (deeplab-run --crf-params).
PRESETS: dict[str, tuple[CRFParams, str]] = {
    "deeplab-v2-resnet": (CRFParams(10, [1.0], [3.0], [67.0], [3.0], [4.0]),
                          "DeepLab v2 ResNet-101 as used by kazuto1011 (V there; equal to the official page: M)"),
    "deeplab-v1-largefov": (CRFParams(10, [3.0], [3.0], [121.0], [5.0], [4.0]),
                            "DeepLab-LargeFOV model page (M)"),
    "run-densecrf": (CRFParams(10, [3.0], [3.0], [49.0], [5.0], [4.0]),
                     "run_densecrf.sh default of the v1/v2 scripts (V)"),
    "grid-search-start": (CRFParams(10, [3.0], [3.0], [50.0], [10.0], [5.0]),
                          "grid-search starting point; the DENSE_CRF layer of martinkersner's LargeFOV test net (V)"),
    "dense-inference": (CRFParams(10, [3.0], [3.0], [60.0], [20.0], [10.0]),
                        "dense_inference binary built-in defaults (V)"),
    "demo-synthetic": (CRFParams(10, [1.0], [3.0], [40.0], [5.0], [5.0]),
                       "the demo model's: grid search on generated validation scenes (caffe2torch.demo.train)"),
}
PRESET_ALIASES = {"v1": "deeplab-v1-largefov", "v2": "deeplab-v2-resnet"}


def crf_preset(name: str) -> CRFParams:
    key = PRESET_ALIASES.get(name, name)
    if key not in PRESETS:
        raise ValueError(f"unknown CRF preset '{name}'; choose from {', '.join([*PRESET_ALIASES, *PRESETS])}")
    params = PRESETS[key][0]
    return CRFParams(params.max_iter, list(params.pos_xy_std), list(params.pos_w), list(params.bi_xy_std),
                     list(params.bi_rgb_std), list(params.bi_w))


def parse_crf_overrides(params: CRFParams, text: str) -> CRFParams:
    """Apply "bi_w=4,bi_xy_std=67,max_iter=5" style overrides (one kernel of each kind)."""
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not hasattr(params, key):
            raise ValueError(f"'{item}' is not NAME=VALUE with NAME one of {', '.join(CRFParams.__annotations__)}")
        if key == "max_iter":
            params.max_iter = int(value)
        else:
            setattr(params, key, [float(value)])
    problems = params.validate()
    if problems:
        raise ValueError("; ".join(problems))
    return params
