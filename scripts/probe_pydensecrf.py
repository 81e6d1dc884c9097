"""Which inputs crash plain pydensecrf? Each case runs in its own subprocess (a crash there is a result, not
the end of this script), with no caffe2torch check in front of it. Prints one line per case: ran (and
whether the probabilities are finite), or how the process died. docs/reliability.md quotes the results.

    python scripts/probe_pydensecrf.py
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

CASE = r"""
import json, resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
import pydensecrf.densecrf as dcrf
case = json.loads(sys.argv[1])
height, width, labels = case.get("height", 20), case.get("width", 30), case.get("labels", 3)
rng = np.random.default_rng(0)
scores = rng.standard_normal((labels, height * width)).astype(np.float32)
if "score" in case and scores.size:
    scores[0, 0] = case["score"]
colours = rng.integers(0, 256, (3, height * width)).astype(np.float32)
if "colour" in case and colours.size:
    colours[:, 0] = case["colour"]
ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
xy, rgb = case.get("bi_xy_std", 50.0), case.get("bi_rgb_std", 5.0)
bilateral = np.concatenate([np.stack([xs / xy, ys / xy]).reshape(2, -1), colours / rgb])
if "extent" in case:  # features scaled so that the lattice coordinates reach about this value
    bilateral = rng.random((5, height * width)) * case["extent"] / 15
crf = dcrf.DenseCRF(height * width, labels)
crf.setUnaryEnergy(np.ascontiguousarray(-scores))
positional = np.stack([xs / 3.0, ys / 3.0]).reshape(2, -1)
crf.addPairwiseEnergy(np.ascontiguousarray(positional, np.float32), compat=3.0, kernel=dcrf.DIAG_KERNEL,
                      normalization=dcrf.NORMALIZE_AFTER)
crf.addPairwiseEnergy(np.ascontiguousarray(bilateral, np.float32), compat=case.get("bi_w", 4.0),
                      kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_AFTER)
q = np.asarray(crf.inference(case.get("iterations", 2)))
print("ran, probabilities finite:", bool(np.isfinite(q).all()))
"""

CASES = {
    "DeepLab-like settings": {},
    "bi_xy_std 1e-30": {"bi_xy_std": 1e-30},
    "bi_xy_std 1e-6": {"bi_xy_std": 1e-6},
    "bi_xy_std NaN": {"bi_xy_std": float("nan")},
    "bi_xy_std 1e30": {"bi_xy_std": 1e30},
    "bi_xy_std inf": {"bi_xy_std": float("inf")},
    "bi_rgb_std 1e-30": {"bi_rgb_std": 1e-30},
    "bi_rgb_std NaN": {"bi_rgb_std": float("nan")},
    "a colour of 1e6": {"colour": 1e6},
    "a colour of 1e30": {"colour": 1e30},
    "a colour of inf": {"colour": float("inf")},
    "a colour of NaN": {"colour": float("nan")},
    "a score of NaN": {"score": float("nan")},
    "a score of inf": {"score": float("inf")},
    "bi_w NaN": {"bi_w": float("nan")},
    "bi_w 1e30": {"bi_w": 1e30},
    "lattice coordinates near 1e7": {"extent": 1e7},
    "lattice coordinates near 1e8": {"extent": 1e8},
    "lattice coordinates near 1e9": {"extent": 1e9},
    "100000 iterations": {"iterations": 100000, "height": 8, "width": 8},
    "zero-size image": {"height": 0, "width": 5},
    "one pixel": {"height": 1, "width": 1},
    "one label": {"labels": 1},
    "1000 labels": {"labels": 1000},
}


def main() -> int:
    for name, case in CASES.items():
        try:
            run = subprocess.run([sys.executable, "-c", CASE, json.dumps(case)], capture_output=True, text=True,
                                 timeout=300)
        except subprocess.TimeoutExpired:
            print(f"{name:32} timed out")
            continue
        if run.returncode == 0:
            outcome = run.stdout.strip()
        elif run.returncode < 0:
            outcome = f"died: {signal.Signals(-run.returncode).name}"
        else:
            last = (run.stderr.strip().splitlines() or [""])[-1]
            outcome = f"exit {run.returncode}: {last}"
        print(f"{name:32} {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
