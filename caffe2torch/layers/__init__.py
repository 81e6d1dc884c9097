"""Layer converters, one module per family; importing this package registers them all."""

from caffe2torch.layers import (  # noqa: F401  (imported for their @register side effect)
    activation,
    blob_ops,
    conv,
    densecrf,
    domain_transform,
    eltwise,
    fork_batchnorm,
    fork_classifiers,
    interp,
    loss,
    normalization,
    pooling,
    recurrent,
    reduction,
    softmax,
    upsample,
)
from caffe2torch.layers.registry import REGISTRY, BuildContext, CaffeLayer, LayerConverter, get_converter

__all__ = ["REGISTRY", "BuildContext", "CaffeLayer", "LayerConverter", "get_converter"]
