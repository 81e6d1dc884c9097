"""The local executor: the net in this process, one image after the other, and each image's finish (CRF,
labels, files, scoring) in `jobs` worker processes while the net works on the next image (batch.BatchPool:
one failure per image, a dead worker costs only its own image, workers die with the command)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from caffe2torch.batch import BatchPool, Outcome
from caffe2torch.executors.base import (
    ImageJob,
    InferenceSettings,
    call_finish,
    image_scores,
)


class LocalExecutor:
    def __init__(self, backend, settings: InferenceSettings, jobs: int = 1):
        self.backend = backend
        self.settings = settings
        self.pool = BatchPool(jobs)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Waits for running finishes, cancels queued ones."""
        self.pool.close()

    def summary(self) -> str | None:
        return None

    def map(self, jobs: Iterable[ImageJob]) -> Iterator[Outcome]:
        for job in jobs:
            rgb = logits = None
            if job.image is not None:
                try:
                    rgb, logits = image_scores(self.backend, job.image, self.settings)
                except Exception as exc:  # noqa: BLE001 - any failure of one image is that image's
                    yield Outcome(job.key, error=exc)
                    continue
            yield from self.pool.submit(job.key, call_finish, job.finish, job.kwargs, rgb, logits)
        yield from self.pool.drain()
