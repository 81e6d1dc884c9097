"""Caffe's size rules, pinned with hand-computed cases and the facts sheet's verified sizes."""

from __future__ import annotations

import pytest

from caffe2torch.caffe_math import (
    conv_output_size,
    deconv_output_size,
    interp_output_size,
    pool_average_divisors,
    pool_output_size,
    reshape_output_shape,
)


def test_conv_sizes_with_dilation():
    assert conv_output_size(513, 3, 12, 1, 12) == 513  # LargeFOV fc6 at stride 8 keeps the size
    assert conv_output_size(513, 7, 3, 2) == 257  # ResNet conv1
    assert conv_output_size(17, 3, 0, 2, 2) == 7
    assert deconv_output_size(16, 4, 1, 2) == 32


@pytest.mark.parametrize(
    "size, kernel, pad, stride, expected",
    [
        (257, 3, 1, 2, 129),  # ResNet pool1: 513 -> conv1 257 -> pool1 129
        (513, 3, 1, 2, 257),  # VGG pool1 at 513
        (7, 3, 1, 2, 4),  # ceil
        (5, 3, 1, 3, 2),  # ceil gives 3, but the last window would start in the padding: clipped to 2
        (8, 2, 2 - 1, 2, 5),
        (6, 3, 0, 2, 3),
    ],
)
def test_pool_output_size(size, kernel, pad, stride, expected):
    assert pool_output_size(size, kernel, pad, stride) == expected


def test_pool_average_divisor_counts_padding_not_overhang():
    # size 7, k3 s2 p1: windows start at -1, 1, 3, 5; ends clipped to in+p = 8: 2, 4, 6, 8
    assert pool_average_divisors(7, 3, 1, 2) == [3, 3, 3, 3]
    # size 6, k3 s2 p1: out = ceil(5/2)+1 = 4; last window [5, 8) clipped to [5, 7): divisor 2
    assert pool_average_divisors(6, 3, 1, 2) == [3, 3, 3, 2]


def test_interp_rules_and_precedence():
    assert interp_output_size(65, 65, {"zoom_factor": 8}) == (513, 513)
    assert interp_output_size(513, 513, {"shrink_factor": 2}) == (257, 257)
    assert interp_output_size(513, 513, {"shrink_factor": 4, "zoom_factor": 3}) == (385, 385)  # shrink, then zoom
    assert interp_output_size(49, 49, {"shrink_factor": 3, "zoom_factor": 4}) == (65, 65)
    assert interp_output_size(321, 321, {"shrink_factor": 4, "zoom_factor": 3}) == (241, 241)
    # shrink only wins over height/width; height/width win over shrink+zoom
    assert interp_output_size(17, 17, {"shrink_factor": 2, "height": 5, "width": 5}) == (9, 9)
    assert interp_output_size(17, 17, {"shrink_factor": 2, "zoom_factor": 3, "height": 6, "width": 8}) == (6, 8)
    # v1 base DeepLab: fc8 67 -> zoom 8 -> 529, then crop -7/-8 -> 514
    assert interp_output_size(529, 529, {"zoom_factor": 1, "pad_beg": -7, "pad_end": -8}) == (514, 514)
    assert interp_output_size(None, 7, {"height": 3, "width": 4}) == (3, 4)


def test_interp_errors_and_v1_exactly_one_option():
    with pytest.raises(ValueError, match="exactly one"):
        interp_output_size(17, 17, {"zoom_factor": 2, "shrink_factor": 2}, dialect="deeplab_v1")
    with pytest.raises(ValueError, match="pad"):
        interp_output_size(17, 17, {"zoom_factor": 2, "pad_beg": 1})
    with pytest.raises(ValueError):
        interp_output_size(17, 17, {})


def test_reshape():
    assert reshape_output_shape((2, 6, 8, 10), {"shape": {"dim": [0, 2, -1, 10]}}) == (2, 2, 24, 10)
    assert reshape_output_shape((2, 8), {"shape": {"dim": [2, 4]}, "axis": 1}) == (2, 2, 4)
    with pytest.raises(ValueError):
        reshape_output_shape((2, 6), {"shape": {"dim": [-1, -1]}})
