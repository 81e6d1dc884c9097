"""Shared branches (DeepLab's multi-scale copies of a trunk) traced once: the ONNX graph computes exactly what the
plainly traced graph computes, node for node, and onnxruntime gives the same bits."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from caffe2torch import shared_branches
from caffe2torch.onnx_export import export_onnx, required_layers
from caffe2torch.pipeline import convert

from .conftest import net_from_text, spec_from_text, write_random_weights


def trunk(suffix: str, bottom: str, relu: str = "") -> str:
    """conv → BatchNorm → Scale → ReLU (in place) → pool → dilated conv → Eltwise with the pool → score."""
    s = suffix
    return f"""
layer {{ name: "conv1{s}" type: "Convolution" bottom: "{bottom}" top: "conv1{s}"
        param {{ name: "c1_w" }} param {{ name: "c1_b" }} convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 }} }}
layer {{ name: "bn1{s}" type: "BatchNorm" bottom: "conv1{s}" top: "conv1{s}"
        param {{ name: "bn1_0" }} param {{ name: "bn1_1" }} param {{ name: "bn1_2" }} }}
layer {{ name: "scale1{s}" type: "Scale" bottom: "conv1{s}" top: "conv1{s}"
        param {{ name: "s1_0" }} param {{ name: "s1_1" }} scale_param {{ bias_term: true }} }}
layer {{ name: "relu1{s}" type: "ReLU" bottom: "conv1{s}" top: "conv1{s}" {relu} }}
layer {{ name: "pool1{s}" type: "Pooling" bottom: "conv1{s}" top: "pool1{s}"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2{s}" type: "Convolution" bottom: "pool1{s}" top: "conv2{s}"
        param {{ name: "c2_w" }} param {{ name: "c2_b" }}
        convolution_param {{ num_output: 4 kernel_size: 3 pad: 2 dilation: 2 }} }}
layer {{ name: "sum{s}" type: "Eltwise" bottom: "pool1{s}" bottom: "conv2{s}" top: "sum{s}" }}
layer {{ name: "score{s}" type: "Convolution" bottom: "sum{s}" top: "score{s}"
        param {{ name: "sc_w" }} param {{ name: "sc_b" }} convolution_param {{ num_output: 3 kernel_size: 1 }} }}
"""


HEAD = """input: "data" input_shape { dim: 1 dim: 3 dim: 33 dim: 33 }
layer { name: "data_half" type: "Interp" bottom: "data" top: "data_half" interp_param { shrink_factor: 2 } }
"""
FUSION = """
layer { name: "score_half_up" type: "Interp" bottom: "score_half" top: "score_half_up" interp_param { zoom_factor: 2 } }
layer { name: "fusion" type: "Eltwise" bottom: "score" bottom: "score_half_up" top: "fusion"
        eltwise_param { operation: MAX } }
"""
MSC = HEAD + trunk("", "data") + trunk("_half", "data_half") + FUSION


def signature(model) -> list[str]:
    """A structural hash of each graph output: op types, attributes and inputs all the way up, names ignored.
    Equal hashes: the same computation, node for node."""
    graph = model.graph
    sig = {v.name: "input:" + v.name for v in [*graph.input, *graph.initializer]} | {"": ""}
    for node in graph.node:
        attributes = sorted((a.name, numpy_helper.to_array(a.t).tobytes() if a.type == onnx.AttributeProto.TENSOR
                             else repr(onnx.helper.get_attribute_value(a))) for a in node.attribute)
        base = repr((node.domain, node.op_type, attributes, [sig[i] for i in node.input]))
        for index, out in enumerate(node.output):
            sig[out] = hashlib.sha256(f"{base}#{index}".encode()).hexdigest()
    return [sig[o.name] for o in graph.output]


def converted(tmp_path, text: str):
    path = tmp_path / "w.caffemodel"
    write_random_weights(net_from_text(text), path)
    net, _ = convert(spec_from_text(text), path)
    return net


def both_exports(tmp_path, net, monkeypatch, outputs=None):
    """(export with shared branches, plain export)."""
    shared = export_onnx(net, tmp_path / "shared.onnx", outputs)
    with monkeypatch.context() as patch:
        patch.setattr(shared_branches, "find_shared_branches", lambda *args: [])
        plain = export_onnx(net, tmp_path / "plain.onnx", outputs)
    return onnx.load(str(shared)), onnx.load(str(plain))


def assert_same_outputs(shared_path, plain_path, net):
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (shared_path, plain_path)]
    rng = np.random.default_rng(3)
    for shape in [(1, 3, 33, 33), (2, 3, 65, 97), (1, 3, 129, 65)]:
        x = rng.standard_normal(shape).astype(np.float32)
        a, b = (s.run(None, {"data": x}) for s in sessions)
        assert all(np.array_equal(p, q) for p, q in zip(a, b))
        with torch.no_grad():
            expected = net(torch.from_numpy(x))
        np.testing.assert_allclose(a[0], expected.numpy(), atol=1e-4)


def test_the_scaled_trunk_is_found_as_a_copy_of_the_full_scale_one():
    net = net_from_text(MSC)
    names = [layer.name for layer in net.spec.layers]
    [branch] = shared_branches.find_shared_branches(net, net.output_names, required_layers(net, net.output_names))
    assert [names[p] for p in branch.copy] == [n + "_half" for n in
                                               ("conv1", "bn1", "scale1", "relu1", "pool1", "conv2", "sum", "score")]
    assert [names[p] for p in branch.original] == ["conv1", "bn1", "scale1", "relu1", "pool1", "conv2", "sum", "score"]
    assert branch.entries == [((names.index("data_half"), "data_half"), (-1, "data"))]
    assert branch.exits == [((names.index("score_half"), "score_half"), (names.index("score"), "score"))]


def test_export_with_shared_branches_is_the_plain_export_node_for_node(tmp_path, monkeypatch):
    net = converted(tmp_path, MSC)
    shared, plain = both_exports(tmp_path, net, monkeypatch)
    assert len(shared.graph.node) < len(plain.graph.node)  # the copy was traced once: its constants are shared
    assert signature(shared) == signature(plain)
    assert not [n for n in shared.graph.node if n.domain == shared_branches.DOMAIN]
    assert [o.domain for o in shared.opset_import] == [o.domain for o in plain.opset_import]
    assert [t.name for t in shared.graph.initializer] == [t.name for t in plain.graph.initializer]
    # The copied nodes have the names the copy's own layers give them (the int8 quantizer picks by name).
    copied = {n.name for n in shared.graph.node if n.name.startswith("/conv1_half/")}
    assert copied and copied <= {n.name for n in plain.graph.node}
    assert_same_outputs(tmp_path / "shared.onnx", tmp_path / "plain.onnx", net)


def test_blobs_inside_a_copy_exported_as_outputs(tmp_path, monkeypatch):
    net = converted(tmp_path, MSC)
    outputs = ["fusion", "pool1_half", "conv1_half", "sum", "sum_half", "conv1"]
    shared, plain = both_exports(tmp_path, net, monkeypatch, outputs)
    assert [o.name for o in shared.graph.output] == outputs
    assert signature(shared) == signature(plain)


def test_copies_split_where_a_layer_differs(tmp_path, monkeypatch):
    # The half-scale ReLU is leaky: the layers before it and after it are two copies of two originals.
    text = HEAD + trunk("", "data") + trunk("_half", "data_half", "relu_param { negative_slope: 0.1 }") + FUSION
    net = converted(tmp_path, text)
    names = [layer.name for layer in net.spec.layers]
    branches = shared_branches.find_shared_branches(net, net.output_names, required_layers(net, net.output_names))
    assert [[names[p] for p in b.copy] for b in branches] == [
        ["conv1_half", "bn1_half", "scale1_half"], ["pool1_half", "conv2_half", "sum_half", "score_half"]]
    assert [b.region for b in branches] == [0, 1]
    shared, plain = both_exports(tmp_path, net, monkeypatch)
    assert signature(shared) == signature(plain)
    assert_same_outputs(tmp_path / "shared.onnx", tmp_path / "plain.onnx", net)


def test_a_copy_read_from_outside_before_it_ends_is_traced_plainly(tmp_path, monkeypatch):
    # "peek" reads the copy's pool before the copy's last layer: the copy cannot be one node there.
    text = MSC.replace('layer { name: "conv2_half"', 'layer { name: "peek" type: "ReLU" bottom: "pool1_half" '
                       'top: "peek" }\nlayer { name: "conv2_half"')
    net = converted(tmp_path, text)
    outputs = ["fusion", "peek"]
    assert shared_branches.find_shared_branches(net, outputs, required_layers(net, outputs)) == []
    shared, plain = both_exports(tmp_path, net, monkeypatch, outputs)
    assert signature(shared) == signature(plain)


def test_copies_start_at_the_first_shared_layer():
    single = net_from_text(HEAD + trunk("", "data"))
    assert shared_branches.find_shared_branches(single, single.output_names,
                                                required_layers(single, single.output_names)) == []
    # Without the conv1 ties, conv1_half has weights of its own: the copy starts after it.
    net = net_from_text(MSC.replace('param { name: "c1_w" } param { name: "c1_b" }', ""))
    [branch] = shared_branches.find_shared_branches(net, net.output_names, required_layers(net, net.output_names))
    names = [layer.name for layer in net.spec.layers]
    assert names[branch.copy[0]] == "bn1_half"
    assert branch.entries == [((names.index("conv1_half"), "conv1_half"), (names.index("conv1"), "conv1"))]


def test_a_graph_that_does_not_allow_the_copy_is_exported_plainly(tmp_path, monkeypatch):
    net = converted(tmp_path, MSC)

    def refuse(*args):
        raise shared_branches.GraftError("refused")

    monkeypatch.setattr(shared_branches, "graft", refuse)
    model = onnx.load(str(export_onnx(net, tmp_path / "m.onnx")))
    assert not [n for n in model.graph.node if n.domain == shared_branches.DOMAIN]
    monkeypatch.undo()
    with monkeypatch.context() as patch:
        patch.setattr(shared_branches, "find_shared_branches", lambda *args: [])
        plain = onnx.load(str(export_onnx(net, tmp_path / "plain.onnx")))
    assert len(model.graph.node) == len(plain.graph.node)
    assert signature(model) == signature(plain)


@pytest.mark.parametrize("order", ["shuffled", "given"])
def test_topological_order_keeps_the_given_order_where_it_is_one(order):
    nodes = [onnx.helper.make_node("Relu", ["x"], ["a"], name="first"),
             onnx.helper.make_node("Relu", ["a"], ["b"], name="second"),
             onnx.helper.make_node("Add", ["a", "b"], ["c"], name="third")]
    given = [nodes[2], nodes[0], nodes[1]] if order == "shuffled" else nodes
    assert [n.name for n in shared_branches._topological(given, {"x"})] == ["first", "second", "third"]
    with pytest.raises(shared_branches.GraftError, match="undefined"):
        shared_branches._topological([onnx.helper.make_node("Relu", ["y"], ["z"])], {"x"})


def test_a_net_exported_at_a_fixed_size_is_traced_plainly(tmp_path, monkeypatch):
    from caffe2torch.input_sizes import fixed_sizes

    net = converted(tmp_path, MSC)
    found = []
    real = shared_branches.find_shared_branches
    monkeypatch.setattr(shared_branches, "find_shared_branches", lambda *args: found.append(1) or real(*args))
    export_onnx(net, tmp_path / "fixed.onnx", sizes=fixed_sizes(33, 33))
    assert not found
    export_onnx(net, tmp_path / "dynamic.onnx")
    assert found
