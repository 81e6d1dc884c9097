"""PSPNet's and ICNet's Caffe (hszhao/PSPNet): DeepLab v2's fork (Interp and the DeepLab fields at 143-151,
with the same semantics) plus its own `BN` layer (bn_param = 152): four blobs of shape (1, C, 1, 1), slope,
bias, moving mean and moving variance, and at TEST time (x - mean) / sqrt(variance + eps) * slope + bias."""

from __future__ import annotations

from caffe2torch.dialects.deeplab_v2 import DEEPLAB_V2_LAYER_TYPES
from caffe2torch.dialects.registry import Dialect, register_dialect
from caffe2torch.proto import pspnet_pb2

# hszhao/PSPNet BNParameter.eps [default = 1e-5], as the float32 the field holds.
PSPNET_BN_EPS = 9.999999747378752e-06

# REGISTER_LAYER_CLASS / REGISTER_LAYER_CREATOR names of hszhao/PSPNet (798bdc9): DeepLab v2's and BN.
PSPNET_LAYER_TYPES = DEEPLAB_V2_LAYER_TYPES | {"BN"}

PSPNET = register_dialect(Dialect(
    name="pspnet",
    title="PSPNet / ICNet (hszhao/PSPNet: DeepLab v2's Caffe with BN slope/bias/mean/variance)",
    net_message=pspnet_pb2.NetParameter,
    layer_fields=("layer",),
    layer_types=PSPNET_LAYER_TYPES,
    # Above DeepLab v2's: a DeepLab v2 file knows no PSPNet name, so it stays DeepLab v2.
    priority=70,
    # eps's default written out: the BN is PSPNet's (slope, bias, mean, variance).
    param_defaults={"BN": {"bn_param": {"eps": PSPNET_BN_EPS}}},
))
