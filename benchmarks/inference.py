"""Inference at 513x513: our ONNX in onnxruntime (float and int8), our torch module, and OpenCV dnn on the same
ONNX file (and on the Caffe files, where OpenCV can read them), in one process, alternating, medians.

    python benchmarks/inference.py [--model largefov|resnet101-msc] [--runs 5] [--no-int8] [--keep-float fc6,fc7]

Models are full size with random weights written by our writer (benchmarks/common.py). The input is a real
photograph preprocessed as DeepLab's test did. int8 label agreement is measured on photographs that were
not used for its calibration.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS, alternate, machine, prepared_model, table  # noqa: E402


def photographs() -> dict[str, np.ndarray]:
    from skimage import data

    images = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(),
              "rocket": data.rocket(), "immunohistochemistry": data.immunohistochemistry(),
              "hubble": data.hubble_deep_field(), "camera": np.stack([data.camera()] * 3, axis=-1)}
    return {name: np.ascontiguousarray(image[:500, :500, :3]) for name, image in images.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="largefov")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-int8", dest="int8", action="store_false")
    parser.add_argument("--keep-float", default="", metavar="LAYERS",
                        help="int8: more convolutions to keep in float, e.g. fc6,fc7 (besides the classifiers)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/c2t-bench"))
    args = parser.parse_args()

    import cv2
    import onnxruntime as ort
    import torch

    from caffe2torch.pipeline import convert
    from caffe2torch.quantize import quantize_int8
    from caffe2torch.runner import ModelInfo, OnnxBackend, preprocess

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    prototxt, caffemodel, onnx_path = prepared_model(args.model, args.workdir)
    photos = photographs()
    info = ModelInfo(crop_size=513)
    x = preprocess(photos["astronaut"], info)

    ours = OnnxBackend(onnx_path)  # the runner's session: all graph optimizations, one thread per core
    # onnxruntime's idle threads spin-wait and would slow whichever runner comes next: no spinning anywhere.
    no_spin = ort.SessionOptions()
    no_spin.add_session_config_entry("session.intra_op.allow_spinning", "0")
    plain = ort.InferenceSession(str(onnx_path), no_spin, providers=["CPUExecutionProvider"])
    net, _ = convert(prototxt, caffemodel)
    opencv = cv2.dnn.readNetFromONNX(str(onnx_path))
    runners = {
        "onnxruntime (caffe2torch)": lambda: ours.logits(x),
        "onnxruntime (defaults, no spin)": lambda: plain.run(None, {"data": x}),
        "torch eager (caffe2torch)": lambda: net(torch.from_numpy(x)),
        "OpenCV dnn, same ONNX": lambda: (opencv.setInput(x), opencv.forward()),
    }
    caffe_note = ""
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        caffe_note = f"OpenCV {cv2.__version__} has no Caffe importer (readNetFromCaffe was removed in OpenCV 5)"
    else:
        try:
            cv_caffe = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
            runners["OpenCV dnn, Caffe files"] = lambda: (cv_caffe.setInput(x), cv_caffe.forward())
        except cv2.error as exc:  # DeepLab's Interp and ImageSegData are not OpenCV layers
            caffe_note = f"OpenCV dnn cannot read the Caffe files: {str(exc).strip().splitlines()[-1][:150]}"
    agreement = None
    if args.int8:
        keep_float = [name for name in args.keep_float.split(",") if name]
        int8_path = args.workdir / f"{args.model}.int8{''.join('-' + n for n in keep_float)}.onnx"
        if not int8_path.exists():
            calibration = [photos[n] for n in ("astronaut", "coffee", "chelsea", "rocket")]
            quantize_int8(onnx_path, int8_path, net.spec, calibration, info, keep_float)
        quantized = ort.InferenceSession(str(int8_path), no_spin, providers=["CPUExecutionProvider"])
        runners["onnxruntime int8 (caffe2torch)"] = lambda: quantized.run(None, {"data": x})
        held_out = ("immunohistochemistry", "hubble", "camera")
        agreement = [float((ours.logits(preprocess(photos[n], info)).argmax(1)
                            == quantized.run(None, {"data": preprocess(photos[n], info)})[0].argmax(1)).mean())
                     for n in held_out]
    with torch.no_grad():
        times = alternate(runners, args.runs)
    print(f"machine: {machine()}")
    print(table(times, "OpenCV dnn, same ONNX", f"{MODELS[args.model]}, 1x3x513x513, random weights, "
                                                  f"{args.runs} alternating runs"))
    if caffe_note:
        print(caffe_note)
    median = {k: statistics.median(v) for k, v in times.items()}
    ratio = median["OpenCV dnn, same ONNX"] / median["onnxruntime (caffe2torch)"]
    print(f"target onnxruntime >= 1.4x OpenCV dnn: {ratio:.2f}x, " + ("met" if ratio >= 1.4 else "missed"))
    if agreement is not None:
        speed = median["onnxruntime (caffe2torch)"] / median["onnxruntime int8 (caffe2torch)"]
        mean_agreement = 100 * float(np.mean(agreement))
        print(f"target int8 >= 1.8x float: {speed:.2f}x, " + ("met" if speed >= 1.8 else "missed"))
        print(f"target int8 label agreement >= 99% on held-out photographs: {mean_agreement:.2f}% "
              f"({', '.join(f'{100 * a:.2f}' for a in agreement)}), "
              + ("met" if mean_agreement >= 99 else f"missed by {99 - mean_agreement:.2f} points"))
        print(f"  the same int8 recipe on a trained net (the demo model, held-out generated scenes): "
              f"{100 * trained_agreement(args.workdir):.2f}% agreement")
    return 0


def trained_agreement(workdir: Path) -> float:
    """int8 vs float label agreement of the trained demo model: random weights give near-tied logits, which
    any rounding flips; a trained net's labels show what the recipe does to real predictions."""
    import onnxruntime as ort

    from caffe2torch.definitions import bundled_definition
    from caffe2torch.demo.synthetic import make_batch
    from caffe2torch.demo.train import CAFFEMODEL, bundled
    from caffe2torch.onnx_export import export_onnx
    from caffe2torch.pipeline import convert
    from caffe2torch.quantize import quantize_int8
    from caffe2torch.runner import model_info, preprocess

    net, _ = convert(bundled_definition("deeplab-demo-synthetic"), bundled(CAFFEMODEL))
    info = model_info(net.spec)
    float_path, int8_path = workdir / "demo.onnx", workdir / "demo.int8.onnx"
    export_onnx(net, float_path)
    calibration, _ = make_batch(11, 8)
    quantize_int8(float_path, int8_path, net.spec, list(calibration), info)
    images, _ = make_batch(2024, 20)
    f32 = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    i8 = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    agree = [float((f32.run(None, {"data": preprocess(im, info)})[0].argmax(1)
                    == i8.run(None, {"data": preprocess(im, info)})[0].argmax(1)).mean()) for im in images]
    return float(np.mean(agree))


if __name__ == "__main__":
    sys.exit(main())
