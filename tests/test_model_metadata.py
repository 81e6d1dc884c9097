"""A model's metadata is untrusted input: every value the runner reads is checked when the model is opened, with
one error naming the file and the key, before the first image (a tampered crop_size once asked for 112 GiB)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from caffe2torch.cli import convert, run
from caffe2torch.cli import eval as eval_cli
from caffe2torch.errors import ArtifactError
from caffe2torch.model_metadata import checked_runner_metadata
from caffe2torch.onnx_export import METADATA_PREFIX

from .conftest import net_from_text, write_random_weights

NET = """name: "small"
input: "data"
input_shape { dim: 1 dim: 3 dim: 17 dim: 17 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "score" type: "Convolution" bottom: "conv" top: "score"
        convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "up" type: "Interp" bottom: "score" top: "up" interp_param { zoom_factor: 2 } }
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("meta")
    (folder / "net.prototxt").write_text(NET)
    write_random_weights(net_from_text(NET), folder / "net.caffemodel")
    result = CliRunner().invoke(convert.main, [str(folder / "net.prototxt"), str(folder / "net.caffemodel"),
                                               "-o", str(folder / "out")])
    assert result.exit_code == 0, result.output
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(folder / "photo.png")
    return folder


def tampered_onnx(model, tmp_path, key: str, value: str):
    proto = onnx.load(str(model / "out" / "model.onnx"))
    entries = {e.key: e for e in proto.metadata_props}
    entry = entries.get(METADATA_PREFIX + key)
    if entry is None:
        entry = proto.metadata_props.add()
        entry.key = METADATA_PREFIX + key
    entry.value = value
    path = tmp_path / "tampered.onnx"
    onnx.save(proto, str(path))
    return path


def tampered_artifact(model, tmp_path, key: str, value: object):
    source = model / "out" / "model.safetensors"
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    runner = json.loads(metadata["runner"])
    runner[key] = value
    metadata["runner"] = json.dumps(runner)
    path = tmp_path / "tampered.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


BAD_VALUES = [
    ("crop_size", "1000000", "not an integer 1..8192"),
    ("crop_size", "-5", "not an integer 1..8192"),
    ("crop_size", "true", "not an integer"),
    ("class_names", json.dumps(["a", "b"]), "2 names for an output with 3 channels"),
    ("class_names", json.dumps(["x"] * 70000), "at most 65536"),
    ("class_names", json.dumps(["a", "b" * 500, "c"]), "longer than 64"),
    ("class_names", '"background"', "non-empty list"),
    ("mean_values", json.dumps([1, 2]), "1 or 3 numbers"),
    ("mean_values", "[NaN, 0, 0]", "not a finite number"),
    ("scale", "0", "not in (0, 1e6]"),
    ("scale", "Infinity", "not a finite number"),
    ("channel_order", '"GBR"', "not BGR or RGB"),
    ("crf_preset", '"nonsense"', "unknown CRF preset"),
    ("crf_setting", json.dumps({"layer": "crf", "colours": "net-input",
                                "params": {"max_iter": 10 ** 9}}), "max_iter"),
    ("crf_setting", json.dumps({"layer": "crf", "colours": "net-input",
                                "params": {"bi_xy_std": [0.0], "bi_rgb_std": [1.0], "bi_w": [1.0]}}), "> 0"),
    ("crf_setting", json.dumps({"layer": "crf", "colours": "hsv", "params": {}}), "colours"),
    ("input_sizes", json.dumps({"kind": "fixed", "declared": [100000, 3]}), "declared"),
    ("input_sizes", json.dumps({"kind": "any", "declared": [17, 17]}), "height"),
    ("output_name", '"nope"', "not an output of the model"),
    ("input_name", '"nope"', "not an input of the model"),
    # A JSON value nested 100,000 deep used to escape as a RecursionError ("internal error").
    ("mean_values", "[" * 100_000 + "]" * 100_000, "1 or 3 numbers"),
    ("data_dim_inputs", '["nope"]', "'nope' is not an input of the model"),
    ("data_dim_inputs", '["data"]', "'data' is the image input"),
]


@pytest.mark.parametrize("key, value, message", BAD_VALUES)
def test_tampered_onnx_metadata_is_one_error_before_the_first_image(model, tmp_path, key, value, message):
    path = tampered_onnx(model, tmp_path, key, value)
    photos = [str(model / "photo.png")] * 3
    result = CliRunner().invoke(run.main, ["--onnx", str(path), *photos, "-o", str(tmp_path / "seg")])
    assert result.exit_code == 2, result.output
    assert result.output.count("error:") == 1 and message in result.output
    assert str(path) in result.output and f"'{key}'" in result.output
    assert not (tmp_path / "seg").exists()


@pytest.mark.parametrize("key, value, message", [
    ("crop_size", 10 ** 6, "not an integer 1..8192"),
    ("class_names", ["only-one"], "1 names for an output with 3 channels"),
    ("scale", -1, "not in (0, 1e6]"),
    ("output_name", "conv", "4 channels"),
])
def test_tampered_artifact_metadata_is_refused_by_run_and_eval(model, tmp_path, key, value, message):
    path = tampered_artifact(model, tmp_path, key, value)
    result = CliRunner().invoke(run.main, ["--model", str(path), str(model / "photo.png"), "-o", str(tmp_path / "s")])
    assert result.exit_code == 2 and message in result.output and str(path) in result.output, result.output
    voc = tmp_path / "voc"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    Image.open(model / "photo.png").save(voc / "JPEGImages" / "a.jpg")
    Image.fromarray(np.zeros((20, 30), np.uint8), mode="L").save(voc / "SegmentationClass" / "a.png")
    (voc / "ImageSets/Segmentation/val.txt").write_text("a\n")
    scored = CliRunner().invoke(eval_cli.main, ["--model", str(path), "--voc-root", str(voc),
                                                "-o", str(tmp_path / "r")])
    assert scored.exit_code == 2 and message in scored.output, scored.output


def test_untampered_models_open_and_old_metadata_keys_are_optional(model, tmp_path):
    result = CliRunner().invoke(run.main, ["--onnx", str(model / "out" / "model.onnx"), str(model / "photo.png"),
                                           "-o", str(tmp_path / "seg")])
    assert result.exit_code == 0, result.output
    assert checked_runner_metadata({"converter": "x", "source_prototxt": "y"}, "m.onnx") == {}
    checked = checked_runner_metadata({"mean_values": [104.0], "crop_size": None}, "m.onnx")
    assert checked == {"mean_values": [104.0, 104.0, 104.0], "crop_size": None}
    with pytest.raises(ArtifactError, match="m.onnx: bad model metadata 'palette'"):
        checked_runner_metadata({"palette": "rainbow"}, "m.onnx")


def rewritten_artifact(model, tmp_path, edit):
    source = model / "out" / "model.safetensors"
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    edit(metadata)
    path = tmp_path / "edited.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_artifacts_without_runner_metadata_are_worked_out_from_the_net_and_checked(model, tmp_path):
    from caffe2torch.runner import TorchBackend

    old = rewritten_artifact(model, tmp_path, lambda m: m.pop("runner"))
    info = TorchBackend(old).info
    assert info.class_names == ["class_0", "class_1", "class_2"] and info.output_name == "up"
    assert info.sizes is not None and info.sizes.kind == "any"

    def huge_crop(metadata):
        metadata.pop("runner")
        spec = json.loads(metadata["netspec"])
        spec["inputs"][0]["transform"] = {"crop_size": 10 ** 6, "mean_value": [1.0, 2.0, 3.0]}
        metadata["netspec"] = json.dumps(spec)

    tampered = rewritten_artifact(model, tmp_path, huge_crop)
    with pytest.raises(ArtifactError, match="bad model metadata 'crop_size'"):
        TorchBackend(tampered)
    bad_preset = rewritten_artifact(model, tmp_path, lambda m: (m.pop("runner"), m.update(crf_preset="x")))
    with pytest.raises(ArtifactError, match="'crf_preset'.*unknown CRF preset"):
        TorchBackend(bad_preset)
