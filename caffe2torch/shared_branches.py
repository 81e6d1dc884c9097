"""Each shared branch of a net traced once: the ONNX export of DeepLab's multi-scale (MSC) nets.

An MSC net runs one trunk at several input scales. Each scaled copy is a set of layers of its own whose
parameters are all shared (by ParamSpec name) with the full-scale trunk, so the ResNet-101 MSC net holds its
trunk three times (1,359 layers). Traced plainly, torch records every copy layer by layer and runs its
exporter passes over all of them: two thirds of the export's time for nodes that repeat the first third.

Here each copy is traced as one placeholder node, and the full-scale trunk (the copies' original) between
marker nodes; then, in the ONNX graph, every placeholder is replaced by a renamed copy of the nodes the
original became, reading the copy's inputs, and the markers are removed. The result computes exactly what
the plainly traced graph computes, node for node: every size rule is traced from tensor shapes, so the
original's nodes do not depend on the size it was traced at (the premise of the dynamic export itself), and
its weights are the copy's (shared). The tests compare the two graphs structurally and by their outputs.

Copies are found on the NetSpec (`find_shared_branches`): a layer whose every parameter blob is shared with
one other layer of the same type and parameters repeats that layer; matching then extends along the blobs,
backwards and forwards, to the layers without parameters (ReLU, Eltwise, pooling) that compute the same
thing from corresponding inputs. A copy is used only where this is certain: its layers and their originals
are disjoint, it reads from outside only what its original reads from outside it (positionally), its values
are used outside only after its last layer, and the original's nodes in the traced graph read nothing but
those inputs, weights and constants. Anything else is traced plainly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from caffe2torch.net import CaffeNet
from caffe2torch.netspec import NetSpec

DOMAIN = "caffe2torch.trace"
# A blob version: (position of the layer that wrote it, or -1 for a net input; the blob's name).
Version = tuple[int, str]


@dataclass
class SharedBranch:
    """A copy of other layers of the net: `copy[i]` computes what `original[i]` computes (layer positions),
    from `entries` (copy's version, original's version: blobs read from outside) to `exits` (the versions
    used outside). `region` numbers the original's layer set: copies of the same layers share it."""

    copy: list[int]
    original: list[int]
    entries: list[tuple[Version, Version]]
    exits: list[tuple[Version, Version]]
    region: int = 0


def dataflow(spec: NetSpec) -> tuple[list[list[Version]], dict[str, Version]]:
    """The version each layer's bottoms read, and the last version of every blob (in-place layers write new
    versions of a name, as Caffe's blob dictionary does)."""
    latest: dict[str, Version] = {inp.name: (-1, inp.name) for inp in spec.inputs}
    reads = []
    for position, layer in enumerate(spec.layers):
        reads.append([latest[b] for b in layer.bottoms])
        for top in layer.tops:
            latest[top] = (position, top)
    return reads, latest


def _generic(shape) -> tuple:
    """A blob shape with the height and width of a 4-D blob left out: what a copy at another scale keeps."""
    return (len(shape), *shape[:2]) if len(shape) == 4 else tuple(shape)


def find_shared_branches(net: CaffeNet, outputs: Sequence[str], needed: set[str]) -> list[SharedBranch]:
    """The copies of other layers (see the module docstring) among the `needed` layers, whose values the
    export of `outputs` uses. Empty for a net without shared parameters."""
    spec = net.spec
    layers = spec.layers
    ties = spec.shared_parameters()
    if not ties:
        return []
    info = net.shapes.layers
    reads, latest = dataflow(spec)
    consumers: dict[Version, list[tuple[int, int]]] = defaultdict(list)
    for position, versions in enumerate(reads):
        for index, version in enumerate(versions):
            consumers[version].append((position, index))
    by_name = {layer.name: position for position, layer in enumerate(layers)}

    def owner(name: str, index: int) -> tuple[str, int]:
        return ties.get((name, index), (name, index))

    def same(c: int, o: int) -> bool:
        a, b = layers[c], layers[o]
        if (a.type, a.params, len(a.bottoms), len(a.tops)) != (b.type, b.params, len(b.bottoms), len(b.tops)):
            return False
        if [a.bottoms.index(t) if t in a.bottoms else -1 for t in a.tops] != \
                [b.bottoms.index(t) if t in b.bottoms else -1 for t in b.tops]:
            return False  # the same in-place pattern
        blobs = len(info[c].blob_shapes)
        if blobs != len(info[o].blob_shapes) or any(owner(a.name, i) != owner(b.name, i) for i in range(blobs)):
            return False
        return ([_generic(s) for s in info[c].bottom_shapes] == [_generic(s) for s in info[o].bottom_shapes]
                and [_generic(s) for s in info[c].top_shapes] == [_generic(s) for s in info[o].top_shapes])

    def top_index(version: Version) -> int:
        return layers[version[0]].tops.index(version[1])

    mapping: dict[int, int] = {}
    queue = []
    for c, layer in enumerate(layers):
        blobs = len(info[c].blob_shapes)
        if not blobs or any((layer.name, i) not in ties for i in range(blobs)):
            continue
        o = by_name[ties[(layer.name, 0)][0]]
        if o != c and same(c, o):
            mapping[c] = o
            queue.append(c)
    while queue:
        c = queue.pop()
        o = mapping[c]
        for vc, vo in zip(reads[c], reads[o]):  # backwards: the producers of corresponding bottoms
            pc, po = vc[0], vo[0]
            if vc == vo or pc < 0 or po < 0 or pc in mapping or pc == po:
                continue
            if top_index(vc) == top_index(vo) and same(pc, po):
                mapping[pc] = po
                queue.append(pc)
        for index, top in enumerate(layers[c].tops):  # forwards: consumers reading corresponding inputs only
            for pc, slot in consumers[(c, top)]:
                if pc in mapping:
                    continue
                candidates = [po for po, other in consumers[(o, layers[o].tops[index])] if other == slot
                              and po != pc and same(pc, po)
                              and all(vc == vo or (vc[0] >= 0 and mapping.get(vc[0]) == vo[0] and vo[0] >= 0
                                                   and top_index(vc) == top_index(vo))
                                      for vc, vo in zip(reads[pc], reads[po]))]
                if len(candidates) == 1:
                    mapping[pc] = candidates[0]
                    queue.append(pc)
    originals = set(mapping.values())
    mapping = {c: o for c, o in mapping.items() if c not in originals}  # a layer is a copy or an original
    if not mapping:
        return []

    # Copies: connected groups of copy layers.
    group = {c: c for c in mapping}

    def root(c: int) -> int:
        while group[c] != c:
            group[c] = group[group[c]]
            c = group[c]
        return c

    for c in mapping:
        for vc in reads[c]:
            if vc[0] in mapping:
                group[root(c)] = root(vc[0])
    members: dict[int, list[int]] = defaultdict(list)
    for c in sorted(mapping):
        members[root(c)].append(c)
    wanted_finals = {latest[name] for name in outputs if name in latest}
    branches = []
    for copy in members.values():
        branch = _branch(copy, mapping, layers, reads, consumers, wanted_finals, needed)
        if branch is not None:
            branches.append(branch)
    return _number_regions(branches)


def _branch(copy, mapping, layers, reads, consumers, wanted_finals, needed) -> SharedBranch | None:
    """The copy's entries and exits, or None where it cannot stand for a traced copy of its original."""
    inside, original = set(copy), [mapping[c] for c in copy]
    inside_original = set(original)
    if len(inside_original) != len(copy) or inside & inside_original:
        return None
    if any(layers[p].name not in needed for p in copy + original):
        return None
    entries: dict[Version, Version] = {}
    for c in copy:
        for vc, vo in zip(reads[c], reads[mapping[c]]):
            if vc[0] in inside:
                if mapping[vc[0]] != vo[0] or layers[vc[0]].tops.index(vc[1]) != layers[vo[0]].tops.index(vo[1]):
                    return None
            elif vo[0] in inside_original or entries.setdefault(vc, vo) != vo:
                return None
    if not entries or len(set(entries.values())) != len(entries):
        return None
    last = max(copy)
    exits = []
    for c in copy:
        o = mapping[c]
        for index, top in enumerate(layers[c].tops):
            version = (c, top)
            outside = [p for p, _ in consumers[version] if p not in inside]
            if any(p < last for p in outside):
                return None  # used outside before the copy is complete
            if outside or version in wanted_finals:
                exits.append((version, (o, layers[o].tops[index])))
    if not exits:
        return None
    # Ordered by the original's versions, so that copies of the same layers list them alike.
    return SharedBranch(copy, original, sorted(entries.items(), key=lambda e: e[1]), sorted(exits, key=lambda e: e[1]))


def _number_regions(branches: list[SharedBranch]) -> list[SharedBranch]:
    """Give copies of the same original (same layers, entries and exits) one region number; drop a copy whose
    original overlaps another one's differently (the original is traced once, between one set of markers)."""
    regions: dict[tuple, int] = {}
    layers_of: dict[int, set[int]] = {}
    kept = []
    for branch in branches:
        key = (tuple(sorted(branch.original)), tuple(vo for _, vo in branch.entries),
               tuple(vo for _, vo in branch.exits))
        if key not in regions:
            mine = set(branch.original)
            if any(mine & other for other in layers_of.values()):
                continue
            regions[key] = len(regions)
            layers_of[regions[key]] = mine
        branch.region = regions[key]
        kept.append(branch)
    return kept


# ---------------------------------------------------------------------------------------------------------
# Tracing: markers around the originals, one placeholder per copy
# ---------------------------------------------------------------------------------------------------------


class _Marker(torch.autograd.Function):
    """Identity; in the traced graph a node that names an original's input or output."""

    @staticmethod
    def forward(ctx, x, tag: str):
        return x.clone()

    @staticmethod
    def symbolic(g, x, tag: str):
        out = g.op(f"{DOMAIN}::Marker", x, tag_s=tag)
        out.setType(x.type())
        return out


class _Placeholder(torch.autograd.Function):
    """Stands for a copy: zeros of the copy's output shapes at the tracing size; in the traced graph one node
    from the copy's inputs to its outputs, which `graft` replaces by the original's nodes."""

    @staticmethod
    def forward(ctx, tag: str, shapes: tuple, *inputs):
        outs = tuple(torch.zeros(shape, dtype=inputs[0].dtype) for shape in shapes)
        return outs if len(outs) > 1 else outs[0]

    @staticmethod
    def symbolic(g, tag: str, shapes: tuple, *inputs):
        outs = g.op(f"{DOMAIN}::Placeholder", *inputs, tag_s=tag, outputs=len(shapes))
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        for value, shape in zip(outs, shapes):
            value.setType(inputs[0].type().with_sizes([None if axis in (0, 2, 3) and len(shape) == 4 else d
                                                       for axis, d in enumerate(shape)]))
        return tuple(outs) if len(outs) > 1 else outs[0]


def placeholder_tag(branches: list[SharedBranch], branch: SharedBranch) -> str:
    """"region:index": which original the placeholder copies, and which copy it is."""
    return f"{branch.region}:{branches.index(branch)}"


def copy_scopes(net: CaffeNet, branches: list[SharedBranch]) -> dict[str, dict[str, str]]:
    """For each placeholder's tag, the module key of each copy layer by its original's (graft's `scopes`)."""
    keys = [key for key, _, _ in net.program]
    return {placeholder_tag(branches, branch): {keys[o]: keys[c] for c, o in zip(branch.copy, branch.original)}
            for branch in branches}


def execute(net: CaffeNet, blobs: dict[str, torch.Tensor], only: set[str] | None,
            branches: list[SharedBranch], exit_shapes: dict[Version, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """CaffeNet._execute for tracing: each copy runs as one placeholder at its last layer, each original reads
    its inputs through markers and marks its outputs."""
    copy_of = {c: branch for branch in branches for c in branch.copy}
    last = {max(branch.copy): branch for branch in branches}
    entry_tags: dict[tuple[int, Version], str] = {}
    exit_tags: dict[Version, str] = {}
    for branch in branches:
        for j, (_, vo) in enumerate(branch.entries):
            for o in branch.original:
                entry_tags[(o, vo)] = f"{branch.region}:in:{j}"
        for j, (_, vo) in enumerate(branch.exits):
            exit_tags[vo] = f"{branch.region}:out:{j}"
    marked: dict[str, torch.Tensor] = {}
    captured: dict[Version, torch.Tensor] = {}
    latest: dict[str, Version] = {name: (-1, name) for name in blobs}
    for position, (key, bottoms, tops) in enumerate(net.program):
        if only is not None and key not in only:
            continue
        branch = copy_of.get(position)
        if branch is not None:
            for name in bottoms:
                version = latest[name]
                if version[0] not in branch.copy:
                    captured[version] = blobs[name]
            for top in tops:
                latest[top] = (position, top)
            if last.get(position) is branch:
                shapes = tuple(exit_shapes[vc] for vc, _ in branch.exits)
                tag = placeholder_tag(branches, branch)
                results = _Placeholder.apply(tag, shapes, *[captured[vc] for vc, _ in branch.entries])
                results = results if isinstance(results, tuple) else (results,)
                for (vc, _), value in zip(branch.exits, results):
                    blobs[vc[1]] = value
            continue
        inputs = []
        for name in bottoms:
            tag = entry_tags.get((position, latest[name]))
            if tag is not None and tag not in marked:
                marked[tag] = _Marker.apply(blobs[name], tag)
            inputs.append(marked[tag] if tag is not None else blobs[name])
        result = net.layers[key](*inputs)
        values = result if isinstance(result, tuple) else (result,)
        for top, value in zip(tops, values):
            latest[top] = (position, top)
            tag = exit_tags.get((position, top))
            blobs[top] = _Marker.apply(value, tag) if tag is not None else value
    return blobs


# ---------------------------------------------------------------------------------------------------------
# The ONNX graph: markers out, originals' nodes copied in place of the placeholders
# ---------------------------------------------------------------------------------------------------------


class GraftError(Exception):
    """The traced graph does not allow a copy (the export then traces plainly)."""


def _tag(node) -> str:
    return next(a.s.decode() for a in node.attribute if a.name == "tag")


def _has_subgraph(node) -> bool:
    return any(a.HasField("g") or len(a.graphs) for a in node.attribute)


def graft(model, net_inputs: set[str], scopes: dict[str, dict[str, str]] | None = None) -> None:
    """Replace, in place, each placeholder of `model` (a traced ModelProto) by a copy of its original's nodes,
    and remove the markers. `scopes`: for each placeholder's tag, the copy's layer (module key) for each layer
    of the original, to name the copied nodes. Raises GraftError where the original's nodes are not a closed
    computation from its marked inputs (then nothing should be used of this graph)."""
    scopes = scopes or {}
    graph = model.graph
    nodes = list(graph.node)
    if any(_has_subgraph(n) for n in nodes if n.domain == DOMAIN):
        raise GraftError("a marker with a subgraph")
    # 1. Markers out: the marked value and the marker's output become one name (the graph output's, where the
    # marker's output is one; else the marked value's).
    graph_outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    entries: dict[str, dict[int, str]] = defaultdict(dict)
    exits: dict[str, dict[int, str]] = defaultdict(dict)
    kept = []
    for node in nodes:
        if node.domain == DOMAIN and node.op_type == "Marker":
            source, target = node.input[0], node.output[0]
            region, kind, index = _tag(node).split(":")
            if target in graph_outputs:
                if source in graph_outputs or source in net_inputs:
                    raise GraftError("a marked value is both a graph input or output and marked")
                rename[source], name = target, target
            else:
                rename[target], name = source, source
            (entries if kind == "in" else exits)[region][int(index)] = name
        else:
            kept.append(node)

    def resolve(name: str) -> str:
        while name in rename:
            name = rename[name]
        return name

    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = resolve(name)
        for i, name in enumerate(node.output):
            if name in rename:
                node.output[i] = resolve(name)
    for region in (entries, exits):
        for names in region.values():
            for index in names:
                names[index] = resolve(names[index])
    # 2. Each original's nodes: ancestors of its outputs, below its inputs.
    producer = {out: i for i, node in enumerate(kept) for out in node.output if out}
    originals: dict[str, list[int]] = {}
    for region, outs in exits.items():
        ins = set(entries.get(region, {}).values())
        seen: set[int] = set()
        stack = [producer[name] for name in outs.values() if name in producer]
        if len(stack) != len(outs):
            raise GraftError("an original's output is not computed by a node")
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            for name in kept[i].input:
                if name and name not in ins and name in producer:
                    stack.append(producer[name])
        below = _descendants(kept, ins)
        reaching_inputs = _descendants(kept, net_inputs)
        if any(i not in below and i in reaching_inputs for i in seen):
            raise GraftError("an original reads a net value it was not marked to read")
        if any(_has_subgraph(kept[i]) for i in seen if i in below):
            raise GraftError("an original holds a subgraph")
        originals[region] = sorted(i for i in seen if i in below)
    # 3. Placeholders out, copies of the originals' nodes in, named as the copy's own layers would have named
    # them ("/conv1/Conv" of the original becomes "/conv1_res075/Conv"; name-based tools, such as the int8
    # quantizer's list of float layers, see the copy's layers).
    import copy as copying

    taken = {out for node in kept for out in node.output} | {v.name for v in graph.input} | \
        {t.name for t in graph.initializer}
    taken_nodes = {node.name for node in kept}
    result = []
    moved: dict[str, str] = {}  # placeholder outputs renamed to their copy's names
    for count, node in enumerate(kept):
        if not (node.domain == DOMAIN and node.op_type == "Placeholder"):
            result.append(node)
            continue
        tag = _tag(node)
        region = tag.split(":")[0]
        ins, outs = entries.get(region, {}), exits.get(region, {})
        if region not in originals or len(ins) != len(node.input) or len(outs) != len(node.output):
            raise GraftError("a placeholder without its original")
        scope, fallback = scopes.get(tag, {}), f"/shared{count}"
        names = {ins[j]: node.input[j] for j in range(len(ins))}
        for j in range(len(outs)):
            target = node.output[j]
            if target not in graph_outputs:
                moved[target] = target = _name_in_copy(outs[j], scope, fallback, taken)
            names[outs[j]] = target
        for i in originals[region]:
            for out in kept[i].output:
                if out and out not in names:
                    names[out] = _name_in_copy(out, scope, fallback, taken)
        for i in originals[region]:
            new = copying.deepcopy(kept[i])
            new.name = _name_in_copy(new.name, scope, fallback, taken_nodes)
            for j, name in enumerate(new.input):
                new.input[j] = names.get(name, name)
            for j, name in enumerate(new.output):
                new.output[j] = names.get(name, name)
            result.append(new)
    for node in result:
        for j, name in enumerate(node.input):
            if name in moved:
                node.input[j] = moved[name]
    if any(node.domain == DOMAIN for node in result):
        raise GraftError("a marker or placeholder left")
    del graph.node[:]
    graph.node.extend(_topological(result, {v.name for v in graph.input} | {t.name for t in graph.initializer}))
    # The exporter records types for the outputs of nodes it cannot infer (placeholders, markers): drop them.
    gone = set(rename) | {out for node in nodes if node.domain == DOMAIN for out in node.output}
    kept_info = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    imports = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(imports)


def _name_in_copy(name: str, scope: dict[str, str], fallback: str, used: set[str]) -> str:
    """The original's node or value name in its copy: under the copy layer's scope ("/conv1/Conv_output_0" →
    "/conv1_res075/Conv_output_0"), or under `fallback` where that is not a name of its own; added to `used`."""
    key, slash, rest = name[1:].partition("/")
    candidate = f"/{scope[key]}/{rest}" if name.startswith("/") and slash and key in scope else ""
    if not candidate or candidate in used:
        candidate = f"{fallback}/{name.lstrip('/')}"
        if candidate in used:
            raise GraftError(f"name {candidate} taken")
    used.add(candidate)
    return candidate


def _descendants(nodes, sources: set[str]) -> set[int]:
    """Indexes of the nodes (in topological order) that read, directly or not, one of `sources`."""
    reached, found = set(sources), set()
    for i, node in enumerate(nodes):
        if any(name in reached for name in node.input):
            found.add(i)
            reached.update(node.output)
    return found


def _reads(node) -> list[str]:
    """The values a node reads: its inputs, and the outer values its subgraphs (Loop bodies) read."""
    names = list(node.input)
    for attribute in node.attribute:
        for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            local = {v.name for v in sub.input} | {t.name for t in sub.initializer}
            for inner in sub.node:
                names += [n for n in _reads(inner) if n not in local]
                local.update(inner.output)
    return names


def _topological(nodes, available: set[str]) -> list:
    """The nodes in an order where each follows the producers of what it reads, the given order where that
    is one (a copy put where its placeholder was may read constants defined further on)."""
    ready = set(available) | {""}
    in_order = True
    for node in nodes:
        if not all(name in ready for name in _reads(node)):
            in_order = False
            break
        ready.update(node.output)
    if in_order:
        return list(nodes)
    import heapq

    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    waiting_on = [0] * len(nodes)
    dependents: dict[int, list[int]] = defaultdict(list)
    for i, node in enumerate(nodes):
        for name in set(_reads(node)):
            if name in producer:
                waiting_on[i] += 1
                dependents[producer[name]].append(i)
            elif name not in available and name:
                raise GraftError(f"the grafted graph reads an undefined value {name}")
    heap = [i for i, count in enumerate(waiting_on) if count == 0]
    heapq.heapify(heap)
    ordered = []
    while heap:
        i = heapq.heappop(heap)
        ordered.append(nodes[i])
        for j in dependents[i]:
            waiting_on[j] -= 1
            if waiting_on[j] == 0:
                heapq.heappush(heap, j)
    if len(ordered) != len(nodes):
        raise GraftError("the grafted graph has a cycle")
    return ordered
