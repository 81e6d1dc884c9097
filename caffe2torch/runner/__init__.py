"""Inference as DeepLab's test did it, on onnxruntime, OpenVINO or torch: preprocessing, the net's own
upsampling, crop back to the image, optional multi-scale and flip, optional dense CRF, labels.

Each stage is a module: model_info (what the runner knows about a model), preprocess, logits (image → scores
through a backend's one `logits(batch, valid)` call), postprocess (CRF, labels, legend); each backend a module
of its own (onnxruntime_backend, openvino_backend, torch_backend), found by name in backends.BACKENDS.
"""

from caffe2torch.runner.backends import BACKENDS, DEFAULT_BACKEND, PRECISIONS, open_backend
from caffe2torch.runner.logits import image_logits, resize_logits
from caffe2torch.runner.model_info import (
    DEEPLAB_MEAN_BGR,
    DEFAULT_CRF_PRESET,
    ModelInfo,
    check_output,
    model_error,
    model_info,
)
from caffe2torch.runner.onnxruntime_backend import OnnxBackend
from caffe2torch.runner.openvino_backend import MissingBackendError, OpenVinoBackend
from caffe2torch.runner.postprocess import (
    CRFSetting,
    Segmentation,
    crf_image,
    crf_setting,
    legend,
    legend_json,
    postprocess,
    softmax,
)
from caffe2torch.runner.preprocess import data_dim_blob, net_colours, net_image, padded_size, preprocess
from caffe2torch.runner.torch_backend import TorchBackend, artifact_info

__all__ = [
    "BACKENDS", "DEEPLAB_MEAN_BGR", "DEFAULT_BACKEND", "DEFAULT_CRF_PRESET", "PRECISIONS", "CRFSetting",
    "MissingBackendError", "ModelInfo", "OnnxBackend", "OpenVinoBackend", "Segmentation", "TorchBackend",
    "artifact_info", "check_output", "crf_image", "crf_setting", "data_dim_blob", "image_logits", "legend",
    "legend_json", "model_error", "model_info", "net_colours", "net_image", "open_backend", "padded_size",
    "postprocess", "preprocess", "resize_logits", "softmax",
]
