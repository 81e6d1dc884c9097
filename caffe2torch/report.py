"""`deeplab-info`'s report: dialect, inputs, a layer table with shapes, parameters and receptive fields, and
(with a caffemodel) which layers have weights, which are missing, unused or mismatched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from caffe2torch.caffemodel import CaffeModel
from caffe2torch.load_weights import LoadReport, match_weights
from caffe2torch.netspec import NetSpec, Shape
from caffe2torch.parse import DIALECT_TITLES
from caffe2torch.shapes import ShapeReport, infer_shapes


def shape_text(shape: Shape) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


@dataclass
class NetReport:
    spec: NetSpec
    shapes: ShapeReport
    weights: LoadReport | None = None
    caffemodel: str | None = None
    notes: list[str] = field(default_factory=list)

    def file_name(self, name: str) -> str:
        """A layer's name as its prototxt writes it (repeated names are unique only inside caffe2torch)."""
        return next((layer.file_name for layer in self.spec.layers if layer.name == name), name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.spec.name,
            "source": self.spec.source,
            "dialect": self.spec.dialect,
            "phase": self.spec.phase,
            "inputs": [{"name": i.name, "shape": list(i.shape), "role": i.role, "transform": i.transform}
                       for i in self.spec.inputs],
            "outputs": self.spec.outputs(),
            "layers": [
                {"name": self.file_name(li.name), "type": li.type, "line": li.line, "bottoms": li.bottoms,
                 "tops": li.tops,
                 "top_shapes": [list(s) for s in li.top_shapes], "params": li.params,
                 "receptive_field": li.field, "stride": li.stride}
                for li in self.shapes.layers
            ],
            "total_params": self.shapes.total_params(),
            "dropped": [{"name": d.name, "type": d.type, "reason": d.reason, "line": d.line}
                        for d in self.spec.dropped],
            "notes": self.spec.notes + self.notes,
        }
        if self.weights is not None:
            out["caffemodel"] = {
                "path": self.caffemodel,
                "ok": self.weights.ok,
                "loaded": self.weights.loaded,
                "shared": self.weights.shared,
                "missing": self.weights.missing,
                "filled": self.weights.filled,
                "unused": self.weights.unused,
                "mismatched": self.weights.mismatched,
            }
        return out

    def to_text(self) -> str:
        spec = self.spec
        lines = [
            f"net:      {spec.name or '(unnamed)'}  ({spec.source})",
            f"dialect:  {DIALECT_TITLES.get(spec.dialect, spec.dialect)}",
            f"phase:    {spec.phase.upper()}",
            "inputs:   " + ", ".join(f"{i.name} {shape_text(i.shape)}" for i in spec.inputs),
            "outputs:  " + ", ".join(f"{o} {shape_text(self.shapes.blobs[o])}" for o in spec.outputs()),
        ]
        image = next((i for i in spec.inputs if i.transform), None)
        if image is not None:
            t = image.transform
            mean = [round(v, 3) for v in t.get("mean_value", [])]
            lines.append(f"preprocess: {t.get('channel_order', 'BGR')}, mean {mean}, "
                         f"scale {t.get('scale', 1)}, crop {t.get('crop_size', '-')}")
        rows = [("layer", "type", "bottoms -> tops", "output", "params", "RF", "stride")]
        for li in self.shapes.layers:
            rows.append((
                self.file_name(li.name), li.type, f"{','.join(li.bottoms)} -> {','.join(li.tops)}",
                " ".join(shape_text(s) for s in li.top_shapes),
                "-" if not li.params else f"{li.params:,}",
                "-" if li.field is None else f"{li.field:g}",
                "-" if li.stride is None else f"{li.stride:g}",
            ))
        widths = [min(max(len(r[i]) for r in rows), 48) for i in range(len(rows[0]))]
        lines.append("")
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        total = self.shapes.total_params()
        lines += ["", f"{len(self.shapes.layers)} layers, "
                  f"{'unknown' if total is None else f'{total:,}'} parameters"]
        if spec.dropped:
            lines.append(f"dropped for inference ({len(spec.dropped)}):")
            lines += [f"  {d.name} ({d.type}, line {d.line}): {d.reason}" for d in spec.dropped]
        if self.weights is not None:
            w = self.weights
            lines.append(f"caffemodel {self.caffemodel}: "
                         + ("matches the net" if w.ok else "DOES NOT match the net"))
            lines.append(f"  layers with weights: {len(w.loaded)}" + (f", shared: {len(w.shared)}" if w.shared else ""))
            for title, items in (("missing from the caffemodel", w.missing),
                                 ("unused caffemodel layers", w.unused), ("shape mismatches", w.mismatched)):
                if items:
                    lines.append(f"  {title} ({len(items)}):")
                    lines += [f"    {item}" for item in items]
            if w.filled:
                lines.append(f"  not in the caffemodel, run with the prototxt's constant fillers as Caffe runs them "
                             f"({len(w.filled)}):")
                lines += [f"    {item}" for item in w.filled]
        for note in spec.notes + self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)


def describe(spec: NetSpec, model: CaffeModel | None = None) -> NetReport:
    shapes = infer_shapes(spec)
    report = NetReport(spec, shapes)
    if model is not None:
        report.weights, _ = match_weights(spec, shapes, model)
        report.caffemodel = model.source
    return report
