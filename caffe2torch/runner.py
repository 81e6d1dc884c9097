"""Inference as DeepLab's test did it, on onnxruntime or torch: preprocessing, the net's own upsampling, crop
back to the image, optional multi-scale and flip, optional dense CRF, labels.

Preprocessing (facts sheet §6): RGB → BGR, minus the per-channel mean, times `scale` (1), padded at the bottom
and right with 0 (the mean, after subtraction) to the net's crop size. An image larger than the crop size is
padded to the next size of the form 32k+1 instead (DeepLab's test would have cropped it; 8k+1 and 32k+1
sizes keep every Interp grid aligned, and MSC nets need 32k+1..32k+6). The CRF follows the offline pipeline
that produced the published numbers: unary = -logits of the top-left image region, bilateral kernel on the
original RGB image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from caffe2torch.crf import CRFParams, crf_probabilities
from caffe2torch.errors import CaffeError, Location
from caffe2torch.images import VOC_CLASSES, resize_rgb
from caffe2torch.netspec import NetSpec

DEEPLAB_MEAN_BGR = (104.008, 116.669, 122.675)


@dataclass
class ModelInfo:
    """What the runner needs to know about a model; stored in the ONNX metadata and the artifact's NetSpec."""

    input_name: str = "data"
    output_name: str = "fc8_interp"
    channel_order: str = "BGR"
    mean: list[float] = field(default_factory=lambda: list(DEEPLAB_MEAN_BGR))
    scale: float = 1.0
    crop_size: int | None = 513
    class_names: list[str] = field(default_factory=lambda: list(VOC_CLASSES))
    palette: str = "voc"
    crf_preset: str = "deeplab-v2-resnet"
    model_id: str | None = None

    def to_metadata(self) -> dict[str, object]:
        return {"input_name": self.input_name, "output_name": self.output_name, "layout": "NCHW",
                "channel_order": self.channel_order, "mean_values": self.mean, "scale": self.scale,
                "crop_size": self.crop_size, "class_names": self.class_names, "palette": self.palette,
                "crf_preset": self.crf_preset, "model_id": self.model_id}

    @classmethod
    def from_metadata(cls, meta: dict) -> ModelInfo:
        info = cls()
        for key, attr in (("input_name", "input_name"), ("output_name", "output_name"),
                          ("channel_order", "channel_order"), ("mean_values", "mean"), ("scale", "scale"),
                          ("crop_size", "crop_size"), ("class_names", "class_names"), ("palette", "palette"),
                          ("crf_preset", "crf_preset"), ("model_id", "model_id")):
            if key in meta:
                setattr(info, attr, meta[key])
        return info


def model_info(spec: NetSpec, crf_preset: str | None = None) -> ModelInfo:
    """ModelInfo from a NetSpec: the image input's data-layer transform, the first output, class count."""
    image = next((i for i in spec.inputs if i.role == "image"), spec.inputs[0] if spec.inputs else None)
    if image is None:
        raise CaffeError("the net has no inputs", Location(spec.source))
    transform = image.transform
    info = ModelInfo(input_name=image.name, output_name=spec.outputs()[0])
    mean = transform.get("mean_value")
    if mean:
        info.mean = [float(v) for v in (mean * 3 if len(mean) == 1 else mean)]
    info.scale = float(transform.get("scale", 1.0))
    crop = transform.get("crop_size") or (image.shape[2] if len(image.shape) == 4 else None)
    info.crop_size = int(crop) if crop else None
    if crf_preset:
        info.crf_preset = crf_preset
    return info


def padded_size(height: int, width: int, crop: int | None) -> tuple[int, int]:
    if crop and height <= crop and width <= crop:
        return crop, crop

    def up(size: int) -> int:
        return ((max(size, 2) - 2) // 32 + 1) * 32 + 1

    return up(height), up(width)


def preprocess(rgb: np.ndarray, info: ModelInfo) -> np.ndarray:
    """(1, 3, Hp, Wp) float32 net input for an RGB uint8 image, padded at the bottom/right with zeros."""
    height, width = rgb.shape[:2]
    pad_h, pad_w = padded_size(height, width, info.crop_size)
    image = rgb[..., ::-1] if info.channel_order.upper() == "BGR" else rgb
    data = (image.astype(np.float32) - np.asarray(info.mean, np.float32)) * np.float32(info.scale)
    batch = np.zeros((1, 3, pad_h, pad_w), dtype=np.float32)
    batch[0, :, :height, :width] = data.transpose(2, 0, 1)
    return batch


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
        self.info = ModelInfo.from_metadata(meta)
        names = [o.name for o in self.session.get_outputs()]
        if self.info.output_name not in names:
            self.info.output_name = names[0]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.info.output_name], {self.info.input_name: batch})[0]


class TorchBackend:
    def __init__(self, artifact: str | Path, threads: int | None = None):
        import torch

        from caffe2torch.artifact import load, read_metadata

        if threads:
            torch.set_num_threads(threads)
        self.net = load(artifact)
        meta = read_metadata(artifact)
        self.info = model_info(self.net.spec, meta.get("crf_preset"))
        self.info.model_id = meta.get("model_id") or None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.net.run({self.info.input_name: torch.from_numpy(batch)}, outputs=[self.info.output_name])
        return out[self.info.output_name].numpy()


def _resize_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(logits))[None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0].numpy()


def image_logits(backend, rgb: np.ndarray, scales=(1.0,), flip: bool = False, fuse: str = "max") -> np.ndarray:
    """Class scores (C, H, W) for an image: the net's output cropped to the image; with several scales or
    flip, the maps are brought back to the image size and fused by `fuse` (max or mean)."""
    height, width = rgb.shape[:2]
    maps = []
    for scale in scales:
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        scaled = rgb if (h, w) == (height, width) else resize_rgb(rgb, h, w)
        for flipped in ((False, True) if flip else (False,)):
            image = scaled[:, ::-1] if flipped else scaled
            out = backend.logits(preprocess(np.ascontiguousarray(image), backend.info))[0]
            if out.shape[-2] < h or out.shape[-1] < w:
                raise CaffeError(f"the net's output {out.shape[-2:]} is smaller than its input image ({h}, {w}): "
                                 f"is '{backend.info.output_name}' upsampled to the input size?")
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
class Segmentation:
    labels: np.ndarray
    probabilities: np.ndarray


def postprocess(logits: np.ndarray, rgb: np.ndarray, crf: CRFParams | None,
                crf_device: str | None = None) -> Segmentation:
    """Labels (and probabilities) from logits, through the dense CRF when `crf` is given (offline DeepLab
    pipeline: RGB image colours, unary -logits); pydensecrf, or the torch CRF on `crf_device`."""
    if crf is not None:
        probabilities = crf_probabilities(logits, rgb.transpose(2, 0, 1), crf, crf_device)
    else:
        probabilities = softmax(logits.astype(np.float32))
    return Segmentation(probabilities.argmax(axis=0).astype(np.uint8), probabilities)
