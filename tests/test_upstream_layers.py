"""Upstream Caffe's layers beyond DeepLab's, each against Caffe's own arithmetic: small cases worked out by hand,
and references written loop for loop from BVLC caffe master's layers/*.cpp (the Forward_cpu loops, in numpy),
in torch and in onnxruntime; OpenCV 4's Caffe importer as a second, independent reference where it has the
layer. Also: repeated layer names, run as Caffe runs them and loaded as Net::CopyTrainedLayersFrom loads them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe2torch.caffe_math import pool_average_divisors, pool_output_size
from caffe2torch.caffemodel import WeightsLayer, write_caffemodel
from caffe2torch.errors import InvalidNetError, NetDefinitionError, UnsupportedError, WeightsMismatchError
from caffe2torch.input_sizes import accepted_input_sizes
from caffe2torch.load_weights import load_caffemodel_weights
from caffe2torch.onnx_export import export_onnx
from caffe2torch.pipeline import convert, verify_onnx

from .conftest import net_from_text, run_net, spec_from_text
from .opencv_reference import opencv_blobs

FLT_MAX = np.float32(3.4028234663852886e38)
FLT_MIN = np.float32(1.1754943508222875e-38)


def net_text(body: str, shape=(2, 2, 7, 9), name: str = "x") -> str:
    return f'input: "{name}"\ninput_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}\n{body}'


def check_onnx(net, inputs: dict, expected: dict) -> None:
    """onnxruntime computes every expected blob as given (compare_blobs: max |diff| / max |expected|)."""
    report = verify_onnx(net, inputs, expected)
    assert report.ok and {b.name for b in report.blobs} >= set(expected), report.first_divergent


def random(shape, seed=0, positive=False):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.abs(x) + np.float32(0.1) if positive else x


# ---------------------------------------------------------------------------------------------------------
# Pooling: PoolingLayer::Reshape / Forward_cpu, loop for loop
# ---------------------------------------------------------------------------------------------------------


def caffe_pooling(x, method, kernel, stride, pad, round_mode="CEIL"):
    """PoolingLayer<float>::Forward_cpu (MAX with its mask, AVE) and the TEST-phase STOCHASTIC GPU kernel."""
    n, c, height, width = x.shape
    out_h = pool_output_size(height, kernel[0], pad[0], stride[0], round_mode)
    out_w = pool_output_size(width, kernel[1], pad[1], stride[1], round_mode)
    top = np.zeros((n, c, out_h, out_w), np.float32)
    mask = np.full((n, c, out_h, out_w), -1, np.float32)
    for a in range(n):
        for b in range(c):
            plane = x[a, b]
            for ph in range(out_h):
                for pw in range(out_w):
                    hstart, wstart = ph * stride[0] - pad[0], pw * stride[1] - pad[1]
                    if method == "MAX":
                        hend, wend = min(hstart + kernel[0], height), min(wstart + kernel[1], width)
                        best, where = -FLT_MAX, -1
                        for h in range(max(hstart, 0), hend):
                            for w in range(max(wstart, 0), wend):
                                if plane[h, w] > best:
                                    best, where = plane[h, w], h * width + w
                        top[a, b, ph, pw], mask[a, b, ph, pw] = best, where
                    elif method == "AVE":
                        hend, wend = min(hstart + kernel[0], height + pad[0]), min(wstart + kernel[1], width + pad[1])
                        pool_size = (hend - hstart) * (wend - wstart)
                        total = np.float32(0)
                        for h in range(max(hstart, 0), min(hend, height)):
                            for w in range(max(wstart, 0), min(wend, width)):
                                total += plane[h, w]
                        with np.errstate(all="ignore"):
                            top[a, b, ph, pw] = total / np.float32(pool_size)
                    else:  # StoPoolForwardTest
                        hend, wend = min(hstart + kernel[0], height), min(wstart + kernel[1], width)
                        cumsum, cumvalues = FLT_MIN, np.float32(0)
                        for h in range(hstart, hend):
                            for w in range(wstart, wend):
                                cumsum += plane[h, w]
                                cumvalues += plane[h, w] * plane[h, w]
                        top[a, b, ph, pw] = cumvalues / cumsum if cumsum > 0 else 0
    return top, mask


def pooling_layer(method, kernel, stride, pad, round_mode="CEIL", mask=False):
    tops = 'top: "p"' + (' top: "m"' if mask else "")
    extra = f" round_mode: {round_mode}" if round_mode != "CEIL" else ""
    return (f'layer {{ name: "p" type: "Pooling" bottom: "x" {tops} pooling_param {{ pool: {method} '
            f'kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride_h: {stride[0]} stride_w: {stride[1]} '
            f'pad_h: {pad[0]} pad_w: {pad[1]}{extra} }} }}')


POOLINGS = [
    # (kernel, stride, pad, round mode): pad > kernel/2 (torch's pooling refuses these), FLOOR with and without
    # padding and with a remainder, kernel < stride (a last window past the input: Caffe keeps it), and a
    # plain case that torch's own pooling computes.
    ((3, 3), (2, 2), (2, 2), "CEIL"),
    ((3, 5), (1, 2), (2, 4), "CEIL"),
    ((4, 4), (3, 3), (3, 2), "CEIL"),
    ((3, 3), (2, 2), (0, 0), "FLOOR"),
    ((2, 3), (2, 2), (1, 2), "FLOOR"),
    ((1, 1), (2, 3), (0, 0), "CEIL"),
    ((2, 1), (3, 2), (0, 0), "FLOOR"),
    ((3, 3), (2, 2), (1, 1), "CEIL"),
]


@pytest.mark.parametrize("kernel, stride, pad, round_mode", POOLINGS)
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_matches_caffes_loops_in_torch_and_onnx(method, kernel, stride, pad, round_mode):
    net = net_from_text(net_text(pooling_layer(method, kernel, stride, pad, round_mode)))
    x = random((2, 2, 7, 9), seed=3)
    expected, _ = caffe_pooling(x, method, kernel, stride, pad, round_mode)
    ours = run_net(net, x=x)["p"]
    assert ours.shape == expected.shape == net.shapes.blobs["p"]
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    if np.isfinite(expected).all():
        check_onnx(net, {"x": x}, {"p": expected})


@pytest.mark.parametrize("kernel, stride, pad, round_mode", POOLINGS)
def test_max_pooling_mask_with_explicit_padding(kernel, stride, pad, round_mode):
    net = net_from_text(net_text(pooling_layer("MAX", kernel, stride, pad, round_mode, mask=True)))
    x = random((1, 2, 7, 9), seed=5)
    x[0, 1, 2:5, 3:7] = 1.0  # ties: Caffe keeps the first in its row-major scan
    expected, mask = caffe_pooling(x, "MAX", kernel, stride, pad, round_mode)
    blobs = run_net(net, x=x)
    np.testing.assert_array_equal(blobs["p"], expected)
    np.testing.assert_array_equal(blobs["m"], mask)
    check_onnx(net, {"x": x}, {"p": expected, "m": mask})


def test_pooling_pad_beyond_half_the_kernel_by_hand():
    # 3x3 input 1..9, kernel 3, stride 2, pad 2 (Caffe needs only pad < kernel): out = ceil((3+4-3)/2)+1 = 3,
    # last window starts at 2*2-2 = 2 < 3+2, kept. Windows along an axis: [-2,1), [0,3), [2,5).
    # MAX: [[1, 3, 3], [7, 9, 9], [7, 9, 9]]; AVE divides by min(3, 3+4-2i) = 3, 3, 3 per axis (padding counts):
    # the window [-2,1)x[-2,1) holds only 1 -> 1/9.
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    for method, expected in (("MAX", [[1, 3, 3], [7, 9, 9], [7, 9, 9]]),
                             ("AVE", np.array([[1, 6, 3], [12, 45, 18], [7, 24, 9]]) / 9)):
        net = net_from_text(net_text(pooling_layer(method, (3, 3), (2, 2), (2, 2)), shape=(1, 1, 3, 3)))
        np.testing.assert_allclose(run_net(net, x=x)["p"][0, 0], expected, rtol=1e-6)


def test_pooling_floor_by_hand_and_empty_windows():
    # FLOOR, kernel 2, stride 2, no pad, 5 wide: floor(3/2)+1 = 2 windows, column 4 unused.
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    net = net_from_text(net_text(pooling_layer("MAX", (2, 2), (2, 2), (0, 0), "FLOOR"), shape=(1, 1, 5, 5)))
    np.testing.assert_array_equal(run_net(net, x=x)["p"][0, 0], [[6, 8], [16, 18]])
    # CEIL, kernel 1, stride 2, 4 wide: ceil(3/2)+1 = 3 windows at 0, 2 and 4: the last starts past the input,
    # and Caffe keeps it (no padding, so no clipping): MAX gives -FLT_MAX, AVE 0 / (4 - 4) * 1 = NaN, and the
    # window past both axes 0 / ((4-4)*(4-4)) = NaN too; a window past one axis only: 0 / (0 * 1) = NaN.
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    net = net_from_text(net_text(pooling_layer("MAX", (1, 1), (2, 2), (0, 0)), shape=(1, 1, 4, 4)))
    np.testing.assert_array_equal(run_net(net, x=x)["p"][0, 0],
                                  [[0, 2, -FLT_MAX], [8, 10, -FLT_MAX], [-FLT_MAX] * 3])
    assert pool_average_divisors(4, 1, 0, 2) == [1, 1, 0]
    net = net_from_text(net_text(pooling_layer("AVE", (1, 1), (2, 2), (0, 0)), shape=(1, 1, 4, 4)))
    out = run_net(net, x=x)["p"][0, 0]
    np.testing.assert_array_equal(out[:2, :2], [[0, 2], [8, 10]])
    assert np.isnan(out[2]).all() and np.isnan(out[:, 2]).all()


def test_stochastic_pooling_is_caffes_test_time_average():
    # StoPoolForwardTest: sum(x^2) / sum(x) per window, 0 where the sum is not positive. Window (0,0) of
    # [[1, 2], [3, 4]]: 30 / 10 = 3; a window of [-1, -2, 0, 0]: 0; the last column [5, 6]: 61 / 11.
    x = np.array([[[[1, 2, 5], [3, 4, 6], [-1, -2, 0], [0, 0, 1]]]], np.float32)
    net = net_from_text(net_text('layer { name: "p" type: "Pooling" bottom: "x" top: "p" '
                                 'pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 } }', shape=(1, 1, 4, 3)))
    out = run_net(net, x=x)["p"][0, 0]
    np.testing.assert_allclose(out, [[3, 61 / 11], [0, 1]], rtol=1e-6)
    y = random((1, 2, 7, 9), seed=1)
    expected, _ = caffe_pooling(y, "STOCHASTIC", (3, 3), (2, 2), (0, 0))
    net = net_from_text(net_text('layer { name: "p" type: "Pooling" bottom: "x" top: "p" '
                                 'pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 } }'))
    np.testing.assert_allclose(run_net(net, x=y)["p"], expected, rtol=1e-5, atol=1e-6)
    check_onnx(net, {"x": y}, {"p": expected})
    with pytest.raises(UnsupportedError, match="TRAIN phase samples"):
        net_from_text(net_text('layer { name: "p" type: "Pooling" bottom: "x" top: "p" '
                               'pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 } }'), phase="train")


def test_pooling_refusals_are_caffes():
    with pytest.raises(InvalidNetError, match=r"pad 3 >= kernel 3 \(Caffe requires pad < kernel\)"):
        net_from_text(net_text(pooling_layer("MAX", (3, 3), (1, 1), (3, 3))))
    with pytest.raises(InvalidNetError, match="Caffe pads only AVE and MAX"):
        net_from_text(net_text('layer { name: "p" type: "Pooling" bottom: "x" top: "p" '
                               'pooling_param { pool: STOCHASTIC kernel_size: 3 pad: 1 } }'))


def test_explicitly_padded_pooling_exports_for_any_size(tmp_path):
    # The padding after the input and the AVE divisors follow the input size in the exported graph.
    body = ('layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 2 '
            'kernel_size: 3 pad: 1 } }\n' + pooling_layer("AVE", (3, 3), (2, 2), (2, 2)).replace('bottom: "x"',
                                                                                                  'bottom: "c"'))
    net = net_from_text(net_text(body, shape=(1, 2, 33, 33)))
    sizes = accepted_input_sizes(net.spec)
    assert sizes.size_free
    export_onnx(net, tmp_path / "m.onnx", sizes=sizes)
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for side in (9, 20, 41):
        x = random((1, 2, side, side + 3), seed=side)
        ours = run_net(net, x=x)["p"]
        np.testing.assert_allclose(session.run(None, {"x": x})[0], ours, rtol=1e-5, atol=1e-6)
        conv = run_net(net, x=x)["c"]
        np.testing.assert_allclose(ours, caffe_pooling(conv, "AVE", (3, 3), (2, 2), (2, 2))[0], rtol=1e-5, atol=1e-6)


def test_pooling_against_opencv(tmp_path):
    # OpenCV 4 computes padded pooling as Caffe does (it has no FLOOR, STOCHASTIC or window-past-the-input case).
    x = random((1, 2, 7, 9), seed=9)
    body = "\n".join(pooling_layer(m, (3, 3), (2, 2), (2, 2)).replace('"p"', f'"{m.lower()}"') for m in ("MAX", "AVE"))
    compare_with_opencv(tmp_path, net_text(body), {"x": x}, [])


def test_forks_ceil_mode_is_round_mode_and_matches_opencv(tmp_path):
    # BVLC pull request #3057's `ceil_mode` (DenseNet-Caffe, TSN's Caffe; OpenCV's caffe.proto has it too):
    # false pools with floor, true (its default) with ceil. 8 wide, kernel 3, stride 2: floor 3, ceil 4 windows.
    body = "\n".join(
        f'layer {{ name: "{name}" type: "Pooling" bottom: "x" top: "{name}" pooling_param {{ pool: {method} '
        f'kernel_size: 3 stride: 2 ceil_mode: {mode} }} }}'
        for name, method, mode in (("max_floor", "MAX", "false"), ("ave_floor", "AVE", "false"),
                                   ("max_ceil", "MAX", "true")))
    x = random((1, 2, 8, 8), seed=5)
    spec = spec_from_text(net_text(body, shape=(1, 2, 8, 8)))
    assert [layer.params["pooling_param"]["round_mode"] for layer in spec.layers] == ["FLOOR", "FLOOR", "CEIL"]
    assert not any(layer.unknown_fields for layer in spec.layers)
    assert any("ceil_mode: false" in note and "round_mode: FLOOR" in note for note in spec.notes)
    out = run_net(net_from_text(net_text(body, shape=(1, 2, 8, 8))), x=x)
    assert out["max_floor"].shape[-2:] == (3, 3) and out["max_ceil"].shape[-2:] == (4, 4)
    np.testing.assert_allclose(out["ave_floor"], caffe_pooling(x, "AVE", (3, 3), (2, 2), (0, 0), "FLOOR")[0],
                               rtol=1e-6)
    compare_with_opencv(tmp_path, net_text(body, shape=(1, 2, 8, 8)), {"x": x}, [])


def test_forks_ceil_mode_refusals():
    layer = 'layer {{ name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param {{ {} }} }}'
    with pytest.raises(NetDefinitionError, match="ceil_mode must be true or false, not 'maybe'"):
        spec_from_text(net_text(layer.format("pool: MAX kernel_size: 3 ceil_mode: maybe")))
    with pytest.raises(NetDefinitionError, match="both ceil_mode: false and round_mode: CEIL, which disagree"):
        spec_from_text(net_text(layer.format("pool: MAX kernel_size: 3 ceil_mode: false round_mode: CEIL")))


# ---------------------------------------------------------------------------------------------------------
# LRN WITHIN_CHANNEL, MVN
# ---------------------------------------------------------------------------------------------------------


def caffe_lrn_within_channel(x, size, alpha, beta):
    """LRNLayer::WithinChannelForward: square, AVE-pool with pad (size-1)/2 (padding counts), power layer
    (1 + alpha * pooled)^-beta, product with the input."""
    pooled, _ = caffe_pooling(x * x, "AVE", (size, size), (1, 1), ((size - 1) // 2,) * 2)
    return x * np.power(1 + alpha * pooled, -beta)


def test_lrn_within_channel():
    # By hand: one 2x2 plane [[1, 2], [3, 4]], size 3, alpha 0.9, beta 0.5: every 3x3 window (pad 1) holds the
    # whole plane: sum of squares 30, divided by 9; y = x * (1 + 0.9 * 30/9)^-0.5 = x / 2.
    net = net_from_text(net_text('layer { name: "l" type: "LRN" bottom: "x" top: "l" lrn_param { '
                                 'norm_region: WITHIN_CHANNEL local_size: 3 alpha: 0.9 beta: 0.5 k: 7 } }',
                                 shape=(1, 1, 2, 2)))
    np.testing.assert_allclose(run_net(net, x=np.array([[[[1, 2], [3, 4]]]]))["l"][0, 0], [[0.5, 1], [1.5, 2]],
                               rtol=1e-6)
    body = ('layer { name: "l" type: "LRN" bottom: "x" top: "l" lrn_param { norm_region: WITHIN_CHANNEL '
            'local_size: 5 alpha: 0.3 beta: 0.75 } }')
    net = net_from_text(net_text(body))
    x = random((2, 2, 7, 9), seed=2)
    expected = caffe_lrn_within_channel(x, 5, 0.3, 0.75)
    np.testing.assert_allclose(run_net(net, x=x)["l"], expected, rtol=1e-5)
    check_onnx(net, {"x": x}, {"l": expected})
    with pytest.raises(UnsupportedError, match="CuDNNLCNLayer"):
        net_from_text(net_text(body.replace("beta: 0.75", "beta: 0.75 engine: CUDNN")))


def caffe_mvn(x, normalize_variance=True, across_channels=False, eps=1e-9):
    shape = x.shape + (1,) * (4 - x.ndim)
    x = x.reshape(shape).astype(np.float64)
    rows = x.reshape(shape[0], -1) if across_channels else x.reshape(shape[0] * shape[1], -1)
    centered = rows - rows.mean(axis=1, keepdims=True)
    if normalize_variance:
        centered = centered / (np.sqrt((centered ** 2).mean(axis=1, keepdims=True)) + eps)
    return centered.reshape(shape).astype(np.float32)


@pytest.mark.parametrize("params", ["", "across_channels: true", "normalize_variance: false", "eps: 0.5"])
def test_mvn(params):
    net = net_from_text(net_text(f'layer {{ name: "m" type: "MVN" bottom: "x" top: "m" mvn_param {{ {params} }} }}'))
    x = random((2, 2, 7, 9), seed=4)
    kwargs = {"across_channels": "across" in params, "normalize_variance": "false" not in params,
              "eps": 0.5 if "eps" in params else 1e-9}
    expected = caffe_mvn(x, **kwargs)
    np.testing.assert_allclose(run_net(net, x=x)["m"], expected, rtol=1e-5, atol=1e-6)
    check_onnx(net, {"x": x}, {"m": expected})


def test_mvn_eps_is_added_to_the_standard_deviation():
    # One channel holding 1 and 3: mean 2, variance 1, std 1; eps 1 gives (x - 2) / (1 + 1) = -0.5, 0.5
    # (eps added to the variance would give 1/sqrt(2)).
    net = net_from_text(net_text('layer { name: "m" type: "MVN" bottom: "x" top: "m" mvn_param { eps: 1 } }',
                                 shape=(1, 1, 1, 2)))
    np.testing.assert_allclose(run_net(net, x=np.array([[[[1, 3]]]]))["m"][0, 0, 0], [-0.5, 0.5], rtol=1e-6)


def test_mvn_top_has_the_legacy_four_axes():
    # MVNLayer::Reshape: top (num, channels, height, width) of the bottom: a (N, C) bottom gives (N, C, 1, 1).
    net = net_from_text(net_text('layer { name: "m" type: "MVN" bottom: "x" top: "m" mvn_param { across_channels: '
                                 'true } }', shape=(2, 3)))
    x = np.array([[1, 2, 3], [0, 0, 6]], np.float32)
    out = run_net(net, x=x)["m"]
    assert out.shape == (2, 3, 1, 1) == net.shapes.blobs["m"]
    np.testing.assert_allclose(out[:, :, 0, 0], caffe_mvn(x, across_channels=True)[:, :, 0, 0], rtol=1e-6)
    with pytest.raises(NetDefinitionError, match="legacy shape"):
        net_from_text(net_text('layer { name: "m" type: "MVN" bottom: "x" top: "m" }', shape=(1, 2, 3, 4, 5)))


def test_lrn_mvn_and_activations_against_opencv(tmp_path):
    # (Not Log: OpenCV 4.14's Log layer ignores log_param's base, scale and shift; log_layer.cpp does not.)
    body = "\n".join([
        'layer { name: "lrn" type: "LRN" bottom: "x" top: "lrn" lrn_param { norm_region: WITHIN_CHANNEL '
        'local_size: 3 alpha: 0.5 beta: 0.75 } }',
        'layer { name: "mvn" type: "MVN" bottom: "x" top: "mvn" }',
        'layer { name: "mvn_across" type: "MVN" bottom: "x" top: "mvn_across" mvn_param { across_channels: true } }',
        'layer { name: "mvn_mean" type: "MVN" bottom: "x" top: "mvn_mean" mvn_param { normalize_variance: false } }',
        'layer { name: "swish" type: "Swish" bottom: "x" top: "swish" }',
        'layer { name: "elu" type: "ELU" bottom: "x" top: "elu" elu_param { alpha: 0.5 } }',
        'layer { name: "bnll" type: "BNLL" bottom: "x" top: "bnll" }',
        'layer { name: "exp" type: "Exp" bottom: "x" top: "exp" exp_param { base: 2 scale: 0.5 shift: 0.1 } }',
        'layer { name: "power" type: "Power" bottom: "x" top: "power" power_param { power: 2 scale: 0.5 shift: 3 } }',
        'layer { name: "abs" type: "AbsVal" bottom: "x" top: "abs" }',
        'layer { name: "softmax" type: "Softmax" bottom: "x" top: "softmax" softmax_param { axis: 2 } }',
        'layer { name: "flat" type: "Flatten" bottom: "x" top: "flat" flatten_param { axis: 1 end_axis: 2 } }',
    ])
    compare_with_opencv(tmp_path, net_text(body), {"x": random((2, 2, 7, 9), seed=6)}, [])


# ---------------------------------------------------------------------------------------------------------
# Clip, Swish, Reduction, SPP, Im2col, Embed, BatchReindex, Filter, Parameter
# ---------------------------------------------------------------------------------------------------------


def test_clip_and_swish():
    net = net_from_text(net_text('layer { name: "c" type: "Clip" bottom: "x" top: "c" clip_param { min: -0.5 '
                                 'max: 0.25 } }\nlayer { name: "s" type: "Swish" bottom: "x" top: "s" '
                                 'swish_param { beta: 2 } }', shape=(1, 4)))
    x = np.array([[-1, -0.25, 0.2, 3]], np.float32)
    blobs = run_net(net, x=x)
    np.testing.assert_array_equal(blobs["c"], np.array([[-0.5, -0.25, 0.2, 0.25]], np.float32))
    np.testing.assert_allclose(blobs["s"], x / (1 + np.exp(-2 * x)), rtol=1e-6)
    check_onnx(net, {"x": x}, {"c": blobs["c"], "s": x / (1 + np.exp(-2 * x))})
    with pytest.raises(InvalidNetError, match="clip_param needs max"):
        net_from_text(net_text('layer { name: "c" type: "Clip" bottom: "x" top: "c" clip_param { min: 0 } }'))


@pytest.mark.parametrize("operation, axis, coeff", [("SUM", 0, 1), ("ASUM", 1, 2), ("SUMSQ", -1, 1),
                                                    ("MEAN", 2, 0.5), ("SUM", -4, -1)])
def test_reduction(operation, axis, coeff):
    net = net_from_text(net_text(f'layer {{ name: "r" type: "Reduction" bottom: "x" top: "r" reduction_param {{ '
                                 f'operation: {operation} axis: {axis} coeff: {coeff} }} }}'))
    x = random((2, 2, 7, 9), seed=7)
    start = axis % 4
    rows = x.reshape(int(np.prod(x.shape[:start])), -1).astype(np.float64)
    value = {"SUM": rows.sum(1), "ASUM": np.abs(rows).sum(1), "SUMSQ": (rows ** 2).sum(1),
             "MEAN": rows.sum(1) / rows.shape[1]}[operation] * coeff
    expected = value.reshape(x.shape[:start]).astype(np.float32)
    out = run_net(net, x=x)["r"]
    assert out.shape == x.shape[:start] == net.shapes.blobs["r"]
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    check_onnx(net, {"x": x}, {"r": expected})


def caffe_spp(x, pyramid_height, method):
    """SPPLayer: GetPoolingParam per level (kernel = stride = ceil(in/bins), pad = (kernel*bins - in + 1)/2),
    each pooled, flattened, concatenated (one level: the pooling itself)."""
    height, width = x.shape[2:]
    pooled = []
    for level in range(pyramid_height):
        bins = 2 ** level
        kernel = [int(np.ceil(s / bins)) for s in (height, width)]
        pad = [(k * bins - s + 1) // 2 for k, s in zip(kernel, (height, width))]
        pooled.append(caffe_pooling(x, method, kernel, kernel, pad)[0])
    if pyramid_height == 1:
        return pooled[0]
    return np.concatenate([p.reshape(x.shape[0], -1) for p in pooled], axis=1)


@pytest.mark.parametrize("shape, pyramid_height, method", [((2, 3, 7, 9), 3, "MAX"), ((1, 2, 13, 6), 3, "AVE"),
                                                           ((1, 2, 5, 7), 1, "MAX"), ((1, 2, 8, 8), 2, "STOCHASTIC")])
def test_spp(shape, pyramid_height, method):
    # 7x9, 3 levels: kernels 7x9 (pad 0), 4x5 (pad 1x1: 2 bins each), 2x3 (pad 1x2): 1 + 4 + 4*3 cells... as
    # Caffe's own pooling sizes give them; 13 rows with 4 bins: kernel 4, pad 2 (>= kernel/2: explicit padding).
    net = net_from_text(net_text(f'layer {{ name: "s" type: "SPP" bottom: "x" top: "s" spp_param {{ '
                                 f'pyramid_height: {pyramid_height} pool: {method} }} }}', shape=shape))
    x = random(shape, seed=8, positive=method == "STOCHASTIC")
    expected = caffe_spp(x, pyramid_height, method)
    out = run_net(net, x=x)["s"]
    assert out.shape == expected.shape == net.shapes.blobs["s"]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    check_onnx(net, {"x": x}, {"s": expected})
    sizes = accepted_input_sizes(net.spec)
    assert not sizes.size_free and not sizes.batch_free  # the windows are set up for this size


def test_spp_sizes_caffe_cannot_pool_are_refused():
    # 5 rows with 4 bins: kernel 2, pad (8 - 5 + 1) / 2 = 2, not < kernel: Caffe's pooling CHECK stops it.
    with pytest.raises(NetDefinitionError, match="requires pad < kernel"):
        net_from_text(net_text('layer { name: "s" type: "SPP" bottom: "x" top: "s" spp_param { pyramid_height: 3 '
                               '} }', shape=(1, 1, 5, 8)))
    with pytest.raises(InvalidNetError, match="pyramid_height >= 1"):
        net_from_text(net_text('layer { name: "s" type: "SPP" bottom: "x" top: "s" }'))


def caffe_im2col(x, kernel, pad, stride, dilation):
    """im2col_cpu for each image: row (c*kh + i)*kw + j holds input (h*s - p + i*d, w*s - p + j*d), 0 outside."""
    n, c, height, width = x.shape
    out_h = (height + 2 * pad[0] - (dilation[0] * (kernel[0] - 1) + 1)) // stride[0] + 1
    out_w = (width + 2 * pad[1] - (dilation[1] * (kernel[1] - 1) + 1)) // stride[1] + 1
    top = np.zeros((n, c * kernel[0] * kernel[1], out_h, out_w), np.float32)
    for channel in range(c):
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                row = (channel * kernel[0] + i) * kernel[1] + j
                for h in range(out_h):
                    for w in range(out_w):
                        y, z = h * stride[0] - pad[0] + i * dilation[0], w * stride[1] - pad[1] + j * dilation[1]
                        if 0 <= y < height and 0 <= z < width:
                            top[:, row, h, w] = x[:, channel, y, z]
    return top


def test_im2col():
    net = net_from_text(net_text('layer { name: "i" type: "Im2col" bottom: "x" top: "i" convolution_param { '
                                 'kernel_h: 2 kernel_w: 3 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1 dilation: 2 } }'))
    x = random((2, 2, 7, 9), seed=10)
    expected = caffe_im2col(x, (2, 3), (1, 0), (2, 1), (2, 2))
    out = run_net(net, x=x)["i"]
    assert out.shape == expected.shape == net.shapes.blobs["i"]
    np.testing.assert_array_equal(out, expected)
    check_onnx(net, {"x": x}, {"i": expected})


def test_embed(tmp_path):
    # Values are truncated to int (static_cast<int>): 2.9 picks row 2; the bias is added to every row.
    text = net_text('layer { name: "e" type: "Embed" bottom: "x" top: "e" embed_param { num_output: 3 '
                    'input_dim: 4 } }', shape=(2, 3))
    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    bias = np.array([0.5, -1, 2], np.float32)
    write_caffemodel(tmp_path / "e.caffemodel", [WeightsLayer("e", "Embed", [weight, bias])])
    net, _ = convert(spec_from_text(text), tmp_path / "e.caffemodel")
    x = np.array([[0, 2.9, 3], [1, 1, 0]], np.float32)
    expected = weight[x.astype(int)] + bias
    out = run_net(net, x=x)["e"]
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out, expected)
    check_onnx(net, {"x": x}, {"e": expected})
    with pytest.raises(ValueError, match="outside"):
        run_net(net, x=np.array([[0, 4, 0], [0, 0, 0]], np.float32))
    with pytest.raises(InvalidNetError, match="input_dim > 0"):
        net_from_text(net_text('layer { name: "e" type: "Embed" bottom: "x" top: "e" embed_param { num_output: 3 '
                               '} }', shape=(2, 3)))


def test_batch_reindex_filter_and_parameter(tmp_path):
    text = ('input: "x"\ninput_shape { dim: 4 dim: 2 dim: 3 }\ninput: "order"\ninput_shape { dim: 5 }\n'
            'input: "keep"\ninput_shape { dim: 4 dim: 1 }\n'
            'layer { name: "r" type: "BatchReindex" bottom: "x" bottom: "order" top: "r" }\n'
            'layer { name: "xx" type: "Power" bottom: "x" top: "xx" power_param { scale: 2 } }\n'
            'layer { name: "f" type: "Filter" bottom: "x" bottom: "xx" bottom: "keep" top: "f" top: "f2" }\n'
            'layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 3 } } }\n'
            'layer { name: "sum" type: "Eltwise" bottom: "f" bottom: "f2" top: "sum" }')
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    write_caffemodel(tmp_path / "p.caffemodel", [WeightsLayer("p", "Parameter", [value])])
    spec = spec_from_text(text)
    assert spec.layers[2].name == "f" and spec.layers[2].tops == ["f", "f2"]
    net, _ = convert(spec, tmp_path / "p.caffemodel")
    assert net.shapes.blobs["f"] == (None, 2, 3) and net.shapes.blobs["r"] == (5, 2, 3)
    x = random((4, 2, 3), seed=11)
    order = np.array([3, 0, 0, 2.7, 1], np.float32)  # 2.7 -> 2
    keep = np.array([[0], [1], [0], [-0.5]], np.float32)  # nonzero: items 1 and 3
    blobs = run_net(net, x=x, order=order, keep=keep)
    np.testing.assert_array_equal(blobs["r"], x[[3, 0, 0, 2, 1]])
    np.testing.assert_array_equal(blobs["f"], x[[1, 3]])
    np.testing.assert_array_equal(blobs["f2"], 2 * x[[1, 3]])
    np.testing.assert_array_equal(blobs["p"], value)
    check_onnx(net, {"x": x, "order": order, "keep": keep}, {k: blobs[k] for k in ("r", "f", "f2", "sum", "p")})
    with pytest.raises(ValueError, match="out of range"):
        run_net(net, x=x, order=np.array([0, 4, 0, 0, 0], np.float32), keep=keep)
    with pytest.raises(InvalidNetError, match="one top per bottom but the last"):
        net_from_text(text.replace(' top: "f" top: "f2" }', ' top: "f" }').replace(
            'layer { name: "sum" type: "Eltwise" bottom: "f" bottom: "f2" top: "sum" }', ""))


# ---------------------------------------------------------------------------------------------------------
# RNN, LSTM, LSTMUnit: the unrolled net of RecurrentLayer / LSTMLayer / RNNLayer::FillUnrolledNet
# ---------------------------------------------------------------------------------------------------------


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def caffe_lstm(x, cont, blobs, static=None, h0=None, c0=None):
    """The unrolled LSTM: W_xc_x = x W_xc^T + b_c (axis 2); per t: h_conted = cont_t h_{t-1};
    gates = h_conted W_hc^T + W_xc_x_t (+ x_static W_static^T); LSTMUnit (i, f, o, g)."""
    w_xc, b_c, *rest = blobs
    w_static = rest.pop(0) if static is not None else None
    (w_hc,) = rest
    steps, streams = x.shape[:2]
    hidden = w_hc.shape[1]
    projected = x.reshape(steps, streams, -1) @ w_xc.T + b_c
    extra = static.reshape(streams, -1) @ w_static.T if static is not None else 0
    h = np.zeros((streams, hidden)) if h0 is None else h0[0]
    c = np.zeros((streams, hidden)) if c0 is None else c0[0]
    outs = []
    for t in range(steps):
        gates = (cont[t][:, None] * h) @ w_hc.T + projected[t] + extra
        i, f, o, g = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
        forget = np.where(cont[t][:, None] == 0, 0, cont[t][:, None] * sigmoid(f))
        c = forget * c + sigmoid(i) * (2 * sigmoid(2 * g) - 1)
        h = sigmoid(o) * (2 * sigmoid(2 * c) - 1)
        outs.append(h)
    return np.stack(outs).astype(np.float32), h[None].astype(np.float32), c[None].astype(np.float32)


def caffe_rnn(x, cont, blobs, static=None, h0=None):
    w_xh, b_h, *rest = blobs
    w_static = rest.pop(0) if static is not None else None
    w_hh, w_ho, b_o = rest
    steps, streams = x.shape[:2]
    projected = x.reshape(steps, streams, -1) @ w_xh.T + b_h
    extra = static.reshape(streams, -1) @ w_static.T if static is not None else 0
    h = np.zeros((streams, w_hh.shape[0])) if h0 is None else h0[0]
    outs = []
    for t in range(steps):
        h = np.tanh((cont[t][:, None] * h) @ w_hh.T + projected[t] + extra)
        outs.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(outs).astype(np.float32), h[None].astype(np.float32)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("static, expose", [(False, False), (True, False), (True, True)])
def test_recurrent_layers(kind, static, expose, tmp_path):
    steps, streams, features, hidden = 4, 3, 5, 6
    states = ["h0", "c0"] if kind == "LSTM" else ["h0"]
    inputs = {"x": random((steps, streams, 1, features), seed=12), "cont": np.array(
        [[0, 0, 1], [1, 1, 1], [1, 0, 1], [1, 1, 0]], np.float32)}  # 0: a new sequence starts
    declared = [f'input: "x"\ninput_shape {{ dim: {steps} dim: {streams} dim: 1 dim: {features} }}',
                f'input: "cont"\ninput_shape {{ dim: {steps} dim: {streams} }}']
    bottoms = ["x", "cont"]
    if static:
        inputs["s"] = random((streams, 2), seed=13)
        declared.append(f'input: "s"\ninput_shape {{ dim: {streams} dim: 2 }}')
        bottoms.append("s")
    if expose:
        for index, name in enumerate(states):
            inputs[name] = random((1, streams, hidden), seed=20 + index)
            declared.append(f'input: "{name}"\ninput_shape {{ dim: 1 dim: {streams} dim: {hidden} }}')
        bottoms += states
    tops = ["out"] + ([f"{s[0]}T" for s in states] if expose else [])
    layer = (f'layer {{ name: "rec" type: "{kind}" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + " "
             + " ".join(f'top: "{t}"' for t in tops)
             + f' recurrent_param {{ num_output: {hidden} expose_hidden: {str(expose).lower()} }} }}')
    text = "\n".join([*declared, layer])
    gates = 4 * hidden if kind == "LSTM" else hidden
    rng = np.random.default_rng(14)
    shapes = [(gates, features), (gates,)] + ([(gates, 2)] if static else [])
    shapes += [(gates, hidden)] if kind == "LSTM" else [(hidden, hidden), (hidden, hidden), (hidden,)]
    blobs = [(rng.standard_normal(s) * 0.5).astype(np.float32) for s in shapes]
    spec = spec_from_text(text)
    assert [list(s) for s in build_shapes(spec)] == [list(s) for s in shapes]
    write_caffemodel(tmp_path / "r.caffemodel", [WeightsLayer("rec", kind, blobs)])
    net, _ = convert(spec, tmp_path / "r.caffemodel")
    ours = run_net(net, **inputs)
    extra = {"static": inputs.get("s")} | ({"h0": inputs["h0"]} if expose else {})
    if kind == "LSTM":
        expected = caffe_lstm(inputs["x"], inputs["cont"], blobs, extra["static"], extra.get("h0"),
                              inputs.get("c0"))
    else:
        expected = caffe_rnn(inputs["x"], inputs["cont"], blobs, extra["static"], extra.get("h0"))
    reference = dict(zip(tops, expected))
    for name, value in reference.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-6)
    check_onnx(net, inputs, reference)


def build_shapes(spec):
    from caffe2torch.shapes import infer_shapes

    return infer_shapes(spec).layers[0].blob_shapes


def test_lstm_unit_by_hand():
    # gates (i, f, o, g) = (0, 0, 0, 0): i = f = o = 0.5, g = 0; c = 0.5 * c_prev (cont 1) or 0 (cont 0);
    # h = 0.5 * tanh(c).
    text = ('input: "c"\ninput_shape { dim: 1 dim: 2 dim: 1 }\ninput: "g"\ninput_shape { dim: 1 dim: 2 dim: 4 }\n'
            'input: "cont"\ninput_shape { dim: 1 dim: 2 }\n'
            'layer { name: "u" type: "LSTMUnit" bottom: "c" bottom: "g" bottom: "cont" top: "c1" top: "h1" }')
    net = net_from_text(text)
    blobs = run_net(net, c=np.array([[[2.0], [2.0]]]), g=np.zeros((1, 2, 4)), cont=np.array([[1.0, 0.0]]))
    np.testing.assert_allclose(blobs["c1"][0, :, 0], [1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(blobs["h1"][0, :, 0], [0.5 * np.tanh(1.0), 0.0], rtol=1e-6, atol=1e-7)
    with pytest.raises(NetDefinitionError, match="4 x 1 values"):
        net_from_text(text.replace("dim: 4", "dim: 3"))


def test_recurrent_refusals():
    with pytest.raises(InvalidNetError, match="num_output > 0"):
        net_from_text('input: "x"\ninput_shape { dim: 2 dim: 1 dim: 3 }\ninput: "c"\ninput_shape { dim: 2 dim: 1 }\n'
                      'layer { name: "r" type: "RNN" bottom: "x" bottom: "c" top: "o" }')
    with pytest.raises(InvalidNetError, match="takes 4 to 5 bottoms"):
        net_from_text('input: "x"\ninput_shape { dim: 2 dim: 1 dim: 3 }\ninput: "c"\ninput_shape { dim: 2 dim: 1 }\n'
                      'layer { name: "r" type: "LSTM" bottom: "x" bottom: "c" top: "o" top: "h" top: "cT" '
                      'recurrent_param { num_output: 2 expose_hidden: true } }')


# ---------------------------------------------------------------------------------------------------------
# BatchNorm with batch statistics on any number of axes
# ---------------------------------------------------------------------------------------------------------


def test_batchnorm_local_statistics_on_two_axes():
    # use_global_stats: false: mean and variance over N (and every axis after C); here (N, C) = (3, 2).
    net = net_from_text(net_text('layer { name: "b" type: "BatchNorm" bottom: "x" top: "b" batch_norm_param { '
                                 'use_global_stats: false eps: 0 } }', shape=(3, 2)))
    x = np.array([[1, 0], [2, 0], [3, 6]], np.float32)
    expected = (x - x.mean(0)) / x.std(0)
    np.testing.assert_allclose(run_net(net, x=x)["b"], expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Repeated layer names
# ---------------------------------------------------------------------------------------------------------

REPEATED = net_text("""layer { name: "conv" type: "Convolution" bottom: "x" top: "a" convolution_param { num_output: 2
  kernel_size: 1 } }
layer { name: "conv" type: "ReLU" bottom: "a" top: "a" }
layer { name: "conv" type: "Convolution" bottom: "a" top: "b" convolution_param { num_output: 2 kernel_size: 1 } }
""", shape=(1, 2, 3, 3))


def test_repeated_names_run_and_keep_the_files_name():
    spec = spec_from_text(REPEATED)
    assert [(layer.name, layer.file_name) for layer in spec.layers] == [("conv", "conv"), ("conv#2", "conv"),
                                                                        ("conv#3", "conv")]
    assert any("3 layers are named 'conv' (lines 3, 5, 6)" in note for note in spec.notes)
    with pytest.raises(NetDefinitionError) as info:
        net_from_text(REPEATED + 'layer { name: "conv" type: "Eltwise" bottom: "a" bottom: "nowhere" top: "c" }')
    assert info.value.location.layer == "conv" and info.value.location.line == 7


def test_repeated_names_load_as_copy_trained_layers_from(tmp_path):
    # The caffemodel's 'conv' goes into the FIRST net layer named 'conv' (Net::CopyTrainedLayersFrom scans from
    # the start); the third layer, also 'conv', would keep its filler values in Caffe: missing here.
    first = [np.full((2, 2, 1, 1), 0.5, np.float32), np.zeros(2, np.float32)]
    write_caffemodel(tmp_path / "w.caffemodel", [WeightsLayer("conv", "Convolution", first)])
    net = net_from_text(REPEATED)
    with pytest.raises(WeightsMismatchError) as info:
        load_caffemodel_weights(net, tmp_path / "w.caffemodel")
    (missing,) = info.value.missing
    assert missing.startswith("conv (line 6): an earlier layer has the same name (conv (Convolution), line 3)")
    assert "filler" in missing
    report = load_caffemodel_weights(net, tmp_path / "w.caffemodel", strict=False)
    assert report.loaded == ["conv"]
    np.testing.assert_array_equal(net.module("conv").weight.detach().numpy(), first[0])
    # Two caffemodel layers named 'conv': both go into the first net layer; the later one wins.
    later = [np.full((2, 2, 1, 1), 2.0, np.float32), np.ones(2, np.float32)]
    write_caffemodel(tmp_path / "two.caffemodel", [WeightsLayer("conv", "Convolution", first),
                                                   WeightsLayer("conv", "Convolution", later)])
    net = net_from_text(REPEATED)
    load_caffemodel_weights(net, tmp_path / "two.caffemodel", strict=False)
    np.testing.assert_array_equal(net.module("conv").weight.detach().numpy(), later[0])
    # A blob-less caffemodel layer of that name (Caffe saves every layer) stops Caffe: 2 blobs expected, 0 given.
    write_caffemodel(tmp_path / "relu.caffemodel", [WeightsLayer("conv", "Convolution", first),
                                                    WeightsLayer("conv", "ReLU", [])])
    with pytest.raises(WeightsMismatchError, match="Incompatible number of blobs"):
        load_caffemodel_weights(net_from_text(REPEATED), tmp_path / "relu.caffemodel")


def test_layer_outside_the_caffemodel_runs_with_its_constant_fillers(tmp_path):
    # OpenCV's shared_weights test net (opencv_extra testdata/dnn/layers/shared_weights.prototxt): two
    # Convolutions and two InnerProducts repeat a name, with constant fillers. Caffe copies both caffemodel 'conv'
    # layers into the first net 'conv' (CopyTrainedLayersFrom), and runs the second with ConstantFiller's values:
    # deterministic, so converted (and reported). OpenCV's expected sums: 0+2+4+6 = 12 and 1+3+5+7 = 16.
    layers = "".join(f"""layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{top}" {param} {{
  num_output: 1 {extra} weight_filler {{ type: 'constant' value: 1 }} bias_filler {{ type: 'constant' value: 0 }} }} }}
""" for name, kind, bottom, top, param, extra in (
        ("conv", "Convolution", "input_1", "conv_1", "convolution_param", "kernel_size: 1"),
        ("conv", "Convolution", "input_2", "conv_2", "convolution_param", "kernel_size: 1"),
        ("sum", "InnerProduct", "conv_1", "sum_1", "inner_product_param", ""),
        ("sum", "InnerProduct", "conv_2", "sum_2", "inner_product_param", "")))
    text = ('input: "input_1" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n'
            'input: "input_2" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n' + layers
            + 'layer { name: "concat" type: "Concat" bottom: "sum_1" bottom: "sum_2" top: "sum" }\n')
    ones = {"Convolution": [np.ones((1, 1, 1, 1), np.float32), np.zeros(1, np.float32)],
            "InnerProduct": [np.ones((1, 4), np.float32), np.zeros(1, np.float32)]}
    write_caffemodel(tmp_path / "w.caffemodel", [WeightsLayer(n, k, ones[k]) for n, k in
                                                 (("conv", "Convolution"), ("conv", "Convolution"),
                                                  ("sum", "InnerProduct"), ("sum", "InnerProduct"))])
    net, report = convert(spec_from_text(text), tmp_path / "w.caffemodel")
    assert report.ok and report.loaded == ["conv", "sum"] and not report.missing
    assert report.filled == ["conv (Convolution, line 5): blob 0 = 1, blob 1 = 0",
                             "sum (InnerProduct, line 9): blob 0 = 1, blob 1 = 0"]
    x1 = np.array([0, 2, 4, 6], np.float32).reshape(1, 1, 2, 2)
    x2 = np.array([1, 3, 5, 7], np.float32).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(run_net(net, input_1=x1, input_2=x2)["sum"], [[12, 16]])
    check_onnx(net, {"input_1": x1, "input_2": x2}, {"sum": np.array([[12, 16]], np.float32)})
    # The first 'sum' gets the caffemodel's blobs, not its fillers; the second keeps its filler values.
    twos = [np.full((1, 4), 2, np.float32), np.zeros(1, np.float32)]
    write_caffemodel(tmp_path / "twos.caffemodel", [WeightsLayer("conv", "Convolution", ones["Convolution"]),
                                                    WeightsLayer("sum", "InnerProduct", twos)])
    net, report = convert(spec_from_text(text), tmp_path / "twos.caffemodel")
    np.testing.assert_array_equal(run_net(net, input_1=x1, input_2=x2)["sum"], [[24, 16]])
    # A layer without fillers (a deploy file's usual form: Caffe would fill zeros) or with a random one stays
    # missing: the caffemodel most likely lacks it by mistake.
    for filler in ("", "weight_filler { type: 'gaussian' std: 0.1 }"):
        plain = text.replace("weight_filler { type: 'constant' value: 1 } bias_filler { type: 'constant' value: 0 }",
                             filler)
        with pytest.raises(WeightsMismatchError) as info:
            convert(spec_from_text(plain), tmp_path / "w.caffemodel")
        assert [m.split(" (")[0] for m in info.value.missing] == ["conv", "sum"]


def test_repeated_names_with_unique_weights_convert(tmp_path):
    # A repeated name on a layer without parameters (a ReLU named like its convolution) is common and harmless.
    text = net_text("""layer { name: "conv" type: "Convolution" bottom: "x" top: "a" convolution_param { num_output: 2
  kernel_size: 1 } }
layer { name: "conv" type: "ReLU" bottom: "a" top: "a" }
layer { name: "fc" type: "InnerProduct" bottom: "a" top: "fc" inner_product_param { num_output: 3 } }
""", shape=(1, 2, 3, 3))
    rng = np.random.default_rng(0)
    conv = [rng.standard_normal((2, 2, 1, 1)).astype(np.float32), rng.standard_normal(2).astype(np.float32)]
    fc = [rng.standard_normal((3, 18)).astype(np.float32), rng.standard_normal(3).astype(np.float32)]
    write_caffemodel(tmp_path / "w.caffemodel", [WeightsLayer("conv", "Convolution", conv),
                                                 WeightsLayer("fc", "InnerProduct", fc)])
    net, report = convert(spec_from_text(text), tmp_path / "w.caffemodel")
    assert report.ok and report.loaded == ["conv", "fc"]
    x = random((1, 2, 3, 3), seed=1)
    a = np.maximum(np.einsum("oi,nihw->nohw", conv[0][:, :, 0, 0], x) + conv[1][None, :, None, None], 0)
    expected = a.reshape(1, -1) @ fc[0].T + fc[1]
    np.testing.assert_allclose(run_net(net, x=x)["fc"], expected, rtol=1e-5)
    assert set(dict(net.named_modules())) >= {"layers.conv", "layers.conv#2", "layers.fc"}
    check_onnx(net, {"x": x}, {"fc": expected})
    import caffe2torch
    from caffe2torch.artifact import save_artifact

    save_artifact(net, tmp_path / "net.safetensors")
    again = caffe2torch.load(tmp_path / "net.safetensors")
    assert [layer.file_name for layer in again.spec.layers] == ["conv", "conv", "fc"]
    np.testing.assert_allclose(run_net(again, x=x)["fc"], expected, rtol=1e-5)


def test_shared_parameters_take_the_last_copy(tmp_path):
    # Caffe copies each caffemodel layer's blobs into the blob it shares (ParamSpec name), in file order.
    text = net_text("""layer { name: "a" type: "Convolution" bottom: "x" top: "a" param { name: "w" }
  param { name: "b" } convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "b" type: "Convolution" bottom: "x" top: "b" param { name: "w" } param { name: "b" }
  convolution_param { num_output: 2 kernel_size: 1 } }
""", shape=(1, 2, 3, 3))
    one = [np.ones((2, 2, 1, 1), np.float32), np.zeros(2, np.float32)]
    two = [np.full((2, 2, 1, 1), 2, np.float32), np.ones(2, np.float32)]
    write_caffemodel(tmp_path / "w.caffemodel", [WeightsLayer("a", "Convolution", one),
                                                 WeightsLayer("b", "Convolution", two)])
    net, report = convert(spec_from_text(text), tmp_path / "w.caffemodel")
    assert report.ok
    for layer in ("a", "b"):
        np.testing.assert_array_equal(net.module(layer).weight.detach().numpy(), two[0])


# ---------------------------------------------------------------------------------------------------------
# OpenCV 4 on the layers it has
# ---------------------------------------------------------------------------------------------------------


def compare_with_opencv(tmp_path, text: str, inputs: dict, weights: list[WeightsLayer], cv_text: str | None = None,
                        cv_weights: list[WeightsLayer] | None = None) -> None:
    """Every blob of `text` in torch and onnxruntime against OpenCV 4's readNetFromCaffe (<= 1e-5 of each
    blob's largest magnitude); `cv_text`/`cv_weights`: an equivalent net for OpenCV where it reads a field
    differently from Caffe's source (said where used)."""
    (tmp_path / "net.prototxt").write_text(text)
    write_caffemodel(tmp_path / "net.caffemodel", weights or [WeightsLayer("x", "Input", [])])
    (tmp_path / "cv.prototxt").write_text(cv_text or text)
    write_caffemodel(tmp_path / "cv.caffemodel", (cv_weights if cv_weights is not None else weights)
                     or [WeightsLayer("x", "Input", [])])
    spec = spec_from_text(text)
    net, _ = convert(spec, tmp_path / "net.caffemodel")
    blobs = [t for layer in spec.layers for t in layer.tops]
    reference = opencv_blobs(tmp_path / "cv.prototxt", tmp_path / "cv.caffemodel", inputs, blobs)
    ours = run_net(net, **inputs)
    for name in blobs:
        scale = max(float(np.abs(reference[name]).max()), 1e-30)
        assert ours[name].shape == reference[name].shape, name
        assert float(np.abs(ours[name] - reference[name]).max()) / scale <= 1e-5, name
    report = verify_onnx(net, inputs, {b: reference[b] for b in blobs}, tol=1e-5)
    assert report.ok, report.first_divergent


def test_torch_and_onnx_of_a_net_with_every_new_layer_agree():
    # One net threading every new layer type, torch against onnxruntime on every blob.
    text = net_text("\n".join([
        pooling_layer("MAX", (3, 3), (2, 2), (2, 2)),
        'layer { name: "lrn" type: "LRN" bottom: "p" top: "lrn" lrn_param { norm_region: WITHIN_CHANNEL '
        'local_size: 3 } }',
        'layer { name: "mvn" type: "MVN" bottom: "lrn" top: "mvn" }',
        'layer { name: "clip" type: "Clip" bottom: "mvn" top: "mvn" clip_param { min: -1 max: 1 } }',
        'layer { name: "swish" type: "Swish" bottom: "mvn" top: "swish" }',
        'layer { name: "im2col" type: "Im2col" bottom: "swish" top: "cols" convolution_param { kernel_size: 2 } }',
        'layer { name: "spp" type: "SPP" bottom: "cols" top: "spp" spp_param { pyramid_height: 2 pool: AVE } }',
        'layer { name: "sum" type: "Reduction" bottom: "spp" top: "sum" reduction_param { axis: 1 '
        'operation: ASUM } }',
    ]))
    net = net_from_text(text)
    x = random((2, 2, 7, 9), seed=15)
    with torch.no_grad():
        blobs = run_net(net, x=x)
    check_onnx(net, {"x": x}, {k: v for k, v in blobs.items() if k != "x"})


# ---------------------------------------------------------------------------------------------------------
# The cases of OpenCV's own Caffe layer tests (opencv_extra testdata/dnn/layers), written anew
# ---------------------------------------------------------------------------------------------------------

OPENCV_CASES = {
    # name: (input shapes, layers[, the same net for OpenCV, a weights translation for it]). Each mirrors what one
    # of OpenCV's Caffe layer tests exercises (their files carry outputs computed by Caffe; these carry random
    # weights and are checked against OpenCV 4 itself). Where OpenCV 4.14 reads a field differently from
    # Caffe's source, its copy says it the way it understands and the field is checked by hand below.
    "softmax": ({"input": (2, 6, 5, 7)},
                'layer { name: "output" type: "Softmax" bottom: "input" top: "output" }'),
    "lrn_spatial": ({"input": (2, 6, 7, 9)},
                    'layer { name: "output" type: "LRN" bottom: "input" top: "output" lrn_param { '
                    'norm_region: WITHIN_CHANNEL local_size: 5 alpha: 0.9 beta: 0.75 } }'),
    "lrn_channels": ({"input": (2, 6, 7, 9)},  # (k != 1: test_lrn_across_channels_k; OpenCV ignores k)
                     'layer { name: "output" type: "LRN" bottom: "input" top: "output" lrn_param { '
                     'local_size: 3 alpha: 0.9 beta: 0.75 } }'),
    "convolution": ({"input": (2, 6, 15, 23)},
                    'layer { name: "output" type: "Convolution" bottom: "input" top: "output" convolution_param { '
                    'num_output: 12 group: 3 kernel_h: 3 kernel_w: 5 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 2 '
                    'bias_term: false } }'),
    "dilated_convolution": ({"input": (2, 6, 15, 23)},
                            'layer { name: "output" type: "Convolution" bottom: "input" top: "output" '
                            'convolution_param { num_output: 4 group: 2 kernel_size: 3 pad: 2 dilation: 2 '
                            'stride: 2 } }'),
    "deconvolution": ({"input": (2, 6, 5, 7)},  # (dilation: test_dilated_deconvolution; OpenCV ignores it)
                      'layer { name: "output" type: "Deconvolution" bottom: "input" top: "output" '
                      'convolution_param { num_output: 9 group: 3 kernel_h: 4 kernel_w: 3 stride_h: 2 stride_w: 3 '
                      'pad_h: 1 pad_w: 2 } }'),
    "deconvolution_no_bias": ({"input": (2, 4, 5, 7)},
                              'layer { name: "output" type: "Deconvolution" bottom: "input" top: "output" '
                              'convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 bias_term: false } }'),
    "inner_product": ({"input": (2, 6, 5, 7)},
                      'layer { name: "output" type: "InnerProduct" bottom: "input" top: "output" '
                      'inner_product_param { num_output: 8 } }'),
    "inner_product_axis2": ({"input": (2, 6, 5, 7)},
                            'layer { name: "output" type: "InnerProduct" bottom: "input" top: "output" '
                            'inner_product_param { num_output: 4 axis: 2 } }'),
    "pooling_max": ({"input": (2, 6, 15, 23)},
                    'layer { name: "output" type: "Pooling" bottom: "input" top: "output" pooling_param { '
                    'pool: MAX kernel_h: 3 kernel_w: 5 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 2 } }'),
    "pooling_ave": ({"input": (2, 6, 15, 23)},
                    'layer { name: "output" type: "Pooling" bottom: "input" top: "output" pooling_param { '
                    'pool: AVE kernel_h: 3 kernel_w: 5 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 2 } }'),
    "mvn": ({"input": (2, 6, 7, 9)}, 'layer { name: "output" type: "MVN" bottom: "input" top: "output" }'),
    "batch_norm": ({"input": (2, 6, 7, 9)},
                   'layer { name: "output" type: "BatchNorm" bottom: "input" top: "output" batch_norm_param { '
                   'use_global_stats: true eps: 0.001 } }'),
    "batch_norm_local_stats": ({"input": (1, 6, 7, 9)},  # (OpenCV computes batch statistics for one image only)
                               'layer { name: "output" type: "BatchNorm" bottom: "input" top: "output" '
                               'batch_norm_param { use_global_stats: false } }'),
    "relu": ({"input": (2, 6, 7, 9)},
             'layer { name: "output" type: "ReLU" bottom: "input" top: "output" relu_param { negative_slope: 0.1 } }'),
    "dropout": ({"input": (2, 6, 7, 9)},
                'layer { name: "output" type: "Dropout" bottom: "input" top: "output" }'),
    "concat": ({"input": (2, 6, 7, 9)}, """
layer { name: "a" type: "Power" bottom: "input" top: "a" power_param { scale: 2 } }
layer { name: "output" type: "Concat" bottom: "input" bottom: "a" bottom: "input" top: "output"
        concat_param { concat_dim: 2 } }""", """
layer { name: "a" type: "Power" bottom: "input" top: "a" power_param { scale: 2 } }
layer { name: "output" type: "Concat" bottom: "input" bottom: "a" bottom: "input" top: "output"
        concat_param { axis: 2 } }"""),  # ConcatLayer::LayerSetUp reads concat_dim; OpenCV ignores it
    "concat_shared_input": ({"input": (2, 6, 7, 9)}, """
layer { name: "c1" type: "Convolution" bottom: "input" top: "c1" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "c2" type: "Convolution" bottom: "input" top: "c2" convolution_param { num_output: 2 kernel_size: 3
        pad: 1 } }
layer { name: "output" type: "Concat" bottom: "c1" bottom: "c2" bottom: "c1" top: "output" }"""),
    "eltwise": ({"input": (2, 6, 7, 9)}, """
layer { name: "a" type: "Convolution" bottom: "input" top: "a" convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "input" bottom: "a" bottom: "input" top: "sum"
        eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1.5 } }
layer { name: "prod" type: "Eltwise" bottom: "input" bottom: "a" top: "prod" eltwise_param { operation: PROD } }
layer { name: "output" type: "Eltwise" bottom: "sum" bottom: "prod" top: "output"
        eltwise_param { operation: MAX } }"""),
    "prelu": ({"input": (2, 6, 7, 9)}, """
layer { name: "shared" type: "PReLU" bottom: "input" top: "shared" prelu_param { channel_shared: true } }
layer { name: "output" type: "PReLU" bottom: "shared" top: "output" }"""),
    "prelu_fc": ({"input": (2, 6, 5, 7)}, """
layer { name: "fc" type: "InnerProduct" bottom: "input" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "output" type: "PReLU" bottom: "fc" top: "output" }"""),
    "reshape_and_slice_routines": ({"input": (6, 12)}, """
layer { name: "reshape" type: "Reshape" bottom: "input" top: "reshaped" reshape_param { shape { dim: 0 dim: 3
        dim: -1 } } }
layer { name: "slice" type: "Slice" bottom: "reshaped" top: "s1" top: "s2" top: "s3" slice_param { axis: 1 } }
layer { name: "slice2" type: "Slice" bottom: "s2" top: "t1" top: "t2" slice_param { axis: 2 slice_point: 1 } }
layer { name: "concat2" type: "Concat" bottom: "t1" bottom: "t2" top: "s2c" concat_param { axis: 2 } }
layer { name: "concat" type: "Concat" bottom: "s1" bottom: "s2c" bottom: "s3" top: "joined" }
layer { name: "flatten" type: "Flatten" bottom: "joined" top: "output" }"""),
    "conv_2_inps": ({"input_0": (2, 3, 7, 9), "input_1": (2, 3, 7, 9)},
                    'layer { name: "conv" type: "Convolution" bottom: "input_0" bottom: "input_1" top: "output_0" '
                    'top: "output_1" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }',
                    # OpenCV cannot return one layer's second output here: two layers (named as it names them,
                    # after their tops) with the same weights
                    'layer { name: "output_0" type: "Convolution" bottom: "input_0" top: "output_0" '
                    'convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }\nlayer { name: "output_1" '
                    'type: "Convolution" bottom: "input_1" top: "output_1" convolution_param { num_output: 4 '
                    'kernel_size: 3 pad: 1 } }',
                    lambda items: [WeightsLayer(name, "Convolution", items[0].blobs) for name in ("output_0",
                                                                                                 "output_1")]),
    "scale_second_bottom": ({"input": (2, 6, 7, 9), "factor": (6, 7)},  # (the bias: test_scale_second_bottom_bias)
                            'layer { name: "output" type: "Scale" bottom: "input" bottom: "factor" top: "output" '
                            'scale_param { axis: 1 } }'),
    "scale_bias_axis_num_axes": ({"input": (2, 6, 7, 9)}, """
layer { name: "s" type: "Scale" bottom: "input" top: "s" scale_param { axis: 2 num_axes: 2 bias_term: true } }
layer { name: "output" type: "Bias" bottom: "s" top: "output" bias_param { axis: 0 num_axes: 2 } }""", """
layer { name: "s" type: "Scale" bottom: "input" top: "s" scale_param { axis: 2 num_axes: 2 bias_term: true } }
layer { name: "output" type: "Scale" bottom: "s" top: "output" scale_param { axis: 0 num_axes: 2 bias_term: true } }""",
                                 # OpenCV has no Bias layer: a Scale by ones with that bias
                                 lambda items: [item if item.name != "output" else WeightsLayer(
                                     "output", "Scale", [np.ones_like(item.blobs[0]), item.blobs[0]])
                                     for item in items]),
    "softmax_axis_power_flatten": ({"input": (2, 6, 7, 9)}, """
layer { name: "sm" type: "Softmax" bottom: "input" top: "sm" softmax_param { axis: 3 } }
layer { name: "p" type: "Power" bottom: "sm" top: "p" power_param { power: 2 scale: 3 shift: -0.5 } }
layer { name: "output" type: "Flatten" bottom: "p" top: "output" flatten_param { axis: 1 end_axis: 2 } }"""),
}


@pytest.mark.parametrize("case", sorted(OPENCV_CASES))
def test_opencv_layer_tests_convert_and_match_opencv(case, tmp_path):
    from caffe2torch.net import build_net

    from .classic_nets import classic_weights

    shapes, body, *opencv = OPENCV_CASES[case]
    header = "\n".join(f'input: "{name}"\ninput_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}'
                       for name, shape in shapes.items())
    text = f'name: "{case}"\n{header}\n{body}\n'
    weights = classic_weights(build_net(spec_from_text(text)), seed=2)
    for item in weights:  # PReLU slopes in [0, 0.5)
        if item.type == "PReLU":
            item.blobs[0] = np.abs(item.blobs[0]) % np.float32(0.5)
    cv_text = f'name: "{case}"\n{header}\n{opencv[0]}\n' if opencv else None
    cv_weights = opencv[1](list(weights)) if len(opencv) > 1 else None
    inputs = {name: random(shape, seed=len(name)) for name, shape in shapes.items()}
    compare_with_opencv(tmp_path, text, inputs, weights, cv_text, cv_weights)


def test_lrn_across_channels_k():
    # LRNLayer::CrossChannelForward_cpu: scale = k + alpha/size * (sum of squares over `size` channels, zero
    # padded); top = x * scale^-beta. (OpenCV 4.14 ignores k.)
    net = net_from_text(net_text('layer { name: "o" type: "LRN" bottom: "x" top: "o" lrn_param { local_size: 3 '
                                 'alpha: 0.9 beta: 0.75 k: 2 } }', shape=(1, 6, 3, 4)))
    x = random((1, 6, 3, 4), seed=1)
    padded = np.pad(x * x, ((0, 0), (1, 1), (0, 0), (0, 0)))
    scale = 2 + 0.9 / 3 * (padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:])
    np.testing.assert_allclose(run_net(net, x=x)["o"], x * scale ** -0.75, rtol=1e-6)


def test_scale_second_bottom_bias(tmp_path):
    # ScaleLayer with a second bottom (the factor) and bias_term: the bias is the layer's one blob, shaped like
    # the factor (OpenCV 4.14 adds it differently).
    text = net_text('input: "f"\ninput_shape { dim: 6 dim: 7 }\nlayer { name: "o" type: "Scale" bottom: "x" '
                    'bottom: "f" top: "o" scale_param { axis: 1 bias_term: true } }', shape=(2, 6, 7, 9))
    bias = random((6, 7), seed=3)
    write_caffemodel(tmp_path / "s.caffemodel", [WeightsLayer("o", "Scale", [bias])])
    net, _ = convert(spec_from_text(text), tmp_path / "s.caffemodel")
    x, factor = random((2, 6, 7, 9), seed=4), random((6, 7), seed=5)
    expected = x * factor[None, :, :, None] + bias[None, :, :, None]
    np.testing.assert_allclose(run_net(net, x=x, f=factor)["o"], expected, rtol=1e-5, atol=1e-6)
    check_onnx(net, {"x": x, "f": factor}, {"o": expected})


def caffe_deconvolution(x, weight, bias, stride, pad, dilation, group):
    """DeconvolutionLayer: per group, columns = W^T x, then col2im (each input pixel spreads its kernel at
    (h*s - p + i*d, w*s - p + j*d)); output s(in-1) + d(k-1) + 1 - 2p."""
    n, c, height, width = x.shape
    out_per_group, kh, kw = weight.shape[1:]
    out_h = stride[0] * (height - 1) + dilation[0] * (kh - 1) + 1 - 2 * pad[0]
    out_w = stride[1] * (width - 1) + dilation[1] * (kw - 1) + 1 - 2 * pad[1]
    top = np.zeros((n, out_per_group * group, out_h, out_w), np.float64)
    per_group = c // group
    for g in range(group):
        for ci in range(g * per_group, (g + 1) * per_group):
            for co in range(out_per_group):
                for i in range(kh):
                    for j in range(kw):
                        for h in range(height):
                            for w in range(width):
                                y = h * stride[0] - pad[0] + i * dilation[0]
                                z = w * stride[1] - pad[1] + j * dilation[1]
                                if 0 <= y < out_h and 0 <= z < out_w:
                                    top[:, g * out_per_group + co, y, z] += x[:, ci, h, w] * weight[ci, co, i, j]
    return (top + bias[None, :, None, None]).astype(np.float32)


def test_dilated_deconvolution(tmp_path):
    # (OpenCV 4.14 ignores a Deconvolution's dilation.)
    text = net_text('layer { name: "d" type: "Deconvolution" bottom: "x" top: "d" convolution_param { num_output: 4 '
                    'group: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 2 dilation: 2 '
                    'dilation: 3 } }', shape=(1, 4, 4, 5))
    weight, bias = random((4, 2, 3, 2), seed=6), random((4,), seed=7)
    write_caffemodel(tmp_path / "d.caffemodel", [WeightsLayer("d", "Deconvolution", [weight, bias])])
    net, _ = convert(spec_from_text(text), tmp_path / "d.caffemodel")
    x = random((1, 4, 4, 5), seed=8)
    expected = caffe_deconvolution(x, weight, bias, (2, 3), (1, 2), (2, 3), 2)
    out = run_net(net, x=x)["d"]
    assert out.shape == expected.shape == (1, 4, 9, 12)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    check_onnx(net, {"x": x}, {"d": expected})


def test_concat_and_slice_refuse_axis_with_the_legacy_field():
    # ConcatLayer / SliceLayer::LayerSetUp: "Either axis or concat_dim should be specified; not both."
    for body in ('layer { name: "c" type: "Concat" bottom: "x" bottom: "x" top: "c" concat_param { axis: 1 '
                 'concat_dim: 2 } }',
                 'layer { name: "s" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { axis: 1 '
                 'slice_dim: 1 } }'):
        with pytest.raises(NetDefinitionError, match="not both"):
            net_from_text(net_text(body))


def test_count_nonfinite_counts_every_chunk():
    from caffe2torch.load_weights import count_nonfinite

    values = np.zeros(10, np.float32)
    values[[1, 7, 9]] = [np.nan, np.inf, -np.inf]
    assert count_nonfinite(values, chunk=4) == 3 and count_nonfinite(values[:7], chunk=3) == 1


# ---------------------------------------------------------------------------------------------------------
# Expectations of Caffe's own tests (src/caffe/test/test_pooling_layer.cpp, test_spp_layer.cpp)
# ---------------------------------------------------------------------------------------------------------


def test_caffe_pooling_test_expectations():
    # TestForwardMaxPadded: kernel 3, stride 2, pad 2 (more than half the kernel) on [[1 2 4] [2 3 2] [4 2 1]].
    net = net_from_text(net_text(pooling_layer("MAX", (3, 3), (2, 2), (2, 2)), shape=(1, 1, 3, 3)))
    x = np.array([[1, 2, 4], [2, 3, 2], [4, 2, 1]], np.float32)[None, None]
    np.testing.assert_array_equal(run_net(net, x=x)["p"][0, 0], [[1, 4, 4], [4, 4, 4], [4, 4, 1]])
    # TestForwardAve: kernel 3, stride 1, pad 1 on a 3x3 plane of 2s: the padding counts in the divisor.
    net = net_from_text(net_text(pooling_layer("AVE", (3, 3), (1, 1), (1, 1)), shape=(1, 1, 3, 3)))
    expected = np.array([[8 / 9, 4 / 3, 8 / 9], [4 / 3, 2, 4 / 3], [8 / 9, 4 / 3, 8 / 9]])
    np.testing.assert_allclose(run_net(net, x=np.full((1, 1, 3, 3), 2.0))["p"][0, 0], expected, atol=1e-5)
    # TestForwardSquare with the mask top: kernel 2 (stride 1) on [1 2 5 2 3; 9 4 1 4 8; 1 2 5 2 3].
    net = net_from_text(net_text(pooling_layer("MAX", (2, 2), (1, 1), (0, 0), mask=True), shape=(2, 2, 3, 5)))
    plane = np.array([[1, 2, 5, 2, 3], [9, 4, 1, 4, 8], [1, 2, 5, 2, 3]], np.float32)
    blobs = run_net(net, x=np.tile(plane, (2, 2, 1, 1)))
    np.testing.assert_array_equal(blobs["p"][1, 1], [[9, 5, 5, 8], [9, 5, 5, 8]])
    np.testing.assert_array_equal(blobs["m"][1, 1], [[5, 2, 2, 9], [5, 12, 12, 9]])


@pytest.mark.parametrize("shape, pyramid_height, channels", [((2, 3, 9, 8), 3, 63), ((4, 3, 1024, 765), 5, 1023),
                                                              ((10, 3, 7, 7), 3, 63)])
def test_caffe_spp_test_expectations(shape, pyramid_height, channels):
    # TestSetup, TestEqualOutputDims, TestEqualOutputDims2: every level gives exactly 4^level cells.
    from caffe2torch.shapes import infer_shapes

    spec = spec_from_text(net_text(f'layer {{ name: "s" type: "SPP" bottom: "x" top: "s" spp_param {{ '
                                   f'pyramid_height: {pyramid_height} }} }}', shape=shape))
    assert infer_shapes(spec).blobs["s"] == (shape[0], channels)


# ---------------------------------------------------------------------------------------------------------
# N-D convolution: BaseConvolutionLayer's channel axis and any number of spatial axes
# ---------------------------------------------------------------------------------------------------------


def caffe_convolution_nd(x, weight, bias, stride, pad, dilation, group):
    """caffe_conv (test_convolution_layer.cpp's reference) for any number of spatial axes, channel axis 1:
    out[n, o, p...] = sum over c, k of in[n, g*C/g + c, p*s - pad + k*d] * w[o, c, k] (zero outside)."""
    n, channels, *sizes = x.shape
    out_channels, per_group, *kernel = weight.shape
    outs = [(size + 2 * q - (d * (k - 1) + 1)) // s + 1
            for size, k, q, s, d in zip(sizes, kernel, pad, stride, dilation)]
    padded = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(q, q) for q in pad])
    top = np.zeros((n, out_channels, *outs))
    outputs_per_group = out_channels // group
    for offset in np.ndindex(*kernel):
        window = tuple(slice(k * d, k * d + s * (o - 1) + 1, s)
                       for k, d, s, o in zip(offset, dilation, stride, outs))
        taps = padded[(slice(None), slice(None), *window)]
        for g in range(group):
            part = taps[:, g * per_group:(g + 1) * per_group]
            w = weight[g * outputs_per_group:(g + 1) * outputs_per_group, :, *offset]
            top[:, g * outputs_per_group:(g + 1) * outputs_per_group] += np.einsum("nc...,oc->no...", part, w)
    return (top + bias.reshape(1, -1, *[1] * len(sizes))).astype(np.float32)


@pytest.mark.parametrize("shape, params, kernel, stride, pad, dilation", [
    # Caffe's TestSimple3DConvolution / TestDilated3DConvolution geometry: kernel 3, stride 2 or dilation 2
    ((2, 4, 5, 6, 4), "kernel_size: 3 stride: 2", (3, 3, 3), (2, 2, 2), (0, 0, 0), (1, 1, 1)),
    ((2, 4, 6, 7, 8), "kernel_size: 3 dilation: 2", (3, 3, 3), (1, 1, 1), (0, 0, 0), (2, 2, 2)),
    # one value per axis, with padding and groups
    ((1, 4, 5, 7, 6), "kernel_size: 1 kernel_size: 3 kernel_size: 2 pad: 0 pad: 1 pad: 1 stride: 1 stride: 2 "
                      "stride: 1 group: 2", (1, 3, 2), (1, 2, 1), (0, 1, 1), (1, 1, 1)),
    # 1-D: (N, C, L)
    ((2, 4, 11), "kernel_size: 3 pad: 2 stride: 2 dilation: 2", (3,), (2,), (2,), (2,)),
])
def test_nd_convolution(shape, params, kernel, stride, pad, dilation, tmp_path):
    text = net_text(f'layer {{ name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param {{ '
                    f'num_output: 6 {params} }} }}', shape=shape)
    group = 2 if "group" in params else 1
    weight, bias = random((6, shape[1] // group, *kernel), seed=1), random((6,), seed=2)
    write_caffemodel(tmp_path / "c.caffemodel", [WeightsLayer("c", "Convolution", [weight, bias])])
    net, _ = convert(spec_from_text(text), tmp_path / "c.caffemodel")
    x = random(shape, seed=3)
    expected = caffe_convolution_nd(x, weight, bias, stride, pad, dilation, group)
    out = run_net(net, x=x)["c"]
    assert out.shape == expected.shape == net.shapes.blobs["c"]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    check_onnx(net, {"x": x}, {"c": expected})


def test_0d_convolution_and_3d_deconvolution(tmp_path):
    # Test0DConvolution: channel axis 3 of a 4-D blob, no spatial axes: each position of the first three axes
    # is an InnerProduct over the last. A 3-D Deconvolution is the transpose of a 3-D convolution (checked
    # through the adjoint identity <deconv(y), x> = <y, conv(x)> with the same weights, no bias).
    text = net_text('layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 5 '
                    'kernel_size: 1 axis: 3 } }\nlayer { name: "v" type: "Convolution" bottom: "y" top: "v" '
                    'convolution_param { num_output: 2 kernel_size: 2 stride: 2 pad: 1 bias_term: false } }\n'
                    'layer { name: "d" type: "Deconvolution" bottom: "w" top: "d" convolution_param { num_output: 3 '
                    'kernel_size: 2 stride: 2 pad: 1 bias_term: false } }\n'
                    'input: "y"\ninput_shape { dim: 1 dim: 3 dim: 4 dim: 6 dim: 4 }\n'
                    'input: "w"\ninput_shape { dim: 1 dim: 2 dim: 3 dim: 4 dim: 3 }', shape=(2, 3, 4, 7))
    weight, bias = random((5, 7), seed=4), random((5,), seed=5)
    kernel3d = random((2, 3, 2, 2, 2), seed=6)
    write_caffemodel(tmp_path / "w.caffemodel", [WeightsLayer("c", "Convolution", [weight, bias]),
                                                 WeightsLayer("v", "Convolution", [kernel3d]),
                                                 WeightsLayer("d", "Deconvolution", [kernel3d])])
    net, _ = convert(spec_from_text(text), tmp_path / "w.caffemodel")
    x, y, w = random((2, 3, 4, 7), seed=7), random((1, 3, 4, 6, 4), seed=8), random((1, 2, 3, 4, 3), seed=9)
    blobs = run_net(net, x=x, y=y, w=w)
    assert blobs["c"].shape == (2, 3, 4, 5) and blobs["d"].shape == (1, 3, 4, 6, 4)
    np.testing.assert_allclose(blobs["c"], x @ weight.T + bias, rtol=1e-5, atol=1e-6)
    assert blobs["v"].shape == w.shape
    np.testing.assert_allclose(float((blobs["d"] * y).sum()), float((w * blobs["v"]).sum()), rtol=1e-4)
    check_onnx(net, {"x": x, "y": y, "w": w}, {k: blobs[k] for k in ("c", "v", "d")})


# ---------------------------------------------------------------------------------------------------------
# A net input rewritten in place
# ---------------------------------------------------------------------------------------------------------

INPLACE_INPUT = """layer { name: "input" type: "Input" top: "input"
  input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
layer { name: "prelu_1" type: "PReLU" bottom: "input" top: "input" prelu_param { channel_shared: false } }
layer { name: "output" type: "PReLU" bottom: "input" top: "output" prelu_param { channel_shared: true } }
"""


def test_net_input_rewritten_in_place(tmp_path):
    # OpenCV's layer_prelu test net (opencv_extra testdata/dnn/layers/layer_prelu.prototxt): the first PReLU
    # writes the net input in place, so after Forward Caffe's blob 'input' holds its result. torch keeps Caffe's
    # final value; the ONNX graph input keeps the given array, so onnxruntime checks that value through the
    # blobs computed from it and leaves 'input' unchecked (it compared the given array with it before).
    slopes, shared = random((3,), seed=2), np.array([0.3], np.float32)
    write_caffemodel(tmp_path / "w.caffemodel", [WeightsLayer("input", "Input", []),
                                                 WeightsLayer("prelu_1", "PReLU", [slopes]),
                                                 WeightsLayer("output", "PReLU", [shared])])
    net, report = convert(spec_from_text(INPLACE_INPUT), tmp_path / "w.caffemodel")
    assert report.ok
    x = random((2, 3, 4, 5), seed=1)
    first = np.where(x > 0, x, x * slopes[None, :, None, None])
    expected = {"input": first, "output": np.where(first > 0, first, first * shared[0])}
    blobs = run_net(net, input=x)
    for name, value in expected.items():
        np.testing.assert_allclose(blobs[name], value, rtol=1e-6)
    report = verify_onnx(net, {"input": x}, expected)
    assert report.ok and [b.name for b in report.blobs] == ["output"]
    assert [u.name for u in report.unchecked] == ["input"] and "rewrites in place" in report.unchecked[0].reason
    # A net whose output is such an input cannot be ONNX (an output cannot take its graph input's name).
    only = net_from_text(INPLACE_INPUT.rsplit("layer {", 1)[0])
    with pytest.raises(UnsupportedError, match="blob 'input' is a net input that PReLU 'prelu_1' rewrites in place"):
        export_onnx(only, tmp_path / "only.onnx")
