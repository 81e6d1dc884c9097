"""DeepLab v2 (deeplab-public-ver2; the TPAMI and CVPR'16 models): upstream-style `layer {}` with string
types and `dilation`, DeepLab's parameter fields at 143-151 (where later upstream Caffe put input_param,
crop_param, ...) and the layer types below."""

from __future__ import annotations

from caffe2torch.dialects.registry import Dialect, register_dialect
from caffe2torch.proto import deeplab_v2_pb2

# REGISTER_LAYER_CLASS / REGISTER_LAYER_CREATOR names of deeplab-public-ver2 (DrSleep mirror, 071ef5a).
DEEPLAB_V2_LAYER_TYPES = frozenset({
    "AbsVal", "Accuracy", "AdaptiveBiasChannel", "ArgMax", "BNLL", "BatchNorm", "BatchReindex", "Bias",
    "BiasChannel", "Concat", "ContrastiveLoss", "Convolution", "Data", "Deconvolution", "DenseCRF",
    "DomainTransform", "DomainTransformForwardOnly", "Dropout", "DummyData", "ELU", "Eltwise", "Embed",
    "EuclideanLoss", "Exp", "Filter", "Flatten", "HDF5Data", "HDF5Output", "HingeLoss", "Im2col", "ImageData",
    "ImageSegData", "InfogainLoss", "InnerProduct", "Interp", "LRN", "Log", "MVN", "MatRead", "MatWrite",
    "MemoryData", "MultinomialLogisticLoss", "PReLU", "Pooling", "Power", "Python", "ReLU", "Reduction",
    "Reshape", "SPP", "Scale", "SegAccuracy", "Sigmoid", "SigmoidCrossEntropyLoss", "Silence", "Slice",
    "Softmax", "SoftmaxWithLoss", "SpatialProduct", "Split", "TanH", "Threshold", "Tile", "UniqueLabel",
    "WindowData",
})

DEEPLAB_V2 = register_dialect(Dialect(
    name="deeplab_v2",
    title="DeepLab v2 (deeplab-public-ver2: layer {} with Interp/DenseCRF/... fields)",
    net_message=deeplab_v2_pb2.NetParameter,
    layer_fields=("layer",),
    layer_types=DEEPLAB_V2_LAYER_TYPES,
    priority=60,
))
