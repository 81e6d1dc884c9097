"""--backend and --precision, as deeplab-run and deeplab-eval take them, and the backend they choose: --onnx
MODEL.onnx runs in onnxruntime (or, with --backend openvino, in OpenVINO), --model ARTIFACT in torch."""

from __future__ import annotations

from collections.abc import Callable

import click

from caffe2torch.runner.backends import BACKENDS, PRECISIONS, open_backend
from caffe2torch.runner.model_info import score_stride

BACKEND_HELP = ("onnxruntime (the default with --onnx), openvino (--onnx; the same file in OpenVINO, bf16 on "
                "CPUs with AMX/AVX-512 BF16: pip install 'caffe2torch[openvino]'), torch (the default with --model).")
PRECISION_HELP = ("What the net computes in: f32; bf16 (openvino only; reduced precision, opt-in); auto (the "
                  "backend's own choice: bf16 in OpenVINO on CPUs that have it, else f32). The precision used is "
                  "printed.")


def backend_options(func: Callable) -> Callable:
    """--backend NAME and --precision f32|bf16|auto."""
    func = click.option("--precision", type=click.Choice(PRECISIONS), default="f32", show_default=True,
                        help=PRECISION_HELP)(func)
    func = click.option("--backend", "backend_name", type=click.Choice(sorted(BACKENDS)), default=None,
                        help=BACKEND_HELP)(func)
    return func


def chosen_backend(backend_name: str | None, onnx_path: str | None, artifact: str | None) -> str:
    """The backend a command line asks for: --backend, else onnxruntime for --onnx and torch for --model."""
    if backend_name is None:
        return "torch" if artifact else "onnxruntime"
    wants = BACKENDS[backend_name].model_kind
    if wants == "artifact" and not artifact:
        raise click.UsageError(f"--backend {backend_name} runs a caffe2torch artifact: give --model ARTIFACT")
    if wants == "onnx" and not onnx_path:
        raise click.UsageError(f"--backend {backend_name} runs an ONNX model: give --onnx MODEL.onnx")
    return backend_name


def open_cli_backend(backend_name: str | None, precision: str, onnx_path: str | None, artifact: str | None,
                     threads: int | None):
    """The backend, opened; says on stderr what computes and in which precision unless it is the plain float32
    default of onnxruntime or torch."""
    name = chosen_backend(backend_name, onnx_path, artifact)
    backend = open_backend(name, onnx_path or artifact, threads, precision)
    if name == "openvino" or precision != "f32":
        click.echo(f"note: {backend.describe()}", err=True)
    stride = score_stride(backend.info)
    if stride:
        click.echo(f"note: the model's output '{backend.info.output_name}' is a stride-{stride} grid of its input "
                   f"(the net ends before an upsampling layer): its scores are upsampled as DeepLab's Interp with "
                   f"zoom_factor {stride} does (bilinear, aligned corners), then cropped to the image", err=True)
    return backend


def backend_settings(backend) -> dict[str, str]:
    """What deeplab-eval records about the backend in its run settings (a resumed run must use the same):
    nothing for onnxruntime and torch in float32, so results folders made before --backend still resume."""
    if backend.name in ("onnxruntime", "torch") and backend.precision == "f32":
        return {}
    return {"backend": backend.name, "precision": backend.precision}
