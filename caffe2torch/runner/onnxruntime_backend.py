"""onnxruntime running a model.onnx (or model.int8.onnx) from deeplab-convert: the default backend."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from caffe2torch.errors import CaffeError, Location
from caffe2torch.runner.model_info import ModelInfo
from caffe2torch.runner.onnx_graph import check_graph
from caffe2torch.runner.preprocess import data_dim_blob


class OnnxBackend:
    """onnxruntime with all graph optimizations; threads default to the machine's cores. Computes in float32
    (an int8 model's quantised convolutions in int8)."""

    name = "onnxruntime"
    model_kind = "onnx"
    precisions = ("f32",)

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "f32"):
        import onnxruntime as ort

        from caffe2torch.onnx_export import decode_metadata

        self.precision = "f32"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        # Idle onnxruntime threads spin-wait by default, taking cores from the CRF worker processes that run
        # beside the network; measured: no cost to onnxruntime itself (LargeFOV 0.547 s vs 0.548 s).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CaffeError(f"cannot load the ONNX model: {exc}", Location(str(path))) from None
        try:  # onnxruntime hands strings over as UTF-8: a tampered file's bytes fail to decode here
            meta = decode_metadata(self.session.get_modelmeta().custom_metadata_map)  # no second parse of the file
            inputs = {i.name: i.shape for i in self.session.get_inputs()}
            outputs = {o.name: o.shape for o in self.session.get_outputs()}
        except UnicodeDecodeError as exc:
            raise CaffeError(f"cannot load the ONNX model: its metadata or input/output names are not UTF-8 text "
                             f"({exc.reason} at byte {exc.start}); the file is corrupt", Location(str(path))) from None
        self.info = ModelInfo.from_metadata(meta, str(path))
        self.data_dim_inputs = check_graph(self.info, meta, inputs, outputs, path)

    def describe(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__}, float32"

    def logits(self, batch: np.ndarray, valid: tuple[int, int] | None = None) -> np.ndarray:
        """The output for a preprocessed batch; `valid`: the image's (height, width) inside it, for the
        net's data_dim inputs (default: the whole batch)."""
        feeds = {self.info.input_name: batch}
        for name in self.data_dim_inputs:
            feeds[name] = data_dim_blob(batch, valid)
        try:
            return self.session.run([self.info.output_name], feeds)[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for inputs it refuses
            raise CaffeError(f"onnxruntime cannot run the model on a {batch.shape[2]}x{batch.shape[3]} input: "
                             f"{str(exc).splitlines()[0][:300]}") from None
