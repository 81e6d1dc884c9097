"""Caffe `Python` layers: what a net definition can say about one without running its code.

A Python layer runs a class from a Python module (`python_param { module layer param_str }`) that the net's
authors shipped beside it. caffe2torch never imports or runs it. Two cases:

- at the bottom of the net (tops, no bottoms) it is a data layer, as in FCN (fcn.berkeleyvision.org:
  `voc_layers.VOCSegDataLayer` makes "data" and "label"): its tops become net inputs, with a note that its
  preprocessing is the caller's. For FCN's own VOC layers the preprocessing is known from their source (RGB to
  BGR, minus the `mean` of param_str), and kept for the runner like a Caffe data layer's transform_param;
- anywhere else (it reads blobs) it computes something only its code knows: it has no converter, so it is
  one of the layers the single UnsupportedError lists (name, type, file, line).

param_str is read with `ast.literal_eval` (literals only, never code), and only when short.
"""

from __future__ import annotations

import ast
from typing import Any

from caffe2torch.netspec import InputSpec

# param_str longer than this is not looked into (FCN's are about 150 characters).
MAX_PARAM_STR = 4096
# fcn.berkeleyvision.org voc_layers.py: both classes load an RGB image, reverse it to BGR and subtract
# param_str's `mean` (three values, BGR order).
FCN_BGR_MEAN_LAYERS = {("voc_layers", "VOCSegDataLayer"), ("voc_layers", "SBDDSegDataLayer")}


def is_python_data_layer(layer: dict[str, Any]) -> bool:
    """A Python layer with tops and no bottoms: it reads data from outside the net."""
    return layer.get("type") == "Python" and not layer.get("bottom") and bool(layer.get("top"))


def python_class(layer: dict[str, Any]) -> str:
    """`module.Class` of a Python layer, as its python_param names them."""
    param = layer.get("python_param", {})
    return f"{param.get('module', '?')}.{param.get('layer', '?')}"


def literal_param_str(text: Any) -> Any:
    """param_str as a Python literal (FCN writes dicts), or None when it is not one or is too long to read."""
    if not isinstance(text, str) or not text or len(text) > MAX_PARAM_STR:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def python_data_transform(layer: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing of a known Python data layer (FCN's VOC layers), as transform_param keys."""
    param = layer.get("python_param", {})
    if (param.get("module"), param.get("layer")) not in FCN_BGR_MEAN_LAYERS:
        return {}
    settings = literal_param_str(param.get("param_str"))
    mean = settings.get("mean") if isinstance(settings, dict) else None
    if not (isinstance(mean, tuple | list) and len(mean) == 3 and all(isinstance(v, int | float) for v in mean)):
        return {}
    return {"mean_value": [float(v) for v in mean], "channel_order": "BGR"}


def python_data_inputs(layer: dict[str, Any]) -> tuple[list[InputSpec], str]:
    """The tops of a Python data layer as net inputs (the first an image, the others plain tensors: what
    reads only a label is dropped with the losses later), and a note saying what was and was not taken."""
    tops = list(layer.get("top", []))
    transform = python_data_transform(layer)
    inputs = [InputSpec(top, (None, None, None, None), transform if index == 0 else {}, layer["name"], "Python",
                        "image" if index == 0 else "tensor")
              for index, top in enumerate(tops)]
    what = (f"its preprocessing is known from FCN's source: BGR, minus the mean {transform['mean_value']}"
            if transform else "its preprocessing is the module's own: feed the inputs as that code would")
    note = (f"Python layer '{layer['name']}' ({python_class(layer)}, line {layer.get('line')}) reads the data: its "
            f"top(s) {', '.join(tops)} are the net's inputs and its Python code is not run; {what}")
    return inputs, note
