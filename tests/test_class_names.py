"""Class names: from the manifest for known models (the demo's own five), from --classes, VOC only for 21
channels, class_i otherwise; eval reports and run legends list the net's own classes only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from caffe2torch.class_names import check_class_names, default_class_names
from caffe2torch.cli import convert, run
from caffe2torch.cli import eval as eval_cli
from caffe2torch.demo.synthetic import CLASS_NAMES
from caffe2torch.demo.train import CAFFEMODEL, bundled
from caffe2torch.images import VOC_CLASSES
from caffe2torch.known_models import known_models
from caffe2torch.onnx_export import read_onnx_metadata

from .conftest import net_from_text, write_random_weights


def net_text(channels: int) -> str:
    return f"""name: "c{channels}"
input: "data"
input_shape {{ dim: 1 dim: 3 dim: 17 dim: 17 }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 stride: 2 }} }}
layer {{ name: "score" type: "Convolution" bottom: "conv" top: "score"
        convolution_param {{ num_output: {channels} kernel_size: 1 }} }}
layer {{ name: "up" type: "Interp" bottom: "score" top: "up" interp_param {{ zoom_factor: 2 }} }}
"""


def invoke(command, args):
    result = CliRunner().invoke(command.main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def model_files(tmp_path, channels: int):
    prototxt = tmp_path / f"c{channels}.prototxt"
    prototxt.write_text(net_text(channels))
    caffemodel = tmp_path / f"c{channels}.caffemodel"
    write_random_weights(net_from_text(net_text(channels)), caffemodel)
    return prototxt, caffemodel


def test_manifest_names_each_known_models_classes():
    models = known_models()
    assert models["deeplab-demo-synthetic"].class_names == CLASS_NAMES
    assert all(m.class_names == VOC_CLASSES for k, m in models.items() if k != "deeplab-demo-synthetic")


def test_the_demo_is_labelled_with_its_own_classes(tmp_path):
    result = invoke(convert, ["--model", "deeplab-demo-synthetic", bundled(CAFFEMODEL), "-o", tmp_path])
    assert result.exit_code == 0, result.output
    assert "classes: 5 (background, disc, box, triangle, ring)" in result.output
    assert read_onnx_metadata(tmp_path / "model.onnx")["class_names"] == CLASS_NAMES


@pytest.mark.parametrize("channels, expected", [(21, VOC_CLASSES), (2, ["class_0", "class_1"])])
def test_default_names_by_channel_count(tmp_path, channels, expected):
    prototxt, caffemodel = model_files(tmp_path, channels)
    result = invoke(convert, [prototxt, caffemodel, "-o", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    assert read_onnx_metadata(tmp_path / "out" / "model.onnx")["class_names"] == expected
    assert default_class_names(channels) == expected


def test_classes_option_file_and_list(tmp_path):
    prototxt, caffemodel = model_files(tmp_path, 3)
    listed = invoke(convert, [prototxt, caffemodel, "-o", tmp_path / "a", "--classes", "sky, road ,car"])
    assert listed.exit_code == 0, listed.output
    assert read_onnx_metadata(tmp_path / "a" / "model.onnx")["class_names"] == ["sky", "road", "car"]
    names = tmp_path / "names.txt"
    names.write_text("background\n\nperson\nbicycle\n")
    filed = invoke(convert, [prototxt, caffemodel, "-o", tmp_path / "b", "--classes", names, "--no-onnx"])
    assert filed.exit_code == 0, filed.output
    from caffe2torch.runner import TorchBackend

    assert TorchBackend(tmp_path / "b" / "model.safetensors").info.class_names == ["background", "person", "bicycle"]


@pytest.mark.parametrize("value, message", [
    ("a,b", "2 names for a net with 3 output channels"),
    ("a,b,a", "names repeated: a"),
    ("a,,b", "empty name"),
    ("nonexistent.txt", "neither a file nor a comma-separated list"),
])
def test_classes_option_is_checked_before_anything_is_written(tmp_path, value, message):
    prototxt, caffemodel = model_files(tmp_path, 3)
    result = invoke(convert, [prototxt, caffemodel, "-o", tmp_path / "out", "--classes", value])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_check_class_names_limits():
    assert len(check_class_names([f"c{i}" for i in range(1000)], 1000)) == 1000  # an ImageNet classifier
    with pytest.raises(ValueError, match="at most 65536"):
        check_class_names([f"c{i}" for i in range(70000)])
    with pytest.raises(ValueError, match="longer than 64"):
        check_class_names(["x" * 65])
    with pytest.raises(ValueError, match="control characters"):
        check_class_names(["a\x1b[2Jb"])
    with pytest.raises(ValueError, match="not a string"):
        check_class_names([3])


def test_eval_report_and_run_legend_list_only_the_nets_classes(tmp_path):
    prototxt, caffemodel = model_files(tmp_path, 3)
    result = invoke(convert, [prototxt, caffemodel, "-o", tmp_path / "model", "--classes", "ground,tree,sky"])
    assert result.exit_code == 0, result.output
    root = tmp_path / "VOC"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"i{index}.jpg")
        labels = np.zeros((20, 24), np.uint8)
        labels[10:, :] = 2
        labels[0, :] = 255
        Image.fromarray(labels, mode="L").save(root / "SegmentationClass" / f"i{index}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("i0\ni1\n")
    scored = invoke(eval_cli, ["--onnx", tmp_path / "model" / "model.onnx", "--voc-root", root, "-o", tmp_path / "r"])
    assert scored.exit_code == 0, scored.output
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert list(results["scores"]["no_crf"]["per_class_IoU"]) == ["ground", "tree", "sky"]
    report = (tmp_path / "r" / "report.md").read_text()
    assert "| sky |" in report and "aeroplane" not in report
    ran = invoke(run, ["--onnx", tmp_path / "model" / "model.onnx", root / "JPEGImages", "-o", tmp_path / "seg"])
    assert ran.exit_code == 0, ran.output
    legend = json.loads((tmp_path / "seg" / "legend.json").read_text())
    assert [entry["name"] for entry in legend] == ["ground", "tree", "sky"]
    assert legend[1]["rgb"] == [128, 0, 0]
