"""From class scores to labels: the optional dense CRF (with the setting a run asks for, or the model's own), the
labels and probabilities, and the legend deeplab-run writes beside them.

The CRF follows the offline pipeline that produced the published numbers: unary = -logits of the top-left
image region, bilateral kernel on the original RGB image; for a model whose net had its own DenseCRF layer,
the layer's parameters with the colours it saw (CRFSetting)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from caffe2torch.crf import CRFParams, crf_preset, crf_probabilities, parse_crf_overrides
from caffe2torch.images import voc_palette
from caffe2torch.model_metadata import crf_params_from_metadata
from caffe2torch.runner.model_info import DEEPLAB_MEAN_BGR, DEFAULT_CRF_PRESET, ModelInfo
from caffe2torch.runner.preprocess import net_colours


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
    if preset is not None and not preset.strip():  # `--crf-preset ""` (an unset shell variable) is no preset
        raise ValueError("an empty CRF preset name; leave --crf-preset out for the model's own setting")
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
