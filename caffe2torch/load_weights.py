"""Caffemodel blobs → CaffeNet parameters, by layer name, with shape checks.

Strict by default: missing layers, caffemodel layers the net does not use, and shape mismatches are gathered
and raised together. Legacy blob shapes (DeepLab v1's num/channels/height/width: biases as 1x1x1xN,
InnerProduct weights as 1x1xNxK) are accepted when they differ from the expected shape only by leading 1s.
Layers that share parameters by ParamSpec name load them once, from the owning layer (Caffe repeats shared
blobs in every layer that uses them). NaN and infinite weights load as they are (Caffe would run with them
too) but are counted per layer in the report, so every command can warn about them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from caffe2torch.caffemodel import CaffeModel, read_caffemodel
from caffe2torch.errors import WeightsMismatchError
from caffe2torch.net import CaffeNet
from caffe2torch.netspec import NetSpec, Shape
from caffe2torch.shapes import ShapeReport


def blob_shape_matches(expected: Shape, actual: tuple[int, ...]) -> bool:
    """Equal shapes, or equal after dropping leading 1s of a legacy 4-D blob (None in `expected` matches any)."""
    def same(a: Shape, b: tuple[int, ...]) -> bool:
        return len(a) == len(b) and all(x is None or x == y for x, y in zip(a, b))

    if same(expected, actual):
        return True
    if tuple(expected) == (1,) and tuple(actual) == ():  # a scalar blob (PReLU channel_shared) as Caffe saves it
        return True
    trimmed = tuple(actual)
    while len(trimmed) > len(expected) and trimmed[0] == 1:
        trimmed = trimmed[1:]
    return same(expected, trimmed)


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)
    # layer → (NaN or infinite values, values) for layers whose weights are not all finite
    nonfinite: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unused or self.mismatched)

    def nonfinite_text(self) -> str | None:
        """One warning line naming every layer with NaN or infinite weights, or None."""
        if not self.nonfinite:
            return None
        parts = [f"{name} ({bad:,} of {total:,} values)" for name, (bad, total) in self.nonfinite.items()]
        return "the caffemodel holds NaN or infinite weights in " + ", ".join(parts)


def count_nonfinite(array: np.ndarray, chunk: int = 1 << 22) -> int:
    """NaN and infinite values in an array, a chunk at a time (no full-size temporary for a large blob)."""
    flat = array.reshape(-1)
    return sum(int(flat.size - np.count_nonzero(np.isfinite(flat[i : i + chunk])))
               for i in range(0, flat.size, chunk))


def record_nonfinite(report: LoadReport, layer: str, blobs: list[np.ndarray]) -> None:
    bad = sum(count_nonfinite(b) for b in blobs)
    if bad:
        report.nonfinite[layer] = (bad, sum(b.size for b in blobs))


def match_weights(
    spec: NetSpec, shapes: ShapeReport, model: CaffeModel, nonfinite: bool = True
) -> tuple[LoadReport, dict[str, list[np.ndarray]]]:
    """Pair the net's layers with the caffemodel's, checking counts and shapes; load nothing. Needs only the
    NetSpec and its inferred shapes, so `deeplab-info` can check weights without building the net. With
    `nonfinite`, NaN and infinite values are counted too (a pass over the weights); a loader that copies the
    blobs anyway counts them as it goes (record_nonfinite) and passes False."""
    report = LoadReport()
    plan: dict[str, list[np.ndarray]] = {}
    available = {layer.name: layer for layer in model.with_blobs()}
    expected_by_layer = {info.name: info.blob_shapes for info in shapes.layers}
    ties = spec.shared_parameters()
    for layer in spec.layers:
        expected = expected_by_layer.get(layer.name, [])
        if not expected:
            source = available.get(layer.name)
            if source is not None:
                report.mismatched.append(f"{layer.name} ({layer.type}): the caffemodel has {len(source.blobs)} "
                                         "blob(s) for a layer that has no parameters here")
            continue
        fully_tied = all((layer.name, i) in ties for i in range(len(expected)))
        source = available.get(layer.name)
        if fully_tied:
            report.shared.append(layer.name)
            continue
        if source is None:
            report.missing.append(layer.name)
            continue
        if len(source.blobs) != len(expected):
            report.mismatched.append(
                f"{layer.name} ({layer.type}): the net expects {len(expected)} blob(s) "
                f"{', '.join(str(tuple(s)) for s in expected)}, the caffemodel has {len(source.blobs)} "
                f"{', '.join(str(b.shape) for b in source.blobs)}"
            )
            continue
        bad = [
            f"blob {i}: expected {tuple(e)}, got {tuple(b.shape)}"
            for i, (e, b) in enumerate(zip(expected, source.blobs))
            if not blob_shape_matches(tuple(e), tuple(b.shape))
        ]
        if bad:
            report.mismatched.append(f"{layer.name} ({layer.type}): " + "; ".join(bad))
            continue
        plan[layer.name] = source.blobs
        report.loaded.append(layer.name)
        if nonfinite:
            record_nonfinite(report, layer.name, source.blobs)
            model.release(source.blobs)  # counting read the mapped pages: let the kernel drop them again
    known = {layer.name for layer in spec.layers}
    report.unused = [name for name in available if name not in known]
    return report, plan


def load_plan(net: CaffeNet, model: CaffeModel, plan: dict[str, list[np.ndarray]], report: LoadReport) -> None:
    """Copy matched blobs into the net layer by layer, counting non-finite values while the pages are in
    memory, then letting the kernel drop them: a large model never sits in memory twice. Layers built on the
    meta device (build_net's `loaded`) get their tensors here, and the shared ones are tied to them again."""
    for name, blobs in plan.items():
        # A blob shared by ParamSpec name is loaded once, through the layer that owns it.
        net.module(name).load_blobs([None if (name, i) in net.ties else b for i, b in enumerate(blobs)])
        record_nonfinite(report, name, blobs)
        model.release(blobs)
    net._tie_shared_parameters()
    for name in plan:
        module = net.module(name)
        if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
            raise RuntimeError(f"layer '{name}' was built to be loaded, but its blobs left tensors unset")


def load_caffemodel_weights(
    net: CaffeNet, model: CaffeModel | str | Path, strict: bool = True
) -> LoadReport:
    """Load a caffemodel's blobs into `net` in place; raise WeightsMismatchError on any mismatch if strict."""
    if not isinstance(model, CaffeModel):
        model = read_caffemodel(model)
    report, plan = match_weights(net.spec, net.shapes, model, nonfinite=False)
    if strict and not report.ok:
        raise WeightsMismatchError(report.missing, report.unused, report.mismatched, model.source)
    load_plan(net, model, plan, report)
    return report
