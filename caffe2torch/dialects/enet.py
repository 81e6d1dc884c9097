"""ENet's Caffe (TimoSaemann/caffe-enet): a 2017 upstream Caffe (Input, Crop, Scale, BatchNorm, ...) with
SegNet's `BN`, `Upsample` and `DenseImageData` layers and their computations unchanged, at other field numbers:
upsample_param = 147 (upstream's later swish_param), dense_image_data_param = 46, bn_param = 45."""

from __future__ import annotations

from caffe2torch.dialects.registry import Dialect, register_dialect
from caffe2torch.proto import enet_pb2

# REGISTER_LAYER_CLASS / REGISTER_LAYER_CREATOR names of caffe-enet (22d356c).
ENET_LAYER_TYPES = frozenset({
    "AbsVal", "Accuracy", "ArgMax", "BN", "BNLL", "BatchNorm", "BatchReindex", "Bias", "Concat", "ContrastiveLoss",
    "Convolution", "Crop", "Data", "Deconvolution", "DenseImageData", "Dropout", "DummyData", "ELU", "Eltwise",
    "Embed", "EuclideanLoss", "Exp", "Filter", "Flatten", "HDF5Data", "HDF5Output", "HingeLoss", "Im2col",
    "ImageData", "InfogainLoss", "InnerProduct", "Input", "LRN", "LSTM", "LSTMUnit", "Log", "MVN", "MemoryData",
    "MultinomialLogisticLoss", "PReLU", "Parameter", "Pooling", "Power", "Python", "RNN", "ReLU", "Reduction",
    "Reshape", "SPP", "Scale", "Sigmoid", "SigmoidCrossEntropyLoss", "Silence", "Slice", "Softmax",
    "SoftmaxWithLoss", "Split", "TanH", "Threshold", "Tile", "Upsample", "WindowData",
})

ENET = register_dialect(Dialect(
    name="enet",
    title="ENet (caffe-enet: upstream Caffe with SegNet's BN, Upsample, DenseImageData)",
    net_message=enet_pb2.NetParameter,
    layer_fields=("layer",),
    layer_types=ENET_LAYER_TYPES,
    # Above upstream's: a plain upstream file (FCN's) knows nothing of ENet's, so upstream keeps it.
    priority=85,
    # bn_mode's default (LEARN: batch statistics, in every phase) written out: the BN is SegNet's.
    param_defaults={"BN": {"bn_param": {"bn_mode": "LEARN"}}},
))
