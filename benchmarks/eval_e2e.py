"""End to end: images/s of deeplab-eval (the real command, as a subprocess) on a generated VOC-layout set of
500x375 scenes with full-size DeepLab-LargeFOV (random weights), without and with the dense CRF.

    python benchmarks/eval_e2e.py [--images 24]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, prepared_model  # noqa: E402


def make_dataset(root: Path, count: int) -> Path:
    from PIL import Image

    from caffe2torch.demo.synthetic import make_scene
    from caffe2torch.images import write_label_png

    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = []
    for index in range(count):
        image, labels = make_scene(rng, 375, 500)
        name = f"2012_{index:06d}"
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        write_label_png(root / "SegmentationClass" / f"{name}.png", labels)
        ids.append(name)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/c2t-bench"))
    args = parser.parse_args()
    _, _, onnx_path = prepared_model("largefov", args.workdir)
    voc = make_dataset(args.workdir / "voc_e2e", args.images)
    print(f"machine: {machine()}")
    print(f"deeplab-eval, {args.images} generated 500x375 images, full-size DeepLab-LargeFOV (ONNX, float)")
    configurations = {"no CRF": [], "CRF, --jobs 1": ["--crf", "--jobs", "1"],
                      "CRF, --jobs 2": ["--crf", "--jobs", "2"],
                      # the net on half the cores beside the workers, the default while the CRF was pydensecrf's
                      "CRF, --jobs 2 --threads 1": ["--crf", "--jobs", "2", "--threads", "1"]}
    for label, extra in configurations.items():
        out = args.workdir / "eval_e2e_results"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        subprocess.run(["deeplab-eval", "--onnx", str(onnx_path), "--voc-root", str(voc), "-o", str(out), *extra],
                       check=True, capture_output=True)
        seconds = time.perf_counter() - start
        print(f"  {label:<26} {seconds:7.1f} s   {args.images / seconds:5.2f} images/s (process start included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
