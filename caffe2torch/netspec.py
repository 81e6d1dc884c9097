"""The normalized net description every later stage works on: plain dataclasses, no protobuf, no dialects.

`upgrade.upgrade_net` produces a `NetSpec` from any dialect; parameters are already normalized (type strings,
pairs for kernel/pad/stride/dilation, dilation instead of `hole`, phase rules applied). A `NetSpec` round-trips
through JSON, which is how converted artifacts carry their definition.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from caffe2torch.util import loads_json

Shape = tuple[int | None, ...]


@dataclass
class ParamSpec:
    """Training settings and sharing name of one parameter blob (Caffe's ParamSpec)."""

    name: str = ""
    lr_mult: float = 1.0
    decay_mult: float = 1.0


@dataclass
class LayerSpec:
    name: str
    type: str
    bottoms: list[str] = field(default_factory=list)
    tops: list[str] = field(default_factory=list)
    # Type-specific parameter messages by their field name ("convolution_param", ...), as plain dicts that
    # hold only the fields the prototxt set (presence matters, e.g. for Interp), after normalization.
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    param_specs: list[ParamSpec] = field(default_factory=list)
    line: int | None = None
    # Fields no known Caffe schema has ({"field": dotted path, "line": n, "column": n}): a converter cannot know
    # what they mean, so they are reported as unsupported parameters (see shapes.check_supported).
    unknown_fields: list[dict[str, Any]] = field(default_factory=list)
    # The name the prototxt gives the layer, where it differs from `name`: Caffe runs layers that share a name,
    # so the upgrade makes `name` unique ('conv1', 'conv1#2', ...) for module keys and parameters, and keeps
    # the file's name here for messages and for matching the caffemodel (see load_weights.py).
    caffe_name: str | None = None

    @property
    def file_name(self) -> str:
        """The layer's name as the prototxt writes it."""
        return self.caffe_name if self.caffe_name is not None else self.name

    def param(self, message: str) -> dict[str, Any]:
        """The named parameter message, empty when the prototxt did not set it."""
        return self.params.get(message, {})


@dataclass
class InputSpec:
    """A net input: declared at net level, by an Input layer, or left behind by a data layer."""

    name: str
    shape: Shape
    # Preprocessing of the data layer it came from (mean_value, scale, crop_size, mirror, ...): kept for the
    # runner, never applied by the net itself.
    transform: dict[str, Any] = field(default_factory=dict)
    source_layer: str | None = None
    source_type: str | None = None
    # "image", "label", "data_dim" (valid height/width of each image) or "tensor"
    role: str = "tensor"


@dataclass
class DroppedLayer:
    name: str
    type: str
    reason: str
    line: int | None = None
    tops: list[str] = field(default_factory=list)
    hint: str = ""  # for a layer the phase rules left out: the options that would include it


@dataclass
class NetSpec:
    name: str
    dialect: str
    inputs: list[InputSpec] = field(default_factory=list)
    layers: list[LayerSpec] = field(default_factory=list)
    dropped: list[DroppedLayer] = field(default_factory=list)
    phase: str = "test"
    source: str | None = None
    notes: list[str] = field(default_factory=list)

    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def outputs(self) -> list[str]:
        """Blobs produced but never consumed afterwards: Caffe's net outputs, in order of production."""
        produced: list[str] = []
        for layer in self.layers:
            for bottom in layer.bottoms:
                if bottom in produced:
                    produced.remove(bottom)
            for top in layer.tops:
                if top in produced:
                    produced.remove(top)
                produced.append(top)
        return produced

    def layer(self, name: str) -> LayerSpec:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def shared_parameters(self) -> dict[tuple[str, int], tuple[str, int]]:
        """(layer, blob index) → (owner layer, blob index) for blobs shared by ParamSpec name; the first
        layer to name a parameter owns it, as in Caffe."""
        owners: dict[str, tuple[str, int]] = {}
        ties: dict[tuple[str, int], tuple[str, int]] = {}
        for layer in self.layers:
            for index, param in enumerate(layer.param_specs):
                if not param.name:
                    continue
                if param.name in owners:
                    ties[(layer.name, index)] = owners[param.name]
                else:
                    owners[param.name] = (layer.name, index)
        return ties

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NetSpec:
        raw = loads_json(text)
        return cls(
            name=raw["name"],
            dialect=raw["dialect"],
            inputs=[InputSpec(**{**i, "shape": tuple(i["shape"])}) for i in raw["inputs"]],
            layers=[
                LayerSpec(**{**lay, "param_specs": [ParamSpec(**p) for p in lay["param_specs"]]})
                for lay in raw["layers"]
            ],
            dropped=[DroppedLayer(**d) for d in raw["dropped"]],
            phase=raw["phase"],
            source=raw.get("source"),
            notes=list(raw.get("notes", [])),
        )
