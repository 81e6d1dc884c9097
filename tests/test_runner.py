"""deeplab-run and its pieces: DeepLab's preprocessing, CRF presets, real photographs, a corrupt file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from caffe2torch.cli import convert, run
from caffe2torch.crf import CRFParams, crf_preset, dense_crf, parse_crf_overrides
from caffe2torch.layers.densecrf import crf_region
from caffe2torch.runner import ModelInfo, padded_size, preprocess

from .conftest import REFERENCE, require_shared


def test_preprocess_bgr_mean_and_bottom_right_padding():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 200  # red
    batch = preprocess(rgb, ModelInfo(mean=[100.0, 110.0, 120.0], crop_size=5))
    assert batch.shape == (1, 3, 5, 5)
    np.testing.assert_array_equal(batch[0, :, 0, 0], [-100, -110, 80])  # B, G, R minus mean
    assert np.all(batch[0, :, 2:, :] == 0) and np.all(batch[0, :, :, 3:] == 0)  # padded with the mean


def test_padded_size():
    assert padded_size(500, 375, 513) == (513, 513)
    assert padded_size(600, 100, 513) == (609, 129)  # larger than the crop: next 32k+1
    assert padded_size(40, 40, None) == (65, 65)


def test_crf_presets_and_overrides():
    v2 = crf_preset("v2")
    assert (v2.bi_w, v2.bi_xy_std, v2.bi_rgb_std, v2.pos_w, v2.pos_xy_std) == ([4.0], [67.0], [3.0], [3.0], [1.0])
    tuned = parse_crf_overrides(crf_preset("run-densecrf"), "bi_w=5,max_iter=3")
    assert tuned.bi_w == [5.0] and tuned.max_iter == 3 and tuned.bi_xy_std == [49.0]
    with pytest.raises(ValueError):
        parse_crf_overrides(crf_preset("v1"), "nonsense=1")
    with pytest.raises(ValueError):
        crf_preset("unknown")


def test_crf_region_rule():
    assert crf_region(np.array([121, 161]), 121, 161) == (121, 161)
    assert crf_region(np.array([200, 300]), 121, 161) == (121, 161)
    assert crf_region(np.array([100, 130]), 121, 161) == (100, 130)


def test_crf_needs_logits_not_probabilities():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 12, 16)).astype(np.float32) * 3
    image = rng.integers(0, 255, (3, 12, 16)).astype(np.float32)
    params = CRFParams(5, [3.0], [3.0], [20.0], [10.0], [4.0])
    shifted = dense_crf(logits - 7.0, image, params)  # logits and log-probabilities give the same result
    np.testing.assert_allclose(dense_crf(logits, image, params), shifted, atol=1e-5)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    folder = require_shared(REFERENCE / "v2_vgg16_aspp")
    out = tmp_path_factory.mktemp("model")
    result = CliRunner().invoke(convert.main, [str(folder / "net.prototxt"), str(folder / "weights.caffemodel"),
                                               "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture()
def photos(tmp_path):
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(data.astronaut()).save(folder / "astronaut.jpg")
    Image.fromarray(data.chelsea()).save(folder / "chelsea.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


@pytest.mark.parametrize("extra", [[], ["--crf", "--jobs", "2", "--save-probs"]])
def test_run_folder_with_a_corrupt_file(onnx_model, photos, tmp_path, extra):
    out = tmp_path / "out"
    result = CliRunner().invoke(run.main, ["--onnx", str(onnx_model / "model.onnx"), str(photos), "-o", str(out),
                                           *extra])
    assert result.exit_code == 1, result.output
    assert "corrupt.jpg" in result.output and "segmented 2 of 3" in result.output
    for stem, size in (("astronaut", (512, 512)), ("chelsea", (451, 300))):
        labels = Image.open(out / f"{stem}.png")
        assert labels.mode == "P" and labels.size == size
        assert np.asarray(labels).max() < 21
        overlay = Image.open(out / f"{stem}_overlay.png")  # the image, with a legend strip under it
        assert overlay.width == size[0] and size[1] < overlay.height < size[1] + 200
    if "--save-probs" in extra:
        probs = np.load(out / "chelsea_probs.npy")
        assert probs.shape == (21, 300, 451)
        np.testing.assert_allclose(probs.astype(np.float32).sum(axis=0), 1, atol=5e-3)
    assert not list(out.glob("*.part"))


def test_run_torch_backend_matches_onnx(onnx_model, photos, tmp_path):
    images = [str(photos / "chelsea.png")]
    a = CliRunner().invoke(run.main, ["--onnx", str(onnx_model / "model.onnx"), *images, "-o", str(tmp_path / "a")])
    b = CliRunner().invoke(run.main, ["--model", str(onnx_model / "model.safetensors"), *images,
                                      "-o", str(tmp_path / "b")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    la, lb = (np.asarray(Image.open(tmp_path / x / "chelsea.png")) for x in ("a", "b"))
    assert (la == lb).mean() > 0.999
    ms = CliRunner().invoke(run.main, ["--model", str(onnx_model / "model.safetensors"), *images,
                                       "-o", str(tmp_path / "c"), "--scales", "0.5,0.75,1", "--flip"])
    assert ms.exit_code == 0, ms.output
    assert Image.open(tmp_path / "c" / "chelsea.png").size == (451, 300)


def test_run_usage_errors(onnx_model, photos):
    result = CliRunner().invoke(run.main, [str(photos)])
    assert result.exit_code == 2 and "exactly one of" in result.output
    result = CliRunner().invoke(run.main, ["--onnx", str(onnx_model / "model.onnx"), str(photos), "--scales", "x"])
    assert result.exit_code == 2


def test_run_crf_device_matches_pydensecrf(onnx_model, photos, tmp_path):
    images = [str(photos / "chelsea.png")]
    model = ["--onnx", str(onnx_model / "model.onnx")]
    a = CliRunner().invoke(run.main, [*model, *images, "-o", str(tmp_path / "a"), "--crf", "--jobs", "1"])
    b = CliRunner().invoke(run.main, [*model, *images, "-o", str(tmp_path / "b"), "--crf-device", "cpu"])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    la, lb = (np.asarray(Image.open(tmp_path / x / "chelsea.png")) for x in ("a", "b"))
    assert (la == lb).mean() >= 0.995
    if not torch.cuda.is_available():
        result = CliRunner().invoke(run.main, [*model, *images, "--crf-device", "cuda"])
        assert result.exit_code == 2 and "no CUDA device" in result.output
