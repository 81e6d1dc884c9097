"""The backends the runner can use, by name (`--backend NAME`): each one opens a model and gives the runner one
call, `logits(batch, valid=None)`, plus `info` (ModelInfo), `precision` (what it computes in) and
`describe()`. A backend's library is imported only when it opens a model, so a missing optional one (OpenVINO)
costs nothing until asked for."""

from __future__ import annotations

from pathlib import Path

from caffe2torch.errors import CaffeError
from caffe2torch.runner.onnxruntime_backend import OnnxBackend
from caffe2torch.runner.openvino_backend import OpenVinoBackend
from caffe2torch.runner.torch_backend import TorchBackend

BACKENDS: dict[str, type] = {"onnxruntime": OnnxBackend, "openvino": OpenVinoBackend, "torch": TorchBackend}
DEFAULT_BACKEND = "onnxruntime"
# f32 everywhere; bf16 where the backend computes in it (OpenVINO); auto: the backend's own choice (OpenVINO:
# bf16 on CPUs that have it; the others: f32).
PRECISIONS = ("f32", "bf16", "auto")


def open_backend(name: str, model: str | Path, threads: int | None = None, precision: str = "f32"):
    """The backend `name` with `model` opened (an ONNX file for onnxruntime and openvino, an artifact for torch).
    CaffeError for an unknown name or a precision the backend does not compute in."""
    backend = BACKENDS.get(name)
    if backend is None:
        raise CaffeError(f"unknown backend '{name}' (known: {', '.join(sorted(BACKENDS))})")
    if precision not in PRECISIONS:
        raise CaffeError(f"unknown precision '{precision}' ({', '.join(PRECISIONS)})")
    if precision == "bf16" and "bf16" not in backend.precisions:
        able = ", ".join(n for n, b in BACKENDS.items() if "bf16" in b.precisions)
        raise CaffeError(f"--precision bf16 needs a backend that computes in bfloat16 ({able}); {name} computes "
                         "in float32")
    return backend(model, threads, "f32" if precision not in backend.precisions else precision)
