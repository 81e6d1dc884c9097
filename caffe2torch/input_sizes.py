"""Which input sizes a net accepts, worked out from Caffe's shape rules alone (no tensors run).

Most DeepLab nets run at any size above a small minimum; some only at a family of sizes (the MSC ResNet-101
at 32k+1 .. 32k+6 a side: elsewhere its three score maps differ in size and Eltwise MAX aborts); some only
at the size they declare: an Interp with a fixed height/width (attention-to-scale nets trained on fixed
crops), an InnerProduct after spatial features (its weights fix C*H*W), a Reshape with fixed dims.

`accepted_input_sizes` probes the NetSpec at the declared size plus 1 .. 32 pixels a side (both sides by the
same offset) and calls a probe accepted when shape inference passes and every layer's weight blobs keep their
declared shapes. The accepted offsets must repeat with a period p <= 32 (checked over a second period when
p > 16); otherwise, or when the net's score outputs keep their size while the input grows (they would not
cover a larger image), the net is treated as fixed-size. The minimum is found by bisection below the
declared size, on the accepted residues.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from caffe2torch.errors import CaffeError, Location, UnsupportedError
from caffe2torch.in_net_crf import needed_inputs
from caffe2torch.layers import get_converter
from caffe2torch.netspec import NetSpec
from caffe2torch.shapes import ShapeMemo, ShapeReport, infer_shapes

PROBE_WINDOW = 32
MAX_SIDE = 8192
SPATIAL_ROLES = ("image", "tensor")


@dataclass(frozen=True)
class SideSizes:
    """The sizes one side accepts: s >= minimum with s % period in residues."""

    period: int
    residues: tuple[int, ...]
    minimum: int

    def accepts(self, size: int) -> bool:
        return size >= self.minimum and size % self.period in self.residues

    def at_least(self, size: int) -> int:
        """The smallest accepted size >= size, preferring 32k+1 (k >= 1) sizes: there every stride-2 grid and
        DeepLab's Interp zooms align (the runner's padding rule for images larger than the crop)."""
        size = max(size, self.minimum)
        aligned = ((max(size, 2) - 2) // 32 + 1) * 32 + 1
        for candidate in range(aligned, aligned + 32 * self.period + 1, 32):
            if self.accepts(candidate):
                return candidate
        return next(s for s in range(size, size + self.period + 1) if self.accepts(s))

    def describe(self) -> str:
        if self.period == 1:
            return f">= {self.minimum}"
        p = self.period
        forms = [f"{p}k+{a}" if a == b else f"{p}k+{a}..{p}k+{b}" for a, b in _runs(self.residues)]
        return f"{' or '.join(forms)} (>= {self.minimum})"


def _runs(values: tuple[int, ...]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for value in sorted(values):
        if runs and value == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    return runs


@dataclass(frozen=True)
class InputSizes:
    """The sizes a net's image input accepts: "any" (above a minimum), "family" (sizes of some residues
    modulo a period) or "fixed" (the declared size only); and whether the batch size is free."""

    kind: str
    declared: tuple[int, int]
    height: SideSizes | None = None
    width: SideSizes | None = None
    batch_free: bool = True

    @property
    def size_free(self) -> bool:
        return self.kind != "fixed"

    def accepts(self, height: int, width: int) -> bool:
        if self.height is None or self.width is None:
            return (height, width) == self.declared
        return self.height.accepts(height) and self.width.accepts(width)

    def describe(self) -> str:
        batch = "dynamic batch" if self.batch_free else "fixed batch"
        if self.kind == "fixed" or self.height is None or self.width is None:
            return f"{batch}, fixed height and width {self.declared[0]}x{self.declared[1]} (the net runs at " \
                   "that size only)"
        if self.kind == "any":
            return f"{batch}, dynamic height and width (any size >= {self.height.minimum}x{self.width.minimum})"
        return f"{batch}, dynamic height and width (height {self.height.describe()}, width " \
               f"{self.width.describe()})"

    def to_metadata(self) -> dict[str, object]:
        sides = {}
        for name, side in (("height", self.height), ("width", self.width)):
            if side is not None:
                sides[name] = {"period": side.period, "residues": list(side.residues), "minimum": side.minimum}
        return {"kind": self.kind, "declared": list(self.declared), "batch_free": self.batch_free, **sides}

    @classmethod
    def from_metadata(cls, raw: object) -> InputSizes:
        """Parse and validate; ValueError says what is wrong."""
        if not isinstance(raw, dict):
            raise ValueError("must be an object")
        kind = raw.get("kind")
        if kind not in ("any", "family", "fixed"):
            raise ValueError(f"kind must be any, family or fixed, not {kind!r}")
        declared = raw.get("declared")
        if (not isinstance(declared, list) or len(declared) != 2
                or not all(_is_int(d) and 1 <= d <= MAX_SIDE for d in declared)):
            raise ValueError(f"declared must be [height, width] with sides 1..{MAX_SIDE}")
        batch_free = raw.get("batch_free", True)
        if not isinstance(batch_free, bool):
            raise ValueError("batch_free must be true or false")
        sides = []
        for name in ("height", "width"):
            side = raw.get(name)
            if kind == "fixed":
                sides.append(None)
                continue
            if not isinstance(side, dict):
                raise ValueError(f"{name} must describe the accepted sizes")
            period, residues, minimum = side.get("period"), side.get("residues"), side.get("minimum")
            if not (_is_int(period) and 1 <= period <= 2 * PROBE_WINDOW):
                raise ValueError(f"{name}.period must be an integer 1..{2 * PROBE_WINDOW}")
            if (not isinstance(residues, list) or not residues
                    or not all(_is_int(r) and 0 <= r < period for r in residues)):
                raise ValueError(f"{name}.residues must be a non-empty list of integers 0..period-1")
            if not (_is_int(minimum) and 1 <= minimum <= MAX_SIDE):
                raise ValueError(f"{name}.minimum must be an integer 1..{MAX_SIDE}")
            sides.append(SideSizes(period, tuple(sorted(set(residues))), minimum))
        return cls(kind, (declared[0], declared[1]), sides[0], sides[1], batch_free)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def fixed_sizes(height: int, width: int, batch_free: bool = True) -> InputSizes:
    return InputSizes("fixed", (height, width), batch_free=batch_free)


def spatial_inputs(spec: NetSpec, outputs: list[str] | None = None) -> list[int]:
    """Indexes of the 4-D image-like inputs (not labels, not data_dim), of those `outputs` depend on when given."""
    used = set(needed_inputs(spec, outputs)) if outputs else set(spec.input_names())
    return [i for i, inp in enumerate(spec.inputs)
            if len(inp.shape) == 4 and inp.role in SPATIAL_ROLES and inp.name in used]


def same_spatial_size(spec: NetSpec, outputs: list[str] | None = None) -> bool:
    """Whether every image-like input declares the same height and width: then they are probed (and traced)
    together, all grown by the same offset, as the feature maps and edge maps of one image are."""
    return len({tuple(spec.inputs[i].shape[2:]) for i in spatial_inputs(spec, outputs)}) == 1


def declared_image_size(spec: NetSpec, outputs: list[str] | None = None) -> tuple[int, int] | None:
    """The declared (height, width) of the net's first image-like input; None when it has none."""
    indexes = spatial_inputs(spec, outputs)
    if not indexes:
        return None
    inp = spec.inputs[indexes[0]]
    if any(d is None for d in inp.shape):
        raise UnsupportedError([(Location(file=spec.source), f"input '{inp.name}' has an unknown shape "
                                 f"{tuple(inp.shape)}; give --input-shape {inp.name}=N,C,H,W")])
    return int(inp.shape[2]), int(inp.shape[3])


def with_input_sizes(spec: NetSpec, offset: int = 0, batch: int | None = None, side: int | None = None,
                     outputs: list[str] | None = None) -> NetSpec:
    """A shallow copy of `spec` whose spatial inputs (those `outputs` need) are `offset` pixels larger a side
    (or `side` square), and whose inputs have batch size `batch`; the layers are shared (shape inference does
    not change them)."""
    spatial = set(spatial_inputs(spec, outputs))
    inputs = []
    for index, inp in enumerate(spec.inputs):
        shape = list(inp.shape)
        if index in spatial:
            if side is not None:
                shape[2:] = [side, side]
            else:
                shape[2:] = [shape[2] + offset, shape[3] + offset]
        if batch is not None and len(shape) >= 1:
            shape[0] = batch
        inputs.append(dataclasses.replace(inp, shape=tuple(shape)))
    return dataclasses.replace(spec, inputs=inputs)


def probe(spec: NetSpec, memo: ShapeMemo | None = None) -> ShapeReport | None:
    """Shape inference of an already-checked net at other input sizes; None when Caffe would refuse them.
    `memo`: shared by the probes of one net (shapes.ShapeMemo), so that each layer result is computed once."""
    try:
        return infer_shapes(spec, check=False, memo=memo)
    except (CaffeError, ValueError, ArithmeticError, KeyError, IndexError, TypeError):
        return None


def _same_weights(report: ShapeReport, base: ShapeReport) -> bool:
    return all(a.blob_shapes == b.blob_shapes for a, b in zip(report.layers, base.layers))


def accepted_input_sizes(spec: NetSpec, outputs: list[str] | None = None) -> InputSizes:
    """The input sizes at which `spec` runs with its weights and yields score maps that follow the input
    (see the module docstring for the rule). `outputs`: the blobs the caller uses (default: the net's)."""
    outputs = list(outputs or spec.outputs())
    declared = declared_image_size(spec, outputs)
    if declared is None:
        raise CaffeError("the net has no 4-D image input (N, C, H, W)", Location(spec.source))
    memo = ShapeMemo(spec)
    base = infer_shapes(spec, check=False, memo=memo)
    if any(getattr(get_converter(layer.type), "fixes_input_size", False) for layer in spec.layers):
        return fixed_sizes(*declared, batch_free=False)  # SPP windows, recurrent timesteps: set up at this size
    batch_report = probe(with_input_sizes(spec, batch=2), memo)
    batch_free = batch_report is not None and _same_weights(batch_report, base)
    if not same_spatial_size(spec, outputs):
        return fixed_sizes(*declared, batch_free=batch_free)  # images of different sizes: keep their sizes
    watched = [o for o in outputs if len(base.blobs.get(o, ())) == 4]

    def accepted(offset: int) -> ShapeReport | None:
        if min(declared) + offset < 1:
            return None
        report = probe(with_input_sizes(spec, offset, outputs=outputs), memo)
        return report if report is not None and _same_weights(report, base) else None

    reports = {0: base} | {i: r for i in range(1, PROBE_WINDOW + 1) if (r := accepted(i)) is not None}
    follows = [any(r.blobs[o][axis] != base.blobs[o][axis] for r in reports.values() for o in watched)
               for axis in (2, 3)]
    if len(reports) == 1 or not all(follows):
        return fixed_sizes(*declared, batch_free=batch_free)
    pattern = [i in reports for i in range(PROBE_WINDOW + 1)]
    period = next((p for p in range(1, PROBE_WINDOW + 1)
                   if all(pattern[i] == pattern[i + p] for i in range(PROBE_WINDOW + 1 - p))), None)
    if period is None:
        return fixed_sizes(*declared, batch_free=batch_free)
    offsets = [i for i in range(period) if pattern[i]]
    if period > PROBE_WINDOW // 2:  # fewer than two periods seen: check the next one too
        if any(accepted(i + 2 * period) is None for i in offsets if i + 2 * period > PROBE_WINDOW):
            return fixed_sizes(*declared, batch_free=batch_free)
    # The smallest accepted size: bisection over the accepted residues below the declared size.
    below = sorted(o for o in range(-(min(declared) - 1), 0) if (o % period) in offsets)
    low, high = 0, len(below)  # below[high:] accepted (assumed monotonic); find the first accepted
    while low < high:
        middle = (low + high) // 2
        if accepted(below[middle]) is not None:
            high = middle
        else:
            low = middle + 1
    smallest = below[high] if high < len(below) else 0
    sides = []
    for size in declared:
        residues = tuple(sorted({(size + o) % period for o in offsets}))
        sides.append(SideSizes(period, residues, size + smallest))
    return InputSizes("any" if period == 1 else "family", declared, sides[0], sides[1], batch_free)


def known_input_sizes(spec: NetSpec, outputs: list[str] | None = None) -> InputSizes | None:
    """accepted_input_sizes, or None when the net has no 4-D image input of known shape (a data layer without
    a crop size): then nothing is known, and the runner treats the net as running at any size."""
    indexes = spatial_inputs(spec, list(outputs or spec.outputs()))
    if not indexes or any(d is None for d in spec.inputs[indexes[0]].shape):
        return None
    return accepted_input_sizes(spec, outputs)


def tracing_side(spec: NetSpec, sizes: InputSizes, outputs: list[str] | None = None) -> int | None:
    """A square side to trace the ONNX export at, well below the declared size: the smallest 32k+1 side the
    net accepts at which every feature map keeps at least 3 pixels a side (none degenerates to the sizes
    where Interp's copy path or a 1-pixel map would bake a different branch into the graph). None: trace at
    the declared size (fixed-size nets, and nets with no such side below their declared size)."""
    if not sizes.size_free or not same_spatial_size(spec, outputs):
        return None
    not_maps = {inp.name for inp in spec.inputs if inp.role == "data_dim"}  # (N, 1, 1, 2) at any size
    memo = ShapeMemo(spec)
    for side in range(33, max(sizes.declared) + 1, 32):
        if not sizes.accepts(side, side):
            continue
        report = probe(with_input_sizes(spec, side=side, outputs=outputs), memo)
        if report is None:
            continue
        if all(min(s[2:]) >= 3 for name, s in report.blobs.items()
               if len(s) == 4 and None not in s and name not in not_maps):
            return side
    return None
