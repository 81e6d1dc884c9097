"""The upgrade chain: each legacy form normalized by one function; phase rules; data layers → inputs."""

from __future__ import annotations

import pytest

from caffe2torch.errors import NetDefinitionError
from caffe2torch.upgrade import check_graph

from .conftest import spec_from_text


def test_v1_hole_enum_and_blobs_lr():
    spec = spec_from_text("""
    input: "data" input_dim: 1 input_dim: 3 input_dim: 20 input_dim: 20
    layers { name: "c" type: CONVOLUTION bottom: "data" top: "c" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
             weight_decay: 0 strict_dim: false
             convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 pad_h: 1 stride: 2 hole_h: 2 hole_w: 3 } }
    layers { name: "p" type: PADDING bottom: "c" top: "p" padding_param { pad_beg: -1 } }
    """)
    conv, pad = spec.layers
    assert conv.type == "Convolution" and pad.type == "Padding"
    p = conv.params["convolution_param"]
    assert (p["kernel"], p["pad"], p["stride"], p["dilation"]) == ([3, 1], [1, 0], [2, 2], [2, 3])
    assert [(s.lr_mult, s.decay_mult) for s in conv.param_specs] == [(1, 1), (2, 0)]
    assert pad.params["padding_param"] == {"pad_beg": -1, "pad_end": 0}
    assert spec.inputs[0].shape == (1, 3, 20, 20)


def test_hole_and_hole_h_together_is_an_error():
    with pytest.raises(NetDefinitionError, match="hole"):
        spec_from_text("""
        input: "d" layers { name: "c" type: CONVOLUTION bottom: "d" top: "c"
                            convolution_param { num_output: 1 kernel_size: 3 hole: 2 hole_h: 2 hole_w: 2 } }""")


def test_upstream_repeated_kernel_and_dilation():
    spec = spec_from_text("""
    input: "d" input_shape { dim: 1 dim: 2 dim: 9 dim: 9 }
    layer { name: "c" type: "Convolution" bottom: "d" top: "c"
            convolution_param { num_output: 1 kernel_size: 3 kernel_size: 5 dilation: 2 pad: 1 } }
    layer { name: "cat" type: "Concat" bottom: "c" bottom: "c" top: "cat" concat_param { concat_dim: 2 } }""")
    p = spec.layers[0].params["convolution_param"]
    assert (p["kernel"], p["dilation"], p["pad"], p["stride"]) == ([3, 5], [2, 2], [1, 1], [1, 1])
    assert spec.layers[1].params["concat_param"] == {"axis": 2}


DATA_NET = """
layer { name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim"
        image_data_param { batch_size: 2 label_type: PIXEL }
        transform_param { mean_value: 104.008 mean_value: 116.669 mean_value: 122.675 crop_size: 321 }
        include { phase: TRAIN } }
layer { name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim"
        transform_param { mean_value: 104.008 mean_value: 116.669 mean_value: 122.675 crop_size: 513 }
        include { phase: TEST } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "fc8" convolution_param { num_output: 21 kernel_size: 1 } }
layer { name: "label_shrink" type: "Interp" bottom: "label" top: "label_shrink" interp_param { shrink_factor: 8 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label_shrink" include { phase: TRAIN } }
layer { name: "acc" type: "SegAccuracy" bottom: "fc8" bottom: "label_shrink" top: "acc" }
layer { name: "stage_only" type: "ReLU" bottom: "fc8" top: "relu" include { stage: "extra" } }
"""


def test_data_layers_become_inputs_per_phase():
    test = spec_from_text(DATA_NET)
    assert [(i.name, i.shape, i.role) for i in test.inputs] == [("data", (1, 3, 513, 513), "image")]
    assert test.inputs[0].transform["mean_value"][0] == pytest.approx(104.008)
    assert test.inputs[0].transform["crop_size"] == 513
    assert [layer.name for layer in test.layers] == ["conv"]
    reasons = {d.name: d.reason for d in test.dropped}
    assert "label" in reasons["label_shrink"] and "metric" in reasons["acc"]
    assert "not in TEST" in reasons["loss"] and "not in TEST" in reasons["stage_only"]
    train = spec_from_text(DATA_NET, phase="train", stages={"extra"})
    assert train.inputs[0].shape == (2, 3, 321, 321)
    assert [layer.name for layer in train.layers] == ["conv", "stage_only"]


def test_keep_training_layers_without_deploy():
    spec = spec_from_text(DATA_NET, phase="train", deploy=False)
    assert {"loss", "label_shrink"} <= {layer.name for layer in spec.layers}
    assert set(spec.input_names()) == {"data", "label"}  # data_dim: read by nothing, removed


def test_v1_has_label_false_and_unnamed_layer():
    spec = spec_from_text("""
    layers { name: "data" type: IMAGE_SEG_DATA top: "data" image_data_param { has_label: false }
             transform_param { crop_size: 65 } }
    layers { type: RELU bottom: "data" top: "r" }""")
    assert spec.layers[0].name == "ReLU_1"
    assert spec.inputs[0].transform["label_type"] == "NONE"


@pytest.mark.parametrize(
    "body, message",
    [
        ('layer { name: "a" type: "ReLU" bottom: "nothing" top: "a" }', "produced by no layer"),
        ('layer { name: "a" type: "ReLU" bottom: "b" top: "a" } layer { name: "b" type: "ReLU" bottom: "a" top: "b" }',
         "later layer"),
    ],
)
def test_graph_errors(body, message):
    spec = spec_from_text('input: "d" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n' + body)
    with pytest.raises(NetDefinitionError, match=message) as info:
        check_graph(spec)
    assert info.value.location.line is not None
