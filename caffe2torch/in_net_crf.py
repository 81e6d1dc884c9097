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

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from caffe2torch.crf import CRFParams
from caffe2torch.errors import NetDefinitionError, UnsupportedError
from caffe2torch.layers.densecrf import crf_params_from_layer
from caffe2torch.netspec import LayerSpec, NetSpec, Shape
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


def runner_outputs(spec: NetSpec, requested: list[str] | None = None,
                   shapes: Mapping[str, Shape] | None = None) -> RunnerOutputs:
    """The blobs an exported model (and the runner) returns. Default: the net's outputs; when they depend on
    one DenseCRF layer, its scores input instead, with the layer as the model's CRF setting. With
    `requested` blobs, those; a DenseCRF whose scores are the first of them gives the CRF setting. `shapes`
    (the blobs' inferred shapes) let score_outputs see which blobs are score maps."""
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
        return score_outputs(spec, outputs, shapes)
    if len(crfs) > 1:
        raise UnsupportedError([(layer_location(spec, layer), "one of several DenseCRF layers on the way to the "
                                 "net's outputs; the runner replaces one: choose the scores with --onnx-outputs")
                                for layer in crfs], spec.source)
    crf = describe_crf_layer(spec, crfs[0])
    note = (f"the model ends at '{crf.scores}', the input of the DenseCRF layer '{crf.layer}' (DenseCRF has no ONNX "
            f"lowering); deeplab-run/-eval --crf apply that layer's setting ({crf.params.max_iter} iterations, "
            f"colours: {crf.colours})")
    return RunnerOutputs([crf.scores], crf, [note])


def score_outputs(spec: NetSpec, outputs: list[str], shapes: Mapping[str, Shape] | None = None) -> RunnerOutputs:
    """The runner's outputs for a net without a DenseCRF layer: its outputs, the score map first.
    - Several outputs (a side blob nothing reads, e.g. an input resized for a scale branch that a deploy file
      left unused): the one computed by the most layers is the score map and goes first; the others stay.
    - A score map that ends in Softmax and/or ArgMax over the channels (SegNet's deploy files end in a label
      map): the model ends at the logits before them instead. The argmax of the logits is the same label map,
      and the CRF takes −logits as its unary (pydensecrf's −log(softmax) differs from it by a per-pixel constant,
      which its normalisation removes); an ArgMax output would be one channel, not one per class. Only where
      `shapes` show the logits are a 4-D score map: a classifier's `prob` stays its output."""
    notes: list[str] = []
    if len(outputs) > 1:
        depth = {name: len(needed_layers(spec, [name])) for name in outputs}
        main = max(outputs, key=lambda name: depth[name])  # the first of the deepest
        if main != outputs[0]:
            notes.append(f"the net has {len(outputs)} outputs ({', '.join(outputs)}); the runner segments with "
                         f"'{main}', the one computed by the most layers ({depth[main]})")
            outputs = [main] + [name for name in outputs if name != main]
    scores, passed = logits_behind(spec, outputs[0])
    if passed and shapes is not None and len(shapes.get(scores) or ()) == 4:
        notes.append(f"the model ends at '{scores}', before the {' and '.join(passed)} at the end of the net: the "
                     "runner takes the argmax itself (the same labels) and gives the CRF the logits")
        outputs = [scores] + [name for name in outputs[1:] if name != scores]
    return RunnerOutputs(outputs, None, notes)


def logits_behind(spec: NetSpec, blob: str) -> tuple[str, list[str]]:
    """Walk back from `blob` through the Softmax and ArgMax layers over the channel axis that make it (ArgMax
    with top_k 1 and no out_max_val: a label map; not in place, so the blob before them still exists): the
    logits blob, and the layers passed ("ArgMax 'argmax'", "Softmax 'prob'")."""
    producers = {top: layer for layer in spec.layers for top in layer.tops}
    passed: list[str] = []
    while (layer := producers.get(blob)) is not None and len(layer.bottoms) == 1 and layer.bottoms[0] != blob:
        if layer.type in ("Softmax", "SOFTMAX"):
            param = layer.param("softmax_param")
            if int(param.get("axis", 1)) != 1:
                break
        elif layer.type in ("ArgMax", "ARGMAX"):
            param = layer.param("argmax_param")
            if (param.get("axis") is None or int(param["axis"]) != 1 or int(param.get("top_k", 1)) != 1
                    or param.get("out_max_val", False) in (True, "true")):
                break
        else:
            break
        passed.append(f"{layer.type} '{layer.name}'")
        blob = layer.bottoms[0]
    return blob, passed
