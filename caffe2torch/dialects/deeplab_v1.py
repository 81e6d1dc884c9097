"""DeepLab v1 (deeplab-public; the ICLR'15 and ICCV'15 models): `layers {}` with enum types (its own
LayerType enum: 39 is IMAGE_SEG_DATA, where stock V1 has DECONVOLUTION), `hole` for atrous convolution, and
its parameter fields at 42-59 (facts sheet section 1)."""

from __future__ import annotations

from caffe2torch.dialects.registry import Dialect, register_dialect
from caffe2torch.proto import deeplab_v1_pb2

DEEPLAB_V1 = register_dialect(Dialect(
    name="deeplab_v1",
    title="DeepLab v1 (deeplab-public: layers {} with enum types, hole)",
    net_message=deeplab_v1_pb2.NetParameter,
    layer_fields=("layers",),
    priority=10,
))
