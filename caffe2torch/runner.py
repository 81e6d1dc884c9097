"""Inference as DeepLab's test did it, on onnxruntime or torch: preprocessing, the net's own upsampling, crop
back to the image, optional multi-scale and flip, optional dense CRF, labels.

Preprocessing (facts sheet §6): RGB → BGR, minus the per-channel mean, times `scale` (1), padded at the bottom
and right with 0 (the mean, after subtraction) to the net's crop size. An image larger than the crop size is
padded to the next size of the form 32k+1 that the net accepts instead (DeepLab's test would have cropped it;
8k+1 and 32k+1 sizes keep every Interp grid aligned, and MSC nets need 32k+1..32k+6). A net that runs at one
size only (input_sizes.py) gets the image resized to that size, and its scores are resized back. Net inputs
with the role data_dim get each image's valid (height, width).

The CRF follows the offline pipeline that produced the published numbers: unary = -logits of the top-left
image region, bilateral kernel on the original RGB image; for a model whose net had its own DenseCRF layer,
the layer's parameters with the colours it saw (CRFSetting).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from caffe2torch.class_names import default_class_names
from caffe2torch.crf import CRFParams, crf_preset, crf_probabilities, parse_crf_overrides
from caffe2torch.errors import ArtifactError, CaffeError, Location
from caffe2torch.images import VOC_CLASSES, resize_rgb, voc_palette
from caffe2torch.in_net_crf import needed_inputs, runner_outputs
from caffe2torch.input_sizes import InputSizes, known_input_sizes
from caffe2torch.model_metadata import check_crf_preset, checked_runner_metadata, crf_params_from_metadata
from caffe2torch.netspec import NetSpec
from caffe2torch.shapes import infer_shapes

DEEPLAB_MEAN_BGR = (104.008, 116.669, 122.675)
DEFAULT_CRF_PRESET = "deeplab-v2-resnet"


@dataclass
class ModelInfo:
    """What the runner needs to know about a model; stored in the ONNX metadata and in the artifact's metadata
    (its `runner` entry), and checked when a model is opened (model_metadata.py)."""

    input_name: str = "data"
    output_name: str = "fc8_interp"
    channel_order: str = "BGR"
    mean: list[float] = field(default_factory=lambda: list(DEEPLAB_MEAN_BGR))
    scale: float = 1.0
    crop_size: int | None = 513
    class_names: list[str] = field(default_factory=lambda: list(VOC_CLASSES))
    palette: str = "voc"
    # The CRF setting used when a run names none: the net's own DenseCRF layer (crf_setting: layer, params,
    # colours, output_probability) when it has one, else the preset.
    crf_preset: str | None = DEFAULT_CRF_PRESET
    crf_setting: dict | None = None
    model_id: str | None = None
    # Inputs that take each image's valid (height, width) as a (N, 1, 1, 2) float32 blob (DeepLab's data_dim).
    data_dim_inputs: list[str] = field(default_factory=list)
    # The input sizes the net accepts; None: any size (models converted before this was recorded).
    sizes: InputSizes | None = None
    # The output's shape at the declared input size (None: unknown).
    output_shape: list[int | None] | None = None

    def to_metadata(self) -> dict[str, object]:
        return {"input_name": self.input_name, "output_name": self.output_name, "layout": "NCHW",
                "channel_order": self.channel_order, "mean_values": self.mean, "scale": self.scale,
                "crop_size": self.crop_size, "class_names": self.class_names, "palette": self.palette,
                "crf_preset": self.crf_preset, "crf_setting": self.crf_setting, "model_id": self.model_id,
                "data_dim_inputs": self.data_dim_inputs,
                "input_sizes": None if self.sizes is None else self.sizes.to_metadata(),
                "output_shape": self.output_shape}

    @classmethod
    def from_metadata(cls, meta: dict, source: str | None = None) -> ModelInfo:
        """From a model's metadata, every value checked (ArtifactError naming `source` and the key)."""
        checked = checked_runner_metadata(meta, source)
        info = cls()
        for key, attr in (("input_name", "input_name"), ("output_name", "output_name"),
                          ("channel_order", "channel_order"), ("mean_values", "mean"), ("scale", "scale"),
                          ("crop_size", "crop_size"), ("class_names", "class_names"), ("palette", "palette"),
                          ("crf_preset", "crf_preset"), ("crf_setting", "crf_setting"), ("model_id", "model_id"),
                          ("data_dim_inputs", "data_dim_inputs"), ("input_sizes", "sizes"),
                          ("output_shape", "output_shape")):
            if key in checked:
                setattr(info, attr, checked[key])
        if info.crf_preset is None and info.crf_setting is None:
            info.crf_preset = DEFAULT_CRF_PRESET
        return info


def model_info(spec: NetSpec, crf_preset: str | None = None, outputs: list[str] | None = None,
               class_names: list[str] | None = None, sizes: InputSizes | None = None) -> ModelInfo:
    """ModelInfo from a NetSpec: the image input's data-layer transform, the runner's output (the net's first
    output, or the scores a DenseCRF layer reads, see in_net_crf.runner_outputs), its class count, the input
    sizes the net accepts, and the CRF setting: the net's own DenseCRF layer, unless `crf_preset` is given."""
    image = next((i for i in spec.inputs if i.role == "image"), spec.inputs[0] if spec.inputs else None)
    if image is None:
        raise CaffeError("the net has no inputs", Location(spec.source))
    chosen = runner_outputs(spec, outputs)
    transform = image.transform
    info = ModelInfo(input_name=image.name, output_name=chosen.outputs[0])
    mean = transform.get("mean_value")
    if mean:
        info.mean = [float(v) for v in (mean * 3 if len(mean) == 1 else mean)]
    info.scale = float(transform.get("scale", 1.0))
    crop = transform.get("crop_size") or (image.shape[2] if len(image.shape) == 4 else None)
    info.crop_size = int(crop) if crop else None
    if crf_preset or chosen.crf is None:
        info.crf_preset = crf_preset or ("v1" if spec.dialect == "deeplab_v1" else "v2")
    else:
        info.crf_preset, info.crf_setting = None, chosen.crf.to_metadata()
    roles = {i.name: i.role for i in spec.inputs}
    info.data_dim_inputs = [n for n in needed_inputs(spec, chosen.outputs) if roles.get(n) == "data_dim"]
    shape = infer_shapes(spec, check=False).blobs.get(info.output_name)
    info.output_shape = None if shape is None or None in shape else [int(d) for d in shape]
    channels = shape[1] if shape is not None and len(shape) > 1 else None
    info.class_names = list(class_names) if class_names else default_class_names(channels)
    info.sizes = sizes or known_input_sizes(spec, chosen.outputs)
    return info


def padded_size(height: int, width: int, crop: int | None, sizes: InputSizes | None = None) -> tuple[int, int]:
    """The net input size for an image: the crop size when the image fits (DeepLab's test), else, per side,
    the next 32k+1 size the net accepts; a fixed-size net's own size."""
    if sizes is not None and not sizes.size_free:
        return sizes.declared
    if crop and height <= crop and width <= crop and (sizes is None or sizes.accepts(crop, crop)):
        return crop, crop
    if sizes is not None and sizes.height is not None and sizes.width is not None:
        return sizes.height.at_least(height), sizes.width.at_least(width)

    def up(size: int) -> int:
        return ((max(size, 2) - 2) // 32 + 1) * 32 + 1

    return up(height), up(width)


def net_image(rgb: np.ndarray, info: ModelInfo) -> np.ndarray:
    """The image as the net takes it: resized (bilinear) to the size of a net that runs at one size only,
    unchanged otherwise."""
    if info.sizes is not None and not info.sizes.size_free and rgb.shape[:2] != info.sizes.declared:
        return resize_rgb(rgb, *info.sizes.declared)
    return rgb


def net_colours(rgb: np.ndarray, info: ModelInfo) -> np.ndarray:
    """(H, W, 3) float32: the image as the net's data blob holds it (channel order, minus the mean, times
    scale)."""
    image = rgb[..., ::-1] if info.channel_order.upper() == "BGR" else rgb
    return (image.astype(np.float32) - np.asarray(info.mean, np.float32)) * np.float32(info.scale)


def preprocess(rgb: np.ndarray, info: ModelInfo) -> np.ndarray:
    """(1, 3, Hp, Wp) float32 net input for an RGB uint8 image, padded at the bottom/right with zeros (a
    fixed-size net's input: the image resized to its size)."""
    rgb = net_image(rgb, info)
    height, width = rgb.shape[:2]
    pad_h, pad_w = padded_size(height, width, info.crop_size, info.sizes)
    batch = np.zeros((1, 3, pad_h, pad_w), dtype=np.float32)
    batch[0, :, :height, :width] = net_colours(rgb, info).transpose(2, 0, 1)
    return batch


def data_dim_blob(batch: np.ndarray, valid: tuple[int, int] | None) -> np.ndarray:
    """DeepLab's data_dim for a batch: each image's valid (height, width), shape (N, 1, 1, 2) float32."""
    height, width = valid if valid is not None else batch.shape[2:]
    return np.tile(np.asarray([height, width], np.float32).reshape(1, 1, 1, 2), (batch.shape[0], 1, 1, 1))


def _model_error(source, message: str) -> ArtifactError:
    return ArtifactError(message, Location(str(source)))


def _check_output(info: ModelInfo, shape, source) -> None:
    """A model-level check before the first image: the output is an (N, C, H, W) score map with one channel
    per class name."""
    if shape is None:
        return
    if len(shape) != 4:
        shown = "x".join(str(d) if isinstance(d, int) else "N" for d in shape)
        raise _model_error(source, f"the model's output '{info.output_name}' has shape {shown}, not a "
                                   "(N, C, H, W) score map, so it cannot segment images (a classifier?)")
    channels = shape[1]
    if isinstance(channels, int) and channels != len(info.class_names):
        raise _model_error(source, f"bad model metadata 'class_names': {len(info.class_names)} names for an "
                                   f"output with {channels} channels")
    declared = info.output_shape
    if (info.sizes is not None and info.sizes.size_free and declared is not None and len(declared) == 4
            and None not in declared[2:] and (declared[2] < info.sizes.declared[0]  # type: ignore[operator]
                                              or declared[3] < info.sizes.declared[1])):  # type: ignore[operator]
        raise _model_error(source, f"the model's output '{info.output_name}' is {declared[2]}x{declared[3]} at "
                                   f"input {info.sizes.declared[0]}x{info.sizes.declared[1]}: it does not cover the "
                                   "image (not upsampled to the input size), so it cannot label every pixel")


class OnnxBackend:
    """onnxruntime with all graph optimizations; threads default to the machine's cores."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        from caffe2torch.onnx_export import decode_metadata

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
        meta = decode_metadata(self.session.get_modelmeta().custom_metadata_map)  # no second parse of the file
        self.info = ModelInfo.from_metadata(meta, str(path))
        self._check_graph(path, meta)

    def _check_graph(self, path, meta: dict) -> None:
        """The metadata against the graph: names, extra inputs, output rank and channels, fixed sizes."""
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if self.info.input_name not in inputs:
            if "input_name" in meta or len(inputs) != 1:
                raise _model_error(path, f"bad model metadata 'input_name': '{self.info.input_name}' is not an "
                                         f"input of the model ({', '.join(inputs)})")
            self.info.input_name = next(iter(inputs))
        if self.info.output_name not in outputs:
            if "output_name" in meta:
                raise _model_error(path, f"bad model metadata 'output_name': '{self.info.output_name}' is not an "
                                         f"output of the model ({', '.join(outputs)})")
            self.info.output_name = next(iter(outputs))
        if "data_dim_inputs" not in meta:  # older models: recognise data_dim by its shape
            self.info.data_dim_inputs = [name for name, i in inputs.items() if name != self.info.input_name
                                         and list(i.shape[1:]) == [1, 1, 2]]
        others = [n for n in inputs if n != self.info.input_name and n not in self.info.data_dim_inputs]
        if others:
            raise _model_error(path, f"the model takes input(s) {', '.join(others)} besides the image "
                                     f"'{self.info.input_name}', which deeplab-run cannot supply")
        self.data_dim_inputs = [n for n in self.info.data_dim_inputs if n in inputs]
        _check_output(self.info, outputs[self.info.output_name].shape, path)
        image_shape = inputs[self.info.input_name].shape
        if len(image_shape) != 4:
            raise _model_error(path, f"the model's image input has shape {image_shape}, not (N, 3, H, W)")
        if all(isinstance(d, int) for d in image_shape[2:]):  # an export with fixed height and width
            declared = (image_shape[2], image_shape[3])
            if self.info.sizes is None:
                from caffe2torch.input_sizes import fixed_sizes

                self.info.sizes = fixed_sizes(*declared)
            elif self.info.sizes.size_free or self.info.sizes.declared != declared:
                raise _model_error(path, f"bad model metadata 'input_sizes': the model's input is fixed at "
                                         f"{declared[0]}x{declared[1]}")

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


def _artifact_info(net, meta: dict, path) -> ModelInfo:
    """The runner's ModelInfo of an artifact: its `runner` metadata entry, checked; older artifacts: worked
    out from the net definition (with its crf_preset and model_id entries, checked)."""
    raw = meta.get("runner")
    if raw is not None:
        try:
            decoded = json.loads(raw)
        except ValueError:
            raise _model_error(path, "bad model metadata 'runner': not JSON") from None
        if not isinstance(decoded, dict):
            raise _model_error(path, "bad model metadata 'runner': not an object")
        return ModelInfo.from_metadata(decoded, str(path))
    preset = meta.get("crf_preset") or None
    try:
        preset = None if preset is None else check_crf_preset(preset)
    except ValueError as exc:
        raise _model_error(path, f"bad model metadata 'crf_preset': {exc}") from None
    info = model_info(net.spec, preset)
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
    CRF's scores input; the runner's CRF stands in for the layer, as with ONNX)."""

    def __init__(self, artifact: str | Path, threads: int | None = None):
        import torch

        from caffe2torch.artifact import load, read_metadata

        if threads:
            torch.set_num_threads(threads)
        meta = read_metadata(artifact)
        self.net = load(artifact)
        self.info = _artifact_info(self.net, meta, artifact)
        spec = self.net.spec
        if self.info.output_name not in self.net.shapes.blobs:
            raise _model_error(artifact, f"bad model metadata 'output_name': the net has no blob "
                                         f"'{self.info.output_name}'")
        roles = {i.name: i.role for i in spec.inputs}
        if roles.get(self.info.input_name) is None:
            raise _model_error(artifact, f"bad model metadata 'input_name': '{self.info.input_name}' is not an "
                                         f"input of the net ({', '.join(roles)})")
        needed = needed_inputs(spec, [self.info.output_name])
        self.data_dim_inputs = [n for n in needed if roles[n] == "data_dim"]
        others = [n for n in needed if n != self.info.input_name and roles[n] != "data_dim"]
        if others:
            raise _model_error(artifact, f"the net needs input(s) {', '.join(others)} besides the image "
                                         f"'{self.info.input_name}', which deeplab-run cannot supply")
        # The sizes the net accepts come from the net itself, not from what its metadata says.
        self.info.sizes = known_input_sizes(spec, [self.info.output_name])
        _check_output(self.info, self.net.shapes.blobs[self.info.output_name], artifact)
        from caffe2torch.onnx_export import required_layers

        self._keys = {self.net.layer_keys[name] for name in required_layers(self.net, [self.info.output_name])}

    def logits(self, batch: np.ndarray, valid: tuple[int, int] | None = None) -> np.ndarray:
        import torch

        feeds = {self.info.input_name: torch.from_numpy(batch)}
        for name in self.data_dim_inputs:
            feeds[name] = torch.from_numpy(data_dim_blob(batch, valid))
        with torch.no_grad():
            blobs = self.net._execute(feeds, only=self._keys)
        return blobs[self.info.output_name].numpy()


def _resize_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(logits))[None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0].numpy()


def image_logits(backend, rgb: np.ndarray, scales=(1.0,), flip: bool = False, fuse: str = "max") -> np.ndarray:
    """Class scores (C, H, W) for an image: the net's output cropped to the image (a fixed-size net: the
    image resized to the net's size, the scores resized back, both bilinear); with several scales or flip,
    the maps are brought back to the image size and fused by `fuse` (max or mean)."""
    height, width = rgb.shape[:2]
    info = backend.info
    fixed = info.sizes is not None and not info.sizes.size_free
    maps = []
    for scale in scales:
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        scaled = rgb if (h, w) == (height, width) else resize_rgb(rgb, h, w)
        for flipped in ((False, True) if flip else (False,)):
            image = np.ascontiguousarray(scaled[:, ::-1] if flipped else scaled)
            valid = info.sizes.declared if fixed else (h, w)
            out = backend.logits(preprocess(image, info), valid)[0]
            if fixed:
                out = _resize_logits(out, h, w) if out.shape[-2:] != (h, w) else out
            elif out.shape[-2] < h or out.shape[-1] < w:
                raise CaffeError(f"the net's output {out.shape[-2:]} is smaller than its input image ({h}, {w}): "
                                 f"is '{info.output_name}' upsampled to the input size?")
            out = out[:, :h, :w]
            if flipped:
                out = out[:, :, ::-1]
            maps.append(out if (h, w) == (height, width) else _resize_logits(out, height, width))
    if len(maps) == 1:
        return np.ascontiguousarray(maps[0])
    stack = np.stack(maps)
    return stack.max(axis=0) if fuse == "max" else stack.mean(axis=0)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    return shifted / shifted.sum(axis=0, keepdims=True)


@dataclass
class CRFSetting(CRFParams):
    """CRF parameters plus the colours the bilateral kernel sees:
    - "rgb": the image's RGB uint8 values, as DeepLab's offline pipeline (dense_inference on the PPM) that
      produced the published numbers; every preset uses these;
    - "net-input": the net's data blob (channel order, minus `mean`, times `scale`) over the image region,
      as DeepLab's in-net DenseCRF layer sees it; the setting taken from such a layer uses these, so the
      runner's CRF and the layer give the same labels;
    - "none": no bilateral kernel (a DenseCRF layer without the data bottom)."""

    colours: str = "rgb"
    channel_order: str = "BGR"
    mean: list[float] = field(default_factory=lambda: list(DEEPLAB_MEAN_BGR))
    scale: float = 1.0
    source: str = ""


def crf_setting(info: ModelInfo, preset: str | None = None, overrides: str = "") -> CRFSetting:
    """The CRF setting of a run: the preset asked for (RGB colours), else the model's own (the net's DenseCRF
    layer with the colours it saw, or the model's preset), with `overrides` ("bi_w=4,max_iter=5") applied.
    ValueError for an unknown preset or a bad override."""
    if preset or info.crf_setting is None:
        name = preset or info.crf_preset or DEFAULT_CRF_PRESET
        base, colours, source = crf_preset(name), "rgb", f"preset {name}"
    else:
        base = crf_params_from_metadata(info.crf_setting["params"])
        colours, source = info.crf_setting["colours"], f"the net's DenseCRF layer '{info.crf_setting['layer']}'"
    base = parse_crf_overrides(base, overrides)  # on the parameters only: colours are the setting's
    return CRFSetting(**asdict(base), colours=colours, channel_order=info.channel_order, mean=list(info.mean),
                      scale=info.scale, source=source)


def crf_image(rgb: np.ndarray, crf: CRFParams) -> np.ndarray | None:
    """(3, H, W) colours for the CRF's bilateral kernel, as the setting says (CRFSetting); plain CRFParams: RGB."""
    colours = getattr(crf, "colours", "rgb")
    if colours == "none":
        return None
    if colours == "net-input":
        return net_colours(rgb, crf).transpose(2, 0, 1)  # type: ignore[arg-type]
    return rgb.transpose(2, 0, 1)


@dataclass
class Segmentation:
    labels: np.ndarray
    probabilities: np.ndarray


def postprocess(logits: np.ndarray, rgb: np.ndarray, crf: CRFParams | None,
                crf_device: str | None = None) -> Segmentation:
    """Labels (and probabilities) from logits, through the dense CRF when `crf` is given (unary -logits,
    colours as the setting says, see CRFSetting); pydensecrf, or the torch CRF on `crf_device`."""
    if crf is not None:
        probabilities = crf_probabilities(logits, crf_image(rgb, crf), crf, crf_device)
    else:
        probabilities = softmax(logits.astype(np.float32))
    return Segmentation(probabilities.argmax(axis=0).astype(np.uint8), probabilities)


def legend(info: ModelInfo) -> list[dict[str, object]]:
    """Label value, class name and palette colour of each class, for the PNGs deeplab-run writes."""
    palette = voc_palette()
    return [{"label": i, "name": name, "rgb": [int(c) for c in palette[i]]} for i, name in enumerate(info.class_names)]


def legend_json(info: ModelInfo) -> str:
    """The legend as JSON text, one class a line."""
    return "[\n" + ",\n".join(" " + json.dumps(entry) for entry in legend(info)) + "\n]\n"
