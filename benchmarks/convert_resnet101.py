"""deeplab-convert on a full-size DeepLab v2 ResNet-101 MSC ASPP caffemodel: seconds by stage, CPU time and
peak memory of the real command, each run in a fresh process.

    python benchmarks/convert_resnet101.py [--runs 3] [--workdir /tmp/c2t-bench-convert] [--baseline-tree DIR]

Writes a caffemodel with random weights (the released layer names and shapes, 177 MB) with our own writer,
then runs `deeplab-convert --model deeplab-v2-resnet101-msc CAFFEMODEL` (the bundled definition) with and
without `--no-onnx`, alternating, and reports medians. Each run is a fresh interpreter that times the CLI's
stages from inside (timers wrapped around the functions the command calls) and reports its own peak
resident memory (VmHWM: its own address space only, so the parent's memory never counts; see
common.own_memory). `--baseline-tree DIR` runs another caffe2torch source tree (a folder holding a
`caffe2torch` package, e.g. `git archive OLD caffe2torch | tar -x -C DIR`) alternately with this one, and
checks that both write the same artifact bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_ID = "deeplab-v2-resnet101-msc"

# (module, function, label, level): the stages timed inside the child. Level 0: the CLI's steps; level 1: within
# the level-0 step above it. Missing functions are skipped, so that an older source tree can be measured too.
STAGES = [
    ("caffe2torch.cli.convert", "read_net", "parse + upgrade + input checks", 0),
    ("caffe2torch.cli.convert", "read_caffemodel", "open the caffemodel (memory map, index)", 0),
    ("caffe2torch.cli.convert", "convert", "convert: shapes, match, build, load", 0),
    ("caffe2torch.pipeline", "infer_shapes", "shape inference + Caffe's checks", 1),
    ("caffe2torch.pipeline", "match_weights", "match the caffemodel to the net", 1),
    ("caffe2torch.pipeline", "build_net", "build the net", 1),
    ("caffe2torch.pipeline", "load_plan", "load the weights", 1),
    ("caffe2torch.cli.convert", "known_input_sizes", "input-size probing", 0),
    ("caffe2torch.cli.convert", "export_onnx", "ONNX export", 0),
    ("caffe2torch.onnx_export", "accepted_input_sizes", "input-size probing (in the export)", 1),
    ("caffe2torch.onnx_export", "tracing_shapes", "tracing size", 1),
    ("caffe2torch.onnx_export", "trace_graph", "trace + torch's ONNX passes", 1),
    ("caffe2torch.shared_branches", "find_shared_branches", "find the shared branches", 1),
    ("caffe2torch.shared_branches", "graft", "copy the shared branches in the graph", 1),
    ("caffe2torch.onnx_export", "check_graph", "onnx.checker (graph)", 1),
    ("caffe2torch.onnx_export", "_write_model", "ONNX write (weights streamed)", 1),
    ("caffe2torch.cli.convert", "save_artifact", "artifact write (safetensors)", 0),
    ("caffe2torch.cli.convert", "file_sha256", "hash the source files", 0),
]
# Appended to the label of a stage timed outside the main thread (beside the others: not in the sum).
BACKGROUND = " (background thread)"


# ---------------------------------------------------------------------------------------------------------
# The child: one deeplab-convert run in this fresh interpreter
# ---------------------------------------------------------------------------------------------------------


def _timed(function, label: str, seconds: dict[str, float], calls: dict[str, int]):
    import threading

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            name = label if threading.current_thread() is threading.main_thread() else label + BACKGROUND
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
            calls[name] = calls.get(name, 0) + 1

    return timed


def child(result: Path, cli_args: list[str]) -> int:
    """Run deeplab-convert's main here with timers around its stages; write the measurements to `result`."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import own_memory

    started = time.perf_counter()
    import torch  # noqa: F401  (timed apart: the CLI imports it first thing)

    torch_imported = time.perf_counter()
    import importlib

    cli = importlib.import_module("caffe2torch.cli.convert")
    imported = time.perf_counter()
    baseline = own_memory()["current"]
    seconds: dict[str, float] = {}
    calls: dict[str, int] = {}
    for module_name, name, label, _ in STAGES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:  # a stage of another version of the code
            continue
        if hasattr(module, name):
            setattr(module, name, _timed(getattr(module, name), label, seconds, calls))
    code = 0
    try:
        cli.main(cli_args, standalone_mode=False)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finished = time.perf_counter()
    memory = own_memory()
    result.write_text(json.dumps({
        "import_torch_s": torch_imported - started, "import_cli_s": imported - torch_imported,
        "main_s": finished - imported, "child_s": finished - started, "stages": seconds, "calls": calls,
        "baseline_rss": baseline, "peak_rss": memory["peak"], "exit": code,
    }))
    return code


# ---------------------------------------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------------------------------------


def measure(tree: Path, caffemodel: Path, outdir: Path, onnx: bool, result: Path) -> dict:
    from common import run_child

    args = ["--model", MODEL_ID, str(caffemodel), "-o", str(outdir)] + ([] if onnx else ["--no-onnx"])
    env = dict(os.environ, PYTHONPATH=str(tree))
    run = run_child([sys.executable, str(Path(__file__).resolve()), "--child", str(result), "--", *args], env)
    if run.returncode != 0 or not result.exists():
        raise SystemExit(f"deeplab-convert failed ({tree}):\n{run.stdout}\n{run.stderr}")
    measured = json.loads(result.read_text())
    result.unlink()
    measured.update(wall_s=run.wall_s, cpu_s=run.cpu_s)
    return measured


def same_artifact(a: Path, tree_a: Path, b: Path, tree_b: Path) -> bool:
    """The two artifacts hold the same header (metadata, with each tree's path in it made alike: the bundled
    prototxt lies in the tree; tensor entries) and the same data bytes."""
    from caffe2torch.artifact import read_header

    heads = [read_header(path) for path in (a, b)]
    starts = [min(e.begin for e in head.tensors.values()) for head in heads]
    described = []
    for head, tree, start in zip(heads, (tree_a, tree_b), starts):
        metadata = {k: v.replace(json.dumps(str(tree))[1:-1], "<tree>") for k, v in head.metadata.items()}
        tensors = {k: (e.dtype, e.shape, e.begin - start, e.end - start) for k, e in head.tensors.items()}
        described.append((metadata, tensors))
    if described[0] != described[1]:
        return False
    with open(a, "rb") as first, open(b, "rb") as second:
        first.seek(starts[0])
        second.seek(starts[1])
        while True:
            x, y = first.read(1 << 22), second.read(1 << 22)
            if x != y:
                return False
            if not x:
                return True


def same_onnx_outputs(a: Path, b: Path, side: int = 65) -> bool:
    """onnxruntime gives the same output bits for both models (a random input of side x side)."""
    import numpy as np
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (a, b)]
    x = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32) * 50
    results = [session.run(None, {session.get_inputs()[0].name: x}) for session in sessions]
    return all(np.array_equal(p, q) for p, q in zip(*results))


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r.get(key, 0.0) for r in runs)


def stage_median(runs: list[dict], label: str) -> float | None:
    if not any(label in r["stages"] for r in runs):
        return None
    return statistics.median(r["stages"].get(label, 0.0) for r in runs)


def report(columns: dict[str, list[dict]], size: int) -> str:
    names = list(columns)
    width = max(12, *(len(n) + 2 for n in names))
    lines = [f"{'median seconds':<44}" + "".join(f"{n:>{width}}" for n in names)]

    def row(label: str, values: list[float | None], fmt: str = "{:.2f}") -> None:
        lines.append(f"{label:<44}" + "".join(f"{'-' if v is None else fmt.format(v):>{width}}" for v in values))

    row("process start-up (interpreter)", [median(c, "wall_s") - median(c, "child_s") for c in columns.values()])
    row("import torch", [median(c, "import_torch_s") for c in columns.values()])
    row("import caffe2torch's CLI", [median(c, "import_cli_s") for c in columns.values()])
    seen = set()
    for _, _, label, level in STAGES:
        for name in (label, label + BACKGROUND):
            if name in seen:
                continue
            seen.add(name)
            values = [stage_median(c, name) for c in columns.values()]
            if any(v is not None for v in values):
                row(("  " * (level if name == label else 1)) + name, values)
    top = {label for _, _, label, level in STAGES if level == 0}
    row("rest of the CLI (click, checks, metadata)",
        [statistics.median(r["main_s"] - sum(r["stages"].get(label, 0.0) for label in top) for r in c)
         for c in columns.values()])
    row("total, process start to exit (wall)", [median(c, "wall_s") for c in columns.values()])
    row("CPU time, user + system", [median(c, "cpu_s") for c in columns.values()])
    lines.append("")
    row("peak RSS, MB", [median(c, "peak_rss") / 1e6 for c in columns.values()], "{:.0f}")
    row("  x the caffemodel", [median(c, "peak_rss") / size for c in columns.values()])
    row("after imports (interpreter, torch, CLI), MB", [median(c, "baseline_rss") / 1e6 for c in columns.values()],
        "{:.0f}")
    row("conversion's own peak (peak - that), MB",
        [statistics.median(r["peak_rss"] - r["baseline_rss"] for r in c) / 1e6 for c in columns.values()], "{:.0f}")
    row("  x the caffemodel",
        [statistics.median(r["peak_rss"] - r["baseline_rss"] for r in c) / size for c in columns.values()])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each configuration (alternating)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/c2t-bench-convert"))
    parser.add_argument("--baseline-tree", type=Path, default=None, metavar="DIR",
                        help="another caffe2torch source tree to run alternately with this one")
    parser.add_argument("--onnx-only", action="store_true", help="skip the --no-onnx runs")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        return child(args.child, [a for a in rest if a != "--"])

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine, model_definition, write_random_caffemodel

    os.environ.setdefault("PYTHONPATH", str(ROOT))
    sys.path.insert(0, str(ROOT))
    args.workdir.mkdir(parents=True, exist_ok=True)
    caffemodel = args.workdir / "resnet101-msc.caffemodel"
    if not caffemodel.exists():
        write_random_caffemodel(model_definition("resnet101-msc"), caffemodel)
    size = caffemodel.stat().st_size
    trees = {"this tree": ROOT}
    if args.baseline_tree:
        trees = {"baseline": args.baseline_tree.resolve(), **trees}
    variants = {"": True} if args.onnx_only else {"": True, " --no-onnx": False}
    columns: dict[str, list[dict]] = {f"{t}{v}": [] for t in trees for v in variants}
    print(f"{machine()}; load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"caffemodel: {size / 1e6:.0f} MB ({caffemodel}); deeplab-convert --model {MODEL_ID}")
    for run in range(args.runs):
        for tree_name, tree in trees.items():
            for variant, onnx in variants.items():
                outdir = args.workdir / f"out-{list(trees).index(tree_name)}{'-noonnx' if not onnx else ''}"
                measured = measure(tree, caffemodel, outdir, onnx, args.workdir / "child.json")
                columns[f"{tree_name}{variant}"].append(measured)
                print(f"  run {run + 1}: {tree_name}{variant}: {measured['wall_s']:.2f} s, "
                      f"cpu {measured['cpu_s']:.2f} s, peak {measured['peak_rss'] / 1e6:.0f} MB", flush=True)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(report(columns, size))
    if args.baseline_tree:
        same = same_artifact(args.workdir / "out-0/model.safetensors", trees["baseline"],
                             args.workdir / "out-1/model.safetensors", trees["this tree"])
        print(f"artifacts identical between the trees (but for the path of the bundled prototxt, which lies in "
              f"each tree): {'yes' if same else 'NO'}")
        same = same_onnx_outputs(args.workdir / "out-0/model.onnx", args.workdir / "out-1/model.onnx")
        print(f"ONNX outputs identical between the trees (onnxruntime, 65x65): {'yes' if same else 'NO'}")
    best = min(r["wall_s"] for r in columns[f"{list(trees)[-1]}"])
    mid = median(columns[f"{list(trees)[-1]}"], "wall_s")
    own = statistics.median(r["peak_rss"] - r["baseline_rss"] for r in columns[f"{list(trees)[-1]}"]) / size
    print(f"this tree, artifact + ONNX: median {mid:.2f} s (best {best:.2f} s), target <= 5 s: "
          f"{'met' if mid <= 5 else 'missed'}; conversion's own peak {own:.2f}x the caffemodel, target <= 2x: "
          f"{'met' if own <= 2 else 'missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
