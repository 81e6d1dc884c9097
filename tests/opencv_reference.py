"""OpenCV 4's Caffe importer as an independent reference: every blob of a net as cv2.dnn computes it.

OpenCV 4 (the `test` extra pins opencv-python-headless<5; OpenCV 5 dropped the importer) reads Caffe's text and
binary files with its own copy of caffe.proto and runs its own layer implementations, written independently
of Caffe and of this project. For a net and a caffemodel (written by our writer), `opencv_blobs` returns the
final value of every blob Caffe would name: for each blob, the output of the last layer that writes it (so an
in-place ReLU's result under the convolution's name, as Caffe keeps it). Layer fusion is off, so each layer's
output is that layer's alone.

Where OpenCV has no such layer, or reads one differently from its fork's source, the tests build an
OpenCV-side equivalent and say so (tests/zoo_nets.py, docs/zoo.md); the fork's source wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from caffe2torch.textproto import Scalar, TextMessage, read_text_message


def require_opencv():
    """cv2 with its Caffe importer (OpenCV 4): without it the comparison fails in CI (CI=true) and skips
    elsewhere, saying why."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is None or not hasattr(getattr(cv2, "dnn", None), "readNetFromCaffe"):
        found = "no cv2 module" if cv2 is None else f"OpenCV {cv2.__version__}, which has no Caffe importer"
        message = f"the OpenCV comparisons need opencv-python-headless<5 (the test extra); found {found}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return cv2


def _scalars(message: TextMessage, name: str) -> list[str]:
    return [f.value.text for f in message.fields if f.name == name and isinstance(f.value, Scalar)]


def blob_writers(prototxt_text: str) -> tuple[list[str], dict[str, tuple[str, int]]]:
    """(net inputs, {blob: (last layer writing it, which of its outputs)}) of a net definition (`layer {}` or V1
    `layers {}`)."""
    root = read_text_message(prototxt_text)
    inputs = _scalars(root, "input")
    writers: dict[str, tuple[str, int]] = {}
    for item in root.fields:
        if item.name not in ("layer", "layers") or not isinstance(item.value, TextMessage):  # V2 and V1 files
            continue
        name, kind = _scalars(item.value, "name")[0], _scalars(item.value, "type")[0]
        tops = _scalars(item.value, "top")
        if kind == "Input":
            inputs += tops
            continue
        for index, top in enumerate(tops):
            writers[top] = (name, index)
    return inputs, writers


def opencv_blobs(prototxt: Path, caffemodel: Path, inputs: Mapping[str, np.ndarray],
                 blobs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Every blob (or those named) as OpenCV's dnn module computes it from these files and inputs."""
    cv2 = require_opencv()
    text = Path(prototxt).read_text()
    net_inputs, writers = blob_writers(text)
    wanted = [b for b in (blobs if blobs is not None else writers) if b in writers]
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableFusion(False)
    if hasattr(net, "enableWinograd"):  # its 3x3 fast path trades accuracy for speed
        net.enableWinograd(False)
    for name in net_inputs:
        net.setInput(np.ascontiguousarray(inputs[name], dtype=np.float32), name)
    layers = list(dict.fromkeys(writers[b][0] for b in wanted))
    outputs = dict(zip(layers, net.forwardAndRetrieve(layers)))
    result = {b: np.array(outputs[writers[b][0]][writers[b][1]], dtype=np.float32) for b in wanted}
    result.update({name: np.asarray(inputs[name], dtype=np.float32) for name in net_inputs})
    return result
