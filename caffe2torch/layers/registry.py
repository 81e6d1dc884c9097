"""The layer registry: one converter per Caffe layer type, registered by a decorator.

A converter knows these things about its type, so each Caffe rule lives in one place:
- `bottom_counts` / `top_counts` / `equal_bottoms_tops` / `in_place`: how many bottoms and tops Caffe's layer
  takes (its ExactNum/Min/Max{Bottom,Top}Blobs), checked centrally by `shapes.check_definitions`;
- `validate`: parameter values Caffe itself refuses (its LayerSetUp CHECKs): the net is invalid;
- `check`: parameter values we cannot reproduce exactly (collected for every layer, reported once);
- `output_shapes`: Caffe's shape rule, on plain ints (None = unknown), used by `deeplab-info` and the build;
  it raises ValueError where Caffe's Reshape CHECKs fail (unequal Concat maps, crops past the end...);
- `blob_shapes`: the parameter blobs a caffemodel must hold for the layer, in Caffe's order;
- `build`: the torch module, a `CaffeLayer`, which loads those blobs.
V1 enum names (CONVOLUTION, INTERP, ...) resolve to the same entries through `upgrade.V1_LAYER_TYPES`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from caffe2torch.netspec import LayerSpec, Shape


@dataclass
class BuildContext:
    """What a converter may need beyond its own layer: the dialect (Interp rules differ) and the phase."""

    dialect: str = "deeplab_v2"
    phase: str = "test"


class CaffeLayer(nn.Module):
    """Base of every built layer: forward(*bottoms) → top or tuple of tops; blobs load by Caffe's order."""

    # Attribute names of the parameters/buffers that hold the caffemodel's blobs, in blob order.
    blob_names: ClassVar[tuple[str, ...]] = ()

    def load_blobs(self, blobs: Sequence[np.ndarray | None]) -> None:
        """Copy blobs into the parameters/buffers named by `blob_names`; None leaves one as it is. A tensor on
        the meta device (a layer built without memory, to be loaded) becomes a new tensor holding the blob."""
        for name, blob in zip(self.blob_names, blobs):
            if blob is None:
                continue
            target = getattr(self, name)
            source = np.asarray(blob, dtype=np.float32).reshape(target.shape)  # a view of a float32 blob
            tensor = torch.empty(target.shape, dtype=target.dtype) if target.is_meta else target.detach()
            if tensor.device.type == "cpu" and tensor.dtype == torch.float32:
                np.copyto(tensor.numpy(), source)  # one copy, straight from the caffemodel's pages
            else:
                tensor.copy_(torch.from_numpy(source.copy()))
            if not target.is_meta:
                continue
            if name in self._parameters:
                self._parameters[name] = nn.Parameter(tensor, requires_grad=target.requires_grad)
            else:
                self._buffers[name] = tensor

    def caffe_blobs(self) -> list[np.ndarray]:
        """The blobs as Caffe would store them (inverse of load_blobs)."""
        return [getattr(self, name).detach().cpu().numpy().copy() for name in self.blob_names]


Counts = tuple[int, int | None]


class LayerConverter:
    type: ClassVar[str]
    # Whether the ONNX export can lower this layer (DenseCRF cannot).
    exportable: ClassVar[bool] = True
    # (min, max) bottoms and tops, max None = any number: Caffe's ExactNum/Min/Max{Bottom,Top}Blobs. Every
    # converter declares both (a test checks it); None means "not declared" and is not checked.
    bottom_counts: ClassVar[Counts | None] = None
    top_counts: ClassVar[Counts | None] = None
    # Caffe's EqualNumBottomTopBlobs (Convolution: one top per bottom).
    equal_bottoms_tops: ClassVar[bool] = False
    # False where Caffe's layer CHECKs that no top is its bottom ("does not allow in-place computation").
    in_place: ClassVar[bool] = True
    # True where the layer's arithmetic is fixed by the input size it is set up with (SPP's windows, a recurrent
    # layer's number of timesteps): a net with such a layer runs, and exports, at its declared size only.
    fixes_input_size: ClassVar[bool] = False

    def counts(self, spec: LayerSpec) -> tuple[Counts | None, Counts | None]:
        """(bottom, top) counts for this layer; a converter whose counts depend on a parameter overrides it."""
        return self.bottom_counts, self.top_counts

    def validate(self, spec: LayerSpec, ctx: BuildContext) -> list[str]:
        """Parameter values Caffe refuses in LayerSetUp, as messages; the net is invalid, not just unsupported."""
        return []

    def check(self, spec: LayerSpec, ctx: BuildContext) -> list[str]:
        """Unsupported parameter values, as messages; empty when the layer converts exactly."""
        return []

    def output_shapes(self, spec: LayerSpec, bottoms: list[Shape], ctx: BuildContext) -> list[Shape]:
        """Default: one top shaped like the first bottom (element-wise layers)."""
        return [bottoms[0]]

    def blob_shapes(self, spec: LayerSpec, bottoms: list[Shape]) -> list[Shape]:
        return []

    def build(self, spec: LayerSpec, bottoms: list[Shape], ctx: BuildContext) -> CaffeLayer:
        raise NotImplementedError

    def window(self, spec: LayerSpec) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
        """(kernel, stride, dilation) pairs for the receptive field, for sliding-window layers."""
        return None

    def sees_whole_input(self, spec: LayerSpec) -> bool:
        """Whether each output reads every spatial position of its bottom (an InnerProduct over C*H*W, global
        pooling): its receptive field then spans the whole bottom."""
        return False

    def scale_change(self, spec: LayerSpec, bottoms: list[Shape], tops: list[Shape]) -> float | None:
        """For resampling layers (Interp): output pixels per input pixel, to carry the receptive field."""
        return None


REGISTRY: dict[str, LayerConverter] = {}


def register(*types: str):
    """Class decorator: register a converter for one or more Caffe type strings."""

    def wrap(cls: type[LayerConverter]) -> type[LayerConverter]:
        instance = cls()
        for name in types:
            if name in REGISTRY:
                raise RuntimeError(f"layer type {name} registered twice")
            REGISTRY[name] = instance
        cls.type = types[0]
        return cls

    return wrap


def get_converter(layer_type: str) -> LayerConverter | None:
    from caffe2torch.upgrade import V1_LAYER_TYPES

    return REGISTRY.get(layer_type) or REGISTRY.get(V1_LAYER_TYPES.get(layer_type, ""))


def param_bool(spec: LayerSpec, message: str, key: str, default: bool) -> bool:
    return bool(spec.param(message).get(key, default))


def count(shape: Shape) -> int | None:
    """Elements of a shape (None if a dimension is unknown), in Python integers: no int64 wrap-around."""
    if any(d is None for d in shape):
        return None
    return math.prod(int(d) for d in shape)  # type: ignore[arg-type]


def count_problems(converter: LayerConverter, spec: LayerSpec) -> list[str]:
    """Caffe's CheckBlobCounts and in-place rules for one layer, as messages."""
    problems = []
    bottoms, tops = converter.counts(spec)
    for what, have, limits in (("bottom", len(spec.bottoms), bottoms), ("top", len(spec.tops), tops)):
        if limits is None:
            continue
        low, high = limits
        if low <= have and (high is None or have <= high):
            continue
        if low == high:
            wanted, plural = f"exactly {low}", low != 1
        elif high is None:
            wanted, plural = f"at least {low}", low != 1
        else:
            wanted, plural = f"{low} to {high}", True
        verb = "takes" if what == "bottom" else "makes"
        problems.append(f"{spec.type} {verb} {wanted} {what}{'s' if plural else ''}; this layer has {have}")
    if converter.equal_bottoms_tops and len(spec.bottoms) != len(spec.tops):
        problems.append(f"{spec.type} makes one top per bottom; this layer has {len(spec.bottoms)} bottoms "
                        f"and {len(spec.tops)} tops")
    if not converter.in_place:
        shared = [t for t in spec.tops if t in spec.bottoms]
        if shared:
            problems.append(f"{spec.type} does not allow in-place computation (top '{shared[0]}' is also a bottom)")
    return problems


def same_shape(a: Shape, b: Shape) -> bool:
    """Equal shapes, unknown (None) dimensions matching anything."""
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def shape_text(shape: Shape) -> str:
    return "x".join("?" if d is None else str(d) for d in shape) if shape else "(scalar)"
