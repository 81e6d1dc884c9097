"""Caffe dialects, one module per fork; importing this package registers them all."""

from caffe2torch.dialects import deeplab_v1, deeplab_v2, upstream  # noqa: F401  (registered on import)
from caffe2torch.dialects.registry import DIALECTS, Dialect, detect_dialect, dialect_title, get_dialect

__all__ = ["DIALECTS", "Dialect", "detect_dialect", "dialect_title", "get_dialect"]
