"""Dense CRF: our CRF path against a plain pydensecrf call with the same settings, on the same image and
logits; one image, and a batch of N images (throughput with worker processes, as deeplab-run/-eval --jobs).

    python benchmarks/crf.py [--images 8] [--jobs 2] [--runs 5]

The image is a 500x375 photograph; the logits are smooth 21-class scores at stride 8, upsampled as DeepLab's
nets do, plus noise. Settings: DeepLab v2's preset (10 iterations, positional w 3 xy 1, bilateral w 4 xy 67
rgb 3), normalisation after filtering (DeepLab's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternate, machine, table  # noqa: E402


def scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    import torch
    import torch.nn.functional as F
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(seed)
    photo = photos[seed % len(photos)]
    image = np.ascontiguousarray(photo[:375, :500, :3]) if photo.shape[0] >= 375 else photo
    h, w = image.shape[:2]
    coarse = torch.from_numpy(rng.normal(0, 2.5, (1, 21, h // 8 + 1, w // 8 + 1)).astype(np.float32))
    logits = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)[0].numpy()
    logits += rng.normal(0, 0.3, logits.shape).astype(np.float32)
    return image, logits


def plain_pydensecrf(image: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """What a user of pydensecrf writes, with DeepLab's settings and normalisation."""
    import pydensecrf.densecrf as dcrf

    labels, height, width = logits.shape
    crf = dcrf.DenseCRF2D(width, height, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(-logits.reshape(labels, -1)))
    crf.addPairwiseGaussian(sxy=1, compat=3, kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_AFTER)
    crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.ascontiguousarray(image), compat=4,
                             kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_AFTER)
    return np.asarray(crf.inference(10), dtype=np.float32).reshape(labels, height, width)


def ours(image: np.ndarray, logits: np.ndarray) -> np.ndarray:
    from caffe2torch.crf import crf_preset, dense_crf

    return dense_crf(logits, image.transpose(2, 0, 1), crf_preset("v2"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch-runs", type=int, default=3)
    args = parser.parse_args()
    from caffe2torch.util import worker_pool

    image, logits = scene(0)
    difference = float(np.abs(ours(image, logits) - plain_pydensecrf(image, logits)).max())
    times = alternate({"caffe2torch dense_crf": lambda: ours(image, logits),
                       "plain pydensecrf call": lambda: plain_pydensecrf(image, logits)}, args.runs)
    print(f"machine: {machine()}")
    print(table(times, "plain pydensecrf call", f"one {image.shape[1]}x{image.shape[0]} image, 21 labels, "
                                                 f"{args.runs} alternating runs"))
    print(f"max |difference| of the probabilities: {difference:.2e}")

    scenes = [scene(i) for i in range(args.images)]
    images, logits = [s[0] for s in scenes], [s[1] for s in scenes]
    serial_times, parallel_times, identical = [], [], True
    with worker_pool(args.jobs) as pool:
        list(pool.map(ours, images[: args.jobs], logits[: args.jobs]))  # start the workers, as a long run would
        for _ in range(args.batch_runs):  # alternate the two, as everywhere in these benchmarks
            start = time.perf_counter()
            serial = [plain_pydensecrf(im, lg) for im, lg in scenes]
            serial_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            parallel = list(pool.map(ours, images, logits))
            parallel_times.append(time.perf_counter() - start)
            identical &= all(np.array_equal(a, b) for a, b in zip(serial, parallel))
    serial_s, parallel_s = statistics.median(serial_times), statistics.median(parallel_times)
    ratio = serial_s / parallel_s
    print(f"{args.images} images, median of {args.batch_runs} alternating passes: one pydensecrf process "
          f"{args.images / serial_s:.2f} images/s; caffe2torch with {args.jobs} workers "
          f"{args.images / parallel_s:.2f} images/s: {ratio:.2f}x; results identical to the single calls: "
          f"{identical}")
    print(f"  per pass, serial {', '.join(f'{t:.1f}' for t in serial_times)} s; "
          f"parallel {', '.join(f'{t:.1f}' for t in parallel_times)} s")
    print(f"target CRF throughput >= 1.8x a single pydensecrf process: {ratio:.2f}x, "
          + ("met" if ratio >= 1.8 else f"missed by {1.8 - ratio:.2f}x"))
    print(f"single image: {statistics.median(times['caffe2torch dense_crf']):.3f} s")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
