"""Each Caffe quirk pinned by a hand-computed case (the goldens check them again on Caffe's own numbers)."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2torch.caffemodel import WeightsLayer, write_caffemodel
from caffe2torch.errors import UnsupportedError, WeightsMismatchError
from caffe2torch.layers.normalization import batchnorm_statistics
from caffe2torch.load_weights import load_caffemodel_weights

from .conftest import net_from_text, run_net, write_random_weights

HEAD = 'input: "x" input_shape { dim: 1 dim: 2 dim: 6 dim: 6 }\n'


def test_average_pooling_divisor_counts_padding_but_not_ceil_overhang():
    net = net_from_text('input: "x" input_shape { dim: 1 dim: 1 dim: 6 dim: 6 }\n'
                        'layer { name: "p" type: "Pooling" bottom: "x" top: "p" '
                        'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }')
    out = run_net(net, x=np.ones((1, 1, 6, 6)))["p"][0, 0]
    # Windows per axis: [-1,2) [1,4) [3,6) [5,8)->[5,7): the padding cell counts (divisor 3 for the first,
    # seeing 2 ones) but the overhang past in+pad = 7 does not (divisor 2, seeing 1 one).
    per_axis_sum, per_axis_div = np.array([2, 3, 3, 1]), np.array([3, 3, 3, 2])
    expected = np.outer(per_axis_sum, per_axis_sum) / np.outer(per_axis_div, per_axis_div)
    assert out.shape == (4, 4)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_max_pooling_ignores_padding_and_clips_last_window():
    net = net_from_text('input: "x" input_shape { dim: 1 dim: 1 dim: 5 dim: 5 }\n'
                        'layer { name: "p" type: "Pooling" bottom: "x" top: "p" '
                        'pooling_param { pool: MAX kernel_size: 3 stride: 3 pad: 1 } }')
    x = -np.ones((1, 1, 5, 5))
    out = run_net(net, x=x)["p"]
    assert out.shape == (1, 1, 2, 2) and np.all(out == -1)  # padding is not a 0 candidate


def test_batchnorm_factor_zero_means_zero_statistics(tmp_path):
    mean, var = batchnorm_statistics(np.array([3.0]), np.array([5.0]), np.array([0.0]))
    assert mean[0] == 0 and var[0] == 0
    net = net_from_text(HEAD + 'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" '
                        'batch_norm_param { use_global_stats: true eps: 0.25 } }')
    write_caffemodel(tmp_path / "w.caffemodel", [WeightsLayer("bn", "BatchNorm", [
        np.array([7.0, 1.0], np.float32), np.array([9.0, 4.0], np.float32), np.array([0.0], np.float32)])])
    load_caffemodel_weights(net, tmp_path / "w.caffemodel")
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6))
    np.testing.assert_allclose(run_net(net, x=x)["y"], x / np.sqrt(0.25), rtol=1e-6)
    # factor 2: stored (mean*f, var*f, f)
    write_caffemodel(tmp_path / "w2.caffemodel", [WeightsLayer("bn", "BatchNorm", [
        np.array([2.0, 4.0], np.float32), np.array([2.0, 6.0], np.float32), np.array([2.0], np.float32)])])
    load_caffemodel_weights(net, tmp_path / "w2.caffemodel")
    expected = (x - np.array([1.0, 2.0]).reshape(1, 2, 1, 1)) / np.sqrt(np.array([1.0, 3.0]).reshape(1, 2, 1, 1) + 0.25)
    np.testing.assert_allclose(run_net(net, x=x)["y"], expected, rtol=1e-5)


def test_eltwise_coefficients_prod_max():
    net = net_from_text(HEAD + 'input: "y" input_shape { dim: 1 dim: 2 dim: 6 dim: 6 }\n'
                        'layer { name: "s" type: "Eltwise" bottom: "x" bottom: "y" top: "s" '
                        'eltwise_param { coeff: 0.5 coeff: -2 } }\n'
                        'layer { name: "p" type: "Eltwise" bottom: "x" bottom: "y" top: "p" '
                        'eltwise_param { operation: PROD } }\n'
                        'layer { name: "m" type: "Eltwise" bottom: "x" bottom: "y" top: "m" '
                        'eltwise_param { operation: MAX } }')
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((1, 2, 6, 6)), rng.standard_normal((1, 2, 6, 6))
    out = run_net(net, x=x, y=y)
    np.testing.assert_allclose(out["s"], 0.5 * x - 2 * y, rtol=1e-6)
    np.testing.assert_allclose(out["p"], x * y, rtol=1e-6)
    np.testing.assert_allclose(out["m"], np.maximum(x, y), rtol=1e-6)


def test_softmax_default_axis_is_channels():
    net = net_from_text(HEAD + 'layer { name: "s" type: "Softmax" bottom: "x" top: "s" }\n'
                        'layer { name: "s3" type: "Softmax" bottom: "x" top: "s3" softmax_param { axis: -1 } }')
    out = run_net(net, x=np.random.default_rng(2).standard_normal((1, 2, 6, 6)))
    np.testing.assert_allclose(out["s"].sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(out["s3"].sum(axis=3), 1, rtol=1e-6)


def test_argmax_ties_go_to_the_largest_index_and_layouts():
    net = net_from_text(HEAD + 'layer { name: "a" type: "ArgMax" bottom: "x" top: "a" argmax_param { axis: 1 } }\n'
                        'layer { name: "f" type: "ArgMax" bottom: "x" top: "f" '
                        'argmax_param { top_k: 2 out_max_val: true } }')
    out = run_net(net, x=np.zeros((1, 2, 6, 6)))
    assert np.all(out["a"] == 1)
    assert out["f"].shape == (1, 2, 2, 1)
    assert list(out["f"][0, 0, :, 0]) == [71, 70] and list(out["f"][0, 1, :, 0]) == [0, 0]


def test_in_place_chain_rebinds_the_blob():
    net = net_from_text(HEAD + 'layer { name: "p" type: "Power" bottom: "x" top: "x2" power_param { shift: -1 } }\n'
                        'layer { name: "r" type: "ReLU" bottom: "x2" top: "x2" }\n'
                        'layer { name: "s" type: "Power" bottom: "x2" top: "x2" power_param { scale: 3 } }')
    x = np.random.default_rng(3).standard_normal((1, 2, 6, 6))
    np.testing.assert_allclose(run_net(net, x=x)["x2"], 3 * np.maximum(x - 1, 0), rtol=1e-6, atol=1e-6)


def test_interp_copy_path_crop_and_align_corners():
    net = net_from_text('input: "x" input_shape { dim: 1 dim: 1 dim: 3 dim: 3 }\n'
                        'layer { name: "z" type: "Interp" bottom: "x" top: "z" interp_param { zoom_factor: 2 } }\n'
                        'layer { name: "c" type: "Interp" bottom: "z" top: "c" '
                        'interp_param { zoom_factor: 1 pad_beg: -1 pad_end: -2 } }')
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    out = run_net(net, x=x)
    # align corners: output pixel i samples input position i/2
    expected = np.array([[0, 0.5, 1, 1.5, 2], [1.5, 2, 2.5, 3, 3.5], [3, 3.5, 4, 4.5, 5],
                         [4.5, 5, 5.5, 6, 6.5], [6, 6.5, 7, 7.5, 8]])
    np.testing.assert_allclose(out["z"][0, 0], expected, rtol=1e-6)
    np.testing.assert_array_equal(out["c"][0, 0], out["z"][0, 0, 1:3, 1:3])  # exact copy of the crop


def test_v1_padding_adds_zeros_and_crops():
    net = net_from_text('input: "x" input_dim: 1 input_dim: 1 input_dim: 2 input_dim: 2\n'
                        'layers { name: "p" type: PADDING bottom: "x" top: "p" '
                        'padding_param { pad_beg: 1 pad_end: -1 } }')
    out = run_net(net, x=np.array([[[[1, 2], [3, 4]]]]))["p"][0, 0]
    np.testing.assert_array_equal(out, [[0, 0], [0, 1]])


def test_unsupported_layers_are_listed_together():
    with pytest.raises(UnsupportedError) as info:
        net_from_text(HEAD + 'layer { name: "a" type: "Mystery" bottom: "x" top: "a" }\n'
                      'layer { name: "b" type: "Convolution" bottom: "x" top: "b" convolution_param { num_output: 1 '
                      'kernel_size: 2 dilation: 0 } }\n'
                      'layer { name: "c" type: "AlsoUnknown" bottom: "x" top: "c" }')
    text = str(info.value)
    assert "3 unsupported" in text and "'a'" in text and "dilation 0" in text and "AlsoUnknown" in text
    assert "test.prototxt:3" in text


def test_pooling_round_mode_floor_gives_floor_sizes():
    # Upstream Caffe's round_mode: FLOOR gives smaller outputs than the CEIL every other net uses.
    floor = net_from_text(HEAD + 'layer { name: "p" type: "Pooling" bottom: "x" top: "p" '
                          'pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR } }')
    ceil = net_from_text(HEAD + 'layer { name: "p" type: "Pooling" bottom: "x" top: "p" '
                         'pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: CEIL } }')
    x = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6).repeat(2, axis=1)
    assert run_net(ceil, x=x)["p"].shape == (1, 2, 3, 3)
    np.testing.assert_array_equal(run_net(floor, x=x)["p"][0, 0], [[14, 16], [26, 28]])


def test_weights_mismatch_lists_missing_unused_and_shapes(tmp_path):
    net = net_from_text(HEAD + 'layer { name: "c1" type: "Convolution" bottom: "x" top: "c1" '
                        'convolution_param { num_output: 3 kernel_size: 3 } }\n'
                        'layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" '
                        'convolution_param { num_output: 1 kernel_size: 1 } }')
    write_caffemodel(tmp_path / "w.caffemodel", [
        WeightsLayer("c1", "Convolution", [np.zeros((3, 2, 5, 5), np.float32), np.zeros(3, np.float32)]),
        WeightsLayer("other", "Convolution", [np.zeros((1,), np.float32)]),
    ])
    with pytest.raises(WeightsMismatchError) as info:
        load_caffemodel_weights(net, tmp_path / "w.caffemodel")
    err = info.value
    assert err.missing == ["c2"] and err.unused == ["other"] and "c1" in err.mismatched[0]
    net2 = net_from_text(HEAD + 'layer { name: "r" type: "ReLU" bottom: "x" top: "r" }')
    write_caffemodel(tmp_path / "r.caffemodel", [WeightsLayer("r", "ReLU", [np.zeros(2, np.float32)])])
    with pytest.raises(WeightsMismatchError, match="has no parameters here"):
        load_caffemodel_weights(net2, tmp_path / "r.caffemodel")


def test_shared_parameters_load_once_and_stay_tied(tmp_path):
    net = net_from_text(HEAD + 'layer { name: "a" type: "Convolution" bottom: "x" top: "a" param { name: "w" } '
                        'param { name: "b" } convolution_param { num_output: 2 kernel_size: 1 } }\n'
                        'layer { name: "b" type: "Convolution" bottom: "x" top: "b" param { name: "w" } '
                        'param { name: "b" } convolution_param { num_output: 2 kernel_size: 1 } }')
    write_random_weights(net, tmp_path / "w.caffemodel")
    assert net.module("a").weight is net.module("b").weight
    load_caffemodel_weights(net, tmp_path / "w.caffemodel")
    out = run_net(net, x=np.ones((1, 2, 6, 6)))
    np.testing.assert_array_equal(out["a"], out["b"])


def test_legacy_v1_blob_shapes_load_into_inner_product(tmp_path):
    net = net_from_text(HEAD + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" '
                        'inner_product_param { num_output: 3 } }')
    weight = np.arange(3 * 72, dtype=np.float32).reshape(3, 72) / 100
    bias = np.array([1.0, -1.0, 0.5], np.float32)
    write_caffemodel(tmp_path / "v1.caffemodel", [WeightsLayer("ip", "InnerProduct", [weight, bias])], dialect="v1")
    report = load_caffemodel_weights(net, tmp_path / "v1.caffemodel")  # blobs stored as 1x1x3x72 and 1x1x1x3
    assert report.loaded == ["ip"]
    x = np.random.default_rng(4).standard_normal((1, 2, 6, 6))
    np.testing.assert_allclose(run_net(net, x=x)["ip"], x.reshape(1, -1) @ weight.T + bias, rtol=1e-5)


ATTENTION = """input: "x" input_shape { dim: 1 dim: 4 dim: 9 dim: 9 }
input: "edges" input_shape { dim: 1 dim: 1 dim: 9 dim: 9 }
input: "data_dim" input_shape { dim: 1 dim: 1 dim: 1 dim: 2 }
layer { name: "att" type: "Convolution" bottom: "x" top: "att" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "att_soft" type: "Softmax" bottom: "att" top: "att_soft" }
layer { name: "att_split" type: "Slice" bottom: "att_soft" top: "w0" top: "w1" }
layer { name: "s0" type: "SpatialProduct" bottom: "x" bottom: "w0" top: "s0" }
layer { name: "s1" type: "SpatialProduct" bottom: "x" bottom: "w1" top: "s1" }
layer { name: "fused" type: "Eltwise" bottom: "s0" bottom: "s1" top: "fused" }
layer { name: "dt" type: "DomainTransform" bottom: "fused" bottom: "edges" bottom: "data_dim" top: "dt"
        domain_transform_param { num_iter: 2 spatial_sigma: 10 range_sigma: 2 } }
"""


def test_attention_to_scale_and_domain_transform_net(tmp_path):
    import onnxruntime as ort

    from caffe2torch.onnx_export import export_onnx

    net = net_from_text(ATTENTION)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 4, 9, 9))
    blobs = run_net(net, x=x, edges=np.zeros((1, 1, 9, 9)), data_dim=np.array([[[[6, 7]]]]))
    # attention weights sum to one, so the fused blob is x itself
    np.testing.assert_allclose(blobs["fused"], x, rtol=1e-5, atol=1e-6)
    # the filter smooths only the 6x7 valid region and leaves the rest as it was
    np.testing.assert_array_equal(blobs["dt"][..., 6:, :], blobs["fused"][..., 6:, :])
    np.testing.assert_array_equal(blobs["dt"][..., :, 7:], blobs["fused"][..., :, 7:])
    assert blobs["dt"][..., :6, :7].std() < blobs["fused"][..., :6, :7].std()
    export_onnx(net, tmp_path / "dt.onnx", ["dt"])  # DomainTransform lowers to onnx::Loop (test_domain_transform)
    session = ort.InferenceSession(str(tmp_path / "dt.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"x": x.astype(np.float32), "edges": np.zeros((1, 1, 9, 9), np.float32),
             "data_dim": np.array([[[[6, 7]]]], np.float32)}
    np.testing.assert_allclose(session.run(["dt"], feeds)[0], blobs["dt"], rtol=1e-5, atol=1e-6)
