"""Converted artifacts: one safetensors file holding the weights and, in its metadata, the NetSpec.

Opening one runs no code (no pickle): safetensors stores raw tensors, and the net is rebuilt from the JSON
NetSpec by our own registry. Parameters shared between layers are stored once, under their owner.

Loading trusts nothing in the file. The header (8-byte length, then JSON) is read and bounded by us, the
NetSpec is checked as any prototxt is (Caffe's rules, blob limits, the weights budget), the net is built on
the meta device (no memory), and every tensor entry must be float32 with exactly the name, shape and byte
range the NetSpec implies, before a single weight is read; each is then read once, into its final tensor.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from caffe2torch import __version__, limits
from caffe2torch.errors import ArtifactError, CaffeError, LimitError, Location
from caffe2torch.net import CaffeNet, assign_tensors
from caffe2torch.netspec import NetSpec
from caffe2torch.paths import describe_content, require_file
from caffe2torch.util import atomic_path, loads_json

FORMAT = "caffe2torch-net"
FORMAT_VERSION = "1"
# safetensors dtype names of the tensors an artifact may hold, by torch dtype (every CaffeNet tensor is F32).
_DTYPES = {torch.float32: "F32"}


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


@dataclass
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offsets in the file
    end: int


@dataclass
class SafetensorsHeader:
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]


def read_header(path: str | Path) -> SafetensorsHeader:
    """The safetensors header of a file, read and checked by us: its length bounded (limits.MAX_HEADER_BYTES)
    and within the file, valid JSON, string metadata, and tensor entries whose byte ranges lie in the file."""
    path = require_file(path, "a caffe2torch artifact (.safetensors)", ArtifactError)
    where = Location(str(path))

    def corrupt(why: str) -> ArtifactError:
        hint = ("; a .caffemodel is converted with its prototxt: caffe2torch.convert(prototxt, caffemodel) or "
                "deeplab-convert" if path.suffix.lower() == ".caffemodel" else "")
        return ArtifactError(f"not a valid caffe2torch artifact ({why}){hint}", where)

    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            first = handle.read(64)
            kind = describe_content(first)
            if kind and not kind.startswith("a safetensors"):
                raise ArtifactError(f"not a caffe2torch artifact: it looks like {kind}", where)
            if len(first) < 8:
                raise corrupt(f"{size} bytes: too short for a safetensors file")
            (length,) = struct.unpack("<Q", first[:8])
            if length > limits.MAX_HEADER_BYTES:
                raise corrupt(f"its header claims {limits.human_bytes(length)}, over the "
                              f"{limits.human_bytes(limits.MAX_HEADER_BYTES)} an artifact header may take")
            if 8 + length > size:
                raise corrupt(f"its header claims {length:,} bytes but the file has {size - 8:,} after the length; "
                              "truncated?")
            handle.seek(8)
            raw = handle.read(length)
    except OSError as exc:
        raise ArtifactError(f"cannot read: {exc.strerror}", where) from None
    try:
        header = loads_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise corrupt("its header is not JSON") from None
    if not isinstance(header, dict):
        raise corrupt("its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise corrupt("its __metadata__ is not a map of strings")
    data_size = size - 8 - length
    tensors = {}
    for name, entry in header.items():
        tensors[name] = _tensor_entry(name, entry, data_size, 8 + length, corrupt)
    return SafetensorsHeader(metadata, tensors)


def _tensor_entry(name: str, entry: Any, data_size: int, data_start: int, corrupt) -> TensorEntry:
    if not isinstance(entry, dict):
        raise corrupt(f"entry '{name}' is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise corrupt(f"tensor '{name}' has no dtype")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise corrupt(f"tensor '{name}' has shape {shape!r}, not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size):
        raise corrupt(f"tensor '{name}' has data offsets {offsets!r} outside the file's {data_size:,} data bytes "
                      "(truncated?)")
    return TensorEntry(dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def _check_metadata(metadata: dict[str, str], where: Location) -> None:
    if metadata.get("format") != FORMAT:
        raise ArtifactError("a safetensors file, but not a caffe2torch artifact (no net definition in it)", where)
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"artifact format version {metadata.get('format_version')} is not supported by "
                            f"this caffe2torch ({__version__})", where)


def read_metadata(path: str | Path) -> dict[str, str]:
    header = read_header(path)
    _check_metadata(header.metadata, Location(str(path)))
    return header.metadata


def _spec_of(metadata: dict[str, str], where: Location) -> NetSpec:
    try:
        spec = NetSpec.from_json(metadata["netspec"])
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise ArtifactError(f"corrupt net definition in the artifact: {type(exc).__name__}: {exc}", where) from None
    if not (isinstance(spec.layers, list) and isinstance(spec.inputs, list)
            and all(isinstance(getattr(x, "name", None), str) for x in spec.layers + spec.inputs)):
        raise ArtifactError("corrupt net definition in the artifact: layers and inputs must be named lists", where)
    return spec


def _build_on_meta(spec: NetSpec, where: Location) -> CaffeNet:
    """The net with every tensor on the meta device: checks everything, allocates nothing."""
    try:
        with torch.device("meta"):
            return CaffeNet(spec).eval()
    except LimitError as exc:
        raise LimitError(f"the net in the artifact is too large: {exc.message}", where) from None
    except CaffeError as exc:
        raise ArtifactError(f"the net definition in the artifact is not valid: {exc}", where) from None
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        # Parameter values of the wrong kind (a string where Caffe has a number): only a damaged file has them.
        raise ArtifactError(f"corrupt net definition in the artifact: {type(exc).__name__}: {exc}", where) from None


def _check_tensors(header: SafetensorsHeader, expected: dict[str, torch.Tensor], where: Location) -> None:
    """Every tensor the net needs, none it does not, each F32 with the shape and byte size the net implies."""
    missing = sorted(set(expected) - set(header.tensors))
    unexpected = sorted(set(header.tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}" + (f" and {len(missing) - 5} more" if len(missing) > 5
                                                                 else ""))
        if unexpected:
            parts.append(f"not in the net {', '.join(unexpected[:5])}"
                         + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
        raise ArtifactError(f"the artifact's tensors do not match its net: {'; '.join(parts)}", where)
    problems = []
    for name, tensor in expected.items():
        entry = header.tensors[name]
        dtype = _DTYPES.get(tensor.dtype, str(tensor.dtype))
        if entry.dtype != dtype:
            problems.append(f"{name}: dtype {entry.dtype}, the net needs {dtype}")
        elif entry.shape != tuple(tensor.shape):
            problems.append(f"{name}: shape {list(entry.shape)}, the net needs {list(tensor.shape)}")
        elif entry.end - entry.begin != tensor.numel() * tensor.element_size():
            problems.append(f"{name}: {entry.end - entry.begin:,} data bytes for {tensor.numel():,} values")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ArtifactError(f"the artifact's tensors do not match its net: {shown}", where)


def load(path: str | Path) -> CaffeNet:
    """A ready CaffeNet (eval mode) from an artifact: no prototxt and no caffemodel needed."""
    where = Location(str(path))
    header = read_header(path)
    _check_metadata(header.metadata, where)
    net = _build_on_meta(_spec_of(header.metadata, where), where)
    expected = _owned_state(net)
    _check_tensors(header, expected, where)
    tensors = {}
    try:
        with open(path, "rb") as handle:
            for name, like in expected.items():
                entry = header.tensors[name]
                tensor = torch.empty(like.shape, dtype=like.dtype)
                handle.seek(entry.begin)
                if tensor.numel() and handle.readinto(memoryview(tensor.numpy()).cast("B")) != entry.end - entry.begin:
                    raise ArtifactError(f"truncated: tensor {name} ends past the end of the file", where)
                tensors[name] = tensor
    except OSError as exc:
        raise ArtifactError(f"cannot read: {exc.strerror}", where) from None
    assign_tensors(net, tensors)
    left = [name for name, value in [*net.named_parameters(), *net.named_buffers()] if value.is_meta]
    if left:
        raise ArtifactError(f"the artifact gives no values for {', '.join(left[:5])}", where)
    return net
