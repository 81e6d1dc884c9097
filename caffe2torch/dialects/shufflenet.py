"""ShuffleNet's Caffe (farmingyard/ShuffleNet b962444): an upstream BVLC Caffe with the `ShuffleChannel` layer
(shuffle_channel_layer.{hpp,cpp,cu}) and the caffe.proto lines its README gives: shuffle_channel_param = 164,
ShuffleChannelParameter { optional uint32 group = 1 [default = 1]; }. Its deploy files (ShuffleNet v1 g3, v2 1x)
also use `ConvolutionDepthwise`, farmingyard/caffe-mobilenet's layer (same author, merged into the same Caffe),
so this dialect registers both."""

from __future__ import annotations

from caffe2torch.dialects.registry import Dialect, register_dialect
from caffe2torch.dialects.upstream import UPSTREAM_LAYER_TYPES
from caffe2torch.proto import shufflenet_pb2

SHUFFLENET = register_dialect(Dialect(
    name="shufflenet",
    title="ShuffleNet (farmingyard/ShuffleNet: upstream Caffe with ShuffleChannel and ConvolutionDepthwise)",
    net_message=shufflenet_pb2.NetParameter,
    layer_fields=("layer", "layers"),
    layer_types=UPSTREAM_LAYER_TYPES | {"ShuffleChannel", "ConvolutionDepthwise"},
    # Above caffe-mobilenet's, which knows ConvolutionDepthwise only.
    priority=60,
))
