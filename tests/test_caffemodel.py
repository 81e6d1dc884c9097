"""Binary caffemodels: both dialects, round trips through our writers, corrupt files, big files."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2torch.caffemodel import WeightsLayer, read_caffemodel, read_caffemodel_bytes, write_caffemodel
from caffe2torch.errors import CaffeModelError

from .conftest import REFERENCE, require_shared

LAYERS = [
    WeightsLayer("conv", "Convolution", [np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
                                         np.array([0.5, -1], np.float32)], ["data"], ["conv"]),
    WeightsLayer("relu", "ReLU", [], ["conv"], ["conv"]),
    WeightsLayer("ip", "InnerProduct", [np.ones((4, 6), np.float32), np.zeros(4, np.float32)]),
]


@pytest.mark.parametrize("dialect", ["v1", "v2"])
def test_round_trip(tmp_path, dialect):
    path = tmp_path / f"{dialect}.caffemodel"
    write_caffemodel(path, LAYERS, name="net", dialect=dialect)
    model = read_caffemodel(path)
    assert model.name == "net"
    assert [(layer.name, layer.type) for layer in model.layers] == [(x.name, x.type) for x in LAYERS]
    for written, read in zip(LAYERS, model.layers):
        assert len(read.blobs) == len(written.blobs)
        for a, b in zip(written.blobs, read.blobs):
            assert np.array_equal(a.reshape(-1), b.reshape(-1))
    if dialect == "v1":  # legacy num/channels/height/width layout
        assert model.layers[0].blobs[1].shape == (1, 1, 1, 2) and model.layers[2].blobs[0].shape == (1, 1, 4, 6)
        assert all(model.layers[0].legacy_shape)
    else:
        assert model.layers[2].blobs[0].shape == (4, 6)


def test_v1_golden_weights_equal_v2_golden_weights():
    for case in ("v1_largefov", "v1_deeplab"):
        v2 = read_caffemodel(require_shared(REFERENCE / case / "weights.caffemodel")).by_name()
        v1 = read_caffemodel(require_shared(REFERENCE / case / "weights_v1.caffemodel")).by_name()
        with_blobs = {name for name, layer in v2.items() if layer.blobs}
        assert with_blobs == {name for name, layer in v1.items() if layer.blobs}
        for name in with_blobs:
            assert v1[name].type == v2[name].type
            for a, b in zip(v1[name].blobs, v2[name].blobs):
                assert np.array_equal(a.reshape(b.shape), b)


def test_truncated_and_corrupt_files(tmp_path):
    path = tmp_path / "m.caffemodel"
    write_caffemodel(path, LAYERS)
    data = path.read_bytes()
    with pytest.raises(CaffeModelError, match="truncated or corrupt"):
        read_caffemodel_bytes(data[: len(data) - 10], "cut.caffemodel")
    with pytest.raises(CaffeModelError):
        read_caffemodel_bytes(b"\xff" * 64, "junk.caffemodel")
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(CaffeModelError, match="empty"):
        read_caffemodel(empty)
    with pytest.raises(CaffeModelError, match="no such file"):
        read_caffemodel(tmp_path / "missing.caffemodel")
    text = tmp_path / "net.prototxt"
    text.write_text('name: "x"\nlayer { name: "a" }\n')
    with pytest.raises(CaffeModelError):
        read_caffemodel(text)


def test_file_over_protobufs_64mb_limit(tmp_path):
    big = np.random.default_rng(0).standard_normal((5, 4, 1024, 1024)).astype(np.float32)  # 80 MB
    path = tmp_path / "big.caffemodel"
    write_caffemodel(path, [WeightsLayer("fc", "Convolution", [big])])
    model = read_caffemodel(path)
    blob = model.layers[0].blobs[0]
    assert blob.shape == big.shape and np.array_equal(blob, big)
    assert not blob.flags.owndata  # a view of the mapped file, not a copy
