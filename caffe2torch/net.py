"""`CaffeNet`: a NetSpec executed as Caffe does, as a torch module.

Caffe runs its layer list in order over a dictionary of named blobs; a layer whose top has the name of an
existing blob replaces it (in-place layers, the ResNet BatchNorm → Scale → ReLU chains). `CaffeNet` does the
same, so every Caffe blob has a value to compare, and every size is computed from live tensors: the module
runs at any input size and traces with symbolic height and width.

Nothing is allocated before the net is known to be valid and within the weights budget
(`shapes.check_weights_budget`). Built under `torch.device("meta")` a net allocates nothing at all;
`assign_tensors` then gives it its weights without a second copy (how `caffe2torch.load` reads an artifact).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping, Sequence

import torch
from torch import nn

from caffe2torch.errors import NetDefinitionError
from caffe2torch.layers import CaffeLayer, get_converter
from caffe2torch.netspec import NetSpec
from caffe2torch.shapes import ShapeReport, check_weights_budget, context_of, infer_shapes, layer_location


def module_key(name: str, taken: set[str]) -> str:
    """A ModuleDict key for a Caffe layer name ('.' is not allowed in module names)."""
    key = name.replace(".", "_") or "layer"
    while key in taken:
        key += "_"
    taken.add(key)
    return key


class CaffeNet(nn.Module):
    """A Caffe net as a torch module.

    `forward(*inputs)` takes the net inputs in `input_names` order and returns the net outputs (a tensor, or
    a tuple when there are several). `run(inputs, outputs=..., all_blobs=...)` returns named blobs.
    """

    def __init__(self, spec: NetSpec, shapes: ShapeReport | None = None, loaded: Collection[str] = ()):
        """`shapes`: the net's `infer_shapes(spec)`, when the caller already has it. `loaded`: layers whose
        every blob the caller loads next (load_weights.load_plan): built on the meta device, since their
        initial values would be overwritten at once; loading gives them their tensors."""
        super().__init__()
        self.spec = spec
        self.shapes: ShapeReport = shapes if shapes is not None else infer_shapes(spec)
        check_weights_budget(spec, self.shapes)
        ctx = context_of(spec)
        self.layers = nn.ModuleDict()
        self.layer_keys: dict[str, str] = {}
        self.program: list[tuple[str, list[str], list[str]]] = []
        taken: set[str] = set()
        shared = spec.shared_parameters()
        blob_counts = {info.name: len(info.blob_shapes) for info in self.shapes.layers}
        bottom_shapes = {info.name: info.bottom_shapes for info in self.shapes.layers}
        for layer in spec.layers:
            converter = get_converter(layer.type)
            assert converter is not None  # infer_shapes checked support
            bottoms = bottom_shapes[layer.name]
            # A layer whose every blob is shared (the MSC branches of DeepLab v2) is built on the meta device:
            # its own parameters would be replaced by the owner's at once, so they need no memory.
            count = blob_counts.get(layer.name, 0)
            fully_shared = count > 0 and all((layer.name, i) in shared for i in range(count))
            try:
                with torch.device("meta") if fully_shared or layer.name in loaded else contextlib.nullcontext():
                    module = converter.build(layer, bottoms, ctx)
                if not fully_shared and layer.name in loaded and _holds_more_than_blobs(module):
                    module = converter.build(layer, bottoms, ctx)  # tensors loading will not give: build them
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise NetDefinitionError(f"cannot build: {exc}", layer_location(spec, layer)) from None
            key = module_key(layer.name, taken)
            self.layers[key] = module
            self.layer_keys[layer.name] = key
            self.program.append((key, list(layer.bottoms), list(layer.tops)))
        self.input_names = spec.input_names()
        self.output_names = spec.outputs()
        # (layer, blob index) → (owner layer, owner blob index) for parameters shared by ParamSpec name.
        self.ties: dict[tuple[str, int], tuple[str, int]] = {}
        self._tie_shared_parameters()

    # -- parameter sharing -------------------------------------------------------------------------------

    def _tie_shared_parameters(self) -> None:
        for (layer, index), (owner, owner_index) in self.spec.shared_parameters().items():
            self._tie(layer, index, owner, owner_index)

    def _tie(self, layer: str, index: int, owner: str, owner_index: int) -> None:
        module, source = self.module(layer), self.module(owner)
        if index >= len(module.blob_names) or owner_index >= len(source.blob_names):
            return
        name, owner_name = module.blob_names[index], source.blob_names[owner_index]
        mine, theirs = getattr(module, name), getattr(source, owner_name)
        if mine is None or theirs is None or mine.shape != theirs.shape:
            raise NetDefinitionError(
                f"layer '{layer}' shares parameter {index} with layer '{owner}', but their shapes differ: "
                f"{tuple(mine.shape) if mine is not None else None} vs "
                f"{tuple(theirs.shape) if theirs is not None else None}"
            )
        if name in module._parameters:
            module._parameters[name] = theirs
        else:
            module._buffers[name] = theirs
        self.ties[(layer, index)] = (owner, owner_index)

    def module(self, layer_name: str) -> CaffeLayer:
        return self.layers[self.layer_keys[layer_name]]  # type: ignore[return-value]

    # -- execution ---------------------------------------------------------------------------------------

    def run(
        self,
        inputs: Mapping[str, torch.Tensor],
        outputs: Sequence[str] | None = None,
        all_blobs: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Run the net; return the requested blobs (default: the net outputs), or every blob's final value."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise NetDefinitionError(f"missing net input(s): {', '.join(missing)}; "
                                     f"the net takes {', '.join(self.input_names)}")
        blobs = self._execute({n: inputs[n] for n in self.input_names})
        if all_blobs:
            return blobs
        wanted = list(outputs) if outputs is not None else self.output_names
        unknown = [w for w in wanted if w not in blobs]
        if unknown:
            raise NetDefinitionError(f"no blob named {', '.join(unknown)}")
        return {w: blobs[w] for w in wanted}

    def _execute(self, blobs: dict[str, torch.Tensor], only: set[str] | None = None) -> dict[str, torch.Tensor]:
        """Run the program over named blobs; `only` restricts it to the given layer keys."""
        for key, bottoms, tops in self.program:
            if only is not None and key not in only:
                continue
            result = self.layers[key](*[blobs[b] for b in bottoms])
            if not tops:
                continue
            if isinstance(result, tuple):
                for top, value in zip(tops, result):
                    blobs[top] = value
            else:
                blobs[tops[0]] = result
        return blobs

    def forward(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.input_names):
            raise TypeError(f"expected {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                            f"got {len(inputs)}")
        blobs = self._execute(dict(zip(self.input_names, inputs)))
        results = tuple(blobs[name] for name in self.output_names)
        return results[0] if len(results) == 1 else results

    def execution_order(self) -> list[str]:
        """Blob names in the order they are first produced (inputs first)."""
        order = list(self.input_names)
        for _, _, tops in self.program:
            order += [t for t in tops if t not in order]
        return order


def _holds_more_than_blobs(module: nn.Module) -> bool:
    names = getattr(module, "blob_names", ())
    return any(name not in names for name, _ in [*module.named_parameters(), *module.named_buffers()])


def build_net(spec: NetSpec, shapes: ShapeReport | None = None, loaded: Collection[str] = ()) -> CaffeNet:
    """Build a CaffeNet (random weights) from a NetSpec, in eval mode; `loaded`: see CaffeNet."""
    return CaffeNet(spec, shapes, loaded).eval()


def assign_tensors(net: CaffeNet, tensors: Mapping[str, torch.Tensor]) -> None:
    """Make the given tensors the net's parameters and buffers of the same state-dict names, without copying
    them (a net built on the meta device gets its weights this way), then tie shared parameters again."""
    for key, tensor in tensors.items():
        path, _, name = key.rpartition(".")
        module = net.get_submodule(path)
        if name in module._parameters:
            module._parameters[name] = nn.Parameter(tensor)
        elif name in module._buffers:
            module._buffers[name] = tensor
        else:
            raise KeyError(key)
    net._tie_shared_parameters()
