"""The classifier forks' layers (caffe2torch/layers/fork_classifiers.py): ShuffleChannel (farmingyard/ShuffleNet),
ConvolutionDepthwise (farmingyard/caffe-mobilenet) and Axpy (hujie-frank/SENet), each against small cases worked
out by hand from the fork's CPU forward, in torch and onnxruntime; their dialects; and small ShuffleNet-,
MobileNet- and SENet-like nets with random weights from our writer, every blob against OpenCV 4 (which has
ShuffleChannel; for ConvolutionDepthwise it reads an equivalent grouped Convolution, for Axpy a Scale of x by a
flattened a and an Eltwise sum) and onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2torch.caffemodel import WeightsLayer, write_caffemodel
from caffe2torch.errors import NetDefinitionError, UnsupportedError
from caffe2torch.net import build_net
from caffe2torch.parse import parse_prototxt_text
from caffe2torch.pipeline import convert
from caffe2torch.upgrade import upgrade_net

from .classic_nets import classic_weights
from .conftest import net_from_text, run_net, spec_from_text
from .test_upstream_layers import check_onnx, compare_with_opencv, net_text, random

# ---- dialects ----


@pytest.mark.parametrize("body, dialect", [
    ('layer { name: "s" type: "ShuffleChannel" bottom: "x" top: "s" shuffle_channel_param { group: 2 } }',
     "shufflenet"),
    ('layer { name: "d" type: "ConvolutionDepthwise" bottom: "x" top: "d" convolution_param { kernel_size: 3 } }',
     "mobilenet"),
    ('layer { name: "d" type: "ConvolutionDepthwise" bottom: "x" top: "d" convolution_param { kernel_size: 3 } }\n'
     'layer { name: "s" type: "ShuffleChannel" bottom: "d" top: "s" }', "shufflenet"),
    ('layer { name: "a" type: "Axpy" bottom: "p" bottom: "x" bottom: "x" top: "y" }', "senet"),
    ('layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 2 kernel_size: 1 '
     '} }', "caffe"),
])
def test_each_fork_file_goes_to_its_dialect(body, dialect):
    parsed = parse_prototxt_text(net_text(body))
    assert parsed.dialect == dialect and not parsed.borrowed


def test_shuffle_channel_param_is_borrowed_into_other_dialects():
    # A DeepLab v2 file (interp_param at 143) with a ShuffleChannel: read as DeepLab v2, the shuffle parameter is
    # borrowed from ShuffleNet's schema by name.
    text = net_text("""layer { name: "i" type: "Interp" bottom: "x" top: "i" interp_param { zoom_factor: 1 } }
layer { name: "s" type: "ShuffleChannel" bottom: "i" top: "s" shuffle_channel_param { group: 2 } }""",
                    shape=(1, 4, 3, 3))
    parsed = parse_prototxt_text(text, dialect="deeplab_v2")
    assert [(b.path, b.dialect) for b in parsed.borrowed] == [("layer.shuffle_channel_param", "shufflenet")]
    net = build_net(upgrade_net(parsed))
    x = random((1, 4, 3, 3))
    np.testing.assert_array_equal(run_net(net, x=x)["s"], x[:, [0, 2, 1, 3]])


# ---- ShuffleChannel ----


def shuffle_net(group: int, shape=(2, 6, 2, 3), top: str = "s") -> str:
    return net_text(f'layer {{ name: "s" type: "ShuffleChannel" bottom: "x" top: "{top}" '
                    f"shuffle_channel_param {{ group: {group} }} }}", shape=shape)


@pytest.mark.parametrize("group, order", [
    # Resize_cpu: bottom channel i * (C / g) + j goes to top channel j * g + i.
    (2, [0, 3, 1, 4, 2, 5]),  # g 2, C/g 3: top 0..5 <- bottom 0, 3, 1, 4, 2, 5
    (3, [0, 2, 4, 1, 3, 5]),  # g 3, C/g 2: top 0..5 <- bottom 0, 2, 4, 1, 3, 5
    (1, [0, 1, 2, 3, 4, 5]),
    (6, [0, 1, 2, 3, 4, 5]),
])
def test_shuffle_channel_transposes_the_group_matrix(group, order):
    net = net_from_text(shuffle_net(group))
    x = random((2, 6, 2, 3), seed=group)
    out = run_net(net, x=x)["s"]
    np.testing.assert_array_equal(out, x[:, order])
    check_onnx(net, {"x": x}, {"s": out})


def test_shuffle_channel_group_defaults_to_1_and_tops_are_4d():
    text = net_text('layer { name: "s" type: "ShuffleChannel" bottom: "x" top: "s" }', shape=(2, 4))
    net = net_from_text(text)
    assert net.spec.layer("s").params.get("shuffle_channel_param", {}).get("group", 1) == 1
    x = random((2, 4))
    out = run_net(net, x=x)["s"]
    # Reshape: top->Reshape(num(), channels(), height(), width()), legacy accessors: (2, 4) -> (2, 4, 1, 1)
    assert out.shape == (2, 4, 1, 1)
    np.testing.assert_array_equal(out[:, :, 0, 0], x)


def test_shuffle_channel_refusals():
    with pytest.raises(NetDefinitionError, match="not a multiple of group 4"):
        net_from_text(shuffle_net(4))
    with pytest.raises(NetDefinitionError, match="greater than 0"):
        net_from_text(shuffle_net(0))
    with pytest.raises(NetDefinitionError, match="in-place"):
        net_from_text(shuffle_net(2, top="x"))
    with pytest.raises(NetDefinitionError, match="2 to 4 axes"):
        net_from_text(shuffle_net(2, shape=(1, 6, 2, 2, 2)))


# ---- ConvolutionDepthwise ----


def depthwise_net(param: str, shape=(1, 2, 3, 3)) -> str:
    return net_text(f'layer {{ name: "dw" type: "ConvolutionDepthwise" bottom: "x" top: "dw" '
                    f"convolution_param {{ {param} }} }}", shape=shape)


def converted(tmp_path, text: str, blobs: list[np.ndarray], name: str = "dw", kind: str = "ConvolutionDepthwise"):
    write_caffemodel(tmp_path / "w.caffemodel", [WeightsLayer(name, kind, blobs)])
    net, _ = convert(spec_from_text(text), tmp_path / "w.caffemodel")
    return net


PLANES = np.array([[[1, 2, 3], [4, 5, 6], [7, 8, 9]],
                   [[1, 0, -1], [2, 0, -2], [3, 0, -3]]], np.float32)[None]


def test_depthwise_filters_each_channel_alone(tmp_path):
    # kernel 2, no pad, stride 1: channel 0 with [[1, 0], [0, -1]] (x[h, w] - x[h+1, w+1] = -4 everywhere),
    # channel 1 with [[1, 1], [1, 1]] (window sums: 1+0+2+0 = 3, 0-1+0-2 = -3, 2+0+3+0 = 5, 0-2+0-3 = -5),
    # plus biases 10 and -1. num_output 7 and group 1 are not read: the top has the bottom's 2 channels.
    weight = np.array([[[[1, 0], [0, -1]]], [[[1, 1], [1, 1]]]], np.float32)
    net = converted(tmp_path, depthwise_net("num_output: 7 group: 1 kernel_size: 2"),
                    [weight, np.array([10, -1], np.float32)])
    out = run_net(net, x=PLANES)["dw"]
    np.testing.assert_array_equal(out[0, 0], [[6, 6], [6, 6]])
    np.testing.assert_array_equal(out[0, 1], [[2, -4], [4, -6]])
    check_onnx(net, {"x": PLANES}, {"dw": out})


def test_depthwise_pad_stride_dilation(tmp_path):
    # kernel 2 dilated 2, pad 1, stride 2, no bias: out (3 + 2 - 3) / 2 + 1 = 2. Top row h reads rows 2h - 1
    # and 2h + 1 (h_in = -pad + h * stride + kh * dilation), so every output sees one real pixel, x[1, 1] = 5,
    # through a different tap: (0,0) tap (1,1), (0,1) tap (1,0), (1,0) tap (0,1), (1,1) tap (0,0); the others
    # read padding. Weights all 1 give 5 everywhere; [[1, 2], [3, 4]] give 4*5, 3*5, 2*5, 1*5.
    weight = np.array([[[[1, 1], [1, 1]]], [[[1, 2], [3, 4]]]], np.float32)
    text = depthwise_net("num_output: 2 kernel_size: 2 dilation: 2 pad: 1 stride: 2 bias_term: false")
    net = converted(tmp_path, text, [weight])
    x = np.stack([PLANES[0, 0], PLANES[0, 0]])[None]
    out = run_net(net, x=x)["dw"]
    np.testing.assert_array_equal(out[0, 0], [[5, 5], [5, 5]])
    np.testing.assert_array_equal(out[0, 1], [[20, 15], [10, 5]])
    check_onnx(net, {"x": x}, {"dw": out})


def test_depthwise_rectangular_kernel_and_blob_shapes():
    spec = spec_from_text(depthwise_net("num_output: 2 kernel_h: 1 kernel_w: 3 pad_w: 1", shape=(1, 2, 4, 5)))
    net = build_net(spec)
    [info] = [i for i in net.shapes.layers if i.name == "dw"]
    assert [tuple(s) for s in info.blob_shapes] == [(2, 1, 1, 3), (2,)]
    assert tuple(net.shapes.blobs["dw"]) == (1, 2, 4, 5)


def test_depthwise_refusals():
    with pytest.raises(NetDefinitionError, match="kernel_size"):
        build_net(spec_from_text(depthwise_net("num_output: 2")))
    with pytest.raises(NetDefinitionError, match=r"\(N, C, H, W\)"):
        build_net(spec_from_text(depthwise_net("kernel_size: 1", shape=(2, 3))))
    with pytest.raises(UnsupportedError, match="dilation 0"):
        build_net(spec_from_text(depthwise_net("kernel_size: 1 dilation: 0")))


# ---- Axpy ----


def axpy_net(a_shape, x_shape=(2, 2, 2, 2), top: str = "out") -> str:
    return f"""input: "a"
input_shape {{ {" ".join(f"dim: {d}" for d in a_shape)} }}
input: "x"
input_shape {{ {" ".join(f"dim: {d}" for d in x_shape)} }}
input: "y"
input_shape {{ {" ".join(f"dim: {d}" for d in x_shape)} }}
layer {{ name: "axpy" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "{top}" }}
"""


@pytest.mark.parametrize("a_shape", [(2, 2, 1, 1), (2, 2)])
def test_axpy_scales_each_plane_and_adds(a_shape):
    # a = [[2, -1], [0.5, 0]]: image 0 channel 0 is 2 x + y, channel 1 -x + y; image 1 0.5 x + y and y.
    a = np.array([[2, -1], [0.5, 0]], np.float32).reshape(a_shape)
    x = np.arange(16, dtype=np.float32).reshape(2, 2, 2, 2)
    y = np.full((2, 2, 2, 2), 100, np.float32)
    net = net_from_text(axpy_net(a_shape))
    out = run_net(net, a=a, x=x, y=y)["out"]
    np.testing.assert_array_equal(out[0, 0], [[100, 102], [104, 106]])
    np.testing.assert_array_equal(out[0, 1], [[96, 95], [94, 93]])
    np.testing.assert_array_equal(out[1, 0], [[104, 104.5], [105, 105.5]])
    np.testing.assert_array_equal(out[1, 1], y[1, 1])
    check_onnx(net, {"a": a, "x": x, "y": y}, {"out": out})


@pytest.mark.parametrize("top", ["x", "y"])
def test_axpy_top_may_not_be_x_or_y(top):
    # Caffe's Net takes top i as in place only when it is bottom i: a top named like bottom 1 or 2 is a second
    # producer of that blob ("produced by multiple sources").
    with pytest.raises(NetDefinitionError, match="multiple sources"):
        net_from_text(axpy_net((2, 2, 1, 1), top=top))


def test_axpy_in_place_on_a_is_refused():
    with pytest.raises(UnsupportedError, match="copies y into the top"):
        net_from_text(axpy_net((2, 2, 1, 1), top="a"))


@pytest.mark.parametrize("a_shape, x_shape, message", [
    ((2, 3, 1, 1), (2, 2, 2, 2), "first two axes"),
    ((1, 2, 1, 1), (2, 2, 2, 2), "first two axes"),
    ((2, 2, 2, 1), (2, 2, 2, 2), r"must be \(N, C, 1, 1\)"),
    ((2, 2, 2), (2, 2, 2, 2), "first N x C values"),
    ((2,), (2, 2, 2, 2), "at least 2 axes"),
])
def test_axpy_shape_checks(a_shape, x_shape, message):
    with pytest.raises(NetDefinitionError, match=message):
        net_from_text(axpy_net(a_shape, x_shape))


def test_axpy_x_and_y_must_match():
    last = "dim: 2 dim: 2 dim: 2 dim: 2 }\nlayer"  # y's shape
    text = axpy_net((2, 2, 1, 1)).replace(last, last.replace("2 }", "3 }"))
    with pytest.raises(NetDefinitionError, match="same shape"):
        net_from_text(text)


# ---- small nets against OpenCV and onnxruntime ----


def layer(name, kind, bottoms, tops, body=""):
    bottoms = [bottoms] if isinstance(bottoms, str) else bottoms
    tops = [tops] if isinstance(tops, str) else tops
    head = " ".join([f'bottom: "{b}"' for b in bottoms] + [f'top: "{t}"' for t in tops])
    return f'layer {{ name: "{name}" type: "{kind}" {head} {body} }}'


def conv(name, bottom, top, out, kernel=1, stride=1, pad=0, bias=True):
    return layer(name, "Convolution", bottom, top, f"convolution_param {{ num_output: {out} kernel_size: {kernel} "
                 f"stride: {stride} pad: {pad} bias_term: {str(bias).lower()} }}")


def depthwise(name, bottom, top, channels, kernel=3, stride=1, pad=1, bias=False, dilation=1, cv=False):
    # The fork reads neither num_output nor group; OpenCV's equivalent is a Convolution with group = channels.
    kind, group = ("Convolution", f" group: {channels}") if cv else ("ConvolutionDepthwise", "")
    return layer(name, kind, bottom, top, f"convolution_param {{ num_output: {channels}{group} kernel_size: "
                 f"{kernel} stride: {stride} pad: {pad} dilation: {dilation} bias_term: {str(bias).lower()} }}")


def relu(name, blob):
    return layer(name, "ReLU", blob, blob)


def global_pool(name, bottom, top):
    return layer(name, "Pooling", bottom, top, "pooling_param { pool: AVE global_pooling: true }")


def shufflenet_like(cv=False) -> str:
    """A ShuffleNet v1 unit as farmingyard/ShuffleNet's g3 file writes it (grouped 1x1, shuffle by 3, depthwise,
    grouped 1x1, Eltwise with the shortcut), then a v2-style concat shuffled by 2 and a strided depthwise. (No
    Slice: OpenCV 4.14 hands back a later layer's buffer for a Slice's second top once a branch consumes it.)"""
    return net_text("\n".join([
        conv("conv1", "x", "conv1", 12, 3, 2, 1, bias=False), relu("conv1_relu", "conv1"),
        layer("resx1_conv1", "Convolution", "conv1", "resx1_conv1",
              "convolution_param { num_output: 12 kernel_size: 1 group: 3 bias_term: false }"),
        relu("resx1_conv1_relu", "resx1_conv1"),
        layer("shuffle1", "ShuffleChannel", "resx1_conv1", "shuffle1", "shuffle_channel_param { group: 3 }"),
        depthwise("resx1_conv2", "shuffle1", "resx1_conv2", 12, pad=2, dilation=2, bias=True, cv=cv),
        layer("resx1_conv3", "Convolution", "resx1_conv2", "resx1_conv3",
              "convolution_param { num_output: 12 kernel_size: 1 group: 3 }"),
        layer("resx1", "Eltwise", ["conv1", "resx1_conv3"], "resx1"), relu("resx1_relu", "resx1"),
        layer("concat1", "Concat", ["resx1", "conv1"], "concat1"),
        layer("shuffle2", "ShuffleChannel", "concat1", "shuffle2", "shuffle_channel_param { group: 2 }"),
        depthwise("down_dw", "shuffle2", "down_dw", 24, stride=2, cv=cv),
        layer("shuffle3", "ShuffleChannel", "down_dw", "shuffle3", "shuffle_channel_param { group: 4 }"),
        global_pool("pool", "shuffle3", "pool"),
        layer("fc", "InnerProduct", "pool", "fc", "inner_product_param { num_output: 5 }"),
    ]), shape=(2, 8, 9, 9))


def mobilenet_like(cv=False) -> str:
    """MobileNet v1's depthwise-separable blocks as farmingyard/caffe-mobilenet's deploy file writes them."""
    body = [conv("conv1", "x", "conv1", 8, 3, 2, 1, bias=False),
            layer("conv1/scale", "Scale", "conv1", "conv1", "scale_param { bias_term: true }"), relu("relu1", "conv1")]
    bottom = "conv1"
    for index, (channels, out, stride) in enumerate([(8, 16, 1), (16, 16, 2)], 1):
        body += [depthwise(f"conv2_{index}/dw", bottom, f"conv2_{index}/dw", channels, stride=stride, cv=cv),
                 layer(f"conv2_{index}/dw/scale", "Scale", f"conv2_{index}/dw", f"conv2_{index}/dw",
                       "scale_param { bias_term: true }"),
                 relu(f"relu2_{index}/dw", f"conv2_{index}/dw"),
                 conv(f"conv2_{index}/sep", f"conv2_{index}/dw", f"conv2_{index}/sep", out, bias=False),
                 relu(f"relu2_{index}/sep", f"conv2_{index}/sep")]
        bottom = f"conv2_{index}/sep"
    body += [global_pool("pool6", bottom, "pool6"), conv("fc7", "pool6", "fc7", 4),
             layer("prob", "Softmax", "fc7", "prob")]
    return net_text("\n".join(body), shape=(2, 3, 12, 12))


def senet_like(cv=False) -> str:
    """An SE-ResNet block as hujie-frank/SENet's files write it: global pooling, 1x1 down, ReLU, 1x1 up, Sigmoid,
    then Axpy(scale, residual branch, shortcut). OpenCV's copy: Flatten the scale to (N, C), Scale the branch by it
    along axis 0, Eltwise SUM with the shortcut."""
    if cv:
        axpy = [layer("conv2_1_scale_flat", "Flatten", "conv2_1_1x1_up", "conv2_1_scale_flat"),
                layer("conv2_1_scaled", "Scale", ["conv2_1_1x1_increase", "conv2_1_scale_flat"], "conv2_1_scaled",
                      "scale_param { axis: 0 }"),
                layer("conv2_1", "Eltwise", ["conv2_1_scaled", "conv1"], "conv2_1")]
    else:
        axpy = [layer("conv2_1", "Axpy", ["conv2_1_1x1_up", "conv2_1_1x1_increase", "conv1"], "conv2_1")]
    return net_text("\n".join([
        conv("conv1", "x", "conv1", 8, 3, 1, 1), relu("conv1_relu", "conv1"),
        conv("conv2_1_1x1_reduce", "conv1", "conv2_1_1x1_reduce", 4), relu("conv2_1_relu", "conv2_1_1x1_reduce"),
        conv("conv2_1_1x1_increase", "conv2_1_1x1_reduce", "conv2_1_1x1_increase", 8),
        global_pool("conv2_1_global_pool", "conv2_1_1x1_increase", "conv2_1_global_pool"),
        conv("conv2_1_1x1_down", "conv2_1_global_pool", "conv2_1_1x1_down", 2),
        relu("conv2_1_1x1_down_relu", "conv2_1_1x1_down"),
        conv("conv2_1_1x1_up", "conv2_1_1x1_down", "conv2_1_1x1_up", 8),
        layer("conv2_1_prob", "Sigmoid", "conv2_1_1x1_up", "conv2_1_1x1_up"),
        *axpy,
        relu("conv2_1_relu_out", "conv2_1"),
        global_pool("pool", "conv2_1", "pool"),
        layer("fc", "InnerProduct", "pool", "fc", "inner_product_param { num_output: 3 }"),
    ]), shape=(2, 3, 6, 6))


@pytest.mark.parametrize("build, dialect", [(shufflenet_like, "shufflenet"), (mobilenet_like, "mobilenet"),
                                            (senet_like, "senet")])
def test_fork_classifier_net_matches_opencv_and_onnxruntime(tmp_path, build, dialect):
    text = build()
    spec = spec_from_text(text)
    assert spec.dialect == dialect
    weights = classic_weights(build_net(spec), seed=5)
    cv_weights = [WeightsLayer(w.name, "Convolution" if w.type == "ConvolutionDepthwise" else w.type, w.blobs)
                  for w in weights]
    x = random(tuple(spec.inputs[0].shape), seed=9)
    compare_with_opencv(tmp_path, text, {"x": x}, weights, cv_text=build(cv=True), cv_weights=cv_weights)


# ---- DepthwiseConvolution (yonghenglh6's name for it): a Convolution with one group per channel ----


def yonghenglh6_mobilenet(cv=False) -> str:
    """mobilenet_like with the depthwise layers written as the DepthwiseConvolution forks' files write them
    (type DepthwiseConvolution, num_output = group = channels); OpenCV reads them as grouped Convolutions."""
    text = mobilenet_like(cv=True)
    return text if cv else text.replace('type: "Convolution" bottom: "conv1" top: "conv2_1/dw"',
                                        'type: "DepthwiseConvolution" bottom: "conv1" top: "conv2_1/dw"').replace(
        'type: "Convolution" bottom: "conv2_1/sep" top: "conv2_2/dw"',
        'type: "DepthwiseConvolution" bottom: "conv2_1/sep" top: "conv2_2/dw"')


def test_depthwise_convolution_net_matches_opencv_and_onnxruntime(tmp_path):
    text = yonghenglh6_mobilenet()
    assert text.count('"DepthwiseConvolution"') == 2
    spec = spec_from_text(text)
    assert spec.dialect == "depthwise"
    weights = classic_weights(build_net(spec), seed=6)
    cv_weights = [WeightsLayer(w.name, "Convolution" if w.type == "DepthwiseConvolution" else w.type, w.blobs)
                  for w in weights]
    x = random(tuple(spec.inputs[0].shape), seed=4)
    compare_with_opencv(tmp_path, text, {"x": x}, weights, cv_text=yonghenglh6_mobilenet(cv=True),
                        cv_weights=cv_weights)


@pytest.mark.parametrize("params, message", [
    ("num_output: 4 group: 2 kernel_size: 3", "group 2 with num_output 4"),
    ("num_output: 4 group: 4 kernel_size: 3 dilation: 2", "dilation 2x2"),
])
def test_depthwise_convolution_the_forks_disagree_on_is_refused(params, message):
    text = net_text(f'layer {{ name: "d" type: "DepthwiseConvolution" bottom: "x" top: "d" '
                    f'convolution_param {{ {params} }} }}', shape=(1, 4, 7, 7))
    with pytest.raises((UnsupportedError, NetDefinitionError), match=message):
        net_from_text(text)
    mismatch = net_text('layer { name: "d" type: "DepthwiseConvolution" bottom: "x" top: "d" '
                        'convolution_param { num_output: 3 group: 3 kernel_size: 3 } }', shape=(1, 4, 7, 7))
    with pytest.raises(NetDefinitionError, match="the input has 4 channels but group is 3"):
        net_from_text(mismatch)
