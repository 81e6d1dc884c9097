"""--ray and --ray-actors for deeplab-run and deeplab-eval, and the choice of executor (local or Ray)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from caffe2torch.cli.common import echo_notes
from caffe2torch.executors import InferenceSettings, LocalExecutor, ModelSpec


def _address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from caffe2torch.executors.ray_executor import check_address

    try:
        return check_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def ray_options(func: Callable) -> Callable:
    """--ray [ADDRESS] and --ray-actors N."""
    func = click.option("--ray-actors", type=click.IntRange(min=1), default=None, metavar="N",
                        help="With --ray: net actors, each holding --threads CPUs [default: half of the cluster's "
                             "CPUs; the rest run the CRF and writing tasks].")(func)
    return click.option(
        "--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]", callback=_address,
        help="Run on a Ray cluster (pip install 'caffe2torch[cluster]'): the net in Ray actors, the CRF and writing "
             "as Ray tasks, the same files as a local run. No ADDRESS: a Ray of its own on this machine (or "
             "RAY_ADDRESS's cluster); 'auto': the cluster running here; HOST:PORT or ray://HOST:10001. Inputs and "
             "outputs must be on a filesystem every node sees. --threads sets each actor's CPUs and net threads "
             "[default: 1]; --jobs is not used.")(func)


def check_ray_options(ray_address: str | None, ray_actors: int | None, crf_device: str | None) -> None:
    """Combinations refused before anything is opened or written."""
    if ray_address is None and ray_actors is not None:
        raise click.UsageError("--ray-actors goes with --ray")
    if ray_address is not None and crf_device is not None:
        raise click.UsageError("--crf-device runs the torch CRF in this process; with --ray the CRF runs as "
                               "pydensecrf tasks on the cluster's CPUs")


def open_executor(ray_address: str | None, ray_actors: int | None, model_path: str, backend,
                  settings: InferenceSettings, jobs: int, threads: int | None, explicit_jobs: bool,
                  crf_device: str | None, output: Path):
    """The local executor (the net in this process with `backend`, finish in `jobs` worker processes), or with
    --ray the Ray executor (the net in actors that open the same model with the same backend and precision,
    `threads` threads each, default 1)."""
    check_ray_options(ray_address, ray_actors, crf_device)
    if ray_address is None:
        return LocalExecutor(backend, settings, jobs)
    from caffe2torch.executors.ray_executor import RayExecutor

    if explicit_jobs:
        echo_notes(["with --ray, --jobs is not used: Ray runs the CRF and writing tasks on every CPU of the cluster"])
    model = ModelSpec(str(Path(model_path).absolute()), backend.name, threads or 1, backend.precision)
    return RayExecutor(ray_address, model, settings, ray_actors, shared=[output])
