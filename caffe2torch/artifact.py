"""Converted artifacts: one safetensors file holding the weights and, in its metadata, the NetSpec.

Opening one runs no code (no pickle): safetensors stores raw tensors, and the net is rebuilt from the JSON
NetSpec by our own registry. Parameters shared between layers are stored once, under their owner.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from caffe2torch import __version__
from caffe2torch.errors import ArtifactError, Location
from caffe2torch.net import CaffeNet
from caffe2torch.netspec import NetSpec
from caffe2torch.util import atomic_path

FORMAT = "caffe2torch-net"
FORMAT_VERSION = "1"


def _owned_state(net: CaffeNet) -> dict[str, torch.Tensor]:
    """State dict without the duplicate entries of tied (shared) parameters."""
    state = net.state_dict()
    for layer, index in net.ties:
        module = net.module(layer)
        name = module.blob_names[index]
        state.pop(f"layers.{net.layer_keys[layer]}.{name}", None)
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_artifact(net: CaffeNet, path: str | Path, extra: dict[str, str] | None = None) -> None:
    """Write the net as a safetensors artifact (atomically)."""
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "converter_version": __version__,
        "netspec": net.spec.to_json(),
        **(extra or {}),
    }
    # save_file streams to the temporary file; nothing is serialised in memory first.
    with atomic_path(path) as tmp:
        save_file(_owned_state(net), str(tmp), metadata=metadata)


def read_metadata(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except FileNotFoundError:
        raise ArtifactError("no such file", Location(str(path))) from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"not a caffe2torch artifact (cannot read it as safetensors: {exc})",
                            Location(str(path))) from None
    if metadata.get("format") != FORMAT:
        raise ArtifactError("a safetensors file, but not a caffe2torch artifact (no net definition in it)",
                            Location(str(path)))
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"artifact format version {metadata.get('format_version')} is not supported by "
                            f"this caffe2torch ({__version__})", Location(str(path)))
    return metadata


def load(path: str | Path) -> CaffeNet:
    """A ready CaffeNet (eval mode) from an artifact: no prototxt and no caffemodel needed."""
    metadata = read_metadata(path)
    try:
        spec = NetSpec.from_json(metadata["netspec"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"corrupt net definition in the artifact: {exc}", Location(str(path))) from None
    net = CaffeNet(spec).eval()
    state = load_file(str(path))
    expected = _owned_state(net)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArtifactError(f"artifact tensors do not match its net: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}", Location(str(path)))
    net.load_state_dict(state, strict=False)
    return net

