"""deeplab-eval with the dense CRF on Ray against the local path: 24 generated 500x375 scenes, full-size
DeepLab-LargeFOV (ONNX, random weights), the real command as a subprocess (process start included).

Configurations, alternated round by round:
- local, --jobs 2 (the net in the command, two CRF worker processes);
- Ray started by the command itself (bare --ray: Ray's start and stop included);
- a running one-node Ray cluster (`ray start --head --num-cpus 2`), --ray ADDRESS;
- a two-node cluster simulated on this machine (`ray start --head --num-cpus 1` and a second node joined with
  `ray start --address ... --num-cpus 1`), --ray ADDRESS, with the images each node handled (net calls and
  finish tasks per Ray node id, from the command's summary).
Every configuration's predictions are checked byte for byte against the local run's.

    python benchmarks/ray_cluster.py [--images 24] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, prepared_model  # noqa: E402
from eval_e2e import make_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment() -> dict[str, str]:
    """The commands and the Ray nodes import this checkout; token authentication on (as `ray start --head`
    sets it up, the joining node must send the token too)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    return env


class Cluster:
    """`ray start --block` processes: a head with `cpus[0]` CPUs and one node per further entry, all on this
    machine; stopped (SIGTERM to each `ray start`, which drains its node) on exit."""

    def __init__(self, cpus: list[int]):
        self.temp = Path(tempfile.mkdtemp(prefix="c2t-bench-ray-", dir="/tmp"))
        self.address = f"127.0.0.1:{free_port()}"
        self.processes: list[subprocess.Popen] = []
        head = ["--head", "--port", self.address.split(":")[1], "--temp-dir", str(self.temp), "--include-dashboard",
                "false", "--ray-client-server-port", str(free_port())]
        for index, count in enumerate(cpus):
            role = head if index == 0 else ["--address", self.address]
            self._start(role + ["--num-cpus", str(count)], self.temp / f"node{index}.log")

    def _start(self, args: list[str], log: Path) -> None:
        with open(log, "w") as handle:
            process = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", *args,
                                        "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"],
                                       env=environment(), stdout=handle, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.processes.append(process)
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info) -> None:
        for process in reversed(self.processes):  # the joined nodes first, the head last
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)


def predictions_digest(out: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((out / "predictions").rglob("*.png")):
        digest.update(str(path.relative_to(out)).encode() + path.read_bytes())
    return digest.hexdigest()


def run_eval(onnx_path: Path, voc: Path, out: Path, extra: list[str]) -> tuple[float, str]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "caffe2torch.cli.eval", "--onnx", str(onnx_path), "--voc-root",
                           str(voc), "-o", str(out), "--crf", *extra], env=environment(), capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"deeplab-eval {' '.join(extra)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout + done.stderr


def per_node(output: str) -> list[tuple[str, int, int]]:
    """(node id, net calls, finish tasks) from the command's summary lines."""
    return [(m[1], int(m[2]), int(m[3])) for m in re.finditer(r"ray:\s+node (\w+)\s+net (\d+)\s+finish (\d+)", output)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/c2t-bench"))
    args = parser.parse_args()
    _, _, onnx_path = prepared_model("largefov", args.workdir)
    voc = make_dataset(args.workdir / "voc_e2e", args.images)
    out = args.workdir / "ray_cluster_results"
    print(f"machine: {machine()}")
    print(f"deeplab-eval --crf, {args.images} generated 500x375 images, full-size DeepLab-LargeFOV (ONNX, float); "
          f"{args.rounds} alternating rounds, medians")
    times: dict[str, list[float]] = {}
    nodes: dict[str, list] = {}
    digests: dict[str, set[str]] = {}

    def record(name: str, seconds: float, output: str, folder: Path) -> None:
        times.setdefault(name, []).append(seconds)
        digests.setdefault(name, set()).add(predictions_digest(folder))
        nodes[name] = per_node(output)
        print(f"  {name:<44} {seconds:7.1f} s   {args.images / seconds:5.2f} images/s", flush=True)

    for round_number in range(args.rounds):
        print(f"round {round_number + 1}", flush=True)
        record("local, --jobs 2", *run_eval(onnx_path, voc, out, ["--jobs", "2"]), out)
        record("Ray started by the command (bare --ray)", *run_eval(onnx_path, voc, out, ["--ray"]), out)
        with Cluster([2]) as cluster:
            record("running 1-node cluster, 2 CPUs", *run_eval(onnx_path, voc, out, ["--ray", cluster.address]), out)
        with Cluster([1, 1]) as cluster:
            record("running 2-node cluster, 1 + 1 CPUs", *run_eval(onnx_path, voc, out, ["--ray", cluster.address]),
                   out)
    baseline = statistics.median(times["local, --jobs 2"])
    print(f"\n{'':<44}{'median s':>10}{'images/s':>10}  time vs local")
    for name, values in times.items():
        value = statistics.median(values)
        print(f"{name:<44}{value:>10.1f}{args.images / value:>10.2f}  {value / baseline:.2f}x")
    reference = digests["local, --jobs 2"]
    identical = all(d == reference for d in digests.values()) and len(reference) == 1
    print(f"predictions identical to the local run's in every run: {'yes' if identical else 'NO'}")
    for name in ("running 1-node cluster, 2 CPUs", "running 2-node cluster, 1 + 1 CPUs"):
        print(f"{name}, last round, images per Ray node (net calls, finish tasks): "
              + ", ".join(f"{node[:8]}: {net}, {finish}" for node, net, finish in nodes[name]))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
