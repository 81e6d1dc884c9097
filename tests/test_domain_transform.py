"""DomainTransform / DomainTransformForwardOnly (DeepLab v2, DT-EdgeNet): hand-computed cases, a per-pixel loop
written straight from deeplab-public-ver2's domain_transform_layer.cpp, nets from prototxt through torch and
onnxruntime at several sizes, and deeplab-verify --backend onnx."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from caffe2torch.cli import verify
from caffe2torch.errors import NetDefinitionError, UnsupportedError
from caffe2torch.layers.domain_transform import domain_transform, domain_transform_sigmas
from caffe2torch.load_weights import load_caffemodel_weights
from caffe2torch.onnx_export import export_onnx, tracing_shapes

from .conftest import net_from_text, run_net, write_random_weights

f32 = np.float32
SQRT2 = math.sqrt(2.0)


def caffe_loop(features, edges, data_dim, num_iter=3, spatial_sigma=50.0, range_sigma=5.0, min_weight=0.0,
               clamp=True, backward_weight_offset=1):
    """Forward_cpu of DomainTransformLayer (clamp) or DomainTransformForwardOnlyLayer (no clamp), one pixel at
    a time in float32 scalars. data_dim larger than the blob is clipped (Caffe aborts there). With
    backward_weight_offset=0 the backward passes use w[x] instead of w[x+1]: the rule an earlier facts sheet
    gave, which the old implementation followed (and which is wrong)."""
    features, edges = np.asarray(features, f32), np.asarray(edges, f32)
    num, channels, height, width = features.shape
    top = features.copy()
    ss, rs, mw = f32(spatial_sigma), f32(range_sigma), f32(min_weight)
    k = backward_weight_offset
    for n in range(num):
        ih, iw = height, width
        if data_dim is not None:
            dims = np.asarray(data_dim, f32)[n].reshape(-1)
            ih, iw = min(int(dims[0]), height), min(int(dims[1]), width)
        for it in range(num_iter):
            sigma = f32(float(ss) * math.sqrt(3.0) * 2.0 ** (num_iter - (it + 1.0)) / math.sqrt(4.0**num_iter - 1.0))
            m1, m2 = f32(-SQRT2 / float(sigma)), f32(ss / rs)
            w = np.zeros((height, width), f32)
            for r in range(ih):
                for x in range(iw):
                    value = f32(math.exp(float(f32(m1 * f32(f32(1) + f32(edges[n, 0, r, x] * m2))))))
                    w[r, x] = min(max(value, mw), f32(1)) if clamp else value
            for c in range(channels):
                y = top[n, c]
                for r in range(ih):
                    for x in range(1, iw):
                        y[r, x] = y[r, x] + f32(w[r, x] * f32(y[r, x - 1] - y[r, x]))
                    for x in range(iw - 2, -1, -1):
                        y[r, x] = y[r, x] + f32(w[r, x + k] * f32(y[r, x + 1] - y[r, x]))
                for x in range(iw):
                    for r in range(1, ih):
                        y[r, x] = y[r, x] + f32(w[r, x] * f32(y[r - 1, x] - y[r, x]))
                    for r in range(ih - 2, -1, -1):
                        y[r, x] = y[r, x] + f32(w[r + k, x] * f32(y[r + 1, x] - y[r, x]))
    return top


def run_dt(features, edges, data_dim=None, **params):
    def tensor(a):
        return None if a is None else torch.from_numpy(np.asarray(a, f32))

    return domain_transform(tensor(features), tensor(edges), tensor(data_dim), **params).numpy()


def rel_err(ours, ref):
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


# -- hand-computed cases --------------------------------------------------------------------------------------


def test_sigmas_follow_the_geometric_schedule():
    # N = 2: sigma_i = 50 * sqrt(3) * 2^(1-i) / sqrt(15); N = 1: sigma_0 = spatial_sigma
    np.testing.assert_allclose(domain_transform_sigmas(50.0, 2), [100 * math.sqrt(0.2), 50 * math.sqrt(0.2)],
                               rtol=1e-7)
    assert domain_transform_sigmas(7.0, 1) == [f32(7.0)]


def test_one_row_by_hand_backward_pass_uses_the_weight_of_the_right_pixel():
    a, b, c, d = 1.0, -2.0, 4.0, 0.5
    g = [0.0, 0.5, 0.0, 2.0]  # spatial_sigma = range_sigma = 1, one iteration: sigma_0 = 1, w = exp(-sqrt2 (1+g))
    w = [math.exp(-SQRT2 * (1 + gi)) for gi in g]
    # left → right: each pixel pulls towards its left neighbour with its own weight
    b1 = b + w[1] * (a - b)
    c1 = c + w[2] * (b1 - c)
    d1 = d + w[3] * (c1 - d)
    # right → left: pixel x pulls towards x+1 with the weight of x+1
    c2 = c1 + w[3] * (d1 - c1)
    b2 = b1 + w[2] * (c2 - b1)
    a2 = a + w[1] * (b2 - a)
    expected = [a2, b2, c2, d1]
    out = run_dt([[[[a, b, c, d]]]], [[[g]]], num_iter=1, spatial_sigma=1.0, range_sigma=1.0)
    np.testing.assert_allclose(out[0, 0, 0], expected, rtol=1e-6)  # the vertical passes change nothing in a row
    wrong_c2 = c1 + w[2] * (d1 - c1)  # the weight of x itself (the old rule) gives another answer
    assert abs(wrong_c2 - c2) > 1e-2


def test_one_column_by_hand():
    p, q, r = 3.0, 0.0, -1.0
    g = [1.0, 0.0, 0.25]
    w = [math.exp(-SQRT2 * (1 + gi)) for gi in g]
    q1 = q + w[1] * (p - q)  # top → bottom
    r1 = r + w[2] * (q1 - r)
    q2 = q1 + w[2] * (r1 - q1)  # bottom → top, weight of the lower pixel
    p2 = p + w[1] * (q2 - p)
    out = run_dt(np.array([p, q, r]).reshape(1, 1, 3, 1), np.array(g).reshape(1, 1, 3, 1),
                 num_iter=1, spatial_sigma=1.0, range_sigma=1.0)
    np.testing.assert_allclose(out[0, 0, :, 0], [p2, q2, r1], rtol=1e-6)


def test_min_weight_clamps_and_forward_only_does_not_clamp():
    features = [[[[1.0, 0.0]]]]
    # edge 10: w = exp(-11 sqrt2) ~ 2e-7, raised to min_weight 0.5: y1 = 0.5, then y0 = 1 + 0.5 (0.5 - 1)
    out = run_dt(features, [[[[0.0, 10.0]]]], num_iter=1, spatial_sigma=1.0, range_sigma=1.0, min_weight=0.5)
    np.testing.assert_allclose(out[0, 0, 0], [0.75, 0.5], rtol=1e-6)
    # edge -2: w = exp(sqrt2) > 1; DomainTransform clamps it to 1 (both pixels become 1) ...
    out = run_dt(features, [[[[0.0, -2.0]]]], num_iter=1, spatial_sigma=1.0, range_sigma=1.0, min_weight=0.5)
    np.testing.assert_allclose(out[0, 0, 0], [1.0, 1.0], rtol=1e-6)
    # ... ForwardOnly keeps it: y1 = w, y0 = 1 + w (w - 1); and min_weight does not apply
    w = math.exp(SQRT2)
    out = run_dt(features, [[[[0.0, -2.0]]]], num_iter=1, spatial_sigma=1.0, range_sigma=1.0, min_weight=None)
    np.testing.assert_allclose(out[0, 0, 0], [1 + w * (w - 1), w], rtol=1e-6)


# -- against the per-pixel loop ---------------------------------------------------------------------------------


def random_case(seed, negative_edges, shape=(2, 3, 7, 9)):
    rng = np.random.default_rng(seed)
    features = (rng.standard_normal(shape) * 3).astype(f32)
    edges = rng.random((shape[0], 1, *shape[2:])).astype(f32) * 1.5
    if negative_edges:
        edges -= f32(0.3)
    return features, edges


REGIONS = {
    "two regions": np.array([[[[5, 6]]], [[[7, 3.9]]]], f32),  # 3.9 truncates to 3
    "larger than the blob": np.array([[[[100, 9]]], [[[7, 50]]]], f32),
    "no data_dim": None,
    "empty and one pixel": np.array([[[[0, 9]]], [[[1, 1]]]], f32),
}


@pytest.mark.parametrize("num_iter", [1, 2, 3])
@pytest.mark.parametrize("region", list(REGIONS))
@pytest.mark.parametrize("kind", ["DomainTransform", "DomainTransformForwardOnly"])
def test_equals_the_per_pixel_loop(kind, region, num_iter):
    clamp = kind == "DomainTransform"
    features, edges = random_case(num_iter, negative_edges=not clamp)
    data_dim = REGIONS[region]
    params = dict(num_iter=num_iter, spatial_sigma=12.0, range_sigma=3.0)
    reference = caffe_loop(features, edges, data_dim, min_weight=0.2 if clamp else 0.0, clamp=clamp, **params)
    ours = run_dt(features, edges, data_dim, min_weight=0.2 if clamp else None, **params)
    assert rel_err(ours, reference) <= 1e-6
    if data_dim is not None:  # outside each region the input comes back bit for bit
        for n, dims in enumerate(data_dim):
            h, w = (int(v) for v in dims.reshape(-1))
            outside = np.ones(features.shape[1:], bool)
            outside[:, :h, :w] = False
            np.testing.assert_array_equal(ours[n][outside], features[n][outside])
    if region != "empty and one pixel":
        old_rule = caffe_loop(features, edges, data_dim, min_weight=0.2 if clamp else 0.0, clamp=clamp,
                              backward_weight_offset=0, **params)
        assert rel_err(old_rule, reference) > 1e-3


def test_data_dim_is_read_as_the_first_two_values_of_each_image():
    # Caffe reads bottom[2]->cpu_data_at(n)[0] and [1]: (N, 1, 1, 2) as DeepLab's data layer writes it, or the
    # (N, 2, 1, 1) its header documents, or more values per image
    features, edges = random_case(4, negative_edges=False)
    dims = REGIONS["two regions"]
    expected = run_dt(features, edges, dims, num_iter=2)
    np.testing.assert_array_equal(run_dt(features, edges, dims.reshape(2, 2, 1, 1), num_iter=2), expected)
    longer = np.concatenate([dims.reshape(2, 2), np.full((2, 2), 99, f32)], axis=1).reshape(2, 1, 2, 2)
    np.testing.assert_array_equal(run_dt(features, edges, longer, num_iter=2), expected)


def test_forward_only_with_weights_above_one_and_min_weight_ignored():
    features, edges = random_case(5, negative_edges=True)
    assert (edges < -0.25).any()  # 1 + edge * 4 < 0 there: weights above one
    reference = caffe_loop(features, edges, None, 2, 12.0, 3.0, min_weight=0.9, clamp=False)
    ours = run_dt(features, edges, num_iter=2, spatial_sigma=12.0, range_sigma=3.0, min_weight=None)
    assert rel_err(ours, reference) <= 1e-6
    assert rel_err(caffe_loop(features, edges, None, 2, 12.0, 3.0, clamp=False), reference) == 0
    clamped = run_dt(features, edges, num_iter=2, spatial_sigma=12.0, range_sigma=3.0, min_weight=0.0)
    assert rel_err(clamped, reference) > 1e-3  # clamping to 1 changes the result


def test_inputs_are_not_modified_and_values_outside_the_region_never_leak_in():
    features, edges = random_case(9, negative_edges=False, shape=(2, 2, 6, 1))
    kept = features.copy()
    run_dt(features, edges, num_iter=3)
    np.testing.assert_array_equal(features, kept)
    # NaN and inf outside the region: Caffe never reads them; neither do we
    features, edges = random_case(11, negative_edges=False)
    data_dim = REGIONS["two regions"]
    dirty = features.copy()
    dirty[0, :, 5:, :] = np.nan
    dirty[1, :, :, 3:] = np.inf
    out, clean = run_dt(dirty, edges, data_dim, num_iter=2), run_dt(features, edges, data_dim, num_iter=2)
    np.testing.assert_array_equal(out[0, :, :5, :6], clean[0, :, :5, :6])
    np.testing.assert_array_equal(out[1, :, :7, :3], clean[1, :, :7, :3])
    assert np.isnan(out[0, :, 5:, :]).all() and np.isinf(out[1, :, :, 3:]).all()


# -- parameter and shape checks ---------------------------------------------------------------------------------


def test_bad_parameters_are_reported_together_with_their_layers():
    head = ('input: "x" input_shape { dim: 1 dim: 2 dim: 5 dim: 5 }\n'
            'input: "e" input_shape { dim: 1 dim: 1 dim: 5 dim: 5 }\n')
    with pytest.raises(UnsupportedError) as info:
        net_from_text(head + 'layer { name: "a" type: "DomainTransform" bottom: "x" bottom: "e" top: "a"\n'
                      '  domain_transform_param { num_iter: 0 spatial_sigma: -1 range_sigma: nan min_weight: -0.1 } }\n'
                      'layer { name: "b" type: "DomainTransformForwardOnly" bottom: "x" top: "b" }\n')
    text = str(info.value)
    for needle in ("layer 'a' (DomainTransform)", "num_iter must be in 1..100, got 0", "spatial_sigma must be positive",
                   "range_sigma must be positive and finite, got nan", "min_weight must be >= 0",
                   "layer 'b' (DomainTransformForwardOnly)", "needs bottoms (features, edge map[, data_dim]), got 1",
                   "test.prototxt:3"):
        assert needle in text, text


@pytest.mark.parametrize(("edge_shape", "dim_shape", "message"), [
    ((1, 2, 5, 5), (1, 1, 1, 2), "one channel"),
    ((1, 1, 5, 4), (1, 1, 1, 2), "one channel, the features' size"),
    ((1, 1, 5, 5), (2, 1, 1, 2), "one (height, width) per image"),
    ((1, 1, 5, 5), (1, 1, 1, 1), "(height, width) for each image"),
])
def test_bottom_shapes_are_checked(edge_shape, dim_shape, message):
    def dims(shape):
        return " ".join(f"dim: {d}" for d in shape)

    text = (f'input: "x" input_shape {{ dim: 1 dim: 2 dim: 5 dim: 5 }}\n'
            f'input: "e" input_shape {{ {dims(edge_shape)} }}\n'
            f'input: "d" input_shape {{ {dims(dim_shape)} }}\n'
            'layer { name: "dt" type: "DomainTransform" bottom: "x" bottom: "e" bottom: "d" top: "dt" }\n')
    with pytest.raises(NetDefinitionError, match=re.escape(message)) as info:
        net_from_text(text)
    assert "layer 'dt' (DomainTransform)" in str(info.value)


# -- nets from prototxt: torch, onnxruntime, deeplab-verify -------------------------------------------------------

EDGE_NET = """name: "dt_edgenet_mini"
layer { name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim"
        transform_param { mean_value: 104.008 mean_value: 116.669 mean_value: 122.675 crop_size: 65 }
        include { phase: TEST } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "edge_conv" type: "Convolution" bottom: "data" top: "edge_conv"
        convolution_param { num_output: 1 kernel_size: 3 pad: 1 } }
layer { name: "edge_sigmoid" type: "Sigmoid" bottom: "edge_conv" top: "edge_sigmoid" }
layer { name: "edge" type: "Power" bottom: "edge_sigmoid" top: "edge" power_param { shift: -0.21 } }
layer { name: "dt" type: "DomainTransform" bottom: "score" bottom: "edge" bottom: "data_dim" top: "dt"
        domain_transform_param { num_iter: 3 spatial_sigma: 10 range_sigma: 2 min_weight: 0.3 } }
layer { name: "dtf" type: "DomainTransformForwardOnly" bottom: "dt" bottom: "edge" bottom: "data_dim" top: "dtf"
        domain_transform_param { num_iter: 2 spatial_sigma: 10 range_sigma: 2 } }
"""
DT = dict(num_iter=3, spatial_sigma=10.0, range_sigma=2.0, min_weight=0.3)
DTF = dict(num_iter=2, spatial_sigma=10.0, range_sigma=2.0, clamp=False)


def edge_net_inputs(height, width, valid, seed=0):
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((1, 3, height, width)) * 0.7).astype(f32)
    return {"data": data, "data_dim": np.array(valid, f32).reshape(1, 1, 1, 2)}


def reference_blobs(blobs, data_dim):
    """dt and dtf by the per-pixel loop, from the net's own score and edge blobs."""
    dt = caffe_loop(blobs["score"], blobs["edge"], data_dim, **DT)
    return {"score": blobs["score"], "edge": blobs["edge"], "dt": dt,
            "dtf": caffe_loop(dt, blobs["edge"], data_dim, **DTF)}


def onnx_blobs(path, inputs):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {i.name: inputs[i.name] for i in session.get_inputs()})))


def test_edge_net_in_torch_and_onnxruntime_at_sizes_other_than_the_traced_one(tmp_path):
    net = net_from_text(EDGE_NET)
    from caffe2torch.input_sizes import accepted_input_sizes

    assert tracing_shapes(net, accepted_input_sizes(net.spec))[0][2:] != (65, 65)  # traced at a small size
    write_random_weights(net, tmp_path / "w.caffemodel")
    load_caffemodel_weights(net, tmp_path / "w.caffemodel")
    export_onnx(net, tmp_path / "dt.onnx", ["edge", "dt", "dtf"])
    for (height, width), valid in (((65, 65), (50, 61.5)), ((41, 57), (41, 30))):
        inputs = edge_net_inputs(height, width, valid)
        ours = run_net(net, **inputs)  # the torch module runs at any size too
        assert (ours["edge"] < -0.2).any() and (ours["edge"] > 0.5).any()  # weights above 1, and clamped ones
        reference = reference_blobs(ours, inputs["data_dim"])
        assert rel_err(ours["dt"], reference["dt"]) <= 1e-6
        assert rel_err(ours["dtf"], reference["dtf"]) <= 1e-6
        runtime = onnx_blobs(tmp_path / "dt.onnx", inputs)
        assert runtime["dt"].shape == runtime["dtf"].shape == (1, 4, height, width)
        assert rel_err(runtime["dt"], ours["dt"]) <= 1e-6
        assert rel_err(runtime["dtf"], ours["dtf"]) <= 1e-6


BATCH_NET = """input: "x" input_shape { dim: 2 dim: 3 dim: 9 dim: 11 }
input: "edges" input_shape { dim: 2 dim: 1 dim: 9 dim: 11 }
input: "data_dim" input_shape { dim: 2 dim: 1 dim: 1 dim: 2 }
layer { name: "dt" type: "DomainTransform" bottom: "x" bottom: "edges" bottom: "data_dim" top: "dt"
        domain_transform_param { num_iter: 3 spatial_sigma: 12 range_sigma: 3 min_weight: 0.2 } }
layer { name: "dtf" type: "DomainTransformForwardOnly" bottom: "x" bottom: "edges" top: "dtf"
        domain_transform_param { num_iter: 1 spatial_sigma: 12 range_sigma: 3 } }
"""


def test_batch_with_different_regions_in_onnxruntime(tmp_path):
    net = net_from_text(BATCH_NET)
    export_onnx(net, tmp_path / "batch.onnx", ["dt", "dtf"])
    for height, width in ((9, 11), (16, 13)):
        features, edges = random_case(height, negative_edges=True, shape=(2, 3, height, width))
        data_dim = np.array([[[[height - 2, width]]], [[[4, width - 5]]]], f32)
        runtime = onnx_blobs(tmp_path / "batch.onnx", {"x": features, "edges": edges, "data_dim": data_dim})
        assert rel_err(runtime["dt"], caffe_loop(features, edges, data_dim, 3, 12.0, 3.0, 0.2)) <= 1e-6
        assert rel_err(runtime["dtf"], caffe_loop(features, edges, None, 1, 12.0, 3.0, clamp=False)) <= 1e-6
        np.testing.assert_array_equal(runtime["dt"][1, :, 4:, :], features[1, :, 4:, :])


def test_deeplab_verify_onnx_checks_the_domain_transform_blobs(tmp_path):
    from click.testing import CliRunner

    net = net_from_text(EDGE_NET)
    prototxt, caffemodel = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    prototxt.write_text(EDGE_NET)
    write_random_weights(net, caffemodel)
    load_caffemodel_weights(net, caffemodel)
    inputs = edge_net_inputs(65, 65, (60, 47), seed=3)
    np.savez(tmp_path / "inputs.npz", **inputs)
    reference = reference_blobs(run_net(net, **inputs), inputs["data_dim"])
    np.savez(tmp_path / "blobs.npz", **reference)
    args = [prototxt, caffemodel, "--inputs", tmp_path / "inputs.npz", "--reference", tmp_path / "blobs.npz",
            "--backend", "onnx", "--tol", "1e-6", "--json", tmp_path / "report.json"]
    result = CliRunner().invoke(verify.main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    checked = {b["name"]: b for b in report["blobs"]}
    assert {"dt", "dtf"} <= set(checked) and checked["dt"]["ok"] and checked["dtf"]["ok"]
    # the old rule (the backward passes weighted by the pixel itself) is caught, at the first DT blob
    reference["dt"] = caffe_loop(reference["score"], reference["edge"], inputs["data_dim"], backward_weight_offset=0,
                                 **DT)
    np.savez(tmp_path / "old.npz", **reference)
    args[5], args[-1] = tmp_path / "old.npz", tmp_path / "old.json"
    result = CliRunner().invoke(verify.main, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert json.loads((tmp_path / "old.json").read_text())["first_divergent"] == "dt"



def test_onnx_loops_are_bit_exact_given_the_same_exp(tmp_path, monkeypatch):
    """onnxruntime and torch differ only by their float32 exp (1 ulp on some weights): with onnxruntime's Exp
    in the torch layer too, the two agree bit for bit."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    net = net_from_text(BATCH_NET)
    export_onnx(net, tmp_path / "batch.onnx", ["dt", "dtf"])
    features, edges = random_case(21, negative_edges=True, shape=(2, 3, 23, 19))
    data_dim = np.array([[[[20, 19]]], [[[23, 11]]]], f32)
    runtime = onnx_blobs(tmp_path / "batch.onnx", {"x": features, "edges": edges, "data_dim": data_dim})
    graph = helper.make_graph([helper.make_node("Exp", ["x"], ["y"])], "exp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    monkeypatch.setattr(torch, "exp", lambda t: torch.from_numpy(session.run(None, {"x": t.numpy()})[0]))
    ours = run_net(net_from_text(BATCH_NET.replace("dim: 9", "dim: 23").replace("dim: 11", "dim: 19")),
                   x=features, edges=edges, data_dim=data_dim)
    np.testing.assert_array_equal(runtime["dt"], ours["dt"])
    np.testing.assert_array_equal(runtime["dtf"], ours["dtf"])
