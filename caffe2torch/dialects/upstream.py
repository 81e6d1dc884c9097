"""Upstream BVLC Caffe (master): `layer {}` with string types, and the stock V1 `layers {}` syntax."""

from __future__ import annotations

from caffe2torch.dialects.registry import Dialect, register_dialect
from caffe2torch.proto import upstream_pb2

# REGISTER_LAYER_CLASS / REGISTER_LAYER_CREATOR names of BVLC caffe master.
UPSTREAM_LAYER_TYPES = frozenset({
    "AbsVal", "Accuracy", "ArgMax", "BNLL", "BatchNorm", "BatchReindex", "Bias", "Clip", "Concat",
    "ContrastiveLoss", "Convolution", "Crop", "Data", "Deconvolution", "Dropout", "DummyData", "ELU", "Eltwise",
    "Embed", "EuclideanLoss", "Exp", "Filter", "Flatten", "HDF5Data", "HDF5Output", "HingeLoss", "Im2col",
    "ImageData", "InfogainLoss", "InnerProduct", "Input", "LRN", "LSTM", "LSTMUnit", "Log", "MVN", "MemoryData",
    "MultinomialLogisticLoss", "PReLU", "Parameter", "Pooling", "Power", "Python", "RNN", "ReLU", "Reduction",
    "Reshape", "SPP", "Scale", "Sigmoid", "SigmoidCrossEntropyLoss", "Silence", "Slice", "Softmax",
    "SoftmaxWithLoss", "Split", "Swish", "TanH", "Threshold", "Tile", "WindowData",
})

UPSTREAM = register_dialect(Dialect(
    name="caffe",
    title="upstream BVLC Caffe",
    net_message=upstream_pb2.NetParameter,
    layer_fields=("layer", "layers"),
    layer_types=UPSTREAM_LAYER_TYPES,
    priority=50,
))
