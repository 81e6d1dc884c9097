"""OpenVINO's CPU plugin running the same model.onnx (or model.int8.onnx) as onnxruntime: on CPUs with AMX or
AVX-512 BF16 it can compute in bfloat16, several times faster (docs/benchmarks.md). An optional extra:
`pip install 'caffe2torch[openvino]'`.

Precision (INFERENCE_PRECISION_HINT): f32, the default, equals onnxruntime to float rounding; bf16 and auto
(OpenVINO's own choice: bf16 where the CPU has it) are opt-in, and the precision used is read back from the
compiled model and said. Pooling is rewritten where OpenVINO's ONNX reader departs from Caffe
(openvino_pooling.py). An int8 model's quantised convolutions run in int8 whatever the hint; the hint sets
the precision of the rest. The caffe2torch metadata comes from the model's rt_info, where OpenVINO's ONNX
reader keeps the file's metadata_props (no second parse of the file)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from caffe2torch.errors import CaffeError, Location
from caffe2torch.runner.model_info import ModelInfo
from caffe2torch.runner.onnx_graph import check_graph
from caffe2torch.runner.openvino_pooling import caffe_pooling
from caffe2torch.runner.preprocess import data_dim_blob

INSTALL_HINT = "pip install 'caffe2torch[openvino]'"
# --precision → INFERENCE_PRECISION_HINT; auto sets none (the plugin's default).
PRECISION_HINTS = {"f32": "f32", "bf16": "bf16", "auto": None}
# What OpenVINO names the precisions it reports, as the runner names them.
PRECISION_NAMES = {"f32": "f32", "float32": "f32", "bf16": "bf16", "bfloat16": "bf16", "f16": "f16",
                   "float16": "f16"}
# /proc/cpuinfo flags that decide what OpenVINO gains on a CPU (printed by the benchmark and the note).
UNREADABLE_OPS = {"Loop", "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "ConcatFromSequence"}
# bf16 label agreement with f32 measured per known model (docs/benchmarks.md, benchmarks/inference.py):
# said with the precision, so a run learns where bf16 keeps fewer than 99% of the labels.
BF16_AGREEMENT = {
    "deeplab-v1-largefov": (99.39, "full-size net, random weights, 7 photographs"),
    "deeplab-v2-resnet101-msc": (98.59, "full-size net, random weights, 7 photographs"),
    "deeplab-demo-synthetic": (99.61, "trained demo, 7 photographs; 99.87% on held-out scenes"),
}
MATRIX_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f")


class MissingBackendError(CaffeError):
    """A backend whose library is not installed."""


def import_openvino():
    """The openvino module, or one error saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise MissingBackendError(f"--backend openvino needs OpenVINO, which is not installed ({exc}); install it "
                                  f"with: {INSTALL_HINT}") from None
    return openvino


def cpu_flags() -> list[str]:
    """The CPU's matrix/vector features that matter for OpenVINO (from /proc/cpuinfo; empty where unknown)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in MATRIX_FLAGS if flag in present]
    except OSError:
        pass
    return []


def _first_line(exc: Exception) -> str:
    """The line of an OpenVINO exception that says what went wrong (its first lines only say where)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith("Exception from ")]
    return ((telling or lines or [type(exc).__name__])[0])[:300]


def _unreadable_ops(path) -> str:
    """Why OpenVINO may have refused a model: the ONNX ops in it that OpenVINO 2026.4 cannot read (the
    DomainTransform export collects each Loop step in a sequence: the reader's SequenceConcatReplacer fails)."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    found = sorted({node.op_type for node in model.graph.node} & UNREADABLE_OPS)
    if not found:
        return ""
    return (f"; the model has {', '.join(found)} nodes (DomainTransform layers export them), which OpenVINO "
            "cannot read: run it with --backend onnxruntime")


def _precision_name(value) -> str:
    """The runner's name (f32, bf16) for the element type OpenVINO reports."""
    text = value.to_string() if hasattr(value, "to_string") else str(value)
    return PRECISION_NAMES.get(text.lower(), text)


def _dims(partial_shape) -> list[int | None]:
    """A port's dimensions, an int where static (a rank OpenVINO does not know: no dimensions)."""
    if partial_shape.rank.is_dynamic:
        return []
    return [d.get_length() if d.is_static else None for d in partial_shape]


def _port_names(ports, wanted: str) -> dict[str, object]:
    """{name: port}, each port under the name the metadata uses if it has it, else its first name."""
    named = {}
    for port in ports:
        names = port.get_names()
        named[wanted if wanted in names else port.get_any_name()] = port
    return named


def _metadata(model, path) -> dict[str, object]:
    """The caffe2torch.* metadata of the ONNX file, from OpenVINO's rt_info (its `framework` entry holds the
    file's metadata_props); a model without it: the file read with onnx, weights left on disk."""
    from caffe2torch.onnx_export import decode_metadata

    try:
        framework = model.get_rt_info(["framework"]).astype(dict)
        props = {str(key): value.astype(str) for key, value in framework.items()}
    except Exception:  # noqa: BLE001 - older OpenVINO, or a model without metadata_props
        props = {}
    if props:
        return decode_metadata(props)
    from caffe2torch.onnx_export import read_onnx_metadata

    return read_onnx_metadata(path)


class OpenVinoBackend:
    """OpenVINO's CPU plugin, one infer request, latency mode; threads default to the machine's cores."""

    name = "openvino"
    model_kind = "onnx"
    precisions = tuple(PRECISION_HINTS)

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "f32"):
        if precision not in PRECISION_HINTS:
            raise CaffeError(f"unknown precision '{precision}' for OpenVINO ({', '.join(PRECISION_HINTS)})")
        ov = import_openvino()
        self.version = ov.get_version().split("-")[0]
        self.requested = precision
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError and its own types
            raise CaffeError(f"OpenVINO cannot read the ONNX model: {_first_line(exc)}{_unreadable_ops(path)}",
                             Location(str(path))) from None
        caffe_pooling(model)
        meta = _metadata(model, path)
        self.info = ModelInfo.from_metadata(meta, str(path))
        inputs = _port_names(model.inputs, self.info.input_name)
        outputs = _port_names(model.outputs, self.info.output_name)
        self.data_dim_inputs = check_graph(self.info, meta,
                                           {n: _dims(p.get_partial_shape()) for n, p in inputs.items()},
                                           {n: _dims(p.get_partial_shape()) for n, p in outputs.items()}, path)
        self.quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY",
                                     "INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1}
        hint = PRECISION_HINTS[precision]
        if hint is not None:
            config["INFERENCE_PRECISION_HINT"] = hint
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # noqa: BLE001
            raise CaffeError(f"OpenVINO cannot compile the model for the CPU: {_first_line(exc)}"
                             f"{_unreadable_ops(path)}", Location(str(path))) from None
        self.precision = _precision_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.device_name = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
        self.request = self.compiled.create_infer_request()
        self._inputs = {name: self.compiled.input(name) for name in [self.info.input_name, *self.data_dim_inputs]}
        self._output = self.compiled.output(self.info.output_name)

    def describe(self) -> str:
        """What runs, said out loud: OpenVINO's version, the CPU and its features, the precision used (and asked
        for), whether it is reduced precision."""
        flags = ", ".join(cpu_flags()) or "none of " + ", ".join(MATRIX_FLAGS)
        text = f"OpenVINO {self.version} on {self.device_name} ({flags}): computes in {self.precision}"
        if self.requested != self.precision:
            text += f" (asked for {self.requested})"
        if self.quantized:
            text += "; an int8 model: its quantised convolutions in int8 (reduced precision, opt-in)"
        if self.precision != "f32":
            text += "; bfloat16 is reduced precision (opt-in): labels differ from f32 at a few pixels"
            measured = BF16_AGREEMENT.get(self.info.model_id or "")
            if measured is not None:
                text += f" ({measured[0]:.2f}% agree for {self.info.model_id}: {measured[1]})"
                if measured[0] < 99:
                    text += ", fewer than 99%: --precision f32 is recommended for this model"
            text += "; see docs/benchmarks.md, --precision f32 for float32"
        return text

    def logits(self, batch: np.ndarray, valid: tuple[int, int] | None = None) -> np.ndarray:
        """The output for a preprocessed batch; `valid`: the image's (height, width) inside it, for the
        net's data_dim inputs (default: the whole batch)."""
        feeds = {self._inputs[self.info.input_name]: np.ascontiguousarray(batch, np.float32)}
        for name in self.data_dim_inputs:
            feeds[self._inputs[name]] = data_dim_blob(batch, valid)
        try:
            return self.request.infer(feeds, share_inputs=True, share_outputs=False)[self._output]
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError for inputs it refuses
            raise CaffeError(f"OpenVINO cannot run the model on a {batch.shape[2]}x{batch.shape[3]} input: "
                             f"{_first_line(exc)}") from None


def run_onnx_outputs(path: str | Path, inputs: Mapping[str, np.ndarray], precision: str = "f32"
                     ) -> dict[str, np.ndarray]:
    """Every output of an ONNX model as OpenVINO computes it on the CPU (deeplab-verify --backend openvino)."""
    ov = import_openvino()
    core = ov.Core()
    try:
        model = core.read_model(str(path))
        caffe_pooling(model)
        missing = [p.get_any_name() for p in model.inputs if not p.get_names() & set(inputs)]
        if missing:
            raise CaffeError(f"the inputs lack {', '.join(missing)}, which the ONNX model takes", Location(str(path)))
        config = {} if PRECISION_HINTS[precision] is None else {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]}
        compiled = core.compile_model(model, "CPU", config)
        feeds = {}
        for port in compiled.inputs:
            name = next(n for n in port.get_names() if n in inputs)
            feeds[port] = np.ascontiguousarray(inputs[name], dtype=np.float32)
        results = compiled.create_infer_request().infer(feeds, share_outputs=False)
    except CaffeError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CaffeError(f"OpenVINO cannot run the ONNX model: {_first_line(exc)}{_unreadable_ops(path)}",
                         Location(str(path))) from None
    out = {}
    for port in compiled.outputs:
        for name in port.get_names():
            out[name] = results[port]
    return out
