"""deeplab-run and deeplab-eval on Ray (issue 14): on a local two-CPU Ray cluster the label PNGs, overlays,
probabilities and confusion matrices equal a local run's byte for byte; a net actor and a CRF worker killed
mid-run are retried with identical results; an interrupted driver (Ctrl-C, SIGTERM) leaves no partial file
and the same command resumes. Without Ray, --ray says how to install it.

One cluster (`ray start --head --num-cpus 2 --block`, its own ports and temp folder) serves the module and is
stopped at the end; the drivers connect to it with --ray 127.0.0.1:PORT. The Ray tests fail when CI is set
and Ray is missing (CI installs the `cluster` extra), and skip elsewhere. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from caffe2torch.cli import eval as eval_cli
from caffe2torch.cli import run as run_cli
from caffe2torch.demo.synthetic import make_scene, write_voc_layout

from .conftest import REPO
from .test_signals import alive, descendants, finish, wait_for

DEMO = REPO / "caffe2torch" / "weights" / "deeplab-demo-synthetic.caffemodel"
SLOW_CRF = ["--crf", "--crf-params", "max_iter=60"]


def require_ray() -> None:
    """Ray is an optional extra: a missing one fails in CI (which installs it) and skips elsewhere."""
    try:
        import ray  # noqa: F401
    except ImportError:
        message = "ray is not installed (pip install 'caffe2torch[cluster]'; scripts/setup.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """The address of a local Ray cluster with 2 CPUs, started for this module and stopped after it."""
    require_ray()
    temp = Path(tempfile.mkdtemp(prefix="c2t-ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = temp / "head.log"
    with open(log, "w") as handle:
        head = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--num-cpus", "2", "--port", str(port),
             "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp), "--include-dashboard", "false",
             "--ray-client-server-port", str(free_port()), "--disable-usage-stats", "--block"],
            env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    helpers: set[int] = set()
    try:
        wait_for(lambda: "Ray runtime started" in log.read_text() or head.poll() is not None, 90, "ray start --head")
        assert head.poll() is None, log.read_text()[-3000:]
        yield {"address": f"127.0.0.1:{port}", "head": head}
    finally:
        helpers = descendants(head.pid)
        with contextlib.suppress(ProcessLookupError):
            head.send_signal(signal.SIGTERM)  # --block: it drains the node and stops the processes it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not any(alive(pid) for pid in helpers), 20, "the cluster's processes to end")
        for pid in helpers:  # only processes this cluster started (workers live in their own groups)
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The bundled demo model, converted (artifact and ONNX)."""
    from caffe2torch.cli import convert

    folder = tmp_path_factory.mktemp("demo_model")
    result = CliRunner().invoke(convert.main, ["--model", "deeplab-demo-synthetic", str(DEMO), "-o", str(folder)])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    """Six generated scenes with labels in the VOC layout (PNG images, a list of path pairs)."""
    root = tmp_path_factory.mktemp("voc")
    write_voc_layout(root, seed=31, count=6)
    return root


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Eight larger scenes, so that a run with a 60-iteration CRF lasts long enough to be disturbed."""
    folder = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(5)
    for index in range(8):
        Image.fromarray(make_scene(rng, 120, 160)[0]).save(folder / f"scene_{index:02d}.png")
    return folder


def invoke(main, *args) -> object:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def outputs(folder: Path) -> list[str]:
    """Every file a run left, by relative path, its journal aside (the order of its lines differs)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.name != ".deeplab-run.jsonl")


def assert_same_files(expected: Path, actual: Path) -> None:
    names = outputs(expected)
    assert names and names == outputs(actual)
    different = [n for n in names if not filecmp.cmp(expected / n, actual / n, shallow=False)]
    assert not different, different


def run_local_reference(model: Path, images: Path, out: Path, *args) -> Path:
    result = invoke(run_cli.main, "--onnx", model / "model.onnx", images, "-o", out, *args, "--jobs", "2")
    assert result.exit_code == 0, result.output
    return out


# -- without Ray ----------------------------------------------------------------------------------------------


def test_without_ray_the_option_says_how_to_install_it(model, voc, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = invoke(run_cli.main, "--onnx", model / "model.onnx", voc / "JPEGImages", "-o", tmp_path / "out", "--ray")
    assert result.exit_code == 2
    assert "--ray needs Ray" in result.output and "pip install 'caffe2torch[cluster]'" in result.output
    evaluated = invoke(eval_cli.main, "--onnx", model / "model.onnx", "--voc-root", voc, "--list",
                       voc / "ImageSets/Segmentation/val.txt", "-o", tmp_path / "eval", "--ray", "auto")
    assert evaluated.exit_code == 2 and "pip install 'caffe2torch[cluster]'" in evaluated.output


def test_ray_options_are_checked_before_any_work(model, voc, tmp_path):
    images = voc / "JPEGImages"
    eaten = invoke(run_cli.main, "--onnx", model / "model.onnx", "-o", tmp_path / "out", "--ray", images)
    assert eaten.exit_code == 2 and "is not a Ray address" in eaten.output and "--ray=ADDRESS" in eaten.output
    alone = invoke(run_cli.main, "--onnx", model / "model.onnx", images, "-o", tmp_path / "out", "--ray-actors", "2")
    assert alone.exit_code == 2 and "--ray-actors goes with --ray" in alone.output
    device = invoke(run_cli.main, "--onnx", model / "model.onnx", images, "-o", tmp_path / "out", "--crf-device", "cpu",
                    "--ray", "auto")
    assert device.exit_code == 2 and "--crf-device" in device.output
    assert not (tmp_path / "out").exists()


# -- on a local Ray cluster -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend, args", [
    ("onnx", ["--crf", "--save-probs", "--scales", "0.75,1", "--flip"]),
    # torch's results depend on its thread count (1 vs more): the same --threads on both sides
    ("torch", ["--crf", "--threads", "1"]),
])
def test_run_on_ray_equals_the_local_run_byte_for_byte(cluster, model, voc, tmp_path, backend, args):
    model_option = ["--onnx", model / "model.onnx"] if backend == "onnx" else ["--model", model / "model.safetensors"]
    images = voc / "JPEGImages"
    local = invoke(run_cli.main, *model_option, images, "-o", tmp_path / "local", *args, "--jobs", "2")
    assert local.exit_code == 0, local.output
    on_ray = invoke(run_cli.main, *model_option, images, "-o", tmp_path / "ray", *args, "--ray", cluster["address"])
    assert on_ray.exit_code == 0, on_ray.output
    assert "segmented 6 of 6" in on_ray.output and "ray: 1 net actor(s)" in on_ray.output
    assert_same_files(tmp_path / "local", tmp_path / "ray")
    if backend == "onnx":
        assert len(list((tmp_path / "ray").glob("*_probs.npy"))) == 6


def test_eval_on_ray_equals_the_local_eval_and_resumes_from_its_predictions(cluster, model, voc, tmp_path):
    from caffe2torch.crf import crf_preset
    from caffe2torch.evaluate import evaluate_model, voc_samples
    from caffe2torch.executors import InferenceSettings, LocalExecutor, ModelSpec
    from caffe2torch.executors.ray_executor import RayExecutor
    from caffe2torch.runner import OnnxBackend

    listing = voc / "ImageSets/Segmentation/val.txt"
    common = ["--onnx", model / "model.onnx", "--voc-root", voc, "--list", listing, "--crf"]
    local = invoke(eval_cli.main, *common, "--jobs", "2", "-o", tmp_path / "local")
    on_ray = invoke(eval_cli.main, *common, "-o", tmp_path / "ray", "--ray", cluster["address"])
    assert local.exit_code == 0 and on_ray.exit_code == 0, local.output + on_ray.output
    assert_same_files(tmp_path / "local", tmp_path / "ray")  # predictions, overlays, results.json, report.md
    assert on_ray.output.count("6 image(s) scored") == 1

    # The confusion matrices themselves, and resume from predictions on disk (rgb and logits None on Ray).
    samples = voc_samples(voc, list_file=listing)
    crf, settings = crf_preset("demo-synthetic"), InferenceSettings()
    with LocalExecutor(OnnxBackend(model / "model.onnx", 1), settings, 1) as executor:
        expected = evaluate_model(executor, samples, tmp_path / "api_local", 5, crf)
    for variant in ("no_crf", "crf"):
        for sample in samples[:4]:
            (tmp_path / "ray" / "predictions" / variant / f"{sample.id}.png").unlink()
    spec = ModelSpec(str(model / "model.onnx"), "onnxruntime", 1)
    with RayExecutor(cluster["address"], spec, settings, shared=[tmp_path / "ray"]) as executor:
        resumed = evaluate_model(executor, samples, tmp_path / "ray", 5, crf)
    assert resumed.resumed == 2 and resumed.images == 6 and not resumed.skipped
    assert set(resumed.confusion) == {"no_crf", "crf"}
    for variant in ("no_crf", "crf"):
        assert np.array_equal(resumed.confusion[variant], expected.confusion[variant])
        assert resumed.confusion[variant].sum() > 0
    assert_same_files(tmp_path / "local" / "predictions", tmp_path / "ray" / "predictions")


def processes_of(root: int, title: str) -> list[int]:
    """Descendants of `root` whose command line (Ray's process title) starts with `title`."""
    found = []
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().startswith(title):
                found.append(pid)
    return found


def start_run(model: Path, images: Path, out: Path, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "caffe2torch.cli.run", "--onnx", str(model / "model.onnx"), str(images), "-o",
               str(out), *[str(a) for a in args]]
    return subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def done_stems(out: Path) -> set[str]:
    """Images whose last journal record says done."""
    last = {}
    for line in (out / ".deeplab-run.jsonl").read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            last[record["stem"]] = record["state"]
    return {stem for stem, state in last.items() if state == "done"}


def journal_has_done(out: Path) -> bool:
    journal = out / ".deeplab-run.jsonl"
    return journal.is_file() and '"done"' in journal.read_text()


@pytest.fixture(scope="module")
def reference(model, scenes, tmp_path_factory) -> Path:
    """The local run of `scenes` with the slow CRF: what every disturbed Ray run must end up with."""
    return run_local_reference(model, scenes, tmp_path_factory.mktemp("reference") / "out", *SLOW_CRF)


def test_a_killed_net_actor_and_crf_worker_are_retried_with_identical_results(cluster, model, scenes, reference,
                                                                            tmp_path):
    out = tmp_path / "out"
    process = start_run(model, scenes, out, *SLOW_CRF, "--ray", cluster["address"])
    head = cluster["head"].pid
    try:
        wait_for(lambda: journal_has_done(out), 90, "a first image")
        killed: dict[str, list[int]] = {}
        for title in ("ray::InferenceActor", "ray::run_finish"):  # Ray's titles: the actor, a running CRF task
            wait_for(lambda t=title: processes_of(head, t), 30, title)
            killed[title] = processes_of(head, title)
            for pid in killed[title]:
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: set(processes_of(head, "ray::InferenceActor")) - set(killed["ray::InferenceActor"]),
                 60, "Ray to restart the net actor")
        status, output = finish(process, timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert status == 0, output
    assert "segmented 8 of 8" in output and "skipped:" not in output  # the killed CRF task ran again
    assert_same_files(reference, out)
    assert not list(out.rglob("*.part"))


def stop_with(process: subprocess.Popen, number: int, out: Path, before: int = 0) -> tuple[int, str]:
    """Send `number` to the driver once it finished an image (beyond `before` output files); its status and
    output."""
    try:
        wait_for(lambda: len(outputs(out)) > before and journal_has_done(out), 240, "a first image")
        process.send_signal(number)
        return finish(process, timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


@pytest.fixture()
def ray_installed() -> None:
    require_ray()


def test_ctrl_c_stops_the_job_and_the_ray_the_command_started(ray_installed, model, scenes, reference, tmp_path):
    out = tmp_path / "out"
    process = start_run(model, scenes, out, *SLOW_CRF, "--ray")  # bare --ray: a Ray of its own
    wait_for(lambda: any(b"raylet" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in descendants(process.pid)
                         if alive(pid)), 60, "the command to start its Ray")
    wait_for(lambda: journal_has_done(out), 240, "a first image")
    helpers = descendants(process.pid)
    status, output = stop_with(process, signal.SIGINT, out)
    wait_for(lambda: not any(alive(pid) for pid in helpers), 30, "the Ray it started to stop")
    assert status == 130, output
    assert "interrupted" in output and "running the same command again resumes" in output
    assert not list(out.rglob("*.part"))
    assert 0 < len(outputs(out)) < len(outputs(reference))


def test_sigterm_stops_the_job_and_the_same_command_resumes(cluster, model, scenes, reference, tmp_path):
    out = tmp_path / "out"
    process = start_run(model, scenes, out, *SLOW_CRF, "--ray", cluster["address"])
    status, output = stop_with(process, signal.SIGTERM, out)
    assert status == 143 and "terminated (SIGTERM)" in output and "running the same command again resumes" in output, (
        output)
    assert not list(out.rglob("*.part"))
    assert 0 < len(outputs(out)) < len(outputs(reference))

    # The same command again: what was done is not computed again, and the result is the local run's.
    stamps = {name: (out / name).stat().st_mtime_ns for stem in done_stems(out)
              for name in (f"{stem}.png", f"{stem}_overlay.png")}
    assert stamps
    process = start_run(model, scenes, out, *SLOW_CRF, "--ray", cluster["address"])
    status, output = finish(process, timeout=180)
    assert status == 0, output
    assert "segmented 8 of 8" in output and "from an earlier run with the same settings" in output
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps
    assert_same_files(reference, out)


def test_the_cluster_must_have_room_for_the_actors_and_the_crf(cluster, model, voc, tmp_path):
    images = voc / "JPEGImages"
    too_wide = invoke(run_cli.main, "--onnx", model / "model.onnx", images, "-o", tmp_path / "a", "--threads", "3",
                      "--ray", cluster["address"])
    assert too_wide.exit_code == 2 and "the largest Ray node has 2" in too_wide.output
    too_many = invoke(run_cli.main, "--onnx", model / "model.onnx", images, "-o", tmp_path / "b", "--ray-actors", "2",
                      "--ray", cluster["address"])
    assert too_many.exit_code == 2 and "leave none of the cluster's 2 CPU(s)" in too_many.output
    assert not list(tmp_path.rglob("*_overlay.png"))


def test_the_probe_that_checks_each_node_sees_the_output_folder(tmp_path):
    from caffe2torch.executors.ray_executor import probe_folder

    probe = tmp_path / ".probe"
    probe.write_text("token")
    assert probe_folder(str(probe), "token") is None
    assert "another file" in probe_folder(str(probe), "other")
    assert "cannot read it" in probe_folder(str(tmp_path / "missing"), "token")
