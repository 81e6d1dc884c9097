"""DepthwiseConvolution's forks (yonghenglh6/DepthwiseConvolution, and the MobileNet Caffe ports that carry its
layer): an upstream BVLC Caffe with a `DepthwiseConvolution` layer over upstream's convolution_param, no schema
change (caffe2torch/layers/fork_classifiers.py has its rules), so the schema is upstream's."""

from __future__ import annotations

from caffe2torch.dialects.registry import Dialect, register_dialect
from caffe2torch.dialects.upstream import UPSTREAM_LAYER_TYPES
from caffe2torch.proto import upstream_pb2

DEPTHWISE = register_dialect(Dialect(
    name="depthwise",
    title="DepthwiseConvolution fork (yonghenglh6/DepthwiseConvolution: upstream Caffe with DepthwiseConvolution)",
    net_message=upstream_pb2.NetParameter,
    layer_fields=("layer", "layers"),
    layer_types=UPSTREAM_LAYER_TYPES | {"DepthwiseConvolution"},
    # Above upstream's (a plain upstream file stays upstream), beside caffe-mobilenet's.
    priority=54,
))
