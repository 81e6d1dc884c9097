"""Nets with DeepLab's DenseCRF layer inside (the v1 test nets, several deploy nets): where the runner takes over.

The DenseCRF layer has no ONNX lowering, and the runner applies DeepLab's CRF itself (with and without it in
one pass for deeplab-eval). So the runner's net ends at the CRF's input, its bottom 0 (e.g. `fc8_interp`),
and the layer's own dense_crf_param becomes the model's CRF setting, with the colours the layer saw:
- bottom 2 is the net's image input (the mean-subtracted data blob, in the net's channel order, scale
  applied): colours "net-input";
- no bottom 2: positional kernels only, colours "none".
A colour bottom computed inside the net is not something the runner can reproduce: such nets need
`--onnx-outputs` and a preset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from caffe2torch.crf import CRFParams
from caffe2torch.errors import NetDefinitionError, UnsupportedError
from caffe2torch.layers.densecrf import crf_params_from_layer
from caffe2torch.netspec import LayerSpec, NetSpec
from caffe2torch.shapes import layer_location

CRF_TYPES = ("DenseCRF", "DENSE_CRF")


@dataclass
class InNetCRF:
    """A DenseCRF layer the runner replaces: its scores blob and its setting."""

    layer: str
    scores: str
    params: CRFParams
    colours: str  # "net-input" or "none"
    output_probability: bool = True

    def to_metadata(self) -> dict[str, object]:
        return {"layer": self.layer, "params": asdict(self.params), "colours": self.colours,
                "output_probability": self.output_probability}


def needed_layers(spec: NetSpec, outputs: list[str]) -> list[LayerSpec]:
    """The layers the given blobs depend on, in execution order (walking the program backwards)."""
    needed, layers = set(outputs), []
    for layer in reversed(spec.layers):
        if needed & set(layer.tops):
            layers.append(layer)
            needed |= set(layer.bottoms)
    return layers[::-1]


def needed_inputs(spec: NetSpec, outputs: list[str]) -> list[str]:
    """The net inputs the given blobs depend on, in the net's input order."""
    blobs = set(outputs) | {b for layer in needed_layers(spec, outputs) for b in layer.bottoms}
    return [name for name in spec.input_names() if name in blobs]


def describe_crf_layer(spec: NetSpec, layer: LayerSpec) -> InNetCRF:
    """The runner's view of a DenseCRF layer; UnsupportedError when its colours cannot be reproduced."""
    where = layer_location(spec, layer)
    if len(layer.bottoms) < 2:
        raise NetDefinitionError("DenseCRF needs bottoms (scores, data_dim[, data])", where)
    images = [i.name for i in spec.inputs if i.role == "image"] or [i.name for i in spec.inputs[:1]]
    if len(layer.bottoms) >= 3 and layer.bottoms[2] not in images:
        raise UnsupportedError([(where, f"the CRF's colour input '{layer.bottoms[2]}' is computed inside the net, "
                                 "not the net's image input, so the runner cannot reproduce what the layer sees; "
                                 "export its scores with --onnx-outputs and use a CRF preset")], spec.source)
    param = layer.param("dense_crf_param")
    return InNetCRF(layer.name, layer.bottoms[0], crf_params_from_layer(param),
                    "net-input" if len(layer.bottoms) >= 3 else "none", bool(param.get("output_probability", True)))


@dataclass
class RunnerOutputs:
    """What the runner's net returns, and the in-net CRF it stands in for."""

    outputs: list[str]
    crf: InNetCRF | None = None
    notes: list[str] = field(default_factory=list)


def runner_outputs(spec: NetSpec, requested: list[str] | None = None) -> RunnerOutputs:
    """The blobs an exported model (and the runner) returns. Default: the net's outputs; when they depend on
    one DenseCRF layer, its scores input instead, with the layer as the model's CRF setting. With
    `requested` blobs, those; a DenseCRF whose scores are the first of them gives the CRF setting."""
    if requested:
        fed = [layer for layer in spec.layers if layer.type in CRF_TYPES and layer.bottoms[:1] == requested[:1]]
        if len(fed) != 1:
            return RunnerOutputs(list(requested))
        try:
            crf = describe_crf_layer(spec, fed[0])
        except (UnsupportedError, NetDefinitionError) as exc:
            return RunnerOutputs(list(requested), None, [f"the net's CRF setting is not recorded: {exc}"])
        return RunnerOutputs(list(requested), crf, [f"CRF setting: the net's DenseCRF layer '{crf.layer}'"])
    outputs = spec.outputs()
    crfs = [layer for layer in needed_layers(spec, outputs) if layer.type in CRF_TYPES]
    if not crfs:
        return RunnerOutputs(outputs)
    if len(crfs) > 1:
        raise UnsupportedError([(layer_location(spec, layer), "one of several DenseCRF layers on the way to the "
                                 "net's outputs; the runner replaces one: choose the scores with --onnx-outputs")
                                for layer in crfs], spec.source)
    crf = describe_crf_layer(spec, crfs[0])
    note = (f"the model ends at '{crf.scores}', the input of the DenseCRF layer '{crf.layer}' (DenseCRF has no ONNX "
            f"lowering); deeplab-run/-eval --crf apply that layer's setting ({crf.params.max_iter} iterations, "
            f"colours: {crf.colours})")
    return RunnerOutputs([crf.scores], crf, [note])
