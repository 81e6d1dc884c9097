"""Train the demo model: our own CaffeNet built from caffe2torch/prototxt/deeplab-demo-synthetic.prototxt,
trained in PyTorch on generated scenes, saved as a real caffemodel with our writer. Reproducible from the seed.

    python -m caffe2torch.demo.train [--iterations 1500] [--seed 0] [--out caffe2torch/weights/...caffemodel]

Also picks the demo's CRF setting by a small grid search on separate generated validation scenes (the
published DeepLab presets assume 500-pixel photographs; these scenes are 129 pixels and synthetic).
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from caffe2torch.caffemodel import WeightsLayer, write_caffemodel
from caffe2torch.crf import CRFParams, dense_crf
from caffe2torch.demo.synthetic import CLASS_NAMES, IGNORE, make_batch
from caffe2torch.metrics import confusion_matrix, scores_from_confusion
from caffe2torch.net import CaffeNet, build_net
from caffe2torch.pipeline import read_net
from caffe2torch.runner import DEEPLAB_MEAN_BGR

PROTOTXT = "deeplab-demo-synthetic.prototxt"
CAFFEMODEL = "deeplab-demo-synthetic.caffemodel"
TRAIN_SEED_BASE, VALIDATION_SEED, HELD_OUT_SEED = 1_000_000, 7, 2024


def bundled(name: str) -> Path:
    folder = "prototxt" if name.endswith(".prototxt") else "weights"
    return Path(str(resources.files("caffe2torch").joinpath(folder, name)))


def to_input(images: np.ndarray) -> torch.Tensor:
    """DeepLab's preprocessing on a batch of RGB uint8 images: BGR minus the mean, NCHW float."""
    bgr = images[..., ::-1].astype(np.float32) - np.asarray(DEEPLAB_MEAN_BGR, np.float32)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(0, 3, 1, 2)))


def train(net: CaffeNet, iterations: int, batch: int, seed: int, log_every: int = 100) -> None:
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=iterations, pct_start=0.1)
    net.train()
    started = time.perf_counter()
    for step in range(iterations):
        images, labels = make_batch(TRAIN_SEED_BASE + seed * iterations + step, batch)
        if step % 2:  # horizontal flips for variety
            images, labels = images[:, :, ::-1], labels[:, :, ::-1]
        scores = net(to_input(images))
        loss = F.cross_entropy(scores, torch.from_numpy(labels.astype(np.int64)), ignore_index=IGNORE)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if log_every and (step % log_every == 0 or step == iterations - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - started:6.0f} s", flush=True)
    net.eval()


def predict(net: CaffeNet, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(to_input(images)).numpy()


def miou(logits: np.ndarray, labels: np.ndarray, crf: CRFParams | None = None, images=None) -> float:
    total = np.zeros((len(CLASS_NAMES),) * 2, np.int64)
    for i in range(len(labels)):
        if crf is None:
            prediction = logits[i].argmax(axis=0)
        else:
            prediction = dense_crf(logits[i], images[i].transpose(2, 0, 1).astype(np.float32), crf).argmax(axis=0)
        total += confusion_matrix(labels[i], prediction, len(CLASS_NAMES))
    return scores_from_confusion(total).miou


def tune_crf(net: CaffeNet, count: int = 40) -> tuple[CRFParams, float, float]:
    """Grid search of the bilateral kernel on validation scenes; returns the best, and mIoU without/with it."""
    images, labels = make_batch(VALIDATION_SEED, count)
    logits = predict(net, images)
    plain = miou(logits, labels)
    best, best_score = None, -1.0
    for bi_w in (3.0, 5.0):
        for bi_xy in (10.0, 20.0, 40.0):
            for bi_rgb in (5.0, 10.0, 20.0):
                params = CRFParams(10, [1.0], [3.0], [bi_xy], [bi_rgb], [bi_w])
                score = miou(logits, labels, params, images)
                if score > best_score:
                    best, best_score = params, score
    return best, plain, best_score


def save(net: CaffeNet, path: Path) -> None:
    layers = [WeightsLayer(layer.name, layer.type, net.module(layer.name).caffe_blobs(), layer.bottoms, layer.tops)
              for layer in net.spec.layers if net.module(layer.name).blob_names]
    write_caffemodel(path, layers, name=net.spec.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = build_net(read_net(bundled(PROTOTXT)))
    train(net, args.iterations, args.batch, args.seed)
    out = args.out or bundled(CAFFEMODEL)
    save(net, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    params, plain, refined = tune_crf(net)
    print(f"validation mIoU {100 * plain:.2f} without CRF, {100 * refined:.2f} with the best CRF: "
          f"bi_w {params.bi_w[0]}, bi_xy_std {params.bi_xy_std[0]}, bi_rgb_std {params.bi_rgb_std[0]} "
          f"(pos_w 3, pos_xy_std 1, 10 iterations)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
