"""Caffe dialects, one module per fork; importing this package registers them all."""

# Registered on import; segnet, enet and pspnet are the segmentation zoo's forks (docs/zoo.md).
# depthwise, mobilenet, shufflenet and senet are the later classifiers' forks (README "Classifiers").
from caffe2torch.dialects import (  # noqa: F401
    deeplab_v1,
    deeplab_v2,
    depthwise,
    enet,
    mobilenet,
    pspnet,
    segnet,
    senet,
    shufflenet,
    upstream,
)
from caffe2torch.dialects.registry import DIALECTS, Dialect, detect_dialect, dialect_title, get_dialect

__all__ = ["DIALECTS", "Dialect", "detect_dialect", "dialect_title", "get_dialect"]
