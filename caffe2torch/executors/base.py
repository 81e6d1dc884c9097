"""What every executor shares: the model and inference settings (picklable, so that Ray actors can open the
model themselves), the per-image inference, and the job and outcome types."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from caffe2torch.batch import Outcome
from caffe2torch.images import DEFAULT_MAX_PIXELS, read_image
from caffe2torch.runner import image_logits


@dataclass(frozen=True)
class ModelSpec:
    """A model file and how to open it: `backend` a name of runner.backends.BACKENDS (onnxruntime, torch,
    openvino), with `threads` intra-op threads and `precision`. torch's results depend on its thread count (one
    thread and several differ in the last bits; onnxruntime's did not, measured with 1-4 threads), so runs that
    must agree bit for bit use the same `threads`."""

    path: str
    backend: str
    threads: int
    precision: str = "f32"

    def open(self):
        from caffe2torch.runner.backends import open_backend

        return open_backend(self.backend, self.path, self.threads, self.precision)


@dataclass(frozen=True)
class InferenceSettings:
    """How an image becomes class scores: test scales, flip, fusion, and the pixel limit (--max-pixels)."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    fuse: str = "max"
    max_pixels: int = DEFAULT_MAX_PIXELS


def image_scores(backend, image: Path, settings: InferenceSettings) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, logits) of one image: read by value, its size checked per scale before the net allocates
    anything, the net's scores at every scale and flip fused, and checked (finite, at most 256 classes).
    Raises for this image only."""
    from caffe2torch.cli.run import check_logits, check_scaled_size  # deeplab-run's checks, shared by both paths

    rgb = read_image(image, settings.max_pixels)
    check_scaled_size(rgb, settings.scales, settings.max_pixels, backend.info.crop_size)
    logits = image_logits(backend, rgb, settings.scales, settings.flip, settings.fuse)
    check_logits(logits)
    return rgb, logits


@dataclass
class ImageJob:
    """One image's work: `finish(**kwargs, rgb=..., logits=...)` (a module-level function, so that it can be
    sent to a worker process or a Ray task) with the image's scores, or with rgb and logits None when
    `image` is None (deeplab-eval scoring the predictions of an earlier run). `key` names the job in its
    Outcome. Paths in `image` and `kwargs` must be absolute for Ray, whose workers run elsewhere."""

    key: Hashable
    finish: Callable[..., object]
    kwargs: dict = field(default_factory=dict)
    image: Path | None = None


def call_finish(finish: Callable[..., object], kwargs: dict, rgb: np.ndarray | None,
                logits: np.ndarray | None) -> object:
    """The job's finish function on its scores (a worker process's or a Ray task's entry point)."""
    return finish(**kwargs, rgb=rgb, logits=logits)


class Executor(Protocol):
    """Runs image jobs and yields their outcomes as they finish; a context manager whose exit (also on
    Ctrl-C, SIGTERM or an error) stops the work in order: queued jobs are cancelled, running ones finish or
    stop without leaving a partial file."""

    def map(self, jobs: Iterable[ImageJob]) -> Iterator[Outcome]: ...

    def summary(self) -> str | None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc_info) -> None: ...
