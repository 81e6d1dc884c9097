"""Caffe's pooling (= torch's ceil_mode pooling, as our ONNX export writes it) in an OpenVINO model read from
ONNX. OpenVINO's ONNX reader (measured with 2026.4) departs from ONNX Runtime and torch in two places that
Caffe nets reach; each is rewritten in the model before it is compiled:

- MaxPool with ceil_mode=1 becomes a MaxPool with rounding `ceil` (not `ceil_torch`), which keeps a last window
  that starts in the right padding: one more row or column of output than Caffe (5x5 input, kernel 3, stride 3,
  pad 1: 3x3 instead of 2x2). → `max_pool_ceil_torch`.
- AveragePool with count_include_pad=1 divides every window by the whole kernel, also a last window that hangs
  over the padded input; Caffe and torch divide by the window clipped to the padded input (9x9, kernel 3,
  stride 3, pad 1: the last row is a sum over 2 rows divided by 9 instead of 6). → `avg_pool_clipped_divisor`:
  the padding is made explicit (zeros), the pooling excludes what lies outside the padded input, and a last
  window that would start in the right padding (which torch drops) is sliced off.
"""

from __future__ import annotations

import numpy as np


def _ops():
    try:
        import openvino.opset8 as opset8
        import openvino.opset14 as opset14
    except ImportError:  # OpenVINO before 2025 keeps its opsets in openvino.runtime
        from openvino.runtime import opset8, opset14

    return opset8, opset14


def max_pool_ceil_torch(node) -> bool:
    """MaxPool rounding `ceil` → `ceil_torch` (drops a last window that starts in the right padding, as Caffe
    does). True when `node` was replaced."""
    attrs = node.get_attributes()
    if node.get_type_name() != "MaxPool" or attrs.get("rounding_type") != "ceil":
        return False
    _, opset14 = _ops()
    auto_pad = attrs.get("auto_pad", "explicit")
    replacement = opset14.max_pool(node.input_value(0), attrs["strides"], attrs.get("dilations", [1, 1]),
                                   attrs["pads_begin"], attrs["pads_end"], attrs["kernel"], "ceil_torch",
                                   None if auto_pad in ("explicit", "notset") else auto_pad,
                                   attrs.get("index_element_type", "i64"), attrs.get("axis", 0))
    replacement.set_friendly_name(node.get_friendly_name())
    for index in range(len(node.outputs())):
        node.output(index).replace(replacement.output(index))
    return True


def avg_pool_clipped_divisor(node) -> bool:
    """AvgPool that counts the padding (Caffe's AVE) → Pad with zeros, AvgPool that excludes what lies
    outside the padded input, Slice to ceil((size + pad) / stride) windows (torch's count: a last window
    starting in the right padding is dropped). True when `node` was replaced."""
    attrs = node.get_attributes()
    if node.get_type_name() != "AvgPool" or attrs.get("exclude-pad", True):
        return False
    if attrs.get("auto_pad", "explicit") not in ("explicit", "notset") or any(
            d != 1 for d in attrs.get("dilations", [1] * len(attrs["kernel"]))):
        return False  # not what our export writes
    opset8, opset14 = _ops()
    data = node.input_value(0)
    begin, end = list(attrs["pads_begin"]), list(attrs["pads_end"])
    strides, kernel = list(attrs["strides"]), list(attrs["kernel"])
    spatial = len(kernel)
    zeros = [0, 0]
    padded = opset8.pad(data, np.array(zeros + begin, np.int64), np.array(zeros + end, np.int64), "constant",
                        np.array(0, data.get_element_type().to_dtype()))
    pooled = opset14.avg_pool(padded, strides, [0] * spatial, [0] * spatial, kernel, True, "ceil_torch")
    sizes = opset8.gather(opset8.shape_of(data, "i64"), np.arange(2, 2 + spatial, dtype=np.int64),
                          np.array(0, np.int64))
    # windows starting before size + pad_begin: (size + pad_begin + stride - 1) // stride
    stop = opset8.divide(opset8.add(sizes, np.array([b + s - 1 for b, s in zip(begin, strides)], np.int64)),
                         np.array(strides, np.int64))
    sliced = opset8.slice(pooled, np.zeros(spatial, np.int64), stop, np.ones(spatial, np.int64),
                          np.arange(2, 2 + spatial, dtype=np.int64))
    sliced.set_friendly_name(node.get_friendly_name())
    node.output(0).replace(sliced.output(0))
    return True


def caffe_pooling(model) -> int:
    """Rewrite every pooling in `model` that OpenVINO would compute otherwise than Caffe; returns how many."""
    changed = 0
    for node in list(model.get_ordered_ops()):
        changed += max_pool_ceil_torch(node) or avg_pool_clipped_divisor(node)
    if changed:
        model.validate_nodes_and_infer_types()
    return changed
