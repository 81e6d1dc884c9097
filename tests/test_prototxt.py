"""Text parsing: dialect detection, clear errors with line and column, template placeholders."""

from __future__ import annotations

import pytest

from caffe2torch.errors import PrototxtError
from caffe2torch.parse import parse_prototxt, parse_prototxt_text

V1_NET = """
name: "v1"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
         convolution_param { num_output: 2 kernel_size: 3 hole: 2 } }
layers { name: "interp" type: INTERP bottom: "conv" top: "up" interp_param { zoom_factor: 2 } }
"""

V2_NET = """
input: "data"
input_shape { dim: 1 dim: 3 dim: 9 dim: 9 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 dilation: 2 } }
layer { name: "interp" type: "Interp" bottom: "conv" top: "up" interp_param { zoom_factor: 2 } }
"""

UPSTREAM_NET = """
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 9 dim: 9 } } }
layer { name: "crop" type: "Crop" bottom: "data" bottom: "data" top: "c" crop_param { axis: 2 } }
"""

STOCK_V1_NET = """
input: "data"
layers { name: "up" type: DECONVOLUTION bottom: "data" top: "up" convolution_param { num_output: 1 kernel_size: 2 } }
"""


@pytest.mark.parametrize(
    "text, dialect",
    [(V1_NET, "deeplab_v1"), (V2_NET, "deeplab_v2"), (UPSTREAM_NET, "caffe"), (STOCK_V1_NET, "caffe")],
)
def test_dialect_detection(text, dialect):
    assert parse_prototxt_text(text).dialect == dialect


def test_layer_lines_are_recorded():
    parsed = parse_prototxt_text(V2_NET)
    assert parsed.layer_lines == [4, 6]


def test_mixed_layer_and_layers_is_an_error_with_line():
    text = V2_NET + '\nlayers { name: "x" type: RELU bottom: "up" top: "up" }\n'
    with pytest.raises(PrototxtError, match="mixes") as info:
        parse_prototxt_text(text, source="mixed.prototxt")
    assert info.value.location.line == 8


def test_hole_in_layer_syntax_is_borrowed_from_deeplab_v1_with_a_note():
    text = V2_NET.replace("dilation: 2", "hole: 2")
    parsed = parse_prototxt_text(text, source="mixed.prototxt")
    assert parsed.dialect == "deeplab_v2"
    assert parsed.net["layer"][0]["convolution_param"]["hole"] == 2
    assert [(b.path, b.dialect, b.line) for b in parsed.borrowed] == [("layer.convolution_param.hole", "deeplab_v1", 5)]
    assert any("'layer.convolution_param.hole'" in w and "DeepLab v1" in w and "line 5" in w for w in parsed.warnings)


def test_dilation_in_v1_syntax_is_borrowed():
    parsed = parse_prototxt_text(V1_NET.replace("hole: 2", "dilation: 2"))
    assert parsed.dialect == "deeplab_v1"
    assert parsed.net["layers"][0]["convolution_param"]["dilation"] == [2]
    assert parsed.borrowed and parsed.borrowed[0].path == "layers.convolution_param.dilation"


def test_value_where_a_message_is_expected_names_line_and_column():
    with pytest.raises(PrototxtError, match="'layer.convolution_param' is a message") as info:
        parse_prototxt_text(V2_NET.replace("convolution_param {", "convolution_param: 3 foo {"), source="b.prototxt")
    assert (info.value.location.line, info.value.location.column) == (5, 9)


def test_malformed_text():
    with pytest.raises(PrototxtError) as info:
        parse_prototxt_text('layer { name: "a" type: "ReLU" \n', source="cut.prototxt")
    assert info.value.location.file == "cut.prototxt"


def test_placeholders_defined_and_undefined():
    text = V2_NET.replace("num_output: 2", "num_output: ${NUM_LABELS}").replace('name: "conv"', 'name: "conv_${EXP}"')
    parsed = parse_prototxt_text(text, defines={"NUM_LABELS": "21"})
    assert parsed.net["layer"][0]["convolution_param"]["num_output"] == 21
    assert any("${EXP}" in w for w in parsed.warnings)  # left inside a quoted name, with a note
    with pytest.raises(PrototxtError) as info:
        parse_prototxt_text(text.replace("kernel_size: 3", "kernel_size: ${K}"))
    assert "${NUM_LABELS}" in str(info.value) and "${K}" in str(info.value) and "--define" in str(info.value)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(PrototxtError, match="no such file"):
        parse_prototxt(tmp_path / "nope.prototxt")
    binary = tmp_path / "model.prototxt"
    binary.write_bytes(b"\x80\x81\xff\x00")
    with pytest.raises(PrototxtError, match="not a text prototxt"):
        parse_prototxt(binary)
