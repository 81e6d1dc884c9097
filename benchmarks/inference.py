"""Inference at 513x513: our ONNX in onnxruntime (float and int8) and in OpenVINO (f32, bf16, int8), our torch
module, and OpenCV dnn on the same ONNX file (and on the Caffe files, where OpenCV can read them), in one
process, alternating, medians; then label agreement of the reduced precisions with float32.

    python benchmarks/inference.py [--model largefov|resnet101-msc] [--runs 5] [--no-int8] [--no-openvino]
                                   [--keep-float fc6,fc7] [--no-agreement]

Models are full size with random weights written by our writer (benchmarks/common.py). The input is a real
photograph preprocessed as DeepLab's test did. Label agreement is measured on photographs (int8: the three not
used for its calibration) and, because a random net's 21 logits are nearly tied, on the trained demo model too
(held-out generated scenes, the bundled samples, the photographs). OpenVINO's gain depends on the CPU's matrix
units (AMX, AVX-512 BF16/VNNI): the CPU model and its flags are printed with the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS, alternate, machine, prepared_model  # noqa: E402

BASELINE = "onnxruntime (caffe2torch)"
OPENCV = "OpenCV dnn, same ONNX"
CALIBRATION = ("astronaut", "coffee", "chelsea", "rocket")
HELD_OUT = ("immunohistochemistry", "hubble", "camera")


def photographs() -> dict[str, np.ndarray]:
    from skimage import data

    images = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(),
              "rocket": data.rocket(), "immunohistochemistry": data.immunohistochemistry(),
              "hubble": data.hubble_deep_field(), "camera": np.stack([data.camera()] * 3, axis=-1)}
    return {name: np.ascontiguousarray(image[:500, :500, :3]) for name, image in images.items()}


def versions() -> str:
    import onnxruntime
    import torch

    parts = [f"onnxruntime {onnxruntime.__version__}", f"torch {torch.__version__}"]
    for module, name in (("openvino", "OpenVINO"), ("cv2", "OpenCV")):
        try:
            imported = __import__(module)
            parts.append(f"{name} {getattr(imported, '__version__', '?').split('-')[0]}")
        except ImportError:
            parts.append(f"{name} not installed")
    return ", ".join(parts)


def speed_table(times: dict[str, list[float]], title: str) -> str:
    """Median seconds per runner and its speed relative to onnxruntime and to OpenCV dnn (higher is faster)."""
    medians = {name: statistics.median(values) for name, values in times.items() if values}
    lines = [title, f"{'':<40}{'median s':>10}{'runs':>6}{'vs onnxruntime':>16}{'vs OpenCV':>11}"]
    for name, value in medians.items():
        ratios = [f"{medians[b] / value:.2f}x" if b in medians else "-" for b in (BASELINE, OPENCV)]
        lines.append(f"{name:<40}{value:>10.3f}{len(times[name]):>6}{ratios[0]:>16}{ratios[1]:>11}")
    return "\n".join(lines)


def agreement(reference: Callable[[np.ndarray], np.ndarray], other: Callable[[np.ndarray], np.ndarray],
              batches: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of pixels whose label (argmax over classes) is the same, per input."""
    return {name: float((reference(x).argmax(1) == other(x).argmax(1)).mean()) for name, x in batches.items()}


def agreement_table(rows: dict[str, dict[str, float]], title: str, held_out: tuple[str, ...] = ()) -> str:
    names = list(next(iter(rows.values())))
    short = [n[:7] for n in names]
    lines = [title, f"{'':<34}" + "".join(f"{s:>9}" for s in short) + f"{'mean':>9}"
             + (f"{'held-out':>10}" if held_out else "")]
    for row, values in rows.items():
        line = f"{row:<34}" + "".join(f"{100 * values[n]:>8.2f}%" for n in names)
        line += f"{100 * np.mean(list(values.values())):>8.2f}%"
        if held_out:
            line += f"{100 * np.mean([values[n] for n in held_out]):>9.2f}%"
        lines.append(line)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="largefov")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-int8", dest="int8", action="store_false")
    parser.add_argument("--no-openvino", dest="openvino", action="store_false")
    parser.add_argument("--no-agreement", dest="agreement", action="store_false",
                        help="timings only (the label agreement tables take a few minutes)")
    parser.add_argument("--keep-float", default="", metavar="LAYERS",
                        help="int8: more convolutions to keep in float, e.g. fc6,fc7 (besides the classifiers)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every runner [default: all cores]; 1 is steadier on a shared machine")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/c2t-bench"))
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from caffe2torch.pipeline import convert
    from caffe2torch.quantize import quantize_int8
    from caffe2torch.runner import ModelInfo, OnnxBackend, preprocess

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    prototxt, caffemodel, onnx_path = prepared_model(args.model, args.workdir)
    photos = photographs()
    info = ModelInfo(crop_size=513)
    x = preprocess(photos["astronaut"], info)
    batches = {name: preprocess(image, info) for name, image in photos.items()}

    ours = OnnxBackend(onnx_path, threads)  # the runner's session: all graph optimizations, one thread per core
    # onnxruntime's idle threads spin-wait and would slow whichever runner comes next: no spinning anywhere.
    no_spin = ort.SessionOptions()
    no_spin.intra_op_num_threads = threads
    no_spin.add_session_config_entry("session.intra_op.allow_spinning", "0")
    plain = ort.InferenceSession(str(onnx_path), no_spin, providers=["CPUExecutionProvider"])
    net, _ = convert(prototxt, caffemodel)
    runners: dict[str, Callable[[], object]] = {
        BASELINE: lambda: ours.logits(x),
        "onnxruntime (defaults, no spin)": lambda: plain.run(None, {"data": x}),
        "torch eager (caffe2torch)": lambda: net(torch.from_numpy(x)),
    }
    notes = []
    try:
        import cv2

        cv2.setNumThreads(threads)
        readers = {OPENCV: lambda: cv2.dnn.readNetFromONNX(str(onnx_path))}
        if hasattr(cv2.dnn, "readNetFromCaffe"):
            readers["OpenCV dnn, Caffe files"] = lambda: cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
        else:
            notes.append(f"OpenCV {cv2.__version__} has no Caffe importer (readNetFromCaffe was removed in OpenCV 5)")
        for name, read in readers.items():
            try:  # OpenCV 4 cannot read our dynamic-size ONNX; DeepLab's Interp and ImageSegData are no OpenCV layers
                opencv_net = read()
                opencv_net.setInput(x)
                opencv_net.forward()
                runners[name] = (lambda n: lambda: (n.setInput(x), n.forward()))(opencv_net)
            except cv2.error as exc:
                notes.append(f"{name}: OpenCV {cv2.__version__} cannot run it: {opencv_error(exc)}")
    except ImportError:
        notes.append("OpenCV is not installed (pip install opencv-python-headless): no OpenCV rows")

    float_labels: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    int8_path = None
    if args.int8:
        keep_float = [name for name in args.keep_float.split(",") if name]
        int8_path = args.workdir / f"{args.model}.int8{''.join('-' + n for n in keep_float)}.onnx"
        if not int8_path.exists():
            quantize_int8(onnx_path, int8_path, net.spec, [photos[n] for n in CALIBRATION], info, keep_float)
        quantized = ort.InferenceSession(str(int8_path), no_spin, providers=["CPUExecutionProvider"])
        runners["onnxruntime int8 (caffe2torch)"] = lambda: quantized.run(None, {"data": x})
        float_labels["onnxruntime int8"] = lambda b: quantized.run(None, {"data": b})[0]

    openvino_note = ""
    if args.openvino:
        try:
            from caffe2torch.runner import OpenVinoBackend

            compile_times = {}
            for label, path, precision in (("f32", onnx_path, "f32"), ("bf16", onnx_path, "bf16"),
                                           ("int8", int8_path, "auto")):
                if path is None:
                    continue
                start = time.perf_counter()
                backend = OpenVinoBackend(path, threads, precision)
                compile_times[label] = time.perf_counter() - start
                name = f"OpenVINO {label}" + (f" (rest in {backend.precision})" if label == "int8" else "")
                runners[name] = (lambda b: lambda: b.logits(x))(backend)
                float_labels[name] = backend.logits
                openvino_note = backend.describe().split(":")[0]
            openvino_note += "; compile " + ", ".join(f"{k} {v:.2f} s" for k, v in compile_times.items())
        except ImportError:
            notes.append("OpenVINO is not installed (pip install 'caffe2torch[openvino]'): no OpenVINO rows")

    with torch.no_grad():
        times = alternate(runners, args.runs)
    print(f"machine: {machine()}")
    print(f"CPU flags: {cpu_flags_line()}")
    print(f"versions: {versions()}")
    if openvino_note:
        print(f"OpenVINO: {openvino_note}")
    print(speed_table(times, f"{MODELS[args.model]}, 1x3x513x513, random weights, {args.runs} alternating runs, "
                             f"{threads} thread(s) each"))
    for note in notes:
        print(note)
    median = {k: statistics.median(v) for k, v in times.items()}
    if OPENCV in median:
        ratio = median[OPENCV] / median[BASELINE]
        print(f"target onnxruntime >= 1.4x OpenCV dnn: {ratio:.2f}x, " + ("met" if ratio >= 1.4 else "missed"))
    if "onnxruntime int8 (caffe2torch)" in median:
        speed = median[BASELINE] / median["onnxruntime int8 (caffe2torch)"]
        print(f"target int8 >= 1.8x float: {speed:.2f}x, " + ("met" if speed >= 1.8 else "missed"))
    if float_labels and args.agreement:
        rows = {name: agreement(ours.logits, run, batches) for name, run in float_labels.items()}
        print(agreement_table(rows, "label agreement with onnxruntime float32, photographs, random weights "
                                    "(held-out: not used for int8 calibration)", HELD_OUT))
        if "onnxruntime int8" in rows:
            held = 100 * float(np.mean([rows["onnxruntime int8"][n] for n in HELD_OUT]))
            print(f"target int8 label agreement >= 99% on held-out photographs: {held:.2f}%, "
                  + ("met" if held >= 99 else f"missed by {99 - held:.2f} points"))
        print(agreement_table(trained_agreement(args.workdir, photos, args.openvino),
                              "the same on a trained net: the demo model (deeplab-demo-synthetic), float32 "
                              "onnxruntime as reference"))
    return 0


def opencv_error(exc: Exception) -> str:
    """The line of an OpenCV error that says what failed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = [line for line in lines if "error:" in line]
    return (telling or lines or [type(exc).__name__])[0][-200:]


def cpu_flags_line() -> str:
    from caffe2torch.runner.openvino_backend import MATRIX_FLAGS, cpu_flags

    present = cpu_flags()
    return ", ".join(f"{flag} {'yes' if flag in present else 'no'}" for flag in MATRIX_FLAGS)


def trained_agreement(workdir: Path, photos: dict[str, np.ndarray], openvino: bool) -> dict[str, dict[str, float]]:
    """Label agreement with float32 onnxruntime of the trained demo model: int8 (onnxruntime, OpenVINO) and
    OpenVINO f32/bf16, on 20 held-out generated scenes, the 4 bundled samples and the photographs. Random
    weights give near-tied logits, which any rounding flips; a trained net's labels show what a precision does
    to real predictions."""
    from caffe2torch.definitions import bundled_definition
    from caffe2torch.demo.synthetic import make_batch
    from caffe2torch.demo.train import CAFFEMODEL, bundled
    from caffe2torch.images import list_images, read_image
    from caffe2torch.onnx_export import export_onnx
    from caffe2torch.pipeline import convert
    from caffe2torch.quantize import quantize_int8
    from caffe2torch.runner import OnnxBackend, image_logits, model_info

    net, _ = convert(bundled_definition("deeplab-demo-synthetic"), bundled(CAFFEMODEL))
    info = model_info(net.spec)
    float_path, int8_path = workdir / "demo.onnx", workdir / "demo.int8.onnx"
    export_onnx(net, float_path, metadata=info.to_metadata())
    calibration, _ = make_batch(11, 8)
    quantize_int8(float_path, int8_path, net.spec, list(calibration), info)
    scenes, _ = make_batch(2024, 20)
    samples = [read_image(p) for p in list_images([str(Path(__file__).resolve().parents[1] / "caffe2torch" /
                                                       "demo" / "samples")])]
    sets = {"scenes": list(scenes), "samples": samples, "photos": list(photos.values())}
    reference = OnnxBackend(float_path)
    others = {"onnxruntime int8": OnnxBackend(int8_path)}
    if openvino:
        from caffe2torch.runner import OpenVinoBackend

        others.update({"OpenVINO f32": OpenVinoBackend(float_path, precision="f32"),
                       "OpenVINO bf16": OpenVinoBackend(float_path, precision="bf16"),
                       "OpenVINO int8 (auto)": OpenVinoBackend(int8_path, precision="auto")})
    expected = {name: [image_logits(reference, im).argmax(0) for im in images] for name, images in sets.items()}
    rows = {}
    for label, backend in others.items():
        rows[label] = {name: float(np.mean([(image_logits(backend, im).argmax(0) == want).mean()
                                            for im, want in zip(images, expected[name])]))
                       for name, images in sets.items()}
    return rows


if __name__ == "__main__":
    sys.exit(main())
