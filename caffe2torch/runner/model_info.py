"""What the runner knows about a model (ModelInfo): the image input and the output, preprocessing, class names,
input sizes, the CRF setting; made from a NetSpec at conversion, stored in the model's metadata, and checked
against what a backend's model actually computes before the first image."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from caffe2torch.class_names import default_class_names
from caffe2torch.errors import ArtifactError, CaffeError, Location
from caffe2torch.images import VOC_CLASSES
from caffe2torch.in_net_crf import needed_inputs, runner_outputs
from caffe2torch.input_sizes import InputSizes, known_input_sizes
from caffe2torch.model_metadata import checked_runner_metadata
from caffe2torch.netspec import NetSpec, Shape
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
               class_names: list[str] | None = None, sizes: InputSizes | None = None,
               shapes: Mapping[str, Shape] | None = None) -> ModelInfo:
    """ModelInfo from a NetSpec: the image input's data-layer transform, the runner's output (the net's first
    output, or the scores a DenseCRF layer reads, see in_net_crf.runner_outputs), its class count, the input
    sizes the net accepts, and the CRF setting: the net's own DenseCRF layer, unless `crf_preset` is given."""
    image = next((i for i in spec.inputs if i.role == "image"), spec.inputs[0] if spec.inputs else None)
    if image is None:
        raise CaffeError("the net has no inputs", Location(spec.source))
    chosen = runner_outputs(spec, outputs, shapes)
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


def model_error(source, message: str) -> ArtifactError:
    return ArtifactError(message, Location(str(source)))


def interp_stride(input_size, output_size) -> int | None:
    """The s for which DeepLab's Interp with zoom_factor s maps an output grid back onto its input exactly:
    input − 1 = s·(output − 1) on both axes, s ≥ 2 (a stride-s net at sizes s·k + 1, DeepLab's convention:
    its test nets end with exactly this Interp). None when the output is not such a grid of the input."""
    (in_h, in_w), (out_h, out_w) = (int(d) for d in input_size), (int(d) for d in output_size)
    if out_h < 2 or out_w < 2 or (in_h - 1) % (out_h - 1) or (in_w - 1) % (out_w - 1):
        return None
    stride = (in_h - 1) // (out_h - 1)
    return stride if stride >= 2 and stride == (in_w - 1) // (out_w - 1) else None


def score_stride(info: ModelInfo) -> int | None:
    """The stride of a size-free model's scores when they are a stride-s grid of its input (a net that ends
    before DeepLab's Interp: its 'noup' and weakly-supervised deploy nets); the runner then upsamples them as
    that Interp would (runner/logits.upsample_like_interp). None for a full-size output or when unknown."""
    declared = info.output_shape
    if info.sizes is None or not info.sizes.size_free or declared is None or len(declared) != 4:
        return None
    if None in declared[2:] or tuple(declared[2:]) == tuple(info.sizes.declared):
        return None
    return interp_stride(info.sizes.declared, declared[2:])


def check_output(info: ModelInfo, shape, source) -> None:
    """A model-level check before the first image: the output is an (N, C, H, W) score map with one channel
    per class name (`shape`: the output's dimensions, an int where known)."""
    if shape is None:
        return
    if len(shape) != 4:
        shown = "x".join(str(d) if isinstance(d, int) else "N" for d in shape)
        raise model_error(source, f"the model's output '{info.output_name}' has shape {shown}, not a "
                                  "(N, C, H, W) score map, so it cannot segment images (a classifier?)")
    channels = shape[1]
    if isinstance(channels, int) and channels != len(info.class_names):
        raise model_error(source, f"bad model metadata 'class_names': {len(info.class_names)} names for an "
                                  f"output with {channels} channels")
    declared = info.output_shape
    if (info.sizes is not None and info.sizes.size_free and declared is not None and len(declared) == 4
            and None not in declared[2:] and (declared[2] < info.sizes.declared[0]  # type: ignore[operator]
                                              or declared[3] < info.sizes.declared[1])  # type: ignore[operator]
            and score_stride(info) is None):
        raise model_error(source, f"the model's output '{info.output_name}' is {declared[2]}x{declared[3]} at "
                                  f"input {info.sizes.declared[0]}x{info.sizes.declared[1]}: it does not cover the "
                                  "image (not upsampled to the input size) and is no stride grid of it (input − 1 "
                                  "= s·(output − 1), which DeepLab's Interp would upsample), so it cannot label "
                                  "every pixel")
