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

import math
from dataclasses import dataclass, field

import numpy as np

from caffe2torch.errors import CaffeError

# Krähenbühl's permutohedral lattice (pydensecrf's permutohedral.cpp) keeps the integer coordinates of its
# vertices as 16-bit `short`s. A feature vector of d values is "elevated" onto d+1 lattice coordinates (a linear
# map, `elevation_matrix`), rounded to a vertex, and offset by at most 1.5(d+1) to reach its simplex and by d to
# reach the blur neighbours. When a coordinate leaves [-32767, 32767] the key wraps around: far-apart pixels then
# share vertices and the filtering is silently wrong (tests/test_hostile_runtime.py shows a pixel 56,756 standard
# deviations away coupled as if on top of its neighbour); past ~1e8 lattice units float32 rounding pushes a
# simplex rank out of [0, d] and the code writes outside its buffers (heap corruption, a segfault). So every
# elevated coordinate must stay within `lattice_limit(d)`: checked before any value reaches the native code.
LATTICE_KEY_MAX = 32767
# Mean-field iterations: DeepLab used 10; each one costs a filtering per kernel, so a bound keeps a typo (or a
# hostile prototxt) from running for days.
MAX_ITERATIONS = 1000
# Kernels: DeepLab uses one positional and one bilateral; each holds its own lattice (about 12(d+1) bytes per
# pixel) and costs a filtering per iteration.
MAX_KERNELS = 8
# Kernel weights: DeepLab's are 3 to 10. The mean-field step multiplies each weight by filtered probabilities
# in float32 and exponentiates the sum, so a weight near float32's range (1e308 given as 'bi_w=1e308') turns
# every image's probabilities into NaN; refuse such a setting once, before the first image.
MAX_KERNEL_WEIGHT = 1e6


class CRFInputError(CaffeError, ValueError):
    """CRF settings or inputs that pydensecrf cannot process correctly (or without crashing)."""


def lattice_limit(d: int) -> int:
    """The largest |elevated coordinate| whose vertex keys and blur neighbours fit pydensecrf's 16-bit keys."""
    return LATTICE_KEY_MAX - 4 * (d + 1)


def elevation_matrix(d: int) -> np.ndarray:
    """(d+1, d) matrix E of permutohedral.cpp's elevation: elevated = E @ feature, with the code's scale
    factors sqrt(2/3)(d+1)/sqrt((i+1)(i+2)); row 0 is the sum of the scaled features, row j > 0 the sum of
    scaled features j.. minus j times scaled feature j-1."""
    scale = math.sqrt(2.0 / 3.0) * (d + 1) / np.sqrt((np.arange(d) + 1.0) * (np.arange(d) + 2.0))
    matrix = np.zeros((d + 1, d))
    matrix[0] = scale
    for j in range(1, d + 1):
        matrix[j, j:] = scale[j:]
        matrix[j, j - 1] = -j * scale[j - 1]
    return matrix


def lattice_extent(low: np.ndarray, high: np.ndarray) -> float:
    """The largest |elevated coordinate| of any feature vector in the box [low, high] (per feature): an upper
    bound for the points inside it, reached at a corner since elevation is linear."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    matrix = elevation_matrix(low.shape[0])
    a, b = matrix * low, matrix * high
    return float(max(np.abs(np.maximum(a, b).sum(1)).max(), np.abs(np.minimum(a, b).sum(1)).max()))


def _finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)


@dataclass
class CRFParams:
    max_iter: int = 10
    pos_xy_std: list[float] = field(default_factory=lambda: [3.0])
    pos_w: list[float] = field(default_factory=lambda: [3.0])
    bi_xy_std: list[float] = field(default_factory=lambda: [49.0])
    bi_rgb_std: list[float] = field(default_factory=lambda: [5.0])
    bi_w: list[float] = field(default_factory=lambda: [4.0])

    def validate(self) -> list[str]:
        """Problems with the settings themselves (any image): counts, finiteness, signs, bounds. The smallest
        standard deviation allowed is the one at which a single pixel step (or one colour level) already
        leaves the lattice's 16-bit range; larger images need larger ones (`check_crf_inputs`)."""
        problems = []
        if not len(self.pos_xy_std) == len(self.pos_w):
            problems.append("pos_xy_std and pos_w need the same number of values")
        if not len(self.bi_xy_std) == len(self.bi_rgb_std) == len(self.bi_w):
            problems.append("bi_xy_std, bi_rgb_std and bi_w need the same number of values")
        if len(self.pos_xy_std) + len(self.bi_xy_std) > MAX_KERNELS:
            problems.append(f"{len(self.pos_xy_std) + len(self.bi_xy_std)} kernels; at most {MAX_KERNELS} "
                            "(each holds a lattice and costs a filtering per iteration)")
        if not isinstance(self.max_iter, int) or not 0 <= self.max_iter <= MAX_ITERATIONS:
            problems.append(f"max_iter {self.max_iter} must be an integer from 0 to {MAX_ITERATIONS}")
        for name in ("pos_xy_std", "pos_w", "bi_xy_std", "bi_rgb_std", "bi_w"):
            values = getattr(self, name)
            if not _finite(values):
                problems.append(f"{name} {_show(values)} must be finite (not NaN or infinity)")
            elif name.endswith("_std") and any(v <= 0 for v in values):
                problems.append(f"{name} {_show(values)} must be > 0 (CRF standard deviations)")
            elif name.endswith("_w") and any(abs(v) > MAX_KERNEL_WEIGHT for v in values):
                problems.append(f"{name} {_show(values)} is out of range: kernel weights are at most "
                                f"{MAX_KERNEL_WEIGHT:g} in size (DeepLab's are 3 to 10)")
        for name, dims, d in (("pos_xy_std", (0, 1), 2), ("bi_xy_std", (0, 1), 5), ("bi_rgb_std", (2, 3, 4), 5)):
            step = np.zeros(d)
            step[list(dims)] = 1.0
            unit = lattice_extent(np.zeros(d), step)
            smallest = unit / lattice_limit(d)
            for value in getattr(self, name):
                if math.isfinite(value) and 0 < value < smallest:
                    problems.append(
                        f"{name} {value:g} is too small: one {'pixel' if 'xy' in name else 'colour level'} would "
                        f"span {unit / value:.3g} lattice units, and pydensecrf's lattice holds 16-bit coordinates "
                        f"(at most {lattice_limit(d)}); the smallest usable value is {smallest:.3g}, and larger "
                        "images need more")
        return problems


def _show(values: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in values) if values else "(none)"


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
        raise CRFInputError(f"dense_crf needs a non-empty (C, H, W) score map, got {scores.shape}")
    if image is not None and (image.ndim != 3 or tuple(image.shape[1:]) != tuple(scores.shape[1:])):
        raise CRFInputError(f"image {tuple(image.shape)} does not match scores {tuple(scores.shape)}")


def check_scores(scores: np.ndarray) -> None:
    """Scores must be finite: NaN or infinity would make every later step (softmax, CRF, argmax) meaningless
    (argmax of NaN silently says label 0)."""
    finite = np.isfinite(scores)
    if not finite.all():
        bad = int(scores.size - np.count_nonzero(finite))
        raise CRFInputError(f"the scores hold {bad} NaN or infinite value(s) of {scores.size}: the net's weights "
                            "or its input produce non-finite numbers")


def check_crf_inputs(scores: np.ndarray, image: np.ndarray | None, params: CRFParams) -> None:
    """Everything pydensecrf needs to run correctly, checked before any value reaches it: valid settings,
    matching shapes, finite scores and colours, and kernel features whose lattice coordinates fit 16 bits
    (see `lattice_limit`)."""
    problems = params.validate()
    if problems:
        raise CRFInputError("invalid CRF settings: " + "; ".join(problems))
    _check_inputs(scores, image)
    check_scores(scores)
    _, height, width = scores.shape
    if image is not None and not np.isfinite(image).all():
        raise CRFInputError("the CRF's colour image holds NaN or infinite values")
    extent_of = [("pos", xy, None, 2) for xy in params.pos_xy_std]
    colour_low = colour_high = None
    if image is not None and params.bi_xy_std:
        flat = np.asarray(image, np.float64).reshape(image.shape[0], -1)
        colour_low, colour_high = flat.min(1), flat.max(1)
        extent_of += [("bi", xy, rgb, 5) for xy, rgb in zip(params.bi_xy_std, params.bi_rgb_std)]
    for kind, xy_std, rgb_std, d in extent_of:
        low, high = np.zeros(d), np.zeros(d)
        high[:2] = (width - 1) / xy_std, (height - 1) / xy_std
        if kind == "bi":
            low[2:], high[2:] = colour_low / rgb_std, colour_high / rgb_std
        extent, limit = lattice_extent(low, high), lattice_limit(d)
        if extent > limit:
            factor = extent / limit
            if kind == "pos":
                raise CRFInputError(
                    f"the positional kernel (pos_xy_std {xy_std:g}) cannot represent a {width}x{height} image: "
                    f"its coordinates reach {extent:.4g} lattice units and pydensecrf's lattice holds 16-bit "
                    f"coordinates (at most {limit}); pos_xy_std must be at least {xy_std * factor:.4g}")
            raise CRFInputError(
                f"the bilateral kernel (bi_xy_std {xy_std:g}, bi_rgb_std {rgb_std:g}) cannot represent a "
                f"{width}x{height} image with colours in [{colour_low.min():.4g}, {colour_high.max():.4g}]: its "
                f"coordinates reach {extent:.4g} lattice units and pydensecrf's lattice holds 16-bit coordinates "
                f"(at most {limit}); multiply both standard deviations by at least {factor:.4g} (e.g. bi_xy_std "
                f"{xy_std * factor:.4g}, bi_rgb_std {rgb_std * factor:.4g})")


def check_probabilities(q: np.ndarray) -> np.ndarray:
    if not np.isfinite(q).all():
        raise CRFInputError("the CRF produced non-finite probabilities (are the kernel weights too large?)")
    return q


def dense_crf(scores: np.ndarray, image: np.ndarray | None, params: CRFParams) -> np.ndarray:
    """Mean-field inference with pydensecrf's lattice and updates. scores: (C, H, W) logits; image: (3, H, W)
    colours in the order the features should use, or None for positional kernels only. Returns Q, (C, H, W)
    float32. Runs caffe2torch's native CRF when it is built (the same floats, faster; crf_native.py), else
    pydensecrf itself; CAFFE2TORCH_CRF=pydensecrf forces pydensecrf."""
    from caffe2torch.crf_native import crf_backend, dense_crf_native

    check_crf_inputs(scores, image, params)  # one place for both: settings and inputs, before native code
    if crf_backend() == "native":
        return check_probabilities(dense_crf_native(scores, image, params))
    import pydensecrf.densecrf as dcrf

    labels, height, width = scores.shape
    crf = dcrf.DenseCRF(height * width, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(-scores.reshape(labels, -1), dtype=np.float32))
    for features, weight in kernel_features(height, width, image, params):
        crf.addPairwiseEnergy(features, compat=weight, kernel=dcrf.DIAG_KERNEL,
                              normalization=dcrf.NORMALIZE_AFTER)
    q = crf.inference(params.max_iter)
    return check_probabilities(np.asarray(q, dtype=np.float32).reshape(labels, height, width))


def dense_crf_torch(scores: np.ndarray, image: np.ndarray | None, params: CRFParams,
                    device: str | None = None) -> np.ndarray:
    """The same mean-field inference in torch on any device (caffe2torch.permutohedral): Q = softmax(scores +
    sum_k w_k * norm_k * filter_k(Q)), norm_k = 1 / filter_k(1) (pydensecrf's NORMALIZE_AFTER), Potts.
    Agrees with `dense_crf` to float rounding, not bit for bit (summation order); meant for GPUs, where it
    runs all the filtering on the device."""
    import torch

    from caffe2torch.permutohedral import PermutohedralLattice

    check_crf_inputs(scores, image, params)
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
        return check_probabilities(q.T.reshape(labels, height, width).cpu().numpy())


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
    """Apply "bi_w=4,bi_xy_std=67,max_iter=5" style overrides (one kernel of each kind); ValueError naming
    every problem (unknown name, a value that is not a number, settings `CRFParams.validate` refuses)."""
    given: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in CRFParams.__annotations__:
            raise ValueError(f"'{item}' is not NAME=VALUE with NAME one of {', '.join(CRFParams.__annotations__)}")
        if key in given and given[key] != value:  # a typo or a pasted list: which one was meant is unclear
            raise ValueError(f"{key} is given twice, as {given[key]} and {value}")
        given[key] = value
        try:
            if key == "max_iter":
                params.max_iter = int(value)
            else:
                setattr(params, key, [float(value)])
        except ValueError:
            kind = "an integer" if key == "max_iter" else "a number"
            raise ValueError(f"'{item}': {key} must be {kind}") from None
    problems = params.validate()
    if problems:
        raise ValueError("; ".join(problems))
    return params
