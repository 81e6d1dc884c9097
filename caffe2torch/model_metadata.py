"""Checks of the metadata a converted model carries for the runner (ONNX metadata_props, the artifact's
runner entry), made when a model is opened, before the first image: a model file is untrusted input, and a
tampered `crop_size` would otherwise ask for a 112 GiB buffer. Each value is checked for type, finiteness and
range; the first bad one is reported with the model file and the key."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Mapping

from caffe2torch.class_names import check_class_names
from caffe2torch.crf import CRFParams, crf_preset
from caffe2torch.errors import ArtifactError, Location
from caffe2torch.input_sizes import MAX_SIDE, InputSizes

MAX_CROP = MAX_SIDE
MAX_CRF_ITERATIONS = 1000
MAX_CRF_KERNELS = 16
MAX_ABS_MEAN = 1e6
CRF_COLOURS = ("rgb", "net-input", "none")
INPUT_ROLES = ("image", "data_dim")


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def _name(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    if not value.strip() or len(value) > 256:
        raise ValueError("a name needs 1..256 characters")
    if any(unicodedata.category(c).startswith("C") for c in value):
        raise ValueError(f"{value!r} holds control characters")
    return value


def _optional(check: Callable[[object], object]) -> Callable[[object], object]:
    return lambda value: None if value is None else check(value)


def check_mean(value: object) -> list[float]:
    if not isinstance(value, list) or len(value) not in (1, 3):
        raise ValueError("must be a list of 1 or 3 numbers")
    mean = [_number(v) for v in value]
    if any(abs(v) > MAX_ABS_MEAN for v in mean):
        raise ValueError(f"values beyond +-{MAX_ABS_MEAN:g}")
    return mean * 3 if len(mean) == 1 else mean


def check_scale(value: object) -> float:
    scale = _number(value)
    if not 0 < scale <= 1e6:
        raise ValueError(f"{value!r} is not in (0, 1e6]")
    return scale


def check_crop(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CROP:
        raise ValueError(f"{value!r} is not an integer 1..{MAX_CROP}")
    return value


def check_channel_order(value: object) -> str:
    if not isinstance(value, str) or value.upper() not in ("BGR", "RGB"):
        raise ValueError(f"{value!r} is not BGR or RGB")
    return value.upper()


def check_crf_preset(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a preset name")
    crf_preset(value)  # ValueError for an unknown name
    return value


def crf_params_from_metadata(value: object) -> CRFParams:
    """CRFParams from their JSON form: types first, then crf.py's own validation."""
    if not isinstance(value, dict):
        raise ValueError("params must be an object")
    unknown = sorted(set(value) - set(CRFParams.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown CRF parameter(s) {', '.join(unknown)}")
    max_iter = value.get("max_iter", 10)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or not 0 <= max_iter <= MAX_CRF_ITERATIONS:
        raise ValueError(f"max_iter {max_iter!r} is not an integer 0..{MAX_CRF_ITERATIONS}")
    lists = {}
    for key in ("pos_xy_std", "pos_w", "bi_xy_std", "bi_rgb_std", "bi_w"):
        values = value.get(key, [])
        if not isinstance(values, list) or len(values) > MAX_CRF_KERNELS:
            raise ValueError(f"{key} must be a list of at most {MAX_CRF_KERNELS} numbers")
        lists[key] = [_number(v) for v in values]
    params = CRFParams(max_iter=max_iter, **lists)
    problems = params.validate()
    if problems:
        raise ValueError("; ".join(problems))
    return params


def check_crf_setting(value: object) -> dict:
    if not isinstance(value, dict):
        raise ValueError("must be an object")
    colours = value.get("colours")
    if colours not in CRF_COLOURS:
        raise ValueError(f"colours {colours!r} is not one of {', '.join(CRF_COLOURS)}")
    crf_params_from_metadata(value.get("params"))
    if not isinstance(value.get("output_probability", True), bool):
        raise ValueError("output_probability must be true or false")
    _name(value.get("layer", "crf"))
    return value


def check_input_names(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > 16:
        raise ValueError("must be a list of at most 16 input names")
    return [_name(v) for v in value]


def check_output_shape(value: object) -> list[int | None]:
    if not isinstance(value, list) or not 1 <= len(value) <= 8:
        raise ValueError("must be a list of 1..8 dimensions")
    for d in value:
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 1 << 31):
            raise ValueError(f"dimension {d!r} is not a positive integer")
    return value  # type: ignore[return-value]


def check_model_id(value: object) -> str:
    if not isinstance(value, str) or len(value) > 256:
        raise ValueError(f"{value!r} is not a model id")
    return value


def check_palette(value: object) -> str:
    if value != "voc":
        raise ValueError(f"{value!r} is not a known palette (voc)")
    return "voc"


def check_layout(value: object) -> str:
    if value != "NCHW":
        raise ValueError(f"{value!r}: the runner feeds NCHW")
    return "NCHW"


CHECKS: dict[str, Callable[[object], object]] = {
    "input_name": _name,
    "output_name": _name,
    "layout": check_layout,
    "channel_order": check_channel_order,
    "mean_values": check_mean,
    "scale": check_scale,
    "crop_size": _optional(check_crop),
    "class_names": check_class_names,
    "palette": check_palette,
    "crf_preset": _optional(check_crf_preset),
    "crf_setting": _optional(check_crf_setting),
    "model_id": _optional(check_model_id),
    "data_dim_inputs": check_input_names,
    "input_sizes": _optional(InputSizes.from_metadata),
    "output_shape": _optional(check_output_shape),
}


def checked_runner_metadata(meta: Mapping[str, object], source: str | None) -> dict[str, object]:
    """The runner's metadata entries, each checked (and normalised: a 1-value mean becomes 3, InputSizes
    parsed); other entries (source hashes, converter version) are left out. ArtifactError names the model
    file and the key of the first bad value."""
    out: dict[str, object] = {}
    for key, check in CHECKS.items():
        if key not in meta:
            continue
        try:
            out[key] = check(meta[key])
        except ValueError as exc:
            raise ArtifactError(f"bad model metadata '{key}': {exc}", Location(source)) from None
    if "class_names" in out and isinstance(out.get("output_shape"), list):
        shape = out["output_shape"]
        channels = shape[1] if len(shape) > 1 else None  # type: ignore[index]
        if channels is not None and channels != len(out["class_names"]):  # type: ignore[arg-type]
            raise ArtifactError(f"bad model metadata 'class_names': {len(out['class_names'])} names for an "
                                f"output with {channels} channels", Location(source))
    return out
