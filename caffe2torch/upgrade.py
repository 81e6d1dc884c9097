"""Parsed message of any dialect → one normalized `NetSpec`.

Modelled on Caffe's `upgrade_proto.cpp`: the message is first turned into plain dicts (field names are shared
by all dialects), then each legacy form is rewritten by one function of the chain `UPGRADES`, in order. After
the chain nothing downstream sees dialects: types are strings, spatial parameters are [h, w] pairs, `hole` is
`dilation`, V1 `blobs_lr`/`weight_decay` are ParamSpecs, and data layers have become net inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from caffe2torch.dialects import DIALECTS
from caffe2torch.errors import Location, NetDefinitionError
from caffe2torch.netspec import DroppedLayer, InputSpec, LayerSpec, NetSpec, ParamSpec, Shape
from caffe2torch.parse import ParsedPrototxt
from caffe2torch.python_layers import is_python_data_layer, python_class, python_data_inputs

# V1 LayerType enum names (stock and DeepLab v1) → layer type strings.
V1_LAYER_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DATA": "Data",
    "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
    # DeepLab v1
    "IMAGE_SEG_DATA": "ImageSegData", "SEG_ACCURACY": "SegAccuracy", "INTERP": "Interp", "PADDING": "Padding",
    "MAT_WRITE": "MatWrite", "MAT_READ": "MatRead", "DENSE_CRF": "DenseCRF",
    "DOMINANT_CHANNEL": "DominantChannel", "BIAS_CHANNEL": "BiasChannel", "UNIQUE_LABEL": "UniqueLabel",
    "CENSOR_LABEL": "CensorLabel", "ADAPTIVE_BIAS_CHANNEL": "AdaptiveBiasChannel",
    "CHANNEL_AGGREGATOR": "ChannelAggregator", "IGNORE_OVERLAY": "IgnoreOverlay", "HISTOGRAM": "Histogram",
    "RELATIVE_ERROR": "RelativeError", "GAIN_CHANNEL": "GainChannel", "ONEHOT": "OneHot",
}

# Layers that read data from disk: at deploy time each of their tops becomes a net input.
DATA_LAYER_TYPES = {
    "Data", "ImageData", "ImageSegData", "MemoryData", "WindowData", "HDF5Data", "DummyData", "Input",
    # DeepLab's MatRead has no bottoms and one top read from .mat files (precomputed scores, e.g. to run only
    # the DenseCRF): at deploy time that top is a net input like any other.
    "MatRead",
    # SegNet's and ENet's image + label pairs from a list file (caffe-segnet dense_image_data_layer.cpp).
    "DenseImageData",
}
# Layers that only matter for training, evaluation or file output: dropped for inference, said out loud.
TRAINING_ONLY_TYPES = {
    "SoftmaxWithLoss": "loss", "EuclideanLoss": "loss", "HingeLoss": "loss", "InfogainLoss": "loss",
    "MultinomialLogisticLoss": "loss", "SigmoidCrossEntropyLoss": "loss", "ContrastiveLoss": "loss",
    "Accuracy": "metric", "SegAccuracy": "metric", "HDF5Output": "file output", "MatWrite": "file output",
"Silence": "consumes unused blobs",
    "UniqueLabel": "label-only (weak supervision)", "BiasChannel": "label-dependent (weak supervision)",
    "AdaptiveBiasChannel": "label-dependent (weak supervision)", "CensorLabel": "label-only",
    "IgnoreOverlay": "label-only", "Histogram": "statistics output", "RelativeError": "metric",
}

# Of those, the differentiable training objectives we implement: kept when a net is built for fine-tuning.
TRAINABLE_TYPES = {"SoftmaxWithLoss", "EuclideanLoss"}

SPATIAL_PARAMS = ("convolution_param", "pooling_param")


@dataclass
class RawNet:
    """A parsed net as plain dicts: what the upgrade chain rewrites."""

    name: str
    dialect: str
    layers: list[dict[str, Any]]
    net_inputs: list[str] = field(default_factory=list)
    net_input_shapes: list[list[int]] = field(default_factory=list)
    net_input_dims: list[int] = field(default_factory=list)
    # NetParameter.state: its stages and level take part in the include/exclude rules (Caffe's Net
    # constructor overrides only the phase, and adds the stages it is given).
    state: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    notes: list[str] = field(default_factory=list)

    def where(self, layer: dict[str, Any]) -> Location:
        return Location(file=self.source, line=layer.get("line"), layer=layer.get("name"),
                        layer_type=layer.get("type"))


def to_raw_net(parsed: ParsedPrototxt) -> RawNet:
    msg = parsed.net
    # A deep copy: the upgrade chain rewrites the dicts in place, and one parse may be upgraded several times.
    layers = copy.deepcopy(msg.get("layer") or msg.get("layers") or [])
    for index, layer in enumerate(layers):
        layer["line"] = parsed.layer_lines[index] if index < len(parsed.layer_lines) else None
        layer["v1"] = "layers" in msg
        layer["_source"] = parsed.source  # for errors raised where only the layer is at hand
    return RawNet(
        name=msg.get("name", ""),
        dialect=parsed.dialect,
        layers=layers,
        net_inputs=list(msg.get("input", [])),
        net_input_shapes=[list(s.get("dim", [])) for s in msg.get("input_shape", [])],
        net_input_dims=list(msg.get("input_dim", [])),
        state=dict(msg.get("state", {})),
        source=parsed.source,
        notes=list(parsed.warnings),
    )


# ---------------------------------------------------------------------------------------------------------
# The upgrade chain. Each function rewrites one legacy form, in place, and is a no-op where it does not apply.
# ---------------------------------------------------------------------------------------------------------


def upgrade_v1_layer_types(net: RawNet) -> None:
    """V1 enum types (CONVOLUTION, IMAGE_SEG_DATA, ...) → type strings."""
    for layer in net.layers:
        if layer.get("v1"):
            enum_name = layer.get("type", "NONE")
            layer["type"] = V1_LAYER_TYPES.get(enum_name, enum_name)


def upgrade_unnamed_layers(net: RawNet) -> None:
    """Caffe allows layers without a name; give each a stable one so errors and weights can refer to it."""
    seen = {layer.get("name") for layer in net.layers}
    for index, layer in enumerate(net.layers):
        if not layer.get("name"):
            name = f"{layer.get('type') or 'layer'}_{index}"
            while name in seen:
                name += "_"
            layer["name"] = name
            seen.add(name)
            net.notes.append(f"layer {index} (line {layer.get('line')}) has no name; called it '{name}'")


def upgrade_v1_param_multipliers(net: RawNet) -> None:
    """V1 `blobs_lr` / `weight_decay` / `param` (sharing names) → ParamSpec list."""
    for layer in net.layers:
        if not layer.get("v1"):
            continue
        lrs = layer.pop("blobs_lr", [])
        decays = layer.pop("weight_decay", [])
        names = layer.pop("param", [])
        count = max(len(lrs), len(decays), len(names))
        specs = []
        for i in range(count):
            spec: dict[str, Any] = {}
            if i < len(names):
                spec["name"] = names[i]
            if i < len(lrs):
                spec["lr_mult"] = lrs[i]
            if i < len(decays):
                spec["decay_mult"] = decays[i]
            specs.append(spec)
        layer["param"] = specs
        layer.pop("strict_dim", None)
        layer.pop("blob_share_mode", None)


def upgrade_hole_to_dilation(net: RawNet) -> None:
    """DeepLab v1 `hole` / `hole_h` / `hole_w` → `dilation_h` / `dilation_w` (im2col samples h*s-p+i*d: the
    same as dilation, as the v2 README says)."""
    for layer in net.layers:
        conv = layer.get("convolution_param")
        if not conv or not any(k in conv for k in ("hole", "hole_h", "hole_w")):
            continue
        has_hole = "hole" in conv
        hole = conv.pop("hole", 1)
        hole_h = conv.pop("hole_h", None)
        hole_w = conv.pop("hole_w", None)
        if (has_hole and hole_h is not None) or (hole_h is None) != (hole_w is None):
            raise NetDefinitionError("give either 'hole' alone or both 'hole_h' and 'hole_w'", net.where(layer))
        if any(k in conv for k in ("dilation", "dilation_h", "dilation_w")):
            raise NetDefinitionError("give either DeepLab v1's 'hole' or 'dilation', not both", net.where(layer))
        conv["dilation"] = [hole_h, hole_w] if hole_h is not None else [hole]


def _pair(param: dict[str, Any], name: str, default: int | None, net: RawNet, layer: dict[str, Any]) -> list[Any]:
    """Caffe's 2-D rule for kernel/pad/stride/dilation: `name_h`+`name_w`, else `name` once (both axes) or
    twice (h, w); scalar or repeated, depending on the dialect's schema. A convolution's N values (N spatial
    axes, not 2) stay a list of N (layers/conv.py reads them per axis)."""
    key = "kernel_size" if name == "kernel" else name
    h, w = param.pop(f"{name}_h", None), param.pop(f"{name}_w", None)
    value = param.pop(key, None)
    values = value if isinstance(value, list) else ([] if value is None else [value])
    if h is not None or w is not None:
        if values:
            raise NetDefinitionError(f"give either '{key}' or '{name}_h'/'{name}_w', not both", net.where(layer))
        if name != "pad" and (h is None or w is None):
            raise NetDefinitionError(f"'{name}_h' and '{name}_w' must be given together", net.where(layer))
        return [h or 0, w or 0]
    if not values:
        return [default, default]
    if len(values) == 1:
        return [values[0], values[0]]
    if len(values) == 2 or layer.get("convolution_param") is param:
        return list(values)  # a convolution may have any number of spatial axes (one value per axis)
    raise NetDefinitionError(f"'{key}' has {len(values)} values; Caffe's pooling is 2-D", net.where(layer))


def upgrade_spatial_pairs(net: RawNet) -> None:
    """Scalar, repeated and `_h`/`_w` kernel/pad/stride/dilation → `kernel`, `pad`, `stride`, `dilation`
    pairs [h, w]. Global pooling has no kernel."""
    for layer in net.layers:
        for message in SPATIAL_PARAMS:
            param = layer.get(message)
            if param is None:
                if message == "pooling_param" and layer.get("type") == "Pooling":
                    param = layer[message] = {}
                elif message == "convolution_param" and layer.get("type") in ("Convolution", "Deconvolution", "Im2col"):
                    param = layer[message] = {}
                else:
                    continue
            param["kernel"] = _pair(param, "kernel", None, net, layer)
            param["pad"] = _pair(param, "pad", 0, net, layer)
            param["stride"] = _pair(param, "stride", 1, net, layer)
            if message == "convolution_param":
                param["dilation"] = _pair(param, "dilation", 1, net, layer)


def upgrade_legacy_axes(net: RawNet) -> None:
    """Deprecated `concat_dim` / `slice_dim` → `axis`; Concat/SliceLayer::LayerSetUp refuse both at once."""
    for layer in net.layers:
        for message, legacy in (("concat_param", "concat_dim"), ("slice_param", "slice_dim")):
            param = layer.get(message)
            if param and legacy in param:
                if "axis" in param:
                    raise NetDefinitionError(f"give either {message}.axis or {legacy}, not both (Caffe refuses both)",
                                             net.where(layer))
                param["axis"] = param.pop(legacy)


def upgrade_data_transform(net: RawNet) -> None:
    """Old data layers kept scale/mean_file/crop_size/mirror in their own message: move them to
    `transform_param` (Caffe's UpgradeNetDataTransformation). DeepLab v1 `has_label: false` becomes v2's
    `label_type: NONE`."""
    for layer in net.layers:
        for message in ("data_param", "image_data_param", "window_data_param"):
            param = layer.get(message)
            if not param:
                continue
            transform = layer.setdefault("transform_param", {})
            for key in ("scale", "mean_file", "crop_size", "mirror"):
                if key in param:
                    transform.setdefault(key, param.pop(key))
        image = layer.get("image_data_param")
        if image and "has_label" in image:
            if not image.pop("has_label"):
                image["label_type"] = "NONE"
            image.pop("max_labels", None)


def upgrade_automatic_loss_tops(net: RawNet) -> None:
    """Caffe gives a loss layer without tops an automatic one; we name it after the layer, so the loss of a
    net built for fine-tuning can be asked for by name."""
    for layer in net.layers:
        if layer.get("type") in TRAINABLE_TYPES and not layer.get("top"):
            layer["top"] = [layer["name"]]


def upgrade_fork_param_defaults(net: RawNet) -> None:
    """Layer types two forks register under one name with different meanings (SegNet's BN: scale and shift;
    PSPNet's BN: slope, bias and moving statistics) get their dialect's defaults written out where the file
    leaves them unset (Dialect.param_defaults), so the layer's own parameters say which layer it is."""
    dialect = DIALECTS.get(net.dialect)
    if dialect is None:
        return
    for layer in net.layers:
        for message, defaults in dialect.param_defaults.get(layer.get("type", ""), {}).items():
            param = layer.setdefault(message, {})
            for key, value in defaults.items():
                param.setdefault(key, value)


def upgrade_pooling_ceil_mode(net: RawNet) -> None:
    """`pooling_param { ceil_mode: false }` → `round_mode: FLOOR`. BVLC Caffe pull request #3057 added a bool
    `ceil_mode` (default true, field 13) to PoolingParameter; it was never merged (master has `round_mode` at
    that number instead), but forks carry it (DenseNet-Caffe's and TSN's Caffe, OpenCV's caffe.proto), and
    their prototxts use it. Both spell the same rule: ceil_mode true is CEIL, false is FLOOR. No schema of ours
    has the field, so the parser keeps it as an unknown field; this step consumes it and says so."""
    for layer in net.layers:
        param = layer.get("pooling_param")
        if not isinstance(param, dict) or "ceil_mode" not in param:
            continue
        value = param.pop("ceil_mode")
        values = value if isinstance(value, list) else [value]
        text = str(values[-1]).strip().lower()  # a repeated optional field: the last one wins, as in protobuf
        if text not in ("true", "false", "1", "0"):
            raise NetDefinitionError(f"pooling_param.ceil_mode must be true or false, not '{values[-1]}'",
                                     net.where(layer))
        round_mode = "CEIL" if text in ("true", "1") else "FLOOR"
        if "round_mode" in param and param["round_mode"] != round_mode:
            raise NetDefinitionError(f"pooling_param gives both ceil_mode: {text} and round_mode: "
                                     f"{param['round_mode']}, which disagree", net.where(layer))
        param["round_mode"] = round_mode
        unknown = [u for u in layer.get("_unknown", []) if not u.get("field", "").endswith("pooling_param.ceil_mode")]
        if unknown:
            layer["_unknown"] = unknown
        else:
            layer.pop("_unknown", None)
        net.notes.append(f"layer '{layer.get('name')}' (line {layer.get('line')}): pooling_param.ceil_mode: {text} "
                         f"(a field of Caffe forks, from BVLC pull request #3057) read as round_mode: {round_mode}")


def upgrade_padding_params(net: RawNet) -> None:
    """DeepLab v1 PADDING: defaults made explicit so the converter reads plain numbers."""
    for layer in net.layers:
        if layer.get("type") == "Padding":
            param = layer.setdefault("padding_param", {})
            param.setdefault("pad_beg", 0)
            param.setdefault("pad_end", 0)


UPGRADES: list[Callable[[RawNet], None]] = [
    upgrade_v1_layer_types,
    upgrade_unnamed_layers,
    upgrade_v1_param_multipliers,
    upgrade_hole_to_dilation,
    upgrade_spatial_pairs,
    upgrade_legacy_axes,
    upgrade_data_transform,
    upgrade_padding_params,
    upgrade_pooling_ceil_mode,
    upgrade_fork_param_defaults,
    upgrade_automatic_loss_tops,
]


# ---------------------------------------------------------------------------------------------------------
# Phase rules
# ---------------------------------------------------------------------------------------------------------


def _rule_met(rule: dict[str, Any], phase: str, level: int, stages: set[str]) -> bool:
    if "phase" in rule and rule["phase"].lower() != phase:
        return False
    if "min_level" in rule and level < rule["min_level"]:
        return False
    if "max_level" in rule and level > rule["max_level"]:
        return False
    if any(s not in stages for s in rule.get("stage", [])):
        return False
    return not any(s in stages for s in rule.get("not_stage", []))


def layer_included(layer: dict[str, Any], phase: str, level: int = 0, stages: set[str] | None = None) -> bool:
    """Caffe's StateMeetsRule: any include rule met, or no exclude rule met, or no rules at all."""
    stages = stages or set()
    include, exclude = layer.get("include", []), layer.get("exclude", [])
    if include:
        return any(_rule_met(r, phase, level, stages) for r in include)
    return not any(_rule_met(r, phase, level, stages) for r in exclude)


def state_that_includes(layer: dict[str, Any], phase: str, level: int, stages: set[str]) -> str:
    """The command-line options under which Caffe would run a layer the current state leaves out, for the
    error that follows when a blob it makes is missing: its first include rule as `--phase P --stage S ...`
    (Caffe's NetState: the phase, plus stages the solver or the caller adds), or, for a layer an exclude rule
    removes, the state without the stages that rule names, else the other phase."""
    for rule in layer.get("include", []):
        options = [f"--phase {rule['phase'].lower()}"] if "phase" in rule else [f"--phase {phase}"]
        options += [f"--stage {s}" for s in rule.get("stage", [])]
        if rule.get("not_stage") and any(s in stages for s in rule["not_stage"]):
            options.append("without --stage " + ", ".join(s for s in rule["not_stage"] if s in stages))
        if ("min_level" in rule and level < rule["min_level"]) or ("max_level" in rule and level > rule["max_level"]):
            continue  # a level rule: no option sets the level, the file's `state { level }` does
        return " ".join(options)
    for rule in layer.get("exclude", []):  # removed because a stage is set: without it, the layer runs
        if _rule_met(rule, phase, level, stages) and rule.get("stage"):
            return f"--phase {phase} without the stage(s) {', '.join(rule['stage'])}"
    return f"--phase {'train' if phase == 'test' else 'test'}"


def declared_phases(net: RawNet) -> list[str]:
    """The phases a file names in its include/exclude rules (TEST when it names none)."""
    phases = {
        rule["phase"].lower()
        for layer in net.layers
        for rule in layer.get("include", []) + layer.get("exclude", [])
        if "phase" in rule
    }
    return sorted(phases) or ["test"]


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------


def _net_level_inputs(net: RawNet) -> list[InputSpec]:
    names = net.net_inputs
    if net.net_input_shapes:
        if len(net.net_input_shapes) != len(names):
            raise NetDefinitionError(
                f"{len(names)} net inputs but {len(net.net_input_shapes)} input_shape entries", Location(net.source)
            )
        shapes = [tuple(s) for s in net.net_input_shapes]
    elif net.net_input_dims:
        if len(net.net_input_dims) != 4 * len(names):
            raise NetDefinitionError(
                f"{len(names)} net inputs need {4 * len(names)} input_dim values, got {len(net.net_input_dims)}",
                Location(net.source),
            )
        dims = net.net_input_dims
        shapes = [tuple(dims[4 * i : 4 * i + 4]) for i in range(len(names))]
    elif names:
        shapes = [(None, None, None, None)] * len(names)
    else:
        shapes = []
    return [InputSpec(name, shape, source_type="net") for name, shape in zip(names, shapes)]


def _transform_of(layer: dict[str, Any]) -> dict[str, Any]:
    transform = dict(layer.get("transform_param", {}))
    image = layer.get("image_data_param", {})
    for key in ("ignore_label", "label_type", "is_color", "new_height", "new_width"):
        if key in image:
            transform[key] = image[key]
    if transform or layer.get("type") in ("ImageSegData", "ImageData", "Data", "WindowData", "DenseImageData"):
        transform.setdefault("channel_order", "BGR")
    return transform


def _data_layer_shapes(layer: dict[str, Any]) -> list[Shape]:
    """Top shapes of a data layer at deploy time; None where the file does not say (given by --input-shape)."""
    kind = layer["type"]
    tops = layer.get("top", [])
    transform = layer.get("transform_param", {})
    crop = transform.get("crop_size") or None
    crop_h = transform.get("crop_height") or crop
    crop_w = transform.get("crop_width") or crop
    if kind == "Input":
        shapes = [tuple(s.get("dim", [])) for s in layer.get("input_param", {}).get("shape", [])]
        if len(shapes) not in (0, 1, len(tops)):  # InputLayer::LayerSetUp's CHECK
            raise NetDefinitionError(f"input_param gives {len(shapes)} shapes for {len(tops)} top(s): give one "
                                     "shape, one per top, or none", Location(layer.get("_source"), layer.get("line"),
                                                                             layer=layer.get("name"),
                                                                             layer_type="Input"))
        if len(shapes) == 1:
            shapes = shapes * len(tops)
        return shapes + [(None,)] * (len(tops) - len(shapes))
    if kind == "DummyData":
        param = layer.get("dummy_data_param", {})
        shapes = [tuple(s.get("dim", [])) for s in param.get("shape", [])]
        if not shapes and param.get("num"):
            shapes = dummy_data_legacy_shapes(param, layer)
        if len(shapes) == 1:
            shapes = shapes * len(tops)
        return shapes + [(None,)] * (len(tops) - len(shapes))
    if kind == "MatRead":
        return [(layer.get("mat_read_param", {}).get("batch_size", 1), None, None, None)]
    if kind == "HDF5Data":
        return hdf5_data_shapes(layer)
    if kind == "DenseImageData":
        return dense_image_data_shapes(layer)
    if kind == "MemoryData":
        p = layer.get("memory_data_param", {})
        batch = p.get("batch_size")
        return [(batch, p.get("channels"), p.get("height"), p.get("width")), (batch,), (batch, 1, 1, 2)]
    image = layer.get("image_data_param", {})
    batch = image.get("batch_size", 1) if kind in ("ImageData", "ImageSegData") else None
    if kind == "Data":
        batch = layer.get("data_param", {}).get("batch_size")
    if kind == "WindowData":
        batch = layer.get("window_data_param", {}).get("batch_size")
    channels = 3 if image.get("is_color", True) else 1
    if kind == "Data":
        channels = None
    height = crop_h or image.get("new_height") or None
    width = crop_w or image.get("new_width") or None
    data = (batch, channels, height, width)
    if kind == "ImageSegData":
        # tops: data, label, data_dim (valid height and width of each image)
        return [data, (batch, 1, height, width), (batch, 1, 1, 2)][: len(tops)]
    return [data, (batch,), (batch, 1, 1, 2)][: len(tops)] + [(None,)] * max(0, len(tops) - 3)


def hdf5_data_shapes(layer: dict[str, Any]) -> list[Shape]:
    """HDF5Data's tops: one per dataset of the HDF5 files, (hdf5_data_param.batch_size, then the dataset's own
    dimensions), which only the files know (hdf5_data_layer.cpp). Its LayerSetUp refuses transform_param ("does
    not transform data"), so a crop_size says nothing about them; a fork that does transform (one that crops
    its HDF5 images) gives its crop as the spatial size, as a hint --input-shape can override."""
    batch = layer.get("hdf5_data_param", {}).get("batch_size")
    transform = layer.get("transform_param", {})
    crop = transform.get("crop_size") or None
    height, width = (transform.get("crop_height") or crop), (transform.get("crop_width") or crop)
    tops = layer.get("top", [])
    if height or width:
        return [(batch, None, height, width)] * len(tops)
    return [(batch, None, None, None)] * len(tops)


def dense_image_data_shapes(layer: dict[str, Any]) -> list[Shape]:
    """SegNet's DenseImageData tops: (batch, 3 or 1, H, W) and the label (batch, 1, H, W), H x W being
    transform_param.crop_size, else crop_height x crop_width, else new_height x new_width, else each image's."""
    param = layer.get("dense_image_data_param", {})
    crop = layer.get("transform_param", {}).get("crop_size")
    if crop:
        size = (crop, crop)
    elif param.get("crop_height"):
        size = (param.get("crop_height"), param.get("crop_width"))
    else:
        size = (param.get("new_height"), param.get("new_width"))
    height, width = (s or None for s in size)
    batch = param.get("batch_size")
    channels = 3 if param.get("is_color", True) else 1
    return [(batch, channels, height, width), (batch, 1, height, width)][: len(layer.get("top", []))]


def dummy_data_legacy_shapes(param: dict[str, Any], layer: dict[str, Any]) -> list[Shape]:
    """DummyData's legacy num/channels/height/width lists: Caffe's DummyDataLayer takes each list with one
    value (shared by every top) or one value per top, and all four present."""
    tops = len(layer.get("top", []))
    lists = {key: list(param.get(key, [])) for key in ("num", "channels", "height", "width")}
    for key, values in lists.items():
        if len(values) not in (1, tops):
            raise NetDefinitionError(f"dummy_data_param.{key} has {len(values)} value(s); give one, or one per top "
                                     f"({tops})", Location(layer.get("_source"), layer.get("line"),
                                                           layer=layer.get("name"), layer_type="DummyData"))
    return [tuple(values[i if len(values) > 1 else 0] for values in lists.values()) for i in range(tops)]


def _check_input_overrides(overrides: dict[str, Shape] | None, names: list[str], source: str | None) -> None:
    for name in overrides or {}:
        if name not in names:
            raise NetDefinitionError(
                f"--input-shape names '{name}', but the net's inputs are: {', '.join(names) or 'none'}",
                Location(source),
            )


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------


def upgrade_net(
    parsed: ParsedPrototxt,
    phase: str = "test",
    stages: set[str] | None = None,
    level: int = 0,
    input_shapes: dict[str, Shape] | None = None,
    deploy: bool = True,
) -> NetSpec:
    """Run the upgrade chain, apply phase rules, turn data layers into inputs.

    With `deploy` (the default), training-only layers (losses, metrics, file IO, label-only layers) are
    dropped and listed in `NetSpec.dropped`, and inputs nothing reads any more (e.g. `label`) are removed.
    """
    phase = phase.lower()
    if phase not in ("test", "train"):
        raise NetDefinitionError(f"phase must be 'test' or 'train', not '{phase}'", Location(parsed.source))
    net = to_raw_net(parsed)
    for upgrade in UPGRADES:
        upgrade(net)
    stages = set(stages or ()) | {str(s) for s in net.state.get("stage", [])}
    if not level and isinstance(net.state.get("level"), int):
        level = net.state["level"]

    spec = NetSpec(name=net.name, dialect=net.dialect, phase=phase, source=net.source, notes=net.notes)
    spec.inputs = _net_level_inputs(net)
    for layer in net.layers:
        if not layer_included(layer, phase, level, stages):
            state = f"{phase.upper()} phase" + (f" with stage(s) {', '.join(sorted(stages))}" if stages else "")
            spec.dropped.append(DroppedLayer(layer["name"], layer.get("type", ""), f"not in {state}",
                                             layer.get("line"), list(layer.get("top", [])),
                                             hint=state_that_includes(layer, phase, level, stages)))
            continue
        kind = layer.get("type", "")
        if is_python_data_layer(layer):
            inputs, note = python_data_inputs(layer)
            spec.inputs += inputs
            spec.notes.append(note)
            spec.dropped.append(DroppedLayer(layer["name"], kind, f"Python data layer ({python_class(layer)}): its "
                                             "tops are net inputs", layer.get("line"), list(layer.get("top", []))))
            continue
        if kind in DATA_LAYER_TYPES:
            spec.inputs += data_layer_inputs(layer)
            spec.dropped.append(DroppedLayer(layer["name"], kind, "data layer: its tops are net inputs",
                                             layer.get("line"), list(layer.get("top", []))))
            if kind == "HDF5Data" and layer.get("transform_param"):
                spec.notes.append(f"HDF5Data layer '{layer['name']}' (line {layer.get('line')}) has transform_param, "
                                  "which DeepLab's and upstream Caffe's HDF5Data refuse ('does not transform data'): "
                                  "its tops are sized by the HDF5 files; a crop size there is taken as a hint only")
            if layer.get("_unknown"):
                spec.notes.append(f"data layer '{layer['name']}' (line {layer.get('line')}): ignored field(s) no "
                                  f"known Caffe schema has: {describe_unknown(layer['_unknown'])}; they configure "
                                  "data loading, which deeplab-run/-eval do themselves")
            continue
        params = {k: v for k, v in layer.items() if k.endswith("_param") and isinstance(v, dict)}
        spec.layers.append(
            LayerSpec(
                name=layer["name"],
                type=kind,
                bottoms=list(layer.get("bottom", [])),
                tops=list(layer.get("top", [])),
                params=params,
                param_specs=[_param_spec(p) for p in layer.get("param", []) if isinstance(p, dict)],
                line=layer.get("line"),
                unknown_fields=list(layer.get("_unknown", [])),
            )
        )
    assign_input_roles(spec)
    make_layer_names_unique(spec, {str(layer.get("name")) for layer in net.layers})

    names = spec.input_names()
    _check_input_overrides(input_shapes, names, net.source)
    for inp in spec.inputs:
        if input_shapes and inp.name in input_shapes:
            inp.shape = tuple(input_shapes[inp.name])
    if deploy:
        prune_for_inference(spec)
    else:
        prune_for_training(spec)
    if spec.layers:
        used = {b for layer in spec.layers for b in layer.bottoms}
        unused = [i.name for i in spec.inputs if i.name not in used]
        if unused and len(unused) < len(spec.inputs):
            spec.inputs = [i for i in spec.inputs if i.name in used]
            spec.notes.append(f"removed input(s) no inference layer reads: {', '.join(unused)}")
    return spec


# Roles of a data layer's tops, by position: DeepLab's ImageSegData makes (data, label, data_dim), and deploy
# nets feed data_dim to a DenseCRF as the third top of a MemoryData layer (upstream's makes two tops).
IMAGE_DATA_TOP_ROLES = ("image", "label", "data_dim")
# Layers that read each image's valid (height, width) from a bottom, and which bottom (facts sheet §4, §7).
DATA_DIM_BOTTOMS = {"DenseCRF": 1, "DomainTransform": 2, "DomainTransformForwardOnly": 2}


def data_top_role(kind: str, index: int) -> str:
    """Image data layers emit (data, label, data_dim); Input, DummyData and HDF5Data emit plain tensors."""
    if kind in ("Input", "DummyData", "HDF5Data", "MatRead"):
        return "tensor"
    return IMAGE_DATA_TOP_ROLES[index] if index < len(IMAGE_DATA_TOP_ROLES) else "tensor"


def data_layer_inputs(layer: dict[str, Any]) -> list[InputSpec]:
    """Every top of a data layer as a net input with its role and the shape the layer would give it."""
    kind, tops = layer["type"], list(layer.get("top", []))
    transform = _transform_of(layer)
    shapes = _data_layer_shapes(layer)
    inputs = []
    for index, top in enumerate(tops):
        role = data_top_role(kind, index)
        shape = tuple(shapes[index]) if index < len(shapes) else (None,)
        inputs.append(InputSpec(top, shape, transform if role == "image" else {}, layer["name"], kind, role))
    return inputs


def assign_input_roles(spec: NetSpec) -> None:
    """A plain input (net-level, Input, DummyData) that a DenseCRF or DomainTransform reads as its data_dim
    bottom carries each image's valid size: give it that role (and the (N, 1, 1, 2) shape where unknown), so
    the runner can fill it from each image."""
    batch = next((i.shape[0] for i in spec.inputs if i.role == "image" and i.shape), None)
    for layer in spec.layers:
        index = DATA_DIM_BOTTOMS.get(layer.type)
        if index is None or index >= len(layer.bottoms):
            continue
        for inp in spec.inputs:
            if inp.name == layer.bottoms[index] and inp.role == "tensor":
                inp.role = "data_dim"
                if None in inp.shape or len(inp.shape) != 4:
                    inp.shape = (batch or 1, 1, 1, 2)


def make_layer_names_unique(spec: NetSpec, taken: set[str]) -> None:
    """Caffe runs layers that share a name (Net::Init does not refuse them; only weight loading and lookups by
    name see the first). Each repeat gets a unique internal name, 'conv1#2', 'conv1#3', ..., never one the file
    uses, for module keys and parameter ties; LayerSpec.caffe_name keeps the file's name, and a note says which
    layer Caffe's weight loading sees."""
    lines: dict[str, list[int | None]] = {}
    for layer in spec.layers:
        lines.setdefault(layer.name, []).append(layer.line)
    taken = set(taken) | set(lines)
    seen: dict[str, int] = {}
    for layer in spec.layers:
        seen[layer.name] = seen.get(layer.name, 0) + 1
        if seen[layer.name] == 1:
            continue
        number = seen[layer.name]
        unique = f"{layer.name}#{number}"
        while unique in taken:
            number += 1
            unique = f"{layer.name}#{number}"
        taken.add(unique)
        layer.caffe_name, layer.name = layer.name, unique
    for name, where in lines.items():
        if len(where) > 1:
            shown = ", ".join("?" if line is None else str(line) for line in where)
            spec.notes.append(f"{len(where)} layers are named '{name}' (lines {shown}); Caffe runs them all, and "
                              f"copies a caffemodel's '{name}' weights into the first only")


def describe_unknown(unknown: list[dict[str, Any]]) -> str:
    return ", ".join(f"{u['field']} (line {u['line']})" for u in unknown)


def _param_spec(raw: dict[str, Any]) -> ParamSpec:
    """Caffe's ParamSpec, the fields we use (share_mode only matters to Caffe's own solver)."""
    spec = ParamSpec()
    if "name" in raw:
        spec.name = str(raw["name"])
    for key in ("lr_mult", "decay_mult"):
        if isinstance(raw.get(key), int | float):
            setattr(spec, key, float(raw[key]))
    return spec


def _prune(spec: NetSpec, tainted: set[str], drop_reason, taint_note: str) -> None:
    """Drop each layer `drop_reason` names a reason for, then every layer that reads a tainted blob (the
    given ones, and the tops of dropped layers). A dropped layer working in place on a kept blob leaves that
    blob as it was."""
    kept: list[LayerSpec] = []
    for layer in spec.layers:
        reason = drop_reason(layer)
        if reason is None and (reads := [b for b in layer.bottoms if b in tainted]):
            reason = f"reads {', '.join(repr(b) for b in reads)}, {taint_note}"
        if reason is None:
            kept.append(layer)
            continue
        spec.dropped.append(DroppedLayer(layer.file_name, layer.type, reason, layer.line, list(layer.tops)))
        tainted.update(t for t in layer.tops if t not in layer.bottoms)
    spec.layers = kept


def prune_for_inference(spec: NetSpec) -> None:
    """Drop training-only layers, then every layer that reads a label or a blob that only a dropped layer
    makes (e.g. DeepLab's `label_shrink`, or the weak models' ArgMax over label-biased scores)."""

    def reason(layer: LayerSpec) -> str | None:
        if layer.type in TRAINING_ONLY_TYPES:
            return f"{TRAINING_ONLY_TYPES[layer.type]}: not needed for inference"
        if not layer.tops:
            return no_tops_reason(layer)
        return None

    labels = {i.name for i in spec.inputs if i.role == "label"}
    before = len(spec.dropped)
    _prune(spec, labels, reason, "which exists only for training")
    cut = [d for d in spec.dropped[before:] if d.reason.endswith("which exists only for training")]
    if cut and not spec.layers:
        first = cut[0]
        raise NetDefinitionError(
            f"nothing is left to run for inference: layer '{first.name}' ({first.type}) "
            f"{first.reason.removesuffix(', which exists only for training')}, a label or a blob made from one, and "
            f"the {len(cut) - 1} layer(s) after it read what it makes: in the {spec.phase.upper()} phase this net "
            "computes nothing from the image alone (a training net? give its deploy or test net)",
            Location(spec.source, first.line, layer=first.name, layer_type=first.type))


def no_tops_reason(layer: LayerSpec) -> str:
    """Why a layer without tops is dropped at deploy time: Caffe layers write only to their tops, so one with
    none (a visualisation or saving layer of some fork) cannot change any blob the net computes."""
    reason = "has no tops, so it cannot change any blob (a saving or display layer)"
    if layer.unknown_fields:
        reason += f"; its field(s) no known Caffe schema has were not read: {describe_unknown(layer.unknown_fields)}"
    return reason


def prune_for_training(spec: NetSpec) -> None:
    """For fine-tuning: keep the losses we implement, drop metrics, file IO and the weak-supervision layers
    (not differentiable, or not implemented) and whatever reads their outputs, saying which and why."""

    def reason(layer: LayerSpec) -> str | None:
        if layer.type in TRAINING_ONLY_TYPES and layer.type not in TRAINABLE_TYPES:
            return f"{TRAINING_ONLY_TYPES[layer.type]}: not a differentiable training layer caffe2torch builds"
        return None

    _prune(spec, set(), reason, "made by a dropped layer")


def phase_hint(spec: NetSpec, blob: str) -> str:
    """When a missing blob is made by a layer the phase rules left out (a train.prototxt read for TEST, whose
    data layer is TRAIN-only), say so and name the phase that has it."""
    makers = [d for d in spec.dropped if blob in d.tops and d.reason.startswith("not in ")]
    if not makers:
        return ""
    # the layer of the phase asked for first (a stage away), then the rest, each choice once
    makers.sort(key=lambda d: not d.hint.startswith(f"--phase {spec.phase}"))
    first = makers[0]
    others = list(dict.fromkeys(d.hint for d in makers[1:] if d.hint != first.hint))
    return (f"; it is made by layer '{first.name}' ({first.type}, line {first.line}), which the phase rules "
            f"leave out ({first.reason}): to read the net Caffe runs with that layer, give {first.hint}"
            + (f" (or {'; '.join(others)} for the other layers making it)" if others else ""))


def check_graph(spec: NetSpec) -> None:
    """Every bottom must exist when its layer runs; internal layer names are unique (upgrade_net makes repeated
    ones so); a blob has one producer. Caffe's nets are a list executed in order, so a bottom produced only by a
    later layer is a cycle or an ordering error. As in Caffe's Net::AppendTop, top i may reuse a name only in
    place: when it is also bottom i; any other top whose name already exists is "produced by multiple sources"."""
    producers: dict[str, str] = {}
    for inp in spec.inputs:
        if inp.name in producers:
            raise NetDefinitionError(f"net input '{inp.name}' is declared twice",
                                     Location(file=spec.source, layer=inp.source_layer, layer_type=inp.source_type))
        producers[inp.name] = f"net input '{inp.name}'"
    produced_later = {t for layer in spec.layers for t in layer.tops}
    seen_names: dict[str, int | None] = {}
    for layer in spec.layers:
        where = Location(file=spec.source, line=layer.line, layer=layer.file_name, layer_type=layer.type)
        if layer.name in seen_names:
            # upgrade_net makes repeated names unique (Caffe allows them); a NetSpec built otherwise must too.
            raise NetDefinitionError(f"two layers have the internal name '{layer.name}' (first at line "
                                     f"{seen_names[layer.name]}); give repeats a LayerSpec.caffe_name and a unique "
                                     "name, as upgrade.make_layer_names_unique does", where)
        seen_names[layer.name] = layer.line
        if not layer.type:
            raise NetDefinitionError("layer has no type", where)
        for bottom in layer.bottoms:
            if bottom not in producers:
                if bottom in produced_later:
                    raise NetDefinitionError(
                        f"bottom '{bottom}' is produced only by a later layer (a cycle, or layers out of order)",
                        where,
                    )
                raise NetDefinitionError(f"bottom '{bottom}' is produced by no layer and is not a net input"
                                         + phase_hint(spec, bottom), where)
        for index, top in enumerate(layer.tops):
            in_place = index < len(layer.bottoms) and layer.bottoms[index] == top
            if top in producers and not in_place:
                first = producers[top]
                raise NetDefinitionError(
                    f"top '{top}' is produced by multiple sources (already by {first}); only top {index} may "
                    f"reuse a name, in place, when it is also bottom {index}", where)
            if not in_place:
                producers[top] = f"layer '{layer.file_name}'" + (f" (line {layer.line})" if layer.line else "")
