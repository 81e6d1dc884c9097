"""The torch dense CRF (caffe2torch.permutohedral) against pydensecrf, DeepLab's own CRF code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caffe2torch.crf import check_crf_device, crf_preset, dense_crf, dense_crf_torch
from caffe2torch.demo.synthetic import make_scene
from caffe2torch.permutohedral import PermutohedralLattice


def scene(seed: int, height: int = 96, width: int = 128, labels: int = 6):
    """A generated scene with sharp and soft edges, and stride-8-like smooth logits with noise."""
    rng = np.random.default_rng(seed)
    image, _ = make_scene(rng, height, width)
    coarse = torch.from_numpy(rng.normal(0, 2.5, (1, labels, height // 8 + 1, width // 8 + 1)).astype(np.float32))
    logits = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)[0].numpy()
    logits += rng.normal(0, 0.3, logits.shape).astype(np.float32)
    return image.transpose(2, 0, 1).astype(np.float32), logits


@pytest.mark.parametrize("preset", ["v1", "v2", "demo-synthetic"])
def test_torch_crf_agrees_with_pydensecrf(preset):
    image, logits = scene(1)
    params = crf_preset(preset)
    reference = dense_crf(logits, image, params)
    ours = dense_crf_torch(logits, image, params)
    assert ours.shape == reference.shape and ours.dtype == np.float32
    # The CRF moves labels (so the comparison means something), and the two move them the same way.
    assert (reference.argmax(0) != logits.argmax(0)).mean() > 0.02
    assert (ours.argmax(0) == reference.argmax(0)).mean() >= 0.995
    assert np.abs(ours - reference).max() < 5e-3


def test_torch_crf_positional_only_and_zero_iterations():
    _, logits = scene(2)
    params = crf_preset("v2")
    positional = dense_crf_torch(logits, None, params)
    assert (positional.argmax(0) == dense_crf(logits, None, params).argmax(0)).mean() >= 0.995
    params.max_iter = 0
    np.testing.assert_allclose(dense_crf_torch(logits, None, params), torch.softmax(torch.from_numpy(logits), 0),
                               atol=1e-6)


def test_lattice_filter_is_linear_and_symmetric():
    # Splatting and slicing are transposes of each other and each axis's blur is symmetric, so <Fa, b> is
    # <a, Fb> up to the blurs' order (applied one axis after another, as in the original code; they do not
    # quite commute on a truncated lattice).
    rng = np.random.default_rng(0)
    lattice = PermutohedralLattice(torch.from_numpy(rng.normal(0, 3, (500, 3)).astype(np.float32)))
    a, b = (torch.from_numpy(rng.random((500, 1))).float() for _ in range(2))
    assert torch.allclose((lattice.filter(a) * b).sum(), (a * lattice.filter(b)).sum(), rtol=5e-3)
    assert torch.allclose(lattice.filter(2 * a + b), 2 * lattice.filter(a) + lattice.filter(b), atol=1e-5)
    # A point far from all others only sees itself: its filtered value is its own times the self weight.
    lone = torch.cat([torch.zeros(1, 3), torch.full((1, 3), 1e3)])
    filtered = PermutohedralLattice(lone).filter(torch.tensor([[1.0], [0.0]]))
    assert filtered[1, 0] == 0 and filtered[0, 0] > 0


def test_bad_inputs_and_devices():
    with pytest.raises(ValueError, match="non-empty"):
        dense_crf_torch(np.zeros((0, 4, 4), np.float32), None, crf_preset("v2"))
    with pytest.raises(ValueError, match="does not match"):
        dense_crf_torch(np.zeros((2, 4, 4), np.float32), np.zeros((3, 5, 4)), crf_preset("v2"))
    with pytest.raises(ValueError, match="features must be"):
        PermutohedralLattice(torch.zeros(0, 2))
    assert check_crf_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="not a torch device"):
        check_crf_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            check_crf_device("cuda")
