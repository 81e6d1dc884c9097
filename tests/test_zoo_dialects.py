"""The segmentation forks as dialects: each file goes to its fork, their field numbers clash as their caffe.proto
files say, and their caffemodels read by the upstream numbers of name, type and blobs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from caffe2torch.caffemodel import read_caffemodel
from caffe2torch.parse import parse_prototxt_text
from caffe2torch.proto import enet_pb2, pspnet_pb2, segnet_pb2

from .conftest import REPO
from .zoo_nets import ZOO

TABLES = REPO / "tests" / "data" / "schemas"


@pytest.mark.parametrize("key", sorted(ZOO))
def test_each_zoo_file_is_read_in_its_forks_dialect(key):
    zoo = ZOO[key]()
    parsed = parse_prototxt_text(zoo.text(), source=f"{key}.prototxt")
    assert parsed.dialect == zoo.dialect
    assert not parsed.borrowed  # every field is the fork's own


def test_deeplab_v2_files_stay_deeplab_v2():
    text = """name: "t"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "up" type: "Interp" bottom: "conv" top: "up" interp_param { zoom_factor: 2 } }"""
    # PSPNet's fork knows every DeepLab v2 name as well: the tie goes to DeepLab v2.
    assert parse_prototxt_text(text).dialect == "deeplab_v2"
    assert parse_prototxt_text(text.replace('"Interp"', '"BN"').replace(
        "interp_param { zoom_factor: 2 }", "") + 'layer { name: "i" type: "Interp" bottom: "up" top: "i" }'
    ).dialect == "pspnet"


def fork_table(name: str) -> dict:
    return json.loads((TABLES / f"{name}.json").read_text())


def number(table: dict, message: str, field: str) -> int | None:
    entry = table["messages"][message].get(field)
    return entry["number"] if entry else None


def test_fork_field_numbers_clash_as_their_caffe_protos_say():
    segnet, enet, pspnet, upstream = (fork_table(n) for n in ("segnet", "enet", "pspnet", "upstream"))
    # bn_param: 45 in SegNet's and ENet's forks, 152 in PSPNet's (a different BNParameter)
    assert number(segnet, "LayerParameter", "bn_param") == number(enet, "LayerParameter", "bn_param") == 45
    assert number(pspnet, "LayerParameter", "bn_param") == 152
    assert set(segnet["messages"]["BNParameter"]) == {"bn_mode", "scale_filler", "shift_filler"}
    assert set(pspnet["messages"]["BNParameter"]) == {"slope_filler", "bias_filler", "momentum", "eps", "frozen",
                                                       "engine"}
    # upsample_param: 137 in SegNet's (upstream's later embed_param), 147 in ENet's (upstream's swish_param)
    assert number(segnet, "LayerParameter", "upsample_param") == number(upstream, "LayerParameter", "embed_param")
    assert number(enet, "LayerParameter", "upsample_param") == number(upstream, "LayerParameter", "swish_param")
    # dense_image_data_param: 138 in SegNet's (upstream's tile_param), 46 in ENet's
    assert number(segnet, "LayerParameter", "dense_image_data_param") == 138
    assert number(upstream, "LayerParameter", "tile_param") == 138
    assert number(enet, "LayerParameter", "dense_image_data_param") == 46
    # PSPNet's fork is DeepLab v2's: interp_param at 143, where upstream has input_param
    assert number(pspnet, "LayerParameter", "interp_param") == number(upstream, "LayerParameter", "input_param")


@pytest.mark.parametrize("fork", ["segnet", "enet", "pspnet"])
def test_binary_layout_is_upstreams(fork):
    # What caffemodel.py reads by number, whatever the dialect: NetParameter.layer, LayerParameter name, type
    # and blobs, and every BlobProto field.
    table, upstream = fork_table(fork), fork_table("upstream")
    assert number(table, "NetParameter", "layer") == 100 and number(table, "NetParameter", "layers") == 2
    for field in ("name", "type", "blobs"):
        assert number(table, "LayerParameter", field) == number(upstream, "LayerParameter", field)
        assert number(table, "V1LayerParameter", field) == number(upstream, "V1LayerParameter", field)
    assert table["enums"]["V1LayerParameter.LayerType"] == upstream["enums"]["V1LayerParameter.LayerType"]
    fork_blob, upstream_blob = table["messages"]["BlobProto"], upstream["messages"]["BlobProto"]
    for field, entry in fork_blob.items():
        assert upstream_blob[field] == entry, field


@pytest.mark.parametrize("module, params", [
    (segnet_pb2, {"bn_param": {"bn_mode": 1}, "upsample_param": {"scale": 2, "upsample_h": 45}}),
    (enet_pb2, {"bn_param": {"bn_mode": 1}, "upsample_param": {"scale": 2}}),
    (pspnet_pb2, {"bn_param": {"frozen": True, "eps": 1e-5}, "interp_param": {"zoom_factor": 8}}),
])
def test_caffemodels_with_fork_parameters_read_by_name_type_and_blobs(tmp_path, module, params):
    # Caffe's Net::ToProto saves each layer's parameters with its blobs: in a fork's caffemodel they sit at the
    # fork's numbers (bn_param 45 or 152, upsample_param 137 or 147, ...). The reader skips them.
    net = module.NetParameter(name="fork")
    layer = net.layer.add(name="conv1_bn", type="BN")
    for field, values in params.items():
        getattr(layer, field).MergeFrom(getattr(layer, field).__class__(**values))
    scale = np.arange(4, dtype=np.float32)
    blob = layer.blobs.add()
    blob.shape.dim.extend([1, 4, 1, 1])
    blob.data.extend(scale.tolist())
    path = tmp_path / "fork.caffemodel"
    path.write_bytes(net.SerializeToString())
    model = read_caffemodel(path)
    [read] = model.with_blobs()
    assert (read.name, read.type) == ("conv1_bn", "BN")
    np.testing.assert_array_equal(np.asarray(read.blobs[0]).reshape(-1), scale)
    assert read.blobs[0].shape == (1, 4, 1, 1)
