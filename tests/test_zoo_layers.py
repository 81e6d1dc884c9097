"""The segmentation forks' own layers, each against small cases worked out by hand from the fork's source:
MAX Pooling's mask top (upstream / caffe-segnet pooling_layer.cpp), SegNet's Upsample (upsample_layer.cpp),
SegNet's / ENet's BN and PSPNet's BN (their bn_layer.cpp), DenseImageData and FCN's Python data layer as net
inputs, and the pyramid pooling sizes of PSPNet and ICNet. Each case runs in torch and in onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caffe2torch.caffe_math import interp_output_size, pool_average_divisors, pool_output_size
from caffe2torch.caffemodel import WeightsLayer, write_caffemodel
from caffe2torch.errors import InvalidNetError, NetDefinitionError, UnsupportedError
from caffe2torch.layers.upsample import upsample_output_size
from caffe2torch.net import build_net
from caffe2torch.parse import parse_prototxt_text
from caffe2torch.pipeline import convert, verify_onnx
from caffe2torch.shapes import check_definitions, check_supported, infer_shapes
from caffe2torch.upgrade import upgrade_net

from .conftest import net_from_text, run_net, spec_from_text

# A 3x4 plane: windows with a maximum inside, a tie across rows (5 at (0,2) and (1,2)), and a tie in a row.
PLANE = np.array([[1, 3, 5, 0],
                  [2, 5, 5, 1],
                  [0, 4, 6, 6]], np.float32)


def segnet_net(body: str, shape=(1, 1, 3, 4)) -> str:
    """A caffe-segnet file (DenseImageData) around the given layers."""
    return f"""name: "t"
layer {{ name: "data" type: "DenseImageData" top: "data" top: "label"
        dense_image_data_param {{ source: "list.txt" batch_size: {shape[0]} }} }}
{body}"""


def check_onnx(net, inputs: dict, expected: dict) -> None:
    report = verify_onnx(net, inputs, expected)
    assert report.ok and {b.name for b in report.blobs} >= set(expected), report.first_divergent


# ---- MAX Pooling's mask (second top) ----


def pool_mask_net(kernel: int, stride: int, pad: int = 0, method: str = "MAX") -> str:
    return segnet_net(f"""layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
        pooling_param {{ pool: {method} kernel_size: {kernel} stride: {stride} pad: {pad} }} }}""")


def test_pool_mask_is_the_first_maximum_in_caffes_scan_order():
    # kernel 2, stride 2, ceil: the last row of windows is clipped to row 2. Windows (scan rows, then columns,
    # a value replaces the maximum only if strictly greater): (0,0) 1 3 / 2 5 -> 5 at (1,1) = 5;
    # (0,1) 5 0 / 5 1 -> the 5 at (0,2) = 2, not (1,2); (1,0) 0 4 -> (2,1) = 9; (1,1) 6 6 -> (2,2) = 10.
    net = net_from_text(pool_mask_net(2, 2), input_shapes={"data": (1, 1, 3, 4)})
    x = PLANE[None, None]
    blobs = run_net(net, data=x)
    np.testing.assert_array_equal(blobs["pool"][0, 0], [[5, 5], [4, 6]])
    np.testing.assert_array_equal(blobs["mask"][0, 0], [[5, 2], [9, 10]])
    assert blobs["mask"].dtype == np.float32  # Caffe's mask top is a float blob
    check_onnx(net, {"data": x}, {"pool": blobs["pool"], "mask": blobs["mask"]})


def test_pool_mask_indexes_the_unpadded_plane():
    # kernel 3, stride 2, pad 1: output 2x3 (ceil). Window (h, w) starts at (2h-1, 2w-1), clipped to the plane:
    # (0,0) rows 0-1 cols 0-1 -> 5 at (1,1) = 5; (0,1) rows 0-1 cols 1-3 -> first 5 at (0,2) = 2;
    # (0,2) rows 0-1 col 3 -> 1 at (1,3) = 7; (1,0) rows 1-2 cols 0-1 -> 5 at (1,1) = 5 (shared with (0,0));
    # (1,1) rows 1-2 cols 1-3 -> 6 at (2,2) = 10; (1,2) rows 1-2 col 3 -> 6 at (2,3) = 11.
    net = net_from_text(pool_mask_net(3, 2, 1), input_shapes={"data": (2, 1, 3, 4)})
    x = np.stack([PLANE, -PLANE])[:, None]
    blobs = run_net(net, data=x)
    np.testing.assert_array_equal(blobs["pool"][0, 0], [[5, 5, 1], [5, 6, 6]])
    np.testing.assert_array_equal(blobs["mask"][0, 0], [[5, 2, 7], [5, 10, 11]])
    # the second image, negated: (0,0) -1 at (0,0) = 0; (0,1) and (0,2) the 0 at (0,3) = 3; (1,0) the 0 at
    # (2,0) = 8; (1,1) and (1,2) -1 at (1,3) = 7. Indices are per plane, not offset by the image.
    np.testing.assert_array_equal(blobs["mask"][1, 0], [[0, 3, 3], [8, 7, 7]])
    check_onnx(net, {"data": x}, {"pool": blobs["pool"], "mask": blobs["mask"]})


def test_pool_mask_of_global_pooling():
    text = segnet_net("""layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
        pooling_param { pool: MAX global_pooling: true } }""")
    blobs = run_net(net_from_text(text, input_shapes={"data": (1, 1, 3, 4)}), data=PLANE[None, None])
    assert blobs["pool"].shape == blobs["mask"].shape == (1, 1, 1, 1)
    assert blobs["mask"].item() == 10  # the first 6


def test_only_max_pooling_makes_a_mask():
    spec = spec_from_text(pool_mask_net(2, 2, method="AVE"), input_shapes={"data": (1, 1, 4, 4)})
    with pytest.raises(InvalidNetError, match=r"Pooling makes exactly 1 top; this layer has 2"):
        check_definitions(spec)


# ---- SegNet's Upsample ----


def upsample_net(param: str) -> str:
    return pool_mask_net(2, 2) + f"""
layer {{ name: "up" type: "Upsample" bottom: "pool" bottom: "mask" top: "up" upsample_param {{ {param} }} }}"""


@pytest.mark.parametrize("param, expected", [
    # data values go to their mask positions; everything else is 0. Pooled (from PLANE) [[5, 5], [4, 6]] with
    # mask [[5, 2], [9, 10]]: 5 -> flat 5, 5 -> flat 2, 4 -> flat 9, 6 -> flat 10 of the top plane.
    ("upsample_h: 3 upsample_w: 4", [[0, 0, 5, 0], [0, 5, 0, 0], [0, 4, 6, 0]]),
    # scale 2 with pad_out_h: 2 * 2 - 1 = 3 rows, 4 columns: the same
    ("scale: 2 pad_out_h: true", [[0, 0, 5, 0], [0, 5, 0, 0], [0, 4, 6, 0]]),
    # scale 2 alone: 4x4, the fourth row stays 0
    ("scale: 2", [[0, 0, 5, 0], [0, 5, 0, 0], [0, 4, 6, 0], [0, 0, 0, 0]]),
    # the mask is a flat index into the top's plane, whatever its width: 4 rows of 3 put flat 5 at (1,2),
    # 2 at (0,2), 9 at (3,0), 10 at (3,1), exactly as Caffe's top_data[idx] does
    ("upsample_h: 4 upsample_w: 3", [[0, 0, 5], [0, 0, 5], [0, 0, 0], [4, 6, 0]]),
    # upsample_h alone does not pass the "both or neither" test for sizes, so Caffe falls back to scale (2)
    ("upsample_h: 7", [[0, 0, 5, 0], [0, 5, 0, 0], [0, 4, 6, 0], [0, 0, 0, 0]]),
])
def test_upsample_scatters_data_to_the_mask_positions(param, expected):
    net = net_from_text(upsample_net(param), input_shapes={"data": (1, 1, 3, 4)})
    blobs = run_net(net, data=PLANE[None, None])
    np.testing.assert_array_equal(blobs["up"][0, 0], expected)
    check_onnx(net, {"data": PLANE[None, None]}, {"up": blobs["up"]})


UPSAMPLE_ONLY = """name: "t"
input: "values"
input_shape { dim: 1 dim: 1 dim: %d dim: %d }
input: "mask"
input_shape { dim: 1 dim: 1 dim: %d dim: %d }
layer { name: "up" type: "Upsample" bottom: "values" bottom: "mask" top: "up" upsample_param { %s } }
"""


def test_upsample_keeps_the_later_value_where_windows_share_a_maximum():
    # kernel 3 / stride 2 / pad 1 pooling of PLANE (overlapping windows) gives mask [[5, 2, 7], [5, 10, 11]].
    # Caffe writes top[mask[i]] = data[i] for i = 0..5 in order, so flat 5 ends with data[3], not data[0].
    net = build_net(spec_from_text(UPSAMPLE_ONLY % (2, 3, 2, 3, "upsample_h: 3 upsample_w: 4")))
    values = np.array([[[[1, 2, 3], [4, 5, 6]]]], np.float32)
    mask = np.array([[[[5, 2, 7], [5, 10, 11]]]], np.float32)
    up = run_net(net, values=values, mask=mask)["up"]
    np.testing.assert_array_equal(up[0, 0], [[0, 0, 2, 0], [0, 4, 0, 3], [0, 0, 5, 6]])
    check_onnx(net, {"values": values, "mask": mask}, {"up": up})


def test_upsample_refuses_a_mask_outside_its_plane():
    # Caffe stops (LOG(FATAL)) on an index at or past the top's plane; a negative one would write before it.
    net = build_net(spec_from_text(UPSAMPLE_ONLY % (1, 2, 1, 2, "scale: 2")))
    values = np.ones((1, 1, 1, 2), np.float32)
    with pytest.raises(NetDefinitionError, match=r"Upsample 'up': mask index 8 is outside the top's plane of 8"):
        run_net(net, values=values, mask=np.array([[[[0, 8]]]], np.float32))  # a 1x2 plane scaled by 2: 2x4
    with pytest.raises(NetDefinitionError, match="mask index -1"):
        run_net(net, values=values, mask=np.array([[[[-1, 1]]]], np.float32))


@pytest.mark.parametrize("param, message", [
    ("scale: 1", r"the upsampling scale must be > 1, got \(1, 1\)"),
    ("scale_h: 2", "upsample_param needs upsample_h and upsample_w, or scale, or scale_h and scale_w"),
    ("scale: 2 scale_h: 2 scale_w: 2", "upsample_param needs"),
    ("scale: 3 pad_out_h: true", r"pad_out_h needs scale_h == 2, got 3"),
    ("upsample_h: 1 upsample_w: 4", r"upsample_h and upsample_w must be > 1"),
])
def test_upsample_parameters_caffe_refuses(param, message):
    spec = spec_from_text(upsample_net(param), input_shapes={"data": (1, 1, 3, 4)})
    with pytest.raises(UnsupportedError, match=message):
        check_supported(spec)


def test_upsample_output_sizes():
    assert upsample_output_size(23, 30, {"scale": 2, "pad_out_h": True}) == (45, 60)
    assert upsample_output_size(12, 15, {"scale": 2, "upsample_h": 23, "upsample_w": 30}) == (23, 30)
    assert upsample_output_size(5, 7, {"scale_h": 3, "scale_w": 2, "pad_out_w": True}) == (15, 13)
    assert upsample_output_size(None, 7, {}) == (None, 14)


def test_upsample_bottoms_must_match():
    spec = spec_from_text(pool_mask_net(2, 2) + """
layer { name: "up" type: "Upsample" bottom: "data" bottom: "mask" top: "up" upsample_param { scale: 2 } }""",
                          input_shapes={"data": (1, 1, 4, 4)})
    with pytest.raises(NetDefinitionError, match=r"Upsample's data \(1, 1, 4, 4\) and mask \(1, 1, 2, 2\)"):
        infer_shapes(spec)


# ---- SegNet's and ENet's BN ----


def bn_blobs(tmp_path, text: str, blobs: list[np.ndarray], shape):
    spec = spec_from_text(text, input_shapes={"data": shape})
    path = tmp_path / "bn.caffemodel"
    write_caffemodel(path, [WeightsLayer("bn", "BN", [np.asarray(b, np.float32) for b in blobs])])
    return convert(spec, path)[0]


def test_segnet_bn_inference_is_scale_and_shift(tmp_path):
    text = segnet_net('layer { name: "bn" type: "BN" bottom: "data" top: "bn" bn_param { bn_mode: INFERENCE } }')
    scale, shift = np.array([2, -1], np.float32).reshape(1, 2, 1, 1), np.array([0.5, 3], np.float32).reshape(1, 2, 1, 1)
    net = bn_blobs(tmp_path, text, [scale, shift], (1, 2, 1, 2))
    x = np.array([[[[1, 2]], [[3, 4]]]], np.float32)
    y = run_net(net, data=x)["bn"]
    np.testing.assert_array_equal(y, [[[[2.5, 4.5]], [[0, -1]]]])  # 2x + 0.5; -x + 3
    check_onnx(net, {"data": x}, {"bn": y})


def test_segnet_bn_learn_normalises_by_the_batch_in_every_phase(tmp_path):
    # bn_mode defaults to LEARN, which caffe-segnet computes whatever the phase: over (N, H, W) of channel 0,
    # values 1 3 | 5 7: mean 4, E(x^2) = (1 + 9 + 25 + 49) / 4 = 21, variance 21 - 16 = 5 (eps 1e-9);
    # channel 1 is constant 2: variance 0, so (x - mean) is exactly 0 and y is the shift.
    text = segnet_net('layer { name: "bn" type: "BN" bottom: "data" top: "bn" top: "mean" top: "var" }',
                      shape=(2, 2, 1, 2))
    scale, shift = np.array([2, 1], np.float32).reshape(1, 2, 1, 1), np.array([1, -3], np.float32).reshape(1, 2, 1, 1)
    net = bn_blobs(tmp_path, text, [scale, shift], (2, 2, 1, 2))
    x = np.array([[[[1, 3]], [[2, 2]]], [[[5, 7]], [[2, 2]]]], np.float32)
    blobs = run_net(net, data=x)
    std = math.sqrt(5 + 1e-9)
    expected = np.array([[[[2 * (v - 4) / std + 1 for v in (1, 3)]], [[-3, -3]]],
                         [[[2 * (v - 4) / std + 1 for v in (5, 7)]], [[-3, -3]]]], np.float32)
    np.testing.assert_allclose(blobs["bn"], expected, rtol=1e-6)
    np.testing.assert_allclose(blobs["mean"].reshape(-1), [4, 2])
    np.testing.assert_allclose(blobs["var"].reshape(-1), [5, 0])
    assert net.spec.layer("bn").params["bn_param"] == {"bn_mode": "LEARN"}  # the dialect's default, written out
    check_onnx(net, {"data": x}, {"bn": expected})


def test_segnet_bn_extra_tops_need_learn_mode():
    text = segnet_net('layer { name: "bn" type: "BN" bottom: "data" top: "bn" top: "m" top: "v" '
                      'bn_param { bn_mode: INFERENCE } }')
    with pytest.raises(InvalidNetError, match=r"BN makes exactly 1 top; this layer has 3"):
        check_definitions(spec_from_text(text, input_shapes={"data": (1, 2, 1, 2)}))


# ---- PSPNet's BN ----


def pspnet_net(bn_param: str, shape=(1, 2, 1, 2), interp: str = "zoom_factor: 1") -> str:
    """A hszhao/PSPNet file (BN next to Interp) as the published ones start: input + input_dim."""
    dims = "\n".join(f"input_dim: {d}" for d in shape)
    return f"""name: "t"
input: "data"
{dims}
layer {{ name: "bn" type: "BN" bottom: "data" top: "bn" {bn_param} }}
layer {{ name: "up" type: "Interp" bottom: "bn" top: "up" interp_param {{ {interp} }} }}"""


def test_pspnet_bn_uses_its_moving_statistics(tmp_path):
    # (x - mean) * (variance + eps)^-1/2 * slope + bias; channel 0: mean 1, variance 3.75, eps 0.25 -> divide
    # by 2, slope 2, bias 0.5: y = x - 0.5; channel 1: mean -1, variance 0.75 -> divide by 1, slope -1, bias 0:
    # y = -(x + 1).
    text = pspnet_net("bn_param { slope_filler { type: 'constant' value: 1 } frozen: true eps: 0.25 }")
    blobs = [np.array(v, np.float32).reshape(1, 2, 1, 1) for v in ([2, -1], [0.5, 0], [1, -1], [3.75, 0.75])]
    net = bn_blobs(tmp_path, text, blobs, (1, 2, 1, 2))
    x = np.array([[[[1, 4]], [[0, 2]]]], np.float32)
    y = run_net(net, data=x)["bn"]
    np.testing.assert_array_equal(y, [[[[0.5, 3.5]], [[-1, -3]]]])
    check_onnx(net, {"data": x}, {"bn": y})


def test_pspnet_bn_eps_defaults_to_1e_5(tmp_path):
    # The published files set no eps: BNParameter's default 1e-5 (as float32) applies.
    text = pspnet_net("bn_param { frozen: true momentum: 0.95 }")
    blobs = [np.ones((1, 2, 1, 1), np.float32), np.zeros((1, 2, 1, 1), np.float32),
             np.zeros((1, 2, 1, 1), np.float32), np.full((1, 2, 1, 1), 1e-5, np.float32)]
    net = bn_blobs(tmp_path, text, blobs, (1, 2, 1, 2))
    y = run_net(net, data=np.ones((1, 2, 1, 2), np.float32))["bn"]
    np.testing.assert_allclose(y, 1 / math.sqrt(2e-5), rtol=1e-6)
    assert net.spec.dialect == "pspnet" and net.spec.layer("bn").params["bn_param"]["eps"] == pytest.approx(1e-5)


def test_pspnet_bn_blob_layout_is_four_per_channel_blobs():
    spec = spec_from_text(pspnet_net(""))  # no bn_param at all: the dialect (Interp + BN: PSPNet) decides
    assert spec.dialect == "pspnet"
    info = infer_shapes(spec).layers[0]
    assert info.blob_shapes == [(1, 2, 1, 1)] * 4
    module = build_net(spec).module("bn")
    assert module.blob_names == ("slope", "bias", "mean", "variance")


def test_segnet_bn_blob_layout_is_scale_and_shift():
    spec = spec_from_text(segnet_net('layer { name: "bn" type: "BN" bottom: "data" top: "bn" }'),
                          input_shapes={"data": (1, 3, 2, 2)})
    assert spec.dialect == "segnet"
    assert infer_shapes(spec).layers[0].blob_shapes == [(1, 3, 1, 1)] * 2


def test_pspnet_bn_in_train_phase_needs_frozen():
    text = pspnet_net("bn_param { momentum: 0.95 }")
    with pytest.raises(UnsupportedError, match="PSPNet BN in TRAIN phase without frozen"):
        check_supported(spec_from_text(text, phase="train", deploy=False))
    check_supported(spec_from_text(pspnet_net("bn_param { frozen: true }"), phase="train", deploy=False))


def test_bn_whose_fork_cannot_be_told():
    mixed = pspnet_net("bn_param { frozen: true bn_mode: INFERENCE }")
    with pytest.raises(UnsupportedError, match=r"bn_param mixes fields of SegNet's BN \(bn_mode\) and PSPNet's"):
        check_supported(spec_from_text(mixed))
    # read as upstream Caffe (forced), a bare BN says nothing about which layer it is
    parsed = parse_prototxt_text('name: "t"\ninput: "data"\ninput_shape { dim: 1 dim: 2 dim: 1 dim: 1 }\n'
                                 'layer { name: "bn" type: "BN" bottom: "data" top: "bn" }', dialect="caffe")
    spec = upgrade_net(parsed)
    with pytest.raises(UnsupportedError, match="two different layers under one name"):
        check_supported(spec)


# ---- data layers ----


def test_dense_image_data_tops_are_image_and_label_inputs():
    text = """name: "t"
layer { name: "data" type: "DenseImageData" top: "data" top: "label"
        dense_image_data_param { source: "train.txt" batch_size: 4 new_height: 360 new_width: 480 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" }"""
    spec = spec_from_text(text, deploy=False, phase="train")
    assert spec.dialect == "segnet"
    assert [(i.name, i.shape, i.role) for i in spec.inputs] == [("data", (4, 3, 360, 480), "image"),
                                                                ("label", (4, 1, 360, 480), "label")]
    assert spec.inputs[0].transform == {"channel_order": "BGR"}
    deploy = spec_from_text(text.replace("new_height: 360 new_width: 480", "crop_height: 8 crop_width: 16"))
    assert [(i.name, i.shape) for i in deploy.inputs] == [("data", (4, 3, 8, 16))]


def test_python_layer_inside_a_net_is_unsupported_by_name():
    # ENet's enet_deploy.prototxt keeps its spatial dropout as Python layers between the convolutions.
    text = """name: "ENet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "drop1_0_3" type: "Python" bottom: "conv" top: "drop1_0_3"
        python_param { module: "spatial_dropout" layer: "SpatialDropoutLayer"
                       param_str: "{'phase': 'TEST', 'p': '0.01'}" } }
layer { name: "drop1_1_3" type: "Python" bottom: "drop1_0_3" top: "drop1_1_3"
        python_param { module: "spatial_dropout" layer: "SpatialDropoutLayer" } }"""
    with pytest.raises(UnsupportedError) as error:
        infer_shapes(spec_from_text(text))
    message = str(error.value)
    assert "2 unsupported layer(s) or parameter(s) in test.prototxt" in message
    assert "test.prototxt:4: layer 'drop1_0_3' (Python): unknown or unsupported layer type 'Python'" in message
    assert "test.prototxt:7: layer 'drop1_1_3' (Python)" in message


def test_python_data_layer_with_unknown_preprocessing():
    text = """name: "t"
layer { name: "color" type: "Python" top: "color" top: "hha" top: "label"
        python_param { module: "nyud_layers" layer: "NYUDSegDataLayer" param_str: "{'tops': ['color', 'hha']" } }
layer { name: "fuse" type: "Eltwise" bottom: "color" bottom: "hha" top: "fuse" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fuse" bottom: "label" top: "loss" }"""
    spec = spec_from_text(text, input_shapes={"color": (1, 3, 4, 4), "hha": (1, 3, 4, 4)})
    assert [(i.name, i.role, i.transform) for i in spec.inputs] == [("color", "image", {}), ("hha", "tensor", {})]
    assert any("(nyud_layers.NYUDSegDataLayer, line 2)" in n and "its preprocessing is the module's own" in n
               for n in spec.notes)
    assert "removed input(s) no inference layer reads: label" in spec.notes


def test_bayesian_segnet_dropout_sampling_is_refused():
    text = segnet_net('layer { name: "drop" type: "Dropout" bottom: "data" top: "data" '
                      'dropout_param { dropout_ratio: 0.5 sample_weights_test: true } }')
    with pytest.raises(UnsupportedError, match="sample_weights_test: true"):
        check_supported(spec_from_text(text, input_shapes={"data": (1, 3, 4, 4)}))


# ---- PSPNet's pyramid pooling and Interp ----


@pytest.mark.parametrize("feature, kernels", [(60, (60, 30, 20, 10)), (90, (90, 45, 30, 15))])
def test_pspnet_pyramid_bins(feature, kernels):
    # pspnet*_473 (60x60 conv5_3) and pspnet101_cityscapes_713 (90x90): AVE kernels = strides = 60/bins (90/bins),
    # no padding, so Caffe's ceil rule gives 1, 2, 3, 6 bins, each averaging whole windows.
    for bins, kernel in zip((1, 2, 3, 6), kernels):
        assert pool_output_size(feature, kernel, 0, kernel) == bins
        assert pool_average_divisors(feature, kernel, 0, kernel) == [kernel] * bins


def test_icnet_pyramid_bins_with_overlapping_windows():
    # icnet_cityscapes: on the 33x65 map, kernels 17x33 / 13x25 / 8x15 with strides 16x32 / 10x20 / 5x10: 2, 3,
    # 6 bins; the windows overlap and the last one ends exactly at the border (no clipping, no padding).
    for (kh, kw), (sh, sw), bins in (((17, 33), (16, 32), 2), ((13, 25), (10, 20), 3), ((8, 15), (5, 10), 6)):
        assert (pool_output_size(33, kh, 0, sh), pool_output_size(65, kw, 0, sw)) == (bins, bins)
        assert (bins - 1) * sh + kh == 33 and (bins - 1) * sw + kw == 65


def test_pspnet_interp_is_deeplab_v2s():
    # hszhao/PSPNet's interp_layer.cpp is DeepLab v2's: shrink only, zoom only, height+width, then both; the
    # 60x60 pyramid branches come from 1, 2, 3, 6 bins.
    for param, size in (({"height": 60, "width": 60}, (60, 60)), ({"zoom_factor": 8}, (473, 473)),
                        ({"shrink_factor": 2}, (30, 30)), ({"shrink_factor": 2, "zoom_factor": 3}, (88, 88)),
                        ({"zoom_factor": 2, "height": 9, "width": 9}, (119, 119))):
        assert interp_output_size(60, 60, param, "pspnet") == size == interp_output_size(60, 60, param, "deeplab_v2")
    # A 1x1 pyramid bin resized to 5x5 is that value everywhere: align-corners with one source pixel.
    net = net_from_text(pspnet_net("bn_param { frozen: true }", (1, 2, 1, 1), "height: 5 width: 5"))
    x = np.array([[[[3.0]], [[-2.0]]]], np.float32)
    blobs = run_net(net, data=x)
    np.testing.assert_array_equal(blobs["up"], np.broadcast_to(blobs["bn"], (1, 2, 5, 5)))
    check_onnx(net, {"data": x}, {"up": blobs["up"]})


def test_grouped_deconvolution_without_bias(tmp_path):
    # FCN's upsampling layers: Deconvolution, bias_term false (and, in some FCN deploy files, one group per
    # class). Weights are (in, out/group, kh, kw); with 2 groups input channel g feeds output channel g alone:
    # a 1x1 input [1, 2] through 2x2 kernels w0, w1 gives 1 * w0 and 2 * w1.
    text = """name: "t"
input: "data"
input_shape { dim: 1 dim: 2 dim: 1 dim: 1 }
layer { name: "up" type: "Deconvolution" bottom: "data" top: "up"
        convolution_param { num_output: 2 bias_term: false kernel_size: 2 stride: 2 group: 2 } }"""
    spec = spec_from_text(text)
    assert infer_shapes(spec).layers[0].blob_shapes == [(2, 1, 2, 2)]
    weights = np.array([[[[1, 2], [3, 4]]], [[[5, 6], [7, 8]]]], np.float32)
    write_caffemodel(tmp_path / "w.caffemodel", [WeightsLayer("up", "Deconvolution", [weights])])
    net = convert(spec, tmp_path / "w.caffemodel")[0]
    x = np.array([1, 2], np.float32).reshape(1, 2, 1, 1)
    up = run_net(net, data=x)["up"]
    np.testing.assert_array_equal(up[0], [[[1, 2], [3, 4]], [[10, 12], [14, 16]]])
    check_onnx(net, {"data": x}, {"up": up})
