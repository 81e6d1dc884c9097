"""caffe-mobilenet (farmingyard/caffe-mobilenet f7d7d13, sp2823's BVLC PR #5665): an upstream BVLC Caffe with
the `ConvolutionDepthwise` layer merged in. The repository ships only conv_dw_layer.{hpp,cpp,cu} and no schema
change: the layer reads upstream's convolution_param (caffe2torch/layers/fork_classifiers.py has its rules), so
the schema is upstream's."""

from __future__ import annotations

from caffe2torch.dialects.registry import Dialect, register_dialect
from caffe2torch.dialects.upstream import UPSTREAM_LAYER_TYPES
from caffe2torch.proto import upstream_pb2

MOBILENET = register_dialect(Dialect(
    name="mobilenet",
    title="caffe-mobilenet (farmingyard/caffe-mobilenet: upstream Caffe with ConvolutionDepthwise)",
    net_message=upstream_pb2.NetParameter,
    layer_fields=("layer", "layers"),
    layer_types=UPSTREAM_LAYER_TYPES | {"ConvolutionDepthwise"},
    # Above upstream's: a plain upstream file knows nothing of this fork's and stays upstream. Below ShuffleNet's,
    # whose Caffe has ConvolutionDepthwise too: a file with ShuffleChannel goes there.
    priority=55,
))
