"""The schema-free text reader and the typed reading on top of it: protobuf text format as Caffe wrote it."""

from __future__ import annotations

import math
import tracemalloc

import pytest

from caffe2torch.errors import PrototxtError
from caffe2torch.parse import parse_prototxt_text, to_float32
from caffe2torch.textproto import MAX_DEPTH, read_text_message, unescape

NET = 'input: "data"\ninput_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9\n'


def conv(body: str) -> dict:
    parsed = parse_prototxt_text(NET + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                                 f"convolution_param {{ {body} }} }}")
    return parsed.net["layer"][0]["convolution_param"]


def test_syntax_variants_protobuf_accepts():
    text = """
    # comment
    name: 'quoted' "concatenated"   # adjacent strings join
    input: "data"; input_dim: [1, 3, 9, 9]
    layer < name: "p" type: "Pooling" bottom: "data" top: "p"
            pooling_param: { pool: AVE kernel_size: 0x3, stride: 02 } >
    """
    parsed = parse_prototxt_text(text)
    assert parsed.net["name"] == "quotedconcatenated"
    assert parsed.net["input_dim"] == [1, 3, 9, 9]
    pool = parsed.net["layer"][0]["pooling_param"]
    assert (pool["pool"], pool["kernel_size"], pool["stride"]) == ("AVE", 3, 2)  # hex and octal as protobuf


def test_string_escapes():
    assert unescape(r'"a\"b\\c\n\x41\101"') == 'a"b\\c\nAA'


def test_floats_are_float32_like_caffe_and_accept_inf_nan():
    p = parse_prototxt_text(NET + 'layer { name: "w" type: "Power" bottom: "data" top: "w" '
                            "power_param { power: 0.1 scale: -inf shift: nan } }").net["layer"][0]["power_param"]
    assert p["power"] == to_float32(0.1) != 0.1
    assert p["scale"] == -math.inf and math.isnan(p["shift"])
    assert to_float32(1e39) == math.inf


@pytest.mark.parametrize(
    "body, message",
    [
        ("num_output: 4.5", "takes an integer"),
        ("num_output: -1", "out of range"),
        ("num_output: 99999999999", "out of range"),
        ('num_output: "4"', "takes an integer"),
        ("bias_term: maybe", "takes true or false"),
        ("num_output: 4 num_output: 5", "more than once"),
        ("weight_filler: 3", "is a message"),
        ("num_output { }", "is a value"),
    ],
)
def test_typed_values_are_checked_with_line_and_column(body, message):
    with pytest.raises(PrototxtError, match=message) as info:
        conv(body)
    assert info.value.location.line == 3 and info.value.location.column is not None


@pytest.mark.parametrize(
    "text, message",
    [
        ('layer { name: "a"', "ends inside a message"),
        ('layer { name: "a" } }', "unexpected '}'"),
        ('layer { name "a" }', "expected ':' or '{'"),
        ("layer { name: }", "expected a value"),
        ('layer { name: "a" type: [1, 2 }', "expected ',' or ']'"),
        ("42", "expected a field name"),
        ('layer { name: "a\n" }', "expected a value"),
        ("layer { top: @ }", "expected a value"),
    ],
)
def test_malformed_text_is_located(text, message):
    with pytest.raises(PrototxtError, match=message) as info:
        parse_prototxt_text(text, source="bad.prototxt")
    assert info.value.location.file == "bad.prototxt" and info.value.location.line is not None


def test_nesting_is_bounded_without_recursion():
    deep = "a { " * (MAX_DEPTH + 5) + "}" * (MAX_DEPTH + 5)
    with pytest.raises(PrototxtError, match="nested more than"):
        read_text_message(deep)
    very_deep = "a { " * 200_000  # would overflow a recursive parser's stack
    with pytest.raises(PrototxtError):
        read_text_message(very_deep)


def test_memory_stays_a_small_multiple_of_the_file():
    layer = ('layer { name: "conv%d" type: "Convolution" bottom: "data" top: "conv%d" param { lr_mult: 1 } '
             'convolution_param { num_output: 64 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }\n')
    text = NET + "".join(layer % (i, i) for i in range(4000))  # ~0.7 MB
    tracemalloc.start()
    try:
        parsed = parse_prototxt_text(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(parsed.net["layer"]) == 4000
    assert peak < 40 * len(text), f"peak {peak / len(text):.0f}x the file"
