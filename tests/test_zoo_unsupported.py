"""Forks with layers caffe2torch does not convert reach the one UnsupportedError that lists every such layer with
its name, type, file and line, although their parameter messages are in no schema of ours: SSD's detection
head (weiliu89/caffe, ssd branch) and R-FCN's proposal and position-sensitive pooling (daijifeng001/caffe-rfcn,
py-R-FCN). The nets mimic the published deploy files (SSD300 VGG16 deploy.prototxt, R-FCN ResNet-50
test_agnostic.prototxt), shortened."""

from __future__ import annotations

import re

import pytest

from caffe2torch.errors import UnsupportedError
from caffe2torch.pipeline import read_net
from caffe2torch.shapes import infer_shapes

SSD = """name: "VGG_VOC0712_SSD_300x300_deploy"
input: "data"
input_shape { dim: 1 dim: 3 dim: 300 dim: 300 }
layer { name: "conv4_3" type: "Convolution" bottom: "data" top: "conv4_3"
        convolution_param { num_output: 8 pad: 1 kernel_size: 3 stride: 8 } }
layer { name: "relu4_3" type: "ReLU" bottom: "conv4_3" top: "conv4_3" }
layer {
  name: "conv4_3_norm"
  type: "Normalize"
  bottom: "conv4_3"
  top: "conv4_3_norm"
  norm_param {
    across_spatial: false
    scale_filler { type: "constant" value: 20 }
    channel_shared: false
  }
}
layer { name: "conv4_3_norm_mbox_loc" type: "Convolution" bottom: "conv4_3_norm" top: "conv4_3_norm_mbox_loc"
        convolution_param { num_output: 16 pad: 1 kernel_size: 3 stride: 1 } }
layer {
  name: "conv4_3_norm_mbox_loc_perm"
  type: "Permute"
  bottom: "conv4_3_norm_mbox_loc"
  top: "conv4_3_norm_mbox_loc_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 }
}
layer { name: "conv4_3_norm_mbox_loc_flat" type: "Flatten" bottom: "conv4_3_norm_mbox_loc_perm"
        top: "conv4_3_norm_mbox_loc_flat" flatten_param { axis: 1 } }
layer { name: "conv4_3_norm_mbox_conf" type: "Convolution" bottom: "conv4_3_norm" top: "conv4_3_norm_mbox_conf"
        convolution_param { num_output: 84 pad: 1 kernel_size: 3 stride: 1 } }
layer { name: "conv4_3_norm_mbox_conf_perm" type: "Permute" bottom: "conv4_3_norm_mbox_conf"
        top: "conv4_3_norm_mbox_conf_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv4_3_norm_mbox_conf_flat" type: "Flatten" bottom: "conv4_3_norm_mbox_conf_perm"
        top: "conv4_3_norm_mbox_conf_flat" flatten_param { axis: 1 } }
layer {
  name: "conv4_3_norm_mbox_priorbox"
  type: "PriorBox"
  bottom: "conv4_3_norm"
  bottom: "data"
  top: "conv4_3_norm_mbox_priorbox"
  prior_box_param {
    min_size: 30.0
    max_size: 60.0
    aspect_ratio: 2
    flip: true
    clip: false
    variance: 0.1
    variance: 0.1
    variance: 0.2
    variance: 0.2
    step: 8
    offset: 0.5
  }
}
layer { name: "mbox_conf_reshape" type: "Reshape" bottom: "conv4_3_norm_mbox_conf_flat" top: "mbox_conf_reshape"
        reshape_param { shape { dim: 0 dim: -1 dim: 21 } } }
layer { name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax"
        softmax_param { axis: 2 } }
layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" top: "mbox_conf_flatten"
        flatten_param { axis: 1 } }
layer {
  name: "detection_out"
  type: "DetectionOutput"
  bottom: "conv4_3_norm_mbox_loc_flat"
  bottom: "mbox_conf_flatten"
  bottom: "conv4_3_norm_mbox_priorbox"
  top: "detection_out"
  include { phase: TEST }
  detection_output_param {
    num_classes: 21
    share_location: true
    background_label_id: 0
    nms_param { nms_threshold: 0.45 top_k: 400 }
    save_output_param { label_map_file: "data/VOC0712/labelmap_voc.prototxt" }
    code_type: CENTER_SIZE
    keep_top_k: 200
    confidence_threshold: 0.01
  }
}
"""

RFCN = """name: "ResNet-50"
input: "data"
input_shape { dim: 1 dim: 3 dim: 224 dim: 224 }
input: "im_info"
input_shape { dim: 1 dim: 3 }
layer { name: "res4f" type: "Convolution" bottom: "data" top: "res4f"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 16 } }
layer { name: "rpn_cls_score" type: "Convolution" bottom: "res4f" top: "rpn_cls_score"
        convolution_param { num_output: 18 kernel_size: 1 } }
layer { name: "rpn_bbox_pred" type: "Convolution" bottom: "res4f" top: "rpn_bbox_pred"
        convolution_param { num_output: 36 kernel_size: 1 } }
layer { bottom: "rpn_cls_score" top: "rpn_cls_score_reshape" name: "rpn_cls_score_reshape" type: "Reshape"
        reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 0 } } }
layer { name: "rpn_cls_prob" type: "Softmax" bottom: "rpn_cls_score_reshape" top: "rpn_cls_prob" }
layer { name: 'rpn_cls_prob_reshape' type: 'Reshape' bottom: 'rpn_cls_prob' top: 'rpn_cls_prob_reshape'
        reshape_param { shape { dim: 0 dim: 18 dim: -1 dim: 0 } } }
layer {
  name: 'proposal'
  type: 'Python'
  bottom: 'rpn_cls_prob_reshape'
  bottom: 'rpn_bbox_pred'
  bottom: 'im_info'
  top: 'rois'
  python_param {
    module: 'rpn.proposal_layer'
    layer: 'ProposalLayer'
    param_str: "'feat_stride': 16"
  }
}
layer { bottom: "res4f" top: "rfcn_cls" name: "rfcn_cls" type: "Convolution"
        convolution_param { num_output: 1029 kernel_size: 1 } }
layer {
  bottom: "rfcn_cls"
  bottom: "rois"
  top: "psroipooled_cls_rois"
  name: "psroipooled_cls_rois"
  type: "PSROIPooling"
  psroi_pooling_param {
    spatial_scale: 0.0625
    output_dim: 21
    group_size: 7
  }
}
layer { bottom: "psroipooled_cls_rois" top: "cls_score" name: "ave_cls_score_rois" type: "Pooling"
        pooling_param { pool: AVE kernel_size: 7 stride: 7 } }
layer { name: "cls_prob" type: "Softmax" bottom: "cls_score" top: "cls_prob" }
"""


def unsupported(tmp_path, name: str, text: str) -> UnsupportedError:
    path = tmp_path / name
    path.write_text(text)
    spec = read_net(path)
    with pytest.raises(UnsupportedError) as error:
        infer_shapes(spec)
    return error.value


def line_of(text: str, pattern: str, layer_start: bool = False) -> int:
    """1-based line of the first line matching `pattern` (with layer_start: of the `layer {` that opens it)."""
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if re.search(pattern, line))
    while layer_start and not lines[index].lstrip().startswith("layer {"):
        index -= 1
    return index + 1


def listed(error: UnsupportedError) -> dict[tuple[str, str, int], list[str]]:
    """{(layer, type, line): [its problems]} from the error."""
    out: dict[tuple[str, str, int], list[str]] = {}
    for location, message in error.problems:
        out.setdefault((location.layer, location.layer_type, location.line), []).append(message)
    return out


def test_ssd_detection_head_is_one_error(tmp_path):
    error = unsupported(tmp_path, "ssd_deploy.prototxt", SSD)
    expected = {(name, kind, line_of(SSD, f'name: "{name}"', layer_start=True)): param
                for name, kind, param in (("conv4_3_norm", "Normalize", "norm_param"),
                                          ("conv4_3_norm_mbox_loc_perm", "Permute", "permute_param"),
                                          ("conv4_3_norm_mbox_conf_perm", "Permute", "permute_param"),
                                          ("conv4_3_norm_mbox_priorbox", "PriorBox", "prior_box_param"),
                                          ("detection_out", "DetectionOutput", "detection_output_param"))}
    layers = listed(error)
    assert set(layers) == set(expected)
    for key, param in expected.items():
        # every layer's unknown parameter message, with its own line, beside its unknown type
        param_line = line_of(SSD[SSD.index(f'name: "{key[0]}"'):], param) + line_of(SSD, f'name: "{key[0]}"') - 1
        assert layers[key] == [f"field(s) no known Caffe schema has, so their meaning is unknown: layer.{param} "
                               f"(line {param_line})", f"unknown or unsupported layer type '{key[1]}'"]
    text = str(error)
    path = tmp_path / "ssd_deploy.prototxt"
    assert text.startswith(f"10 unsupported layer(s) or parameter(s) in {path}:")
    prior_box = line_of(SSD, 'type: "PriorBox"', layer_start=True)
    assert f"{path}:{prior_box}: layer 'conv4_3_norm_mbox_priorbox' (PriorBox)" in text
    # Flatten, Reshape, Softmax (axis 2) and the convolutions convert: they are not listed
    assert not re.search(r"\((Flatten|Reshape|Softmax|Convolution|ReLU)\)", text)


def test_rfcn_proposal_and_psroi_pooling_are_one_error(tmp_path):
    error = unsupported(tmp_path, "rfcn_test_agnostic.prototxt", RFCN)
    proposal = ("proposal", "Python", line_of(RFCN, "name: 'proposal'", layer_start=True))
    psroi = ("psroipooled_cls_rois", "PSROIPooling", line_of(RFCN, 'type: "PSROIPooling"', layer_start=True))
    layers = listed(error)
    assert set(layers) == {proposal, psroi}
    # the proposal layer runs Python code on blobs: not a data layer, refused by name
    assert layers[proposal] == ["unknown or unsupported layer type 'Python'"]
    assert layers[psroi] == [f"field(s) no known Caffe schema has, so their meaning is unknown: "
                             f"layer.psroi_pooling_param (line {line_of(RFCN, 'psroi_pooling_param')})",
                             "unknown or unsupported layer type 'PSROIPooling'"]
