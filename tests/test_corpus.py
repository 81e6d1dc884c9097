"""The original DeepLab prototxts: each parses in every phase it declares; each TEST net's shapes are inferred
at its crop size and give a full-resolution score map."""

from __future__ import annotations

import pytest

from caffe2torch.parse import parse_prototxt
from caffe2torch.shapes import infer_shapes
from caffe2torch.upgrade import declared_phases, to_raw_net, upgrade_net

from .conftest import CORPUS, corpus_files, require_shared

DEFINES = {"NUM_LABELS": "21"}


@pytest.mark.parametrize("name", corpus_files())
def test_corpus_parses_in_each_declared_phase(name):
    parsed = parse_prototxt(require_shared(CORPUS / name), defines=DEFINES)
    assert parsed.dialect == ("deeplab_v2" if name.startswith("c_v2") else "deeplab_v1")
    for phase in declared_phases(to_raw_net(parsed)):
        spec = upgrade_net(parsed, phase=phase)
        assert spec.layers


@pytest.mark.parametrize("name", [n for n in corpus_files() if n.endswith("test.prototxt")])
def test_test_nets_infer_shapes_at_crop_size(name):
    spec = upgrade_net(parse_prototxt(require_shared(CORPUS / name), defines=DEFINES), phase="test")
    (image,) = spec.inputs
    crop = image.transform["crop_size"]
    assert image.shape == (1, 3, crop, crop)
    report = infer_shapes(spec)
    (output,) = spec.outputs()
    assert report.blobs[output] == (1, 21, crop, crop)


def test_resnet_msc_branch_sizes_at_513():
    spec = upgrade_net(parse_prototxt(require_shared(CORPUS / "c_v2_tpami/DeepLabv2-ResNet101-MSC-ASPP/test.prototxt"),
                                      defines=DEFINES))
    blobs = infer_shapes(spec).blobs
    assert blobs["data_res05"][2:] == (257, 257) and blobs["data_res075"][2:] == (385, 385)
    assert blobs["conv1"][2:] == (257, 257) and blobs["pool1"][2:] == (129, 129)
    assert blobs["fc1_interp"] == (1, 21, 513, 513)
