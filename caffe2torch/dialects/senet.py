"""SENet's Caffe (hujie-frank/SENet 0262d43): an upstream BVLC Caffe with the `Axpy` layer (axpy_layer.{hpp,cpp,cu}:
top = a * x + y, a per channel, the squeeze-and-excitation scale fused with the residual sum) and a faster GPU
global average pooling (pooling_layer.cu, the same arithmetic). Axpy has no parameters: the schema is
upstream's."""

from __future__ import annotations

from caffe2torch.dialects.registry import Dialect, register_dialect
from caffe2torch.dialects.upstream import UPSTREAM_LAYER_TYPES
from caffe2torch.proto import upstream_pb2

SENET = register_dialect(Dialect(
    name="senet",
    title="SENet (hujie-frank/SENet: upstream Caffe with Axpy)",
    net_message=upstream_pb2.NetParameter,
    layer_fields=("layer", "layers"),
    layer_types=UPSTREAM_LAYER_TYPES | {"Axpy"},
    # Above upstream's: a plain upstream file stays upstream.
    priority=58,
))
