"""Where deeplab-run and deeplab-eval do their per-image work, behind one small interface (`Executor`).

Every image goes the same way: read it and run the net (`image_scores`: (rgb, logits)), then a `finish`
function (CRF, labels, files written atomically, and for deeplab-eval the confusion matrices) that returns
the image's result. An executor takes `ImageJob`s and yields one `Outcome` per job, in the order they
finish, each either a result or that image's own failure (the caller counts them for its progress display).

- `LocalExecutor` (local.py): the net in this process, `finish` in worker processes (batch.BatchPool).
- `RayExecutor` (ray_executor.py, needs the `cluster` extra): the net in Ray actors (one backend each,
  threads = the actor's CPUs), `finish` as Ray tasks on the cluster, outcomes collected with ray.wait.

Both call the same functions on the same inputs with the same net thread count, so their files are
identical byte for byte (tests/test_ray.py).
"""

from caffe2torch.executors.base import (
    Executor,
    ImageJob,
    InferenceSettings,
    ModelSpec,
    Outcome,
    image_scores,
)
from caffe2torch.executors.local import LocalExecutor

__all__ = ["Executor", "ImageJob", "InferenceSettings", "LocalExecutor", "ModelSpec", "Outcome",
           "image_scores"]
