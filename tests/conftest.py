"""Shared fixtures: the ../shared ground truth (required in CI), and small nets built from prototxt text."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from caffe2torch.caffemodel import WeightsLayer, write_caffemodel
from caffe2torch.net import CaffeNet, build_net
from caffe2torch.netspec import NetSpec
from caffe2torch.parse import parse_prototxt_text
from caffe2torch.upgrade import upgrade_net

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAFFE2TORCH_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
CORPUS = SHARED / "corpus"


def require_shared(path: Path) -> Path:
    """The shared ground truth: a missing file fails in CI (CI=true) and skips elsewhere."""
    if not path.exists():
        message = f"{path} is missing (the ../shared ground truth beside the checkout)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def reference_cases() -> list[str]:
    if not REFERENCE.exists():
        return ["<missing>"]
    return sorted(p.parent.name for p in REFERENCE.glob("*/case.json"))


def corpus_files() -> list[str]:
    if not CORPUS.exists():
        return ["<missing>"]
    return sorted(str(p.relative_to(CORPUS)) for p in CORPUS.glob("*/*/*.prototxt"))


def spec_from_text(text: str, **kwargs) -> NetSpec:
    return upgrade_net(parse_prototxt_text(text, source="test.prototxt"), **kwargs)


def net_from_text(text: str, **kwargs) -> CaffeNet:
    return build_net(spec_from_text(text, **kwargs))


def run_net(net: CaffeNet, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        blobs = net.run({k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in inputs.items()}, all_blobs=True)
    return {k: v.numpy() for k, v in blobs.items()}


def write_net_files(folder: Path, text: str, name: str = "tiny") -> tuple[Path, Path]:
    """`name`.prototxt with `text` and `name`.caffemodel with random weights for it, in `folder`."""
    prototxt = folder / f"{name}.prototxt"
    prototxt.write_text(text)
    caffemodel = folder / f"{name}.caffemodel"
    write_random_weights(net_from_text(text), caffemodel)
    return prototxt, caffemodel


def write_random_weights(net: CaffeNet, path: Path, dialect: str = "v2", seed: int = 0) -> dict[str, list]:
    """Write a caffemodel with random blobs of the right shapes for `net` using our writer."""
    rng = np.random.default_rng(seed)
    layers, blobs_by_layer = [], {}
    for info in net.shapes.layers:
        if not info.blob_shapes:
            continue
        blobs = [rng.standard_normal(tuple(s)).astype(np.float32) for s in info.blob_shapes]
        if info.type == "BatchNorm":
            blobs[1] = np.abs(blobs[1]) + 0.5
            blobs[2] = np.array([0.37], np.float32)
        blobs_by_layer[info.name] = blobs
        layers.append(WeightsLayer(info.name, info.type, blobs))
    write_caffemodel(path, layers, name=net.spec.name, dialect=dialect)
    return blobs_by_layer
