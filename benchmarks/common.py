"""Shared by the benchmarks: full-size DeepLab models with random weights written by our writer (the released
layer names and shapes), converted once into a work folder; alternating timing with medians."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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


def model_definition(model: str) -> Path:
    """The bundled prototxt of one of MODELS."""
    from caffe2torch.definitions import bundled_definition
    from caffe2torch.known_models import known_model

    return bundled_definition(known_model(MODELS[model]).definition)


def write_random_caffemodel(prototxt: Path, path: Path) -> None:
    """A caffemodel for the net with the released layer names and shapes and random weights (He-scaled
    filters, zero biases, identity BatchNorm and Scale), written by our writer; shared MSC layers are not
    repeated (they load from their owners, as in the released model)."""
    from caffe2torch.caffemodel import WeightsLayer, write_caffemodel
    from caffe2torch.pipeline import read_net
    from caffe2torch.shapes import infer_shapes

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
    write_caffemodel(path, layers, name=spec.name)


def prepared_model(model: str, workdir: Path) -> tuple[Path, Path, Path]:
    """(prototxt, caffemodel, onnx) of a full-size known model with random weights, made once."""
    from caffe2torch.onnx_export import export_onnx
    from caffe2torch.pipeline import convert
    from caffe2torch.runner import model_info

    prototxt = model_definition(model)
    workdir.mkdir(parents=True, exist_ok=True)
    caffemodel = workdir / f"{model}.caffemodel"
    onnx_path = workdir / f"{model}.onnx"
    if not caffemodel.exists():
        write_random_caffemodel(prototxt, caffemodel)
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



# ---------------------------------------------------------------------------------------------------------
# Child processes: wall time, CPU time and peak memory of the child alone
# ---------------------------------------------------------------------------------------------------------


def own_memory() -> dict[str, int]:
    """This process's peak and current resident memory in bytes ({"peak": VmHWM, "current": VmRSS}).

    Read from /proc/self/status, which counts this address space only. getrusage's ru_maxrss does not: the
    kernel carries a process's peak across exec, and a child started with fork or vfork (subprocess does
    either) begins as its parent's address space, so a child of a large parent reports the parent's memory
    as its own peak (how this benchmark once reported "0.64x" on the run that had just written the caffemodel).
    """
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0]) * 1024  # "12345 kB"
    return {"peak": fields["VmHWM"], "current": fields["VmRSS"]}


@dataclass
class ChildRun:
    """A finished child process: wall time from start to exit, its own CPU time (user + system, from wait4:
    the child and the processes it waited for, not this one), exit status and output."""

    wall_s: float
    cpu_s: float
    returncode: int
    stdout: str
    stderr: str


def run_child(argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> ChildRun:
    """Run a command to completion, measuring it alone (see ChildRun)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(list(argv), stdout=out, stderr=err, env=None if env is None else dict(env),
                                   cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
        out.seek(0)
        err.seek(0)
        return ChildRun(wall, usage.ru_utime + usage.ru_stime, process.returncode,
                        out.read().decode(errors="replace"), err.read().decode(errors="replace"))
