"""DeepLab's dense CRF in caffe2torch's own native code (the `caffe2torch._densecrf` extension, built at
install from `_densecrf.cpp`): the same lattice and mean-field updates as pydensecrf2, computing the same
floats bit for bit on x86-64, about 2.5 times as fast (docs/benchmarks.md).

`crf.dense_crf` uses it whenever it is built; otherwise it falls back to pydensecrf and says so once.
CAFFE2TORCH_CRF chooses: `auto` (the default: native when built), `native` (an error when it is not built) or
`pydensecrf` (force the reference, e.g. to compare).

What is reproduced (see `_densecrf.cpp`): Krähenbühl's SSE lattice construction (elevation and scale
factors, rounding to nearest even, ranks, barycentric weights, and the origin points his code adds when the
pixel count is not a multiple of 4), the blur order and the alpha scaling of the slice, NORMALIZE_AFTER's
normalisation (1 / (filter(1) + 1e-20), in double), Potts as -w * Q, and expAndNormalize with Eigen 3.3's
SSE2 exp for the labels in whole 4-float packets and the C library's expf for the rest. The one intended
difference: pydensecrf stores lattice keys as 16-bit integers, which wrap for features beyond about +-32767
lattice units (an image some 15000 pixels wide at xy std 1); the native lattice keeps them apart.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from caffe2torch.crf import CRFParams, kernel_features

try:
    from caffe2torch import _densecrf
except ImportError as exc:  # not built (no C++ compiler at install), or built for another Python
    _densecrf = None
    IMPORT_ERROR: str | None = str(exc)
else:
    IMPORT_ERROR = None

BACKEND_VARIABLE = "CAFFE2TORCH_CRF"
BACKENDS = ("auto", "native", "pydensecrf")
log = logging.getLogger(__name__)
_fallback_reported = False


def native_available() -> bool:
    return _densecrf is not None


def crf_backend() -> str:
    """'native' or 'pydensecrf', as CAFFE2TORCH_CRF asks; 'auto' (or unset) falls back to pydensecrf with a
    one-time warning when the extension is not built. ValueError for an unknown value, or for 'native'
    without the extension."""
    global _fallback_reported
    choice = os.environ.get(BACKEND_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"{BACKEND_VARIABLE}={choice!r}: choose one of {', '.join(BACKENDS)}")
    if choice == "pydensecrf":
        return "pydensecrf"
    if _densecrf is not None:
        return "native"
    if choice == "native":
        raise ValueError(f"{BACKEND_VARIABLE}=native, but caffe2torch's CRF extension is not built "
                         f"({IMPORT_ERROR}); reinstall with a C++ compiler: pip install -e .")
    if not _fallback_reported:
        _fallback_reported = True
        log.warning("caffe2torch's native dense CRF is not built (%s); using pydensecrf (the same results, "
                    "about 2.5 times slower). "
                    "Install a C++ compiler and reinstall (pip install -e .) to build it.", IMPORT_ERROR)
    return "pydensecrf"


def check_crf_inputs(scores: np.ndarray, image: np.ndarray | None) -> None:
    """ValueError unless scores is a finite (C, H, W) map and image, if any, a finite (channels, H, W) one."""
    if not isinstance(scores, np.ndarray) or scores.ndim != 3 or scores.size == 0:
        raise ValueError(f"the dense CRF needs a non-empty (C, H, W) score array, got "
                         f"{getattr(scores, 'shape', type(scores).__name__)}")
    if not np.issubdtype(scores.dtype, np.number) or not np.isfinite(scores).all():
        raise ValueError("the dense CRF's scores must be finite numbers")
    if image is not None:
        if not isinstance(image, np.ndarray) or image.ndim != 3 or tuple(image.shape[1:]) != tuple(scores.shape[1:]):
            raise ValueError(f"image {getattr(image, 'shape', type(image).__name__)} does not match scores "
                             f"{tuple(scores.shape)}: it must be (channels, H, W)")
        if not np.issubdtype(image.dtype, np.number) or not np.isfinite(image).all():
            raise ValueError("the dense CRF's image must be finite numbers")


def dense_crf_native_timed(scores: np.ndarray, image: np.ndarray | None,
                           params: CRFParams) -> tuple[np.ndarray, float, float]:
    """dense_crf_native, plus the seconds spent building the lattices and in the mean-field iterations."""
    if _densecrf is None:
        raise RuntimeError(f"caffe2torch's CRF extension is not built ({IMPORT_ERROR})")
    check_crf_inputs(scores, image)
    labels, height, width = scores.shape
    unary = np.ascontiguousarray(scores.reshape(labels, height * width), dtype=np.float32)
    kernels = kernel_features(height, width, image, params)
    q = np.empty_like(unary)
    lattice_seconds, iteration_seconds = _densecrf.inference(unary, q, kernels, int(params.max_iter))
    return q.reshape(labels, height, width), lattice_seconds, iteration_seconds


def dense_crf_native(scores: np.ndarray, image: np.ndarray | None, params: CRFParams) -> np.ndarray:
    """crf.dense_crf's contract: scores (C, H, W) logits, image (3, H, W) colours in the order the features
    should use (or None: positional kernels only); returns Q, (C, H, W) float32, equal to pydensecrf's."""
    return dense_crf_native_timed(scores, image, params)[0]


def release_memory() -> None:
    """Free the buffers the native CRF keeps between calls in this thread (the last image's lattices and
    tables, about 150 MB for a 500x375 image with DeepLab's two kernels; kept so that the next image of a
    similar size needs no fresh memory; never more than 1 GiB)."""
    if _densecrf is not None:
        _densecrf.release_workspace()
