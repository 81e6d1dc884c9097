"""The artifact's CaffeNet in torch (deeplab-convert's model.safetensors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caffe2torch.input_sizes import known_input_sizes
from caffe2torch.model_metadata import check_crf_preset
from caffe2torch.runner.model_info import ModelInfo, check_output, model_error, model_info
from caffe2torch.runner.preprocess import data_dim_blob
from caffe2torch.util import loads_json


def artifact_info(net, meta: dict, path) -> ModelInfo:
    """The runner's ModelInfo of an artifact: its `runner` metadata entry, checked; older artifacts: worked
    out from the net definition (with its crf_preset and model_id entries, checked)."""
    raw = meta.get("runner")
    if raw is not None:
        try:
            decoded = loads_json(raw)
        except ValueError:
            raise model_error(path, "bad model metadata 'runner': not JSON") from None
        if not isinstance(decoded, dict):
            raise model_error(path, "bad model metadata 'runner': not an object")
        return ModelInfo.from_metadata(decoded, str(path))
    preset = meta.get("crf_preset") or None
    try:
        preset = None if preset is None else check_crf_preset(preset)
    except ValueError as exc:
        raise model_error(path, f"bad model metadata 'crf_preset': {exc}") from None
    info = model_info(net.spec, preset, shapes=net.shapes.blobs)
    model_id = meta.get("model_id") or None
    if model_id is not None:
        from caffe2torch.known_models import known_models

        known = known_models().get(model_id)
        info.model_id = model_id
        if known is not None and known.class_names and len(known.class_names) == len(info.class_names):
            info.class_names = list(known.class_names)
    # What the net definition says is checked like any metadata (its crop size, mean and scale are data).
    return ModelInfo.from_metadata(info.to_metadata(), str(path))


class TorchBackend:
    """The artifact's CaffeNet, run up to the runner's output (for a net with a DenseCRF layer inside: the
    CRF's scores input; the runner's CRF stands in for the layer, as with ONNX). Computes in float32."""

    name = "torch"
    model_kind = "artifact"
    precisions = ("f32",)

    def __init__(self, artifact: str | Path, threads: int | None = None, precision: str = "f32"):
        import torch

        from caffe2torch.artifact import load, read_metadata

        self.precision = "f32"
        if threads:
            torch.set_num_threads(threads)
        meta = read_metadata(artifact)
        self.net = load(artifact)
        self.info = artifact_info(self.net, meta, artifact)
        spec = self.net.spec
        if self.info.output_name not in self.net.shapes.blobs:
            raise model_error(artifact, f"bad model metadata 'output_name': the net has no blob "
                                        f"'{self.info.output_name}'")
        roles = {i.name: i.role for i in spec.inputs}
        if roles.get(self.info.input_name) is None:
            raise model_error(artifact, f"bad model metadata 'input_name': '{self.info.input_name}' is not an "
                                        f"input of the net ({', '.join(roles)})")
        from caffe2torch.in_net_crf import needed_inputs

        needed = needed_inputs(spec, [self.info.output_name])
        self.data_dim_inputs = [n for n in needed if roles[n] == "data_dim"]
        others = [n for n in needed if n != self.info.input_name and roles[n] != "data_dim"]
        if others:
            raise model_error(artifact, f"the net needs input(s) {', '.join(others)} besides the image "
                                        f"'{self.info.input_name}', which deeplab-run cannot supply")
        # The sizes the net accepts come from the net itself, not from what its metadata says.
        self.info.sizes = known_input_sizes(spec, [self.info.output_name])
        check_output(self.info, self.net.shapes.blobs[self.info.output_name], artifact)
        from caffe2torch.onnx_export import required_layers

        self._keys = {self.net.layer_keys[name] for name in required_layers(self.net, [self.info.output_name])}

    def describe(self) -> str:
        import torch

        return f"torch {torch.__version__}, float32"

    def logits(self, batch: np.ndarray, valid: tuple[int, int] | None = None) -> np.ndarray:
        import torch

        feeds = {self.info.input_name: torch.from_numpy(batch)}
        for name in self.data_dim_inputs:
            feeds[name] = torch.from_numpy(data_dim_blob(batch, valid))
        with torch.no_grad():
            blobs = self.net._execute(feeds, only=self._keys)
        return blobs[self.info.output_name].numpy()
