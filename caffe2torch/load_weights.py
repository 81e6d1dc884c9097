"""Caffemodel blobs → CaffeNet parameters, by layer name, with shape checks.

Layers are matched by name exactly as Caffe's Net::CopyTrainedLayersFrom does (see match_weights), repeated
names included. Strict by default: missing layers, caffemodel layers the net does not use, and shape mismatches
are gathered and raised together. Legacy blob shapes (DeepLab v1's num/channels/height/width: biases as 1x1x1xN,
InnerProduct weights as 1x1xNxK) are accepted when they differ from the expected shape only by leading 1s.
Layers that share parameters by ParamSpec name load them once, into the owning layer; as in Caffe, which
copies every layer's blobs into the shared blob in turn, the last copy in the caffemodel wins. NaN and infinite
weights load as they are (Caffe would run with them too) but are counted per layer in the report, so every
command can warn about them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from caffe2torch.caffemodel import CaffeModel, read_caffemodel
from caffe2torch.errors import WeightsMismatchError
from caffe2torch.net import CaffeNet
from caffe2torch.netspec import LayerSpec, NetSpec, Shape
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
    # layers the caffemodel does not cover whose every blob has a constant filler in the prototxt: Caffe runs them
    # with those values, and so do we (each entry names the layer and the values)
    filled: list[str] = field(default_factory=list)
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
    return sum(int(piece.size - np.count_nonzero(np.isfinite(piece)))
               for piece in (flat[i : i + chunk] for i in range(0, flat.size, chunk)))


def record_nonfinite(report: LoadReport, layer: str, blobs: list[np.ndarray]) -> None:
    bad = sum(count_nonfinite(b) for b in blobs)
    if bad:
        report.nonfinite[layer] = (bad, sum(b.size for b in blobs))


BLOBLESS = "(a layer of that name without blobs: Caffe stops at it too, 'Incompatible number of blobs')"


@dataclass
class _Target:
    """A layer of the net as Caffe's Net holds it, for CopyTrainedLayersFrom: the file's name, and either the
    LayerSpec (with its expected blob shapes) or a layer dropped for inference (data, loss, metric: no blobs;
    one dropped for reading a label may have some, and takes whatever the caffemodel holds)."""

    name: str
    kind: str
    line: int | None
    layer: LayerSpec | None = None
    expected: list[Shape] = field(default_factory=list)
    absorbs: bool = False


def caffe_layer_order(spec: NetSpec, shapes: ShapeReport) -> list[_Target]:
    """The layers Caffe's Net has at this phase, in file order: the kept ones and those dropped for inference
    (not those the phase rules leave out)."""
    expected = {info.name: info.blob_shapes for info in shapes.layers}
    targets = [_Target(layer.file_name, layer.type, layer.line, layer, list(expected.get(layer.name, [])))
               for layer in spec.layers]
    for dropped in spec.dropped:
        if dropped.reason.startswith("not in "):
            continue
        targets.append(_Target(dropped.name, dropped.type, dropped.line, absorbs=dropped.reason.startswith("reads ")))
    order = {id(t): i for i, t in enumerate(targets)}
    return sorted(targets, key=lambda t: (t.line if t.line is not None else float("inf"), order[id(t)]))


def _where(target: _Target) -> str:
    return f"{target.name} ({target.kind})"


def match_weights(
    spec: NetSpec, shapes: ShapeReport, model: CaffeModel, nonfinite: bool = True
) -> tuple[LoadReport, dict[str, list[np.ndarray | None]]]:
    """Pair the net's layers with the caffemodel's as Caffe's Net::CopyTrainedLayersFrom does, checking counts and
    shapes; load nothing. For each caffemodel layer in file order, the FIRST layer of the net with its name takes
    its blobs (the blob counts must agree, blob-less layers included: Caffe stops otherwise), so a later caffemodel
    layer of the same name overwrites an earlier one, a net layer that repeats an earlier layer's name never gets
    weights (Caffe would run it with its filler's values: reported missing, unless the prototxt gives every one
    of its blobs a constant filler, whose values it then gets, see constant_filler_blobs), and a blob shared by
    ParamSpec name holds whichever copy came last. Needs only the NetSpec and its inferred shapes, so
    `deeplab-info` can check weights without building the net. With `nonfinite`, NaN and infinite values are
    counted too (a pass over the weights); a loader that copies the blobs anyway counts them as it goes
    (record_nonfinite) and passes False.
    The plan maps each layer's internal name to its blobs, None where a blob is another layer's (shared)."""
    report = LoadReport()
    ties = spec.shared_parameters()
    targets = caffe_layer_order(spec, shapes)
    first: dict[str, _Target] = {}
    for target in targets:
        first.setdefault(target.name, target)
    assigned: dict[tuple[str, int], np.ndarray] = {}
    copied: set[str] = set()
    refused: set[str] = set()  # mismatched: reported once, not as missing too
    for source in model.layers:
        target = first.get(source.name)
        if target is None:
            if source.blobs:
                report.unused.append(source.name)
            continue
        if target.absorbs or (not source.blobs and not target.expected):
            continue
        if target.layer is None or not target.expected:
            report.mismatched.append(f"{_where(target)}: the caffemodel has {len(source.blobs)} blob(s) for a layer "
                                     "that has no parameters here")
            continue
        expected = target.expected
        refused.add(target.layer.name)
        if len(source.blobs) != len(expected):
            have = ", ".join(str(b.shape) for b in source.blobs) or BLOBLESS
            report.mismatched.append(f"{_where(target)}: the net expects {len(expected)} blob(s) "
                                     f"{', '.join(str(tuple(s)) for s in expected)}, the caffemodel has "
                                     f"{len(source.blobs)} {have}")
            continue
        bad = [
            f"blob {i}: expected {tuple(e)}, got {tuple(b.shape)}"
            for i, (e, b) in enumerate(zip(expected, source.blobs))
            if not blob_shape_matches(tuple(e), tuple(b.shape))
        ]
        if bad:
            report.mismatched.append(f"{_where(target)}: " + "; ".join(bad))
            continue
        name = target.layer.name
        refused.discard(name)
        copied.add(name)
        for index, blob in enumerate(source.blobs):
            assigned[ties.get((name, index), (name, index))] = blob
    plan: dict[str, list[np.ndarray | None]] = {}
    for layer in spec.layers:
        expected = next((t.expected for t in targets if t.layer is layer), [])
        if not expected:
            continue
        keys = [ties.get((layer.name, i), (layer.name, i)) for i in range(len(expected))]
        if not all(key in assigned for key in keys):
            filled = None
            if layer.name not in refused and not any(key in assigned for key in keys) and all(
                    key == (layer.name, i) for i, key in enumerate(keys)):
                filled = constant_filler_blobs(layer, expected)
            if filled is not None:
                plan[layer.name] = filled
                report.filled.append(f"{layer.file_name} ({layer.type}, line {layer.line}): " + ", ".join(
                    f"blob {i} = {float(b.flat[0]):g}" if b.size else f"blob {i} (empty)"
                    for i, b in enumerate(filled)))
            elif layer.name not in refused:
                report.missing.append(_missing_text(layer, first))
            continue
        own = [assigned[key] if key == (layer.name, i) else None for i, key in enumerate(keys)]
        if any(blob is not None for blob in own):
            plan[layer.name] = own
        if layer.name in copied:
            report.loaded.append(layer.file_name)
        else:
            report.shared.append(layer.file_name)
        if nonfinite and any(blob is not None for blob in own):
            present = [blob for blob in own if blob is not None]
            record_nonfinite(report, layer.file_name, present)
            model.release(present)  # counting read the mapped pages: let the kernel drop them again
    return report, plan


# The FillerParameter of each parameter blob, by layer type: (parameter message, filler field) per blob, in
# the order the layer's blobs are stored (BVLC caffe master's LayerSetUp of each layer).
_BLOB_FILLERS: dict[str, tuple[tuple[str, str], ...]] = {
    "Convolution": (("convolution_param", "weight_filler"), ("convolution_param", "bias_filler")),
    "Deconvolution": (("convolution_param", "weight_filler"), ("convolution_param", "bias_filler")),
    "InnerProduct": (("inner_product_param", "weight_filler"), ("inner_product_param", "bias_filler")),
    "Embed": (("embed_param", "weight_filler"), ("embed_param", "bias_filler")),
    "Scale": (("scale_param", "filler"), ("scale_param", "bias_filler")),
    "Bias": (("bias_param", "filler"),),
    "PReLU": (("prelu_param", "filler"),),
}


def constant_filler_blobs(layer: LayerSpec, expected: list[Shape]) -> list[np.ndarray] | None:
    """The blobs Caffe gives a layer that no caffemodel layer fills, when the prototxt sets a constant filler for
    every one of them (FillerParameter type "constant", its default, with `value`, default 0): Caffe runs the
    layer with those values (ConstantFiller), deterministically. None when any blob's filler is left unset (a
    deploy file seldom says; the weights are then most likely missing by mistake) or is random."""
    fillers = _BLOB_FILLERS.get(layer.type)
    if fillers is None or len(expected) > len(fillers) or any(d is None for s in expected for d in s):
        return None
    blobs = []
    for (message, name), shape in zip(fillers, expected):
        filler = layer.param(message).get(name)
        if not isinstance(filler, dict) or filler.get("type", "constant") != "constant":
            return None
        blobs.append(np.full(tuple(int(d) for d in shape), np.float32(filler.get("value", 0.0)), np.float32))
    return blobs


def _missing_text(layer: LayerSpec, first: dict[str, _Target]) -> str:
    """A missing layer's entry: its name, and for a repeated name why Caffe would not load it either."""
    owner = first.get(layer.file_name)
    if owner is None or owner.layer is layer:
        return layer.file_name
    return (f"{layer.file_name} (line {layer.line}): an earlier layer has the same name ({_where(owner)}, line "
            f"{owner.line}), and "
            f"Caffe copies the caffemodel's '{layer.file_name}' blobs only into the first layer of that name, so "
            "Caffe would run this one with its filler's initial values")


def load_plan(net: CaffeNet, model: CaffeModel, plan: dict[str, list[np.ndarray | None]], report: LoadReport) -> None:
    """Copy matched blobs into the net layer by layer, counting non-finite values while the pages are in
    memory, then letting the kernel drop them: a large model never sits in memory twice. Layers built on the
    meta device (build_net's `loaded`) get their tensors here, and the shared ones are tied to them again."""
    names = {layer.name: layer.file_name for layer in net.spec.layers}
    for name, blobs in plan.items():
        # A blob shared by ParamSpec name is loaded once, into the layer that owns it (None elsewhere).
        net.module(name).load_blobs([None if (name, i) in net.ties else b for i, b in enumerate(blobs)])
        present = [b for b in blobs if b is not None]
        record_nonfinite(report, names.get(name, name), present)
        model.release(present)
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
