"""The known DeepLab models (caffe2torch/weights/manifest.json, built by scripts/build_manifest.py): ids,
file names, class names, CRF presets, published numbers with their sources, and the layer signature that
recognises a released caffemodel from its layer names and blob shapes alone."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from caffe2torch.caffemodel import CaffeModel
from caffe2torch.errors import CaffeError
from caffe2torch.load_weights import blob_shape_matches


@dataclass
class KnownModel:
    id: str
    name: str
    files: list[str]
    definition: str
    crf_preset: str
    published: dict
    signature: dict[str, list[list[int]]]
    shared_layers: list[str] = field(default_factory=list)
    classes: str = ""
    # The label names, in label order (the demo has its own five; the others VOC's 21).
    class_names: list[str] = field(default_factory=list)
    also: str = ""
    source_prototxt: str = ""


@cache
def known_models() -> dict[str, KnownModel]:
    text = resources.files("caffe2torch").joinpath("weights", "manifest.json").read_text()
    return {m["id"]: KnownModel(**m) for m in json.loads(text)["models"]}


def identify(model: CaffeModel) -> KnownModel | None:
    """The known model whose signature the caffemodel matches: every signature layer present with the same
    blob shapes (legacy v1 shapes accepted), and no other weight layer except the ones the original net
    shares (Caffe repeats shared blobs in each layer that uses them)."""
    layers = model.by_name()
    weight_layers = {name for name, layer in layers.items() if layer.blobs}
    for known in known_models().values():
        if not set(known.signature) <= weight_layers:
            continue
        if weight_layers - set(known.signature) - set(known.shared_layers):
            continue
        if all(
            len(layers[name].blobs) == len(shapes)
            and all(blob_shape_matches(tuple(s), tuple(b.shape)) for s, b in zip(shapes, layers[name].blobs))
            for name, shapes in known.signature.items()
        ):
            return known
    return None


def known_model(model_id: str) -> KnownModel:
    models = known_models()
    if model_id not in models:
        raise CaffeError(f"unknown model '{model_id}'; known: {', '.join(models)}")
    return models[model_id]


def published_for(info) -> dict | None:
    """Published numbers for a ModelInfo whose model_id is known, keyed like the evaluator's variants."""
    model_id = getattr(info, "model_id", None)
    known = known_models().get(model_id) if model_id else None
    if known is None:
        return None
    return {"model": known.name, **known.published}
