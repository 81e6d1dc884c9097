"""Caffe dialects, one module per fork; importing this package registers them all."""

# Registered on import; segnet, enet and pspnet are the segmentation zoo's forks (docs/zoo.md).
from caffe2torch.dialects import deeplab_v1, deeplab_v2, enet, pspnet, segnet, upstream  # noqa: F401
from caffe2torch.dialects.registry import DIALECTS, Dialect, detect_dialect, dialect_title, get_dialect

__all__ = ["DIALECTS", "Dialect", "detect_dialect", "dialect_title", "get_dialect"]
