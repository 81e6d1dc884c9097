"""Nets with DeepLab's DenseCRF layer inside, nets that use data_dim, and nets that run at some input sizes only:
conversion, export and the runner on both backends."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from caffe2torch.artifact import load
from caffe2torch.cli import convert, run
from caffe2torch.cli import eval as eval_cli
from caffe2torch.crf import CRFParams, dense_crf
from caffe2torch.definitions import bundled_definition
from caffe2torch.images import read_image, resize_rgb
from caffe2torch.input_sizes import SideSizes, accepted_input_sizes
from caffe2torch.onnx_export import read_onnx_metadata
from caffe2torch.pipeline import read_net
from caffe2torch.runner import (
    OnnxBackend,
    TorchBackend,
    crf_image,
    crf_setting,
    data_dim_blob,
    image_logits,
    padded_size,
    postprocess,
    preprocess,
)
from caffe2torch.shapes import infer_shapes

from .conftest import net_from_text, spec_from_text, write_random_weights

DATA_LAYER = """layer { name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim"
  image_data_param { batch_size: 1 }
  transform_param { mean_value: 104.008 mean_value: 116.669 mean_value: 122.675 crop_size: 65 } }
"""
FEATURES = """layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "fc8" type: "Convolution" bottom: "pool" top: "fc8" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "fc8_interp" type: "Interp" bottom: "fc8" top: "fc8_interp" interp_param { zoom_factor: 2 } }
"""
CRF_NET = 'name: "incrf"\n' + DATA_LAYER + FEATURES + """
layer { name: "crf" type: "DenseCRF" bottom: "fc8_interp" bottom: "data_dim" bottom: "data" top: "crf_inf"
  dense_crf_param { max_iter: 5 pos_w: 3 pos_xy_std: 3 bi_w: 5 bi_xy_std: 50 bi_rgb_std: 10
                    output_probability: false } }
"""
DT_NET = 'name: "dt"\n' + DATA_LAYER + FEATURES + """
layer { name: "edge" type: "Convolution" bottom: "data" top: "edge" convolution_param { num_output: 1 kernel_size: 1 } }
layer { name: "dt" type: "DomainTransform" bottom: "fc8_interp" bottom: "edge" bottom: "data_dim" top: "dt"
  domain_transform_param { num_iter: 2 spatial_sigma: 20 range_sigma: 5000 } }
"""
FIXED_INTERP_NET = """name: "fixed_interp"
input: "data"
input_shape { dim: 1 dim: 3 dim: 41 dim: 41 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "score" type: "Convolution" bottom: "conv" top: "score"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "up" type: "Interp" bottom: "score" top: "up" interp_param { height: 41 width: 41 } }
"""
INNER_PRODUCT_NET = """name: "classifier"
input: "data"
input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 10 } }
"""
RESHAPE_NET = """name: "reshape"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "flat" type: "Reshape" bottom: "conv" top: "flat" reshape_param { shape { dim: 1 dim: 2 dim: 64 } } }
"""
# An odd-size family: a stride-2 branch zoomed back (2 * ((s - 1) // 2) + 1) must equal the full-size branch.
ODD_NET = """name: "odd"
input: "data"
input_shape { dim: 1 dim: 3 dim: 33 dim: 33 }
layer { name: "full" type: "Convolution" bottom: "data" top: "full" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "half" type: "Convolution" bottom: "data" top: "half"
        convolution_param { num_output: 2 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "half_up" type: "Interp" bottom: "half" top: "half_up" interp_param { zoom_factor: 2 } }
layer { name: "sum" type: "Eltwise" bottom: "full" bottom: "half_up" top: "sum" }
"""
ANY_NET = """name: "any"
input: "data"
input_shape { dim: 1 dim: 3 dim: 33 dim: 33 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
"""


def write_model(tmp_path, text: str, name: str = "net"):
    prototxt = tmp_path / f"{name}.prototxt"
    prototxt.write_text(text)
    caffemodel = tmp_path / f"{name}.caffemodel"
    write_random_weights(net_from_text(text), caffemodel, seed=3)
    return prototxt, caffemodel


def invoke(command, args):
    result = CliRunner().invoke(command.main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Two colour regions with noise: something for the bilateral kernel to snap to."""
    rng = np.random.default_rng(seed)
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, : width // 2] = (200, 40, 30)
    rgb[:, width // 2:] = (30, 170, 60)
    rgb[height // 3: 2 * height // 3, width // 4: 3 * width // 4] = (40, 60, 210)
    return np.clip(rgb.astype(int) + rng.integers(-25, 25, rgb.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def crf_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("incrf")
    prototxt, caffemodel = write_model(folder, CRF_NET)
    result = invoke(convert, [prototxt, caffemodel, "-o", folder / "out"])
    assert result.exit_code == 0, result.output
    images = folder / "images"
    images.mkdir()
    for index, (h, w) in enumerate([(50, 60), (40, 65), (90, 70)]):  # the last is larger than the crop
        Image.fromarray(scene(h, w, index)).save(images / f"scene_{index}.png")
    return folder, result.output


# -- which sizes a net accepts --------------------------------------------------------------------------


def test_accepted_sizes_of_a_size_free_net():
    sizes = accepted_input_sizes(spec_from_text(ANY_NET))
    assert sizes.kind == "any" and sizes.size_free and sizes.batch_free
    assert sizes.accepts(1, 1) and sizes.accepts(500, 375) and sizes.height.minimum == 1


def test_accepted_sizes_of_an_odd_size_family():
    sizes = accepted_input_sizes(spec_from_text(ODD_NET))
    assert sizes.kind == "family"
    assert (sizes.height.period, sizes.height.residues) == (2, (1,))
    assert sizes.accepts(65, 31) and not sizes.accepts(64, 31) and not sizes.accepts(65, 30)
    assert sizes.height.at_least(100) == 129  # the next 32k+1 (odd, so accepted)


def test_accepted_sizes_of_the_msc_resnet_are_32k_plus_1_to_6():
    spec = read_net(bundled_definition("deeplab-v2-resnet101-msc"), defines={"NUM_LABELS": "21", "EXP": "voc12"})
    sizes = accepted_input_sizes(spec)
    assert sizes.kind == "family" and sizes.height.period == 32
    assert sizes.height.residues == (1, 2, 3, 4, 5, 6)
    assert all(sizes.accepts(s, s) for s in (33, 513, 518, 545))
    assert not any(sizes.accepts(s, 513) for s in (512, 519, 530))
    assert "32k+1..32k+6" in sizes.describe()


@pytest.mark.parametrize("text, declared, batch_free", [
    (FIXED_INTERP_NET, (41, 41), True),  # runs anywhere, but its output stays 41x41: fixed
    (INNER_PRODUCT_NET, (16, 16), True),  # the weights fix C*H*W
    (RESHAPE_NET, (8, 8), False),  # fixed dims, batch included
])
def test_accepted_sizes_of_fixed_size_nets(text, declared, batch_free):
    sizes = accepted_input_sizes(spec_from_text(text))
    assert sizes.kind == "fixed" and not sizes.size_free
    assert sizes.declared == declared and sizes.batch_free == batch_free
    assert sizes.accepts(*declared) and not sizes.accepts(declared[0] + 32, declared[1] + 32)
    assert padded_size(500, 375, 513, sizes) == declared


def test_side_sizes_prefer_32k_plus_1():
    side = SideSizes(32, (1, 2, 3, 4, 5, 6), 33)
    assert side.at_least(10) == 33 and side.at_least(513) == 513 and side.at_least(514) == 545
    assert SideSizes(16, (0,), 16).at_least(20) == 32  # no 32k+1 in the family: the next accepted size


# -- DenseCRF inside the net -----------------------------------------------------------------------------


def test_convert_exports_up_to_the_crf_input_with_the_layers_setting(crf_model):
    folder, output = crf_model
    assert "ends at 'fc8_interp', the input of the DenseCRF layer 'crf'" in output
    model = folder / "out" / "model.onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["data"]
    assert [o.name for o in session.get_outputs()] == ["fc8_interp"]
    meta = read_onnx_metadata(model)
    assert meta["crf_preset"] is None and meta["output_name"] == "fc8_interp"
    assert meta["crf_setting"] == {
        "layer": "crf", "colours": "net-input", "output_probability": False,
        "params": {"max_iter": 5, "pos_xy_std": [3.0], "pos_w": [3.0], "bi_xy_std": [50.0], "bi_rgb_std": [10.0],
                   "bi_w": [5.0]}}
    assert meta["class_names"] == ["class_0", "class_1", "class_2"]
    assert meta["dynamic_axes"]["data"] == ["batch", "height", "width"]


def test_runner_crf_sees_what_the_layer_saw(crf_model):
    """The whole torch net, DenseCRF layer included, fed data_dim; against the runner: net up to fc8_interp,
    then the runner's CRF with the layer's setting. Same Q, bit for bit; RGB colours would differ."""
    folder, _ = crf_model
    backend = TorchBackend(folder / "out" / "model.safetensors")
    for index, (h, w) in enumerate([(50, 60), (65, 65), (31, 64)]):
        rgb = scene(h, w, index)
        batch = preprocess(rgb, backend.info)
        with torch.no_grad():
            blobs = backend.net.run({"data": torch.from_numpy(batch),
                                     "data_dim": torch.from_numpy(data_dim_blob(batch, (h, w)))})
        layer_log_q = blobs["crf_inf"][0].numpy()[:, :h, :w]
        setting = crf_setting(backend.info)
        assert setting.colours == "net-input" and setting.max_iter == 5
        ours = postprocess(image_logits(backend, rgb), rgb, setting)
        np.testing.assert_array_equal(np.log(np.maximum(ours.probabilities, np.finfo(np.float32).tiny)),
                                      layer_log_q)
        assert np.array_equal(ours.labels, layer_log_q.argmax(axis=0))
        rgb_colours = dense_crf(image_logits(backend, rgb), rgb.transpose(2, 0, 1), setting)
        assert not np.array_equal(rgb_colours, ours.probabilities)


def test_crf_colours_of_each_setting(crf_model):
    folder, _ = crf_model
    info = TorchBackend(folder / "out" / "model.safetensors").info
    rgb = scene(4, 5)
    own = crf_setting(info, None, "bi_w=7")
    assert own.colours == "net-input" and own.bi_w == [7.0] and own.bi_xy_std == [50.0]
    np.testing.assert_array_equal(crf_image(rgb, own)[0], rgb[..., 2].astype(np.float32) - np.float32(104.008))
    preset = crf_setting(info, "v2")
    assert preset.colours == "rgb" and preset.bi_xy_std == [67.0]
    assert np.array_equal(crf_image(rgb, preset), rgb.transpose(2, 0, 1))
    assert crf_image(rgb, CRFParams()).dtype == np.uint8  # plain parameters: RGB, as before
    for override in ("colours=1", "mean=0", "scale=2"):
        with pytest.raises(ValueError, match="is not NAME=VALUE"):
            crf_setting(info, None, override)


@pytest.mark.parametrize("crf", [["--crf", "--jobs", "2"], ["--no-crf"]])
def test_run_both_backends_give_the_same_labels(crf_model, tmp_path, crf):
    folder, _ = crf_model
    model = folder / "out"
    a = invoke(run, ["--onnx", model / "model.onnx", folder / "images", "-o", tmp_path / "onnx", *crf])
    b = invoke(run, ["--model", model / "model.safetensors", folder / "images", "-o", tmp_path / "torch", *crf])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert "missing" not in a.output + b.output and "segmented 3 of 3" in a.output
    if "--crf" in crf:
        assert "the net's DenseCRF layer 'crf', colours net-input" in a.output
    for index in range(3):
        la, lb = (np.asarray(Image.open(tmp_path / x / f"scene_{index}.png")) for x in ("onnx", "torch"))
        assert la.shape == read_image(folder / "images" / f"scene_{index}.png").shape[:2]
        np.testing.assert_array_equal(la, lb)
    assert json.loads((tmp_path / "onnx" / "legend.json").read_text())[2]["name"] == "class_2"


def test_eval_on_a_net_with_the_crf_inside(crf_model, tmp_path):
    folder, _ = crf_model
    root = tmp_path / "VOC"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for index in range(2):
        rgb = scene(48, 56, index)
        Image.fromarray(rgb).save(root / "JPEGImages" / f"i{index}.jpg", quality=95)
        labels = np.zeros((48, 56), np.uint8)
        labels[:, 28:] = 1
        labels[16:32, 14:42] = 2
        Image.fromarray(labels, mode="L").save(root / "SegmentationClass" / f"i{index}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("i0\ni1\n")
    results = {}
    for flag, model in (("--onnx", "model.onnx"), ("--model", "model.safetensors")):
        out = tmp_path / flag.strip("-")
        result = invoke(eval_cli, [flag, folder / "out" / model, "--voc-root", root, "--crf", "--jobs", "1",
                                   "-o", out])
        assert result.exit_code == 0, result.output
        assert "2 image(s) scored" in result.output and "missing" not in result.output
        results[flag] = json.loads((out / "results.json").read_text())
        assert list(results[flag]["scores"]["crf"]["per_class_IoU"]) == ["class_0", "class_1", "class_2"]
        assert results[flag]["settings"]["crf"]["colours"] == "net-input"
    assert results["--onnx"]["scores"]["crf"]["mIoU"] == pytest.approx(results["--model"]["scores"]["crf"]["mIoU"])


def test_crf_preset_at_convert_replaces_the_layers_setting(tmp_path):
    prototxt, caffemodel = write_model(tmp_path, CRF_NET)
    result = invoke(convert, [prototxt, caffemodel, "-o", tmp_path / "out", "--crf-preset", "v1"])
    assert result.exit_code == 0, result.output
    meta = read_onnx_metadata(tmp_path / "out" / "model.onnx")
    assert meta["crf_preset"] == "v1" and meta["crf_setting"] is None


def test_data_dim_is_fed_from_each_image(tmp_path):
    """DomainTransform reads data_dim: both backends feed each image's valid size."""
    prototxt, caffemodel = write_model(tmp_path, DT_NET)
    result = invoke(convert, [prototxt, caffemodel, "-o", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    backend = TorchBackend(tmp_path / "out" / "model.safetensors")
    assert backend.info.output_name == "dt" and backend.data_dim_inputs == ["data_dim"]
    rgb = scene(40, 50)
    batch = preprocess(rgb, backend.info)
    with torch.no_grad():
        whole = backend.net.run({"data": torch.from_numpy(batch),
                                 "data_dim": torch.tensor([[[[65.0, 65.0]]]])})["dt"][0].numpy()
    ours = image_logits(backend, rgb)
    assert not np.allclose(ours, whole[:, :40, :50])  # the valid region changes the result...
    with torch.no_grad():
        valid = backend.net.run({"data": torch.from_numpy(batch),
                                 "data_dim": torch.tensor([[[[40.0, 50.0]]]])})["dt"][0].numpy()
    np.testing.assert_array_equal(ours, valid[:, :40, :50])  # ...and the runner feeds the image's
    onnx = image_logits(OnnxBackend(tmp_path / "out" / "model.onnx"), rgb)
    np.testing.assert_allclose(onnx, ours, rtol=1e-5, atol=1e-5 * np.abs(ours).max())
    ran = invoke(run, ["--model", tmp_path / "out" / "model.safetensors", _save(tmp_path / "x.png", rgb),
                       "-o", tmp_path / "seg"])
    assert ran.exit_code == 0, ran.output


def _save(path, rgb):
    Image.fromarray(rgb).save(path)
    return path


# -- nets that run at one size only ------------------------------------------------------------------------


def test_fixed_size_interp_net_resizes_the_image_and_the_scores(tmp_path):
    prototxt, caffemodel = write_model(tmp_path, FIXED_INTERP_NET)
    result = invoke(convert, [prototxt, caffemodel, "-o", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    assert "fixed height and width 41x41" in result.output
    model = tmp_path / "out" / "model.onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[2:] == [41, 41]
    meta = read_onnx_metadata(model)
    assert meta["dynamic_axes"]["data"] == ["batch"] and meta["input_sizes"]["kind"] == "fixed"
    rgb = scene(50, 70)
    path = _save(tmp_path / "photo.png", rgb)
    outs = {}
    for flag, name in (("--onnx", "model.onnx"), ("--model", "model.safetensors")):
        out = tmp_path / flag.strip("-")
        ran = invoke(run, [flag, tmp_path / "out" / name, path, path, "-o", out])
        assert ran.exit_code == 0, ran.output
        outs[flag] = np.asarray(Image.open(out / "photo.png"))
        assert outs[flag].shape == (50, 70)
    np.testing.assert_array_equal(outs["--onnx"], outs["--model"])
    # by hand: resize to 41x41, run, resize the scores back (bilinear, half-pixel centres)
    backend = TorchBackend(tmp_path / "out" / "model.safetensors")
    small = resize_rgb(rgb, 41, 41)
    scores = backend.logits(preprocess(small, backend.info))
    back = torch.nn.functional.interpolate(torch.from_numpy(scores), size=(50, 70), mode="bilinear",
                                           align_corners=False)[0].numpy()
    np.testing.assert_array_equal(image_logits(backend, rgb), back)
    np.testing.assert_array_equal(outs["--model"], back.argmax(axis=0))


def test_inner_product_net_converts_exports_and_is_refused_once_by_the_runner(tmp_path):
    prototxt, caffemodel = write_model(tmp_path, INNER_PRODUCT_NET)
    result = invoke(convert, [prototxt, caffemodel, "-o", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    assert "fixed height and width 16x16" in result.output and "internal error" not in result.output
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    torch_net = load(tmp_path / "out" / "model.safetensors")
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = torch_net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"data": x})[0], expected, rtol=1e-5, atol=1e-5)
    paths = [_save(tmp_path / f"p{i}.png", scene(30, 40, i)) for i in range(3)]
    for flag, name in (("--onnx", "model.onnx"), ("--model", "model.safetensors")):
        ran = invoke(run, [flag, tmp_path / "out" / name, *paths, "-o", tmp_path / "seg"])
        assert ran.exit_code == 2, ran.output
        assert ran.output.count("error:") == 1 and "not a (N, C, H, W) score map" in ran.output
        assert "internal error" not in ran.output and not (tmp_path / "seg").exists()


# -- nets that end before DeepLab's Interp: scores on a stride grid of the input ---------------------------

STRIDED_NET = """name: "noup"
input: "data"
input_shape { dim: 1 dim: 3 dim: 33 dim: 33 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "fc8" type: "Convolution" bottom: "conv1" top: "fc8"
        convolution_param { num_output: 21 kernel_size: 3 pad: 1 stride: 2 } }
"""


def test_stride_grid_scores_are_upsampled_as_deeplabs_interp(tmp_path):
    # A DeepLab 'noup'/weakly-supervised deploy net ends at stride-s scores (here s = 4: 33 -> 9); its users
    # upsampled them as the test nets' Interp (zoom_factor s: aligned corners, (9 - 1)·4 + 1 = 33). Both
    # backends do that, say so once, and the labels equal the by-hand computation.
    from caffe2torch.runner.model_info import interp_stride

    assert interp_stride((33, 33), (9, 9)) == 4 and interp_stride((513, 385), (65, 49)) == 8
    assert interp_stride((33, 33), (10, 10)) is None and interp_stride((33, 17), (9, 9)) is None
    prototxt, caffemodel = write_model(tmp_path, STRIDED_NET)
    result = invoke(convert, [prototxt, caffemodel, "-o", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    rgb = scene(40, 50)  # larger than the crop (33): padded to 65x65, scores 17x17, still stride 4
    path = _save(tmp_path / "photo.png", rgb)
    labels = {}
    for flag, name in (("--onnx", "model.onnx"), ("--model", "model.safetensors")):
        ran = invoke(run, [flag, tmp_path / "out" / name, path, "-o", tmp_path / flag.strip("-")])
        assert ran.exit_code == 0, ran.output
        assert ran.output.count("stride-4 grid") == 1 and "zoom_factor 4" in ran.output, ran.output
        labels[flag] = np.asarray(Image.open(tmp_path / flag.strip("-") / "photo.png"))
    backend = TorchBackend(tmp_path / "out" / "model.safetensors")
    batch = preprocess(rgb, backend.info)
    assert batch.shape[-2:] == (65, 65)
    scores = torch.from_numpy(backend.logits(batch))
    assert scores.shape[-2:] == (17, 17)
    up = torch.nn.functional.interpolate(scores, size=(65, 65), mode="bilinear", align_corners=True)[0]
    expected = up[:, :40, :50].numpy()
    np.testing.assert_array_equal(image_logits(backend, rgb), expected)
    np.testing.assert_array_equal(labels["--model"], expected.argmax(axis=0))
    assert (labels["--onnx"] == labels["--model"]).mean() > 0.999


def test_scores_smaller_than_the_input_and_on_no_grid_are_refused_before_the_first_image(tmp_path):
    text = STRIDED_NET.replace("dim: 33 dim: 33", "dim: 34 dim: 34")  # 34 -> 9: (34 - 1) / (9 - 1) is no integer
    prototxt, caffemodel = write_model(tmp_path, text)
    result = invoke(convert, [prototxt, caffemodel, "-o", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    path = _save(tmp_path / "photo.png", scene(20, 20))
    ran = invoke(run, ["--onnx", tmp_path / "out" / "model.onnx", path, "-o", tmp_path / "run"])
    assert ran.exit_code == 2 and "no stride grid" in ran.output, ran.output
    assert not (tmp_path / "run" / "photo.png").exists()


# -- which output the runner segments with ------------------------------------------------------------------

LABEL_MAP_NET = """name: "ends_in_labels"
input: "data"
input_shape { dim: 1 dim: 3 dim: 17 dim: 17 }
layer { name: "side" type: "Pooling" bottom: "data" top: "side" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "score" type: "Convolution" bottom: "conv" top: "score"
        convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }
layer { name: "argmax" type: "ArgMax" bottom: "prob" top: "argmax" argmax_param { axis: 1 } }
"""


def test_the_runner_segments_with_the_logits_of_the_deepest_output(tmp_path):
    # An unused side blob ('side': a pooled copy of the input) is an output too, and SegNet-style files end in
    # Softmax + ArgMax (a one-channel label map): the model ends at the logits of the deepest output.
    from caffe2torch.in_net_crf import logits_behind, runner_outputs

    spec = spec_from_text(LABEL_MAP_NET)
    assert spec.outputs() == ["side", "argmax"]
    chosen = runner_outputs(spec, shapes=infer_shapes(spec).blobs)
    assert chosen.outputs == ["score", "side"]
    assert runner_outputs(spec).outputs == ["argmax", "side"]  # without shapes, nothing says 'score' is a map
    assert any("'argmax', the one computed by the most layers" in note for note in chosen.notes)
    assert any("ends at 'score', before the ArgMax 'argmax' and Softmax 'prob'" in note for note in chosen.notes)
    assert logits_behind(spec_from_text(LABEL_MAP_NET.replace("{ axis: 1 }", "{ }")), "argmax") == ("argmax", [])
    in_place = LABEL_MAP_NET.replace('bottom: "score" top: "prob"', 'bottom: "score" top: "score"').replace(
        'bottom: "prob" top: "argmax"', 'bottom: "score" top: "argmax"')
    assert logits_behind(spec_from_text(in_place), "argmax") == ("score", ["ArgMax 'argmax'"])
    prototxt, caffemodel = write_model(tmp_path, LABEL_MAP_NET)
    result = invoke(convert, [prototxt, caffemodel, "-o", tmp_path / "out"])
    assert result.exit_code == 0 and "classes: 5" in result.output, result.output
    rgb = scene(17, 17)
    ran = invoke(run, ["--onnx", tmp_path / "out" / "model.onnx", _save(tmp_path / "photo.png", rgb),
                       "-o", tmp_path / "run"])
    assert ran.exit_code == 0, ran.output
    labels = np.asarray(Image.open(tmp_path / "run" / "photo.png"))
    net = load(tmp_path / "out" / "model.safetensors")
    blobs = net.run({"data": torch.from_numpy(preprocess(rgb, TorchBackend(tmp_path / "out" /
                                                                            "model.safetensors").info))},
                    all_blobs=True)
    np.testing.assert_array_equal(labels, blobs["argmax"][0, 0].numpy().astype(np.uint8))
    assert len(np.unique(labels)) > 1


def test_a_classifiers_probabilities_stay_its_output():
    from caffe2torch.in_net_crf import runner_outputs

    text = """input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
    layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 4 } }
    layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }"""
    spec = spec_from_text(text)
    assert runner_outputs(spec, shapes=infer_shapes(spec).blobs).outputs == ["prob"]
