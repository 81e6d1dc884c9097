"""Shared by the benchmarks: full-size DeepLab models with random weights written by our writer (the released
layer names and shapes), converted once into a work folder; alternating timing with medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

MODELS = {"largefov": "deeplab-v1-largefov", "resnet101-msc": "deeplab-v2-resnet101-msc"}


def machine() -> str:
    import os
    import platform

    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}"


def prepared_model(model: str, workdir: Path) -> tuple[Path, Path, Path]:
    """(prototxt, caffemodel, onnx) of a full-size known model with random weights, made once."""
    from caffe2torch.caffemodel import WeightsLayer, write_caffemodel
    from caffe2torch.definitions import bundled_definition
    from caffe2torch.known_models import known_model
    from caffe2torch.onnx_export import export_onnx
    from caffe2torch.pipeline import convert, read_net
    from caffe2torch.runner import model_info
    from caffe2torch.shapes import infer_shapes

    known = known_model(MODELS[model])
    prototxt = bundled_definition(known.definition)
    workdir.mkdir(parents=True, exist_ok=True)
    caffemodel = workdir / f"{model}.caffemodel"
    onnx_path = workdir / f"{model}.onnx"
    if not caffemodel.exists():
        spec = read_net(prototxt)
        shared = spec.shared_parameters()
        rng = np.random.default_rng(0)
        layers = []
        for info in infer_shapes(spec).layers:
            if not info.blob_shapes or all((info.name, i) in shared for i in range(len(info.blob_shapes))):
                continue
            fan_in = max(1, int(np.prod(info.blob_shapes[0][1:]))) if len(info.blob_shapes[0]) > 1 else 1
            blobs = [(rng.standard_normal(s) * np.sqrt(2.0 / fan_in)).astype(np.float32) for s in info.blob_shapes]
            if info.type == "BatchNorm":
                blobs = [np.zeros(info.blob_shapes[0], np.float32), np.ones(info.blob_shapes[1], np.float32),
                         np.ones(1, np.float32)]
            elif info.type == "Scale":
                blobs = [np.ones(s, np.float32) if i == 0 else np.zeros(s, np.float32)
                         for i, s in enumerate(info.blob_shapes)]
            elif len(blobs) > 1:
                blobs[1] = np.zeros_like(blobs[1])
            layers.append(WeightsLayer(info.name, info.type, blobs))
        write_caffemodel(caffemodel, layers, name=spec.name)
    if not onnx_path.exists():
        net, _ = convert(prototxt, caffemodel)
        export_onnx(net, onnx_path, metadata=model_info(net.spec).to_metadata())
    return prototxt, caffemodel, onnx_path


def alternate(runners: dict[str, Callable[[], object]], runs: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each runner `runs` times, round-robin (so drifts in machine load hit all alike)."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(runs):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def table(times: dict[str, list[float]], baseline: str, title: str) -> str:
    """Median seconds per runner and each one's speed relative to `baseline` (higher is faster)."""
    medians = {name: statistics.median(values) for name, values in times.items() if values}
    lines = [title, f"{'':<34}{'median s':>10}{'runs':>6}  speed vs {baseline}"]
    for name, value in medians.items():
        ratio = medians[baseline] / value if baseline in medians else float("nan")
        lines.append(f"{name:<34}{value:>10.3f}{len(times[name]):>6}  {ratio:.2f}x")
    return "\n".join(lines)
