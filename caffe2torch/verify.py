"""Blob-by-blob parity against a reference (Caffe's own blobs): the proof that a conversion is exact.

Each reference blob is compared with ours: max |ours - ref| must be <= tol * max |ref| (default 1e-4). The
report names the first diverging blob in execution order, which is where to look, and every reference blob that
could not be checked, with why (in onnxruntime: a blob computed by a layer without ONNX lowering, such as
DeepLab's DenseCRF; or one that is not an output of the ONNX model given).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from caffe2torch import limits
from caffe2torch.errors import CaffeError, Location

DEFAULT_TOLERANCE = 1e-4


@dataclass
class BlobComparison:
    name: str
    shape: list[int]
    max_abs_err: float | None
    rel_err: float | None
    ok: bool
    note: str = ""


@dataclass
class UncheckedBlob:
    """A reference blob this check could not compare, and why."""

    name: str
    reason: str


# Why a layer type has no ONNX lowering, and where its blobs are checked instead.
NO_LOWERING_WHY = {
    "DenseCRF": "it runs in torch (--backend torch checks it) and as the runner's CRF after the ONNX model",
}


def no_lowering_reason(layer: str, layer_type: str, blob: str, tops: list[str]) -> str:
    """Why `blob` cannot be checked in onnxruntime: it is a top of `layer` (a `layer_type` without ONNX
    lowering) or is computed from one."""
    why = NO_LOWERING_WHY.get(layer_type, "--backend torch checks it")
    if blob in tops:
        return f"{layer_type} layer '{layer}' has no ONNX lowering: {why}"
    return f"computed from {layer_type} layer '{layer}', which has no ONNX lowering: {why}"


@dataclass
class VerifyReport:
    ok: bool
    first_divergent: str | None
    blobs: list[BlobComparison] = field(default_factory=list)
    tolerance: float = DEFAULT_TOLERANCE
    unchecked: list[UncheckedBlob] = field(default_factory=list)
    backend: str = "torch"

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "backend": self.backend,
            "first_divergent": self.first_divergent,
            "tolerance": self.tolerance,
            "blobs": [
                {k: v for k, v in asdict(b).items() if k != "note" or v} for b in self.blobs
            ],
            "unchecked": [asdict(u) for u in self.unchecked],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def compare_blob(name: str, ours: np.ndarray | None, ref: np.ndarray, tol: float) -> BlobComparison:
    ref = np.asarray(ref, dtype=np.float64)
    if ours is None:
        return BlobComparison(name, list(ref.shape), None, None, False, "not produced by the converted net")
    ours = np.asarray(ours, dtype=np.float64)
    if ours.shape != ref.shape:
        return BlobComparison(name, list(ref.shape), None, None, False,
                              f"shape {tuple(ours.shape)}, reference {tuple(ref.shape)}")
    if ref.size == 0:
        return BlobComparison(name, list(ref.shape), 0.0, 0.0, True)
    if not np.all(np.isfinite(ours)) and not np.array_equal(np.isfinite(ours), np.isfinite(ref)):
        return BlobComparison(name, list(ref.shape), float("inf"), float("inf"), False, "non-finite values")
    diff = float(np.max(np.abs(ours - ref)))
    scale = float(np.max(np.abs(ref)))
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return BlobComparison(name, list(ref.shape), diff, rel, diff <= tol * scale)


def compare_blobs(
    ours: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], order: Sequence[str],
    tol: float = DEFAULT_TOLERANCE, only: Sequence[str] | None = None,
) -> VerifyReport:
    """Compare every reference blob (or those in `only`), reporting in execution `order` (then the rest)."""
    names = list(only) if only is not None else list(reference.keys())
    ranked = [n for n in order if n in names] + [n for n in names if n not in order]
    blobs = [compare_blob(n, ours.get(n), reference[n], tol) for n in ranked]
    first = next((b.name for b in blobs if not b.ok), None)
    return VerifyReport(ok=first is None, first_divergent=first, blobs=blobs, tolerance=tol)


MAX_NPZ_MEMBERS = 100_000


def load_npz(path: str | Path, what: str) -> dict[str, np.ndarray]:
    """Arrays of an .npz by name, validated before any is read: numeric dtypes only (no object arrays, no
    pickle), shapes within Caffe's blob limits, and all of them together within the blobs budget (a small
    compressed file can claim a huge array)."""
    import zipfile
    import zlib

    from caffe2torch.errors import LimitError
    from caffe2torch.paths import require_file, sniff

    path = require_file(path, f"an .npz of {what}")
    where = Location(str(path))
    if not zipfile.is_zipfile(path):
        kind = sniff(path)
        if kind == "a NumPy .npy array":
            raise CaffeError(f"a .npy file holds one unnamed array; {what} must be an .npz mapping blob names to "
                             "arrays, e.g. numpy.savez('inputs.npz', data=array)", where)
        raise CaffeError(f"not an .npz file (a zip of .npy arrays){f'; it looks like {kind}' if kind else ''}", where)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_NPZ_MEMBERS:
                raise CaffeError(f"{len(members):,} entries: more than the {MAX_NPZ_MEMBERS:,} an .npz of blobs "
                                 "could need", where)
            headers = [(member, *_npy_header(archive, member, what, where)) for member in members]
            if not headers:
                raise CaffeError(f"the .npz holds no arrays; {what} must name at least one blob", where)
            total = sum(limits.element_count(shape) * dtype.itemsize for _, shape, dtype in headers)
            if total > limits.max_blobs_bytes():
                raise LimitError(f"its arrays would take {limits.human_bytes(total)}, over the "
                                 f"{limits.human_bytes(limits.max_blobs_bytes())} limit for blobs (raise it with "
                                 f"{limits.BLOBS_VARIABLE}=SIZE)", where)
            arrays = {}
            for member, _, _ in headers:
                with archive.open(member) as handle:
                    arrays[member.filename.removesuffix(".npy")] = np.lib.format.read_array(handle,
                                                                                           allow_pickle=False)
            return arrays
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise CaffeError(f"cannot read {what} as .npz: {exc}", where) from None


def _npy_header(archive, member, what: str, where: Location) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one .npy member, read from its header alone, and checked."""
    name = member.filename
    if not name.endswith(".npy"):
        raise CaffeError(f"the .npz entry '{name}' is not a .npy array", where)
    with archive.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise CaffeError(f"'{name}': .npy format version {version} is not supported", where)
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "fiub":
        raise CaffeError(f"'{name[:-4]}' has dtype {dtype}; {what} must be numeric arrays (float, int or bool)",
                         where)
    problem = limits.blob_problem(shape)
    if problem:
        raise CaffeError(f"'{name[:-4]}' of shape {tuple(shape)} would hold {problem}", where)
    return tuple(shape), dtype


def format_report(report: VerifyReport) -> str:
    rows = [("blob", "shape", "max abs err", "rel err", "ok")]
    for b in report.blobs:
        rows.append((
            b.name, "x".join(map(str, b.shape)),
            "-" if b.max_abs_err is None else f"{b.max_abs_err:.3g}",
            "-" if b.rel_err is None else f"{b.rel_err:.3g}",
            "ok" if b.ok else ("FAIL " + b.note).strip(),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    passed = sum(b.ok for b in report.blobs)
    summary = f"{passed}/{len(report.blobs)} blobs within {report.tolerance:g} of the reference's max magnitude"
    if report.first_divergent:
        summary += f"; first divergent blob: {report.first_divergent}"
    if report.unchecked:
        where = " in onnxruntime" if report.backend == "onnx" else ""
        lines += ["", f"not checked{where}: {len(report.unchecked)} reference blob(s)"]
        width = max(len(u.name) for u in report.unchecked)
        lines += [f"  {u.name.ljust(width)}  {u.reason}" for u in report.unchecked]
        names = ", ".join(u.name for u in report.unchecked[:4]) + (", ..." if len(report.unchecked) > 4 else "")
        summary += f"; {len(report.unchecked)} not checked{where} ({names}; see above)"
    return "\n".join(lines + ["", summary])
