"""DeepLab files as other people wrote them (issue 11): forks mixed in one text file, data layers with extra
tops, layers of other forks that write nothing back, unknown layers and fields reported all at once,
train nets opened for TEST. Every fixture is written here."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2torch.errors import NetDefinitionError, UnsupportedError
from caffe2torch.parse import parse_prototxt_text
from caffe2torch.shapes import infer_shapes

from .conftest import net_from_text, run_net, spec_from_text

V2_WITH_INPUT_LAYER = """name: "mixed"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 17 dim: 17 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 4 kernel_size: 3 pad: 2 dilation: 2 } }
layer { name: "up" type: "Interp" bottom: "score" top: "up" interp_param { zoom_factor: 2 } }
"""


def test_v2_net_with_upstream_input_layer_opens_and_says_what_it_borrowed():
    parsed = parse_prototxt_text(V2_WITH_INPUT_LAYER, source="mixed.prototxt")
    assert parsed.dialect == "deeplab_v2"  # Interp's semantics are DeepLab v2's
    assert [(b.path, b.dialect, b.line) for b in parsed.borrowed] == [("layer.input_param", "caffe", 2)]
    assert any("input_param" in w and "upstream" in w for w in parsed.warnings)
    spec = spec_from_text(V2_WITH_INPUT_LAYER)
    assert spec.inputs[0].shape == (1, 3, 17, 17)
    assert infer_shapes(spec).blobs["up"] == (1, 4, 33, 33)
    assert any("input_param" in note for note in spec.notes)


def test_v1_net_borrows_a_stock_enum_value_and_v2_fields():
    text = """input: "data" input_dim: 1 input_dim: 2 input_dim: 5 input_dim: 5
    layers { name: "c" type: CONVOLUTION bottom: "data" top: "c" convolution_param { num_output: 2 kernel_size: 3
             pad: 1 hole: 1 } }
    layers { name: "up" type: DECONVOLUTION bottom: "c" top: "up" convolution_param { num_output: 2 kernel_size: 2
             stride: 2 } }
    layers { name: "i" type: INTERP bottom: "up" top: "i" interp_param { zoom_factor: 2 } }
    """
    parsed = parse_prototxt_text(text)
    assert parsed.dialect == "deeplab_v1"
    assert any(b.path == "layers.type: DECONVOLUTION" and b.dialect == "caffe" for b in parsed.borrowed)
    spec = spec_from_text(text)
    assert [layer.type for layer in spec.layers] == ["Convolution", "Deconvolution", "Interp"]
    assert infer_shapes(spec).blobs["i"] == (1, 2, 19, 19)  # v1 zoom rule on 10x10


def test_hole_and_dilation_together_is_an_error():
    with pytest.raises(NetDefinitionError, match="'hole' or 'dilation'"):
        spec_from_text(V2_WITH_INPUT_LAYER.replace("dilation: 2", "dilation: 2 hole: 2"))


MEMORY_DATA_CRF = """name: "deploy"
layer { name: "data" type: "MemoryData" top: "data" top: "label" top: "data_dim"
        memory_data_param { batch_size: 1 channels: 3 height: 25 width: 25 } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "crf" type: "DenseCRF" bottom: "score" bottom: "data_dim" bottom: "data" top: "crf"
        dense_crf_param { max_iter: 2 pos_w: 3 pos_xy_std: 3 bi_w: 4 bi_xy_std: 20 bi_rgb_std: 5 } }
"""


def test_every_data_layer_top_is_an_input_with_a_role_and_shape():
    spec = spec_from_text(MEMORY_DATA_CRF)
    roles = {i.name: (i.role, i.shape) for i in spec.inputs}
    assert roles == {"data": ("image", (1, 3, 25, 25)), "data_dim": ("data_dim", (1, 1, 1, 2))}
    assert "label" in " ".join(spec.notes)  # unused, removed, and said
    net = net_from_text(MEMORY_DATA_CRF)
    image = np.random.default_rng(0).normal(size=(1, 3, 25, 25)).astype(np.float32) * 40
    out = run_net(net, data=image, data_dim=np.array([[[[20, 25]]]], np.float32))["crf"]
    assert np.allclose(out[:, :, :20].sum(axis=1), 1, atol=1e-5) and not out[:, :, 20:].any()


def test_input_shape_can_set_any_data_layer_top():
    spec = spec_from_text(MEMORY_DATA_CRF, input_shapes={"data": (2, 3, 9, 9), "data_dim": (2, 1, 1, 2)})
    assert {i.name: i.shape for i in spec.inputs} == {"data": (2, 3, 9, 9), "data_dim": (2, 1, 1, 2)}


def test_net_level_input_feeding_densecrf_is_data_dim():
    text = """input: "data" input_shape { dim: 1 dim: 3 dim: 9 dim: 9 }
    input: "dims" input_shape { dim: 1 dim: 2 }
    layer { name: "s" type: "Convolution" bottom: "data" top: "s" convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "crf" type: "DenseCRF" bottom: "s" bottom: "dims" top: "q" dense_crf_param { max_iter: 1
            pos_w: 1 pos_xy_std: 1 } }
    """
    spec = spec_from_text(text)
    dims = next(i for i in spec.inputs if i.name == "dims")
    assert (dims.role, dims.shape) == ("data_dim", (1, 1, 1, 2))


UNKNOWN_EVERYWHERE = """name: "wild"
input: "data" input_shape { dim: 1 dim: 3 dim: 9 dim: 9 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 pad: 1 weird_option: 7 } }
layer { name: "save" type: "ImageSaver" bottom: "conv"
        image_saver_param { folder: "/tmp/out" every: 10 } }
layer { name: "norm" type: "Normalize" bottom: "conv" top: "norm"
        norm_param { across_spatial: false scale_filler { type: "constant" value: 20 } } }
layer { name: "prior" type: "PriorBox" bottom: "norm" bottom: "data" top: "prior" prior_box_param { min_size: 30 } }
"""


def test_a_layer_without_tops_is_dropped_and_said_unknown_ones_with_tops_listed_in_one_error():
    spec = spec_from_text(UNKNOWN_EVERYWHERE)
    dropped = {d.name: d.reason for d in spec.dropped}
    assert "no tops" in dropped["save"] and "image_saver_param" in dropped["save"]
    with pytest.raises(UnsupportedError) as info:
        infer_shapes(spec)
    problems = {loc.layer: (loc.line, loc.layer_type, message) for loc, message in info.value.problems}
    assert set(problems) == {"conv", "norm", "prior"}
    assert problems["conv"][0] == 3 and "weird_option" in problems["conv"][2]
    assert problems["norm"][1] == "Normalize" and "unknown or unsupported layer type" in str(info.value)
    assert "norm_param" in str(info.value) and "prior_box_param (line 9)" in str(info.value)
    assert "test.prototxt:7: layer 'norm' (Normalize)" in str(info.value)


def test_unknown_fields_in_layers_another_phase_uses_do_not_matter():
    text = UNKNOWN_EVERYWHERE.split('layer { name: "save"')[0].replace(" weird_option: 7", "") + """
    layer { name: "aug" type: "ImageSegData" top: "x" top: "y" include { phase: TRAIN }
            transform_param { smooth_filtering: true max_rotation_angle: 60 } }
    """
    spec = spec_from_text(text)
    assert [layer.name for layer in spec.layers] == ["conv"]
    assert infer_shapes(spec).blobs["conv"] == (1, 2, 9, 9)


def test_unknown_transform_fields_of_a_test_data_layer_are_noted():
    text = """layer { name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim"
              transform_param { crop_size: 33 mean_value: 104 smooth_filtering: true } include { phase: TEST } }
    layer { name: "s" type: "Convolution" bottom: "data" top: "s" convolution_param { num_output: 2 kernel_size: 1 } }
    """
    spec = spec_from_text(text)
    assert any("smooth_filtering" in note and "data loading" in note for note in spec.notes)
    assert spec.inputs[0].shape == (1, 3, 33, 33)


def test_unknown_v1_layer_type_is_listed_with_the_others():
    text = """input: "data" input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9
    layers { name: "n" type: NORMALIZE bottom: "data" top: "n" }
    layers { name: "m" type: MYSTERY_LAYER bottom: "n" top: "m" }
    """
    with pytest.raises(UnsupportedError) as info:
        infer_shapes(spec_from_text(text))
    assert [p[0].layer for p in info.value.problems] == ["n", "m"]
    assert "NORMALIZE" in str(info.value) and "MYSTERY_LAYER" in str(info.value)


def test_unknown_net_level_field_and_solver_files():
    with pytest.raises(Exception, match="unknown net-level field.*'frobnicate' \\(line 2\\)"):
        parse_prototxt_text('name: "x"\nfrobnicate: 3\n')
    with pytest.raises(Exception, match="solver file"):
        parse_prototxt_text('net: "train.prototxt"\nbase_lr: 0.001\nlr_policy: "step"\n')


def test_train_net_opened_for_test_says_its_data_layer_is_train_only():
    text = """layer { name: "data" type: "ImageSegData" top: "data" top: "label" include { phase: TRAIN }
                      transform_param { crop_size: 17 } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" }
    """
    with pytest.raises(NetDefinitionError) as info:
        infer_shapes(spec_from_text(text))
    message = str(info.value)
    assert "bottom 'data'" in message and "layer 'data' (ImageSegData, line 1)" in message
    assert "--phase train" in message
    assert infer_shapes(spec_from_text(text, phase="train")).blobs["conv"] == (1, 2, 17, 17)


STAGED_NET = """layer { name: "train_data" type: "Input" top: "data" include { phase: TRAIN }
        input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }
layer { name: "on_train" type: "Input" top: "data" include { phase: TEST stage: "test-on-train" }
        input_param { shape { dim: 2 dim: 1 dim: 28 dim: 28 } } }
layer { name: "on_test" type: "Input" top: "data" include { phase: TEST stage: "test-on-test" }
        input_param { shape { dim: 3 dim: 1 dim: 28 dim: 28 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 4 } }
"""


def test_stage_rules_select_layers_and_the_error_names_the_stage_to_give(tmp_path):
    # Caffe's NetState has stages besides the phase (a solver's test_state { stage: ... }), e.g. BVLC's
    # mnist_autoencoder: with no stage, TEST has no data layer at all, and the message says what to give.
    with pytest.raises(NetDefinitionError) as info:
        infer_shapes(spec_from_text(STAGED_NET))
    message = str(info.value)
    assert "layer 'on_train' (Input, line 3)" in message and "--phase test --stage test-on-train" in message
    for stages, batch in ((["test-on-train"], 2), (["test-on-test"], 3)):
        spec = read_net_from_text(tmp_path, STAGED_NET, stages=stages)
        assert [i.shape for i in spec.inputs] == [(batch, 1, 28, 28)]
    assert read_net_from_text(tmp_path, STAGED_NET, phase="train").inputs[0].shape == (1, 1, 28, 28)
    from click.testing import CliRunner

    from caffe2torch.cli.info import main as info_main

    (tmp_path / "staged.prototxt").write_text(STAGED_NET)
    result = CliRunner().invoke(info_main, [str(tmp_path / "staged.prototxt"), "--stage", "test-on-test"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(info_main, [str(tmp_path / "staged.prototxt")])
    assert result.exit_code == 2 and "--stage test-on-train" in result.output
    result = CliRunner().invoke(info_main, [str(tmp_path / "staged.prototxt"), "--stage", ""])
    assert result.exit_code == 2 and "'' is not a stage name" in result.output
    # a layer an exclude rule removes because of a stage: the hint drops that stage, not the phase
    excluded = STAGED_NET.replace('include { phase: TEST stage: "test-on-test" }', 'exclude { stage: "deploy" }')
    with pytest.raises(NetDefinitionError, match="give --phase test without the stage\\(s\\) deploy"):
        infer_shapes(read_net_from_text(tmp_path, excluded.replace('include { phase: TEST stage: "test-on-train" }',
                                                                   'include { phase: TRAIN }'), stages=["deploy"]))
    from_a_generator = read_net_from_text(tmp_path, STAGED_NET, stages=(stage for stage in ["test-on-test"]))
    assert from_a_generator.inputs[0].shape[0] == 3


def read_net_from_text(tmp_path, text: str, **kwargs):
    from caffe2torch.pipeline import read_net

    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return read_net(path, **kwargs)


def test_matread_top_is_a_net_input():
    text = """layer { name: "fc8" type: "MatRead" top: "fc8" mat_read_param { prefix: "feat/" batch_size: 1 } }
    layer { name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim"
            transform_param { crop_size: 17 } }
    layer { name: "crf" type: "DenseCRF" bottom: "fc8" bottom: "data_dim" bottom: "data" top: "crf"
            dense_crf_param { max_iter: 1 pos_w: 3 pos_xy_std: 3 bi_w: 4 bi_xy_std: 20 bi_rgb_std: 5 } }
    """
    spec = spec_from_text(text, input_shapes={"fc8": (1, 3, 17, 17)})
    assert {i.name: i.role for i in spec.inputs} == {"fc8": "tensor", "data": "image", "data_dim": "data_dim"}
    assert infer_shapes(spec).blobs["crf"] == (1, 3, 17, 17)


def test_the_files_own_state_stages_apply_and_the_phase_comes_from_the_caller():
    text = """state { phase: TRAIN stage: "deploy" }
    input: "data" input_shape { dim: 1 dim: 3 dim: 5 dim: 5 }
    layer { name: "a" type: "ReLU" bottom: "data" top: "a" include { stage: "deploy" } }
    layer { name: "b" type: "ReLU" bottom: "data" top: "b" include { phase: TRAIN } }
    """
    assert [layer.name for layer in spec_from_text(text).layers] == ["a"]
    assert [layer.name for layer in spec_from_text(text, phase="train").layers] == ["a", "b"]


def test_byte_order_mark_and_non_utf8_comments(tmp_path):
    from caffe2torch.parse import parse_prototxt

    body = b'input: "data" input_dim: 1 input_dim: 3 input_dim: 5 input_dim: 5\n'
    (tmp_path / "bom.prototxt").write_bytes(b"\xef\xbb\xbf" + body)
    (tmp_path / "gbk.prototxt").write_bytes(b"# \xc4\xe3\xba\xc3\n" + body)
    assert parse_prototxt(tmp_path / "bom.prototxt").net["input"] == ["data"]
    parsed = parse_prototxt(tmp_path / "gbk.prototxt")
    assert parsed.net["input_dim"] == [1, 3, 5, 5] and "Latin-1" in parsed.warnings[0]


@pytest.mark.parametrize("change, message", [
    ("bi_w: 4 bi_xy_std: 20 bi_rgb_std: 5", "no bilateral kernel"),
    ('bottom: "data" top: "crf"', r"must be \(N, 3, H, W\)"),
])
def test_densecrf_layer_checks_deeplab_makes(change, message):
    text = MEMORY_DATA_CRF
    if "bi_w" in change:
        text = text.replace(change, "")
    else:
        text = text.replace("channels: 3", "channels: 4")
    with pytest.raises(Exception, match=message):
        infer_shapes(spec_from_text(text))


def test_an_extra_data_layer_top_another_fork_adds_is_unsized_and_can_be_sized():
    # a fork whose ImageSegData also makes a per-pixel loss-weight map (4 tops; DeepLab's makes 3)
    text = """layer { name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim" top: "weights"
                      transform_param { crop_size: 17 } image_data_param { source: "l" label_type: PIXEL } }
    layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "w_shrink" type: "Interp" bottom: "weights" top: "w_shrink" interp_param { shrink_factor: 8 } }
    """
    with pytest.raises(NetDefinitionError) as info:
        infer_shapes(spec_from_text(text))
    message = str(info.value)
    assert "test.prototxt:4: layer 'w_shrink' (Interp)" in message and "1-D" not in message
    assert "top 'weights' of layer 'data' (ImageSegData)" in message and "--input-shape weights=" in message
    spec = spec_from_text(text, input_shapes={"weights": (1, 1, 17, 17)})
    assert infer_shapes(spec).blobs["w_shrink"] == (1, 1, 3, 3)


def test_hdf5_data_tops_take_the_batch_size_and_no_invented_channels():
    text = """layer { name: "load" type: "HDF5Data" top: "data" top: "label" include { phase: TEST }
                      hdf5_data_param { source: "files.txt" batch_size: 2 } }
    layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 kernel_size: 1 } }
    """
    spec = spec_from_text(text)
    assert [(i.name, i.shape, i.role) for i in spec.inputs] == [("data", (2, None, None, None), "tensor")]
    # a fork that crops its HDF5 images (DeepLab's and upstream's HDF5Data refuse transform_param): a hint, said
    cropped = spec_from_text(text.replace("hdf5_data_param", "transform_param { crop_size: 9 } hdf5_data_param"))
    assert cropped.inputs[0].shape == (2, None, 9, 9)
    assert any("HDF5Data" in note and "does not transform data" in note for note in cropped.notes)
    sized = spec_from_text(text, input_shapes={"data": (2, 3, 9, 9)})
    assert infer_shapes(sized).blobs["c"] == (2, 2, 9, 9)


@pytest.mark.parametrize("text, message", [
    ("", "the file is empty"),
    ("# DeepLab-LargeFOV test net\n\n", "has no layers and no inputs"),
    ('name: "${NET_ID}"\n', "has no layers and no inputs"),
])
def test_a_file_that_defines_no_net_is_refused_not_read_as_an_empty_v1_net(text, message):
    from caffe2torch.errors import PrototxtError

    with pytest.raises(PrototxtError, match=message):
        parse_prototxt_text(text, source="test (1).prototxt")


def test_a_net_whose_every_layer_hangs_off_a_label_is_refused_not_emptied():
    # weakly supervised training nets: ImageData's second top (ids) feeds a Python layer that makes the images
    text = """layer { name: "input" type: "ImageData" top: "images_origin" top: "image_ids"
                      image_data_param { source: "l.txt" batch_size: 2 new_height: 9 new_width: 9 } }
    layer { name: "annotation" type: "Python" bottom: "image_ids" bottom: "images_origin" top: "labels" top: "images"
            python_param { module: "pylayers" layer: "AnnotationLayer" } }
    layer { name: "conv" type: "Convolution" bottom: "images" top: "conv"
            convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
    """
    with pytest.raises(NetDefinitionError) as info:
        spec_from_text(text)
    message = str(info.value)
    assert "test.prototxt:3: layer 'annotation' (Python)" in message and "nothing is left to run" in message
    assert "reads 'image_ids'" in message and "2 layer(s) after it" in message
