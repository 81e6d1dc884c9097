"""SegNet's Caffe (alexgkendall/caffe-segnet): an early-2015 upstream Caffe with three layers of its own, whose
parameter fields clash with later upstream numbers: `BN` (bn_param = 45: a learned per-channel scale and shift;
bn_mode LEARN normalises by the batch, INFERENCE applies only scale and shift, into which SegNet's
compute_bn_statistics.py folds the statistics), `Upsample` (upsample_param = 137, upstream's later embed_param:
max-unpooling driven by the mask top of a MAX Pooling) and `DenseImageData` (dense_image_data_param = 138,
upstream's later tile_param: image + label pairs from a list file)."""

from __future__ import annotations

from caffe2torch.dialects.registry import Dialect, register_dialect
from caffe2torch.proto import segnet_pb2

# REGISTER_LAYER_CLASS / REGISTER_LAYER_CREATOR names of caffe-segnet (segnet-cleaned, 344c113).
SEGNET_LAYER_TYPES = frozenset({
    "AbsVal", "Accuracy", "ArgMax", "BN", "BNLL", "Concat", "ContrastiveLoss", "Convolution", "Data",
    "Deconvolution", "DenseImageData", "Dropout", "DummyData", "Eltwise", "EuclideanLoss", "Exp", "Filter",
    "Flatten", "HDF5Data", "HDF5Output", "HingeLoss", "Im2col", "ImageData", "InfogainLoss", "InnerProduct", "LRN",
    "Log", "MVN", "MemoryData", "MultinomialLogisticLoss", "PReLU", "Pooling", "Power", "Python", "ReLU",
    "Reduction", "Reshape", "SPP", "Sigmoid", "SigmoidCrossEntropyLoss", "Silence", "Slice", "Softmax",
    "SoftmaxWithLoss", "Split", "TanH", "Threshold", "Upsample", "WindowData",
})

SEGNET = register_dialect(Dialect(
    name="segnet",
    title="SegNet (caffe-segnet: BN with scale/shift, Upsample, DenseImageData)",
    net_message=segnet_pb2.NetParameter,
    layer_fields=("layer",),
    layer_types=SEGNET_LAYER_TYPES,
    # Below ENet's: a SegNet file uses no name ENet's Caffe lacks, so the two tie on SegNet's own files; an ENet
    # file (Input, Crop, ...) still goes to ENet. Both read BN and Upsample the same way.
    priority=80,
    # bn_mode's default (LEARN: batch statistics, in every phase) written out: the BN is SegNet's.
    param_defaults={"BN": {"bn_param": {"bn_mode": "LEARN"}}},
))
