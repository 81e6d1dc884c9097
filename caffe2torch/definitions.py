"""The bundled deploy definitions (caffe2torch/prototxt/*.prototxt, written by scripts/write_definitions.py)
and a structural comparison of two nets, used to prove that each bundled definition equals its original."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from caffe2torch.errors import CaffeError
from caffe2torch.netspec import LayerSpec, NetSpec

# Parameters that do not change what a deploy net computes.
_TRAINING_FIELDS = {"weight_filler", "bias_filler", "engine", "filler"}


def bundled_names() -> list[str]:
    folder = resources.files("caffe2torch").joinpath("prototxt")
    return sorted(p.name.removesuffix(".prototxt") for p in folder.iterdir() if p.name.endswith(".prototxt"))


def bundled_definition(name: str) -> Path:
    path = Path(str(resources.files("caffe2torch").joinpath("prototxt", f"{name}.prototxt")))
    if not path.exists():
        raise CaffeError(f"no bundled definition '{name}'; bundled: {', '.join(bundled_names())}")
    return path


def layer_signature(layer: LayerSpec) -> tuple:
    params = {
        message: {k: v for k, v in fields.items() if k not in _TRAINING_FIELDS}
        for message, fields in layer.params.items()
    }
    specs = [p.name for p in layer.param_specs if p.name]  # sharing names; learning-rate multipliers are training-only
    return (layer.name, layer.type, tuple(layer.bottoms), tuple(layer.tops), repr(sorted(params.items())), specs)


def compare_definitions(ours: NetSpec, original: NetSpec) -> list[str]:
    """Differences in layer order, names, types, connections, parameters and parameter sharing (training-only
    fields such as fillers and learning-rate multipliers ignored), as readable lines; empty when equal."""
    differences = []
    a, b = [layer_signature(x) for x in ours.layers], [layer_signature(x) for x in original.layers]
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            differences.append(f"layer {index}: ours {x} != original {y}")
    if len(a) != len(b):
        differences.append(f"{len(a)} layers here, {len(b)} in the original")
    return differences
