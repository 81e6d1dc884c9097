"""The commands as users run them: real files, bad files, exit codes and messages, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from caffe2torch import artifact
from caffe2torch.cli import convert, info, verify

from .conftest import CORPUS, REFERENCE, net_from_text, require_shared, write_net_files, write_random_weights

NET = """name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 17 dim: 17 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 2 dilation: 2 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "score" type: "Convolution" bottom: "pool" top: "score"
        convolution_param { num_output: 21 kernel_size: 1 } }
layer { name: "up" type: "Interp" bottom: "score" top: "up" interp_param { zoom_factor: 2 } }
"""


def invoke(command, args):
    result = CliRunner().invoke(command.main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture()
def tiny(tmp_path):
    return write_net_files(tmp_path, NET)


def test_info_text_and_json(tiny):
    prototxt, caffemodel = tiny
    result = invoke(info, [prototxt, caffemodel])
    assert result.exit_code == 0, result.output
    assert "DeepLab v2" in result.output and "1x21x17x17" in result.output and "matches the net" in result.output
    data = json.loads(invoke(info, [prototxt, caffemodel, "--json"]).output)
    assert data["outputs"] == ["up"] and data["caffemodel"]["ok"]
    assert [layer["top_shapes"][0] for layer in data["layers"]][-1] == [1, 21, 17, 17]
    assert data["layers"][0]["receptive_field"] == 5  # 3x3 with dilation 2


def test_info_on_corpus_with_define():
    prototxt = require_shared(CORPUS / "c_v2_tpami/DeepLabv2-VGG16-ASPP-L/test.prototxt")
    result = invoke(info, [prototxt, "--define", "NUM_LABELS=21", "--input-shape", "data=1,3,321,321"])
    assert result.exit_code == 0, result.output
    assert "fc8_interp 1x21x321x321" in result.output and "DeepLab v2" in result.output


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("dilation: 2", "dilation: two"), "tiny.prototxt:5:"),
        (lambda t: t + 'layer { name: "x" type: "Mystery" bottom: "up" top: "x" }\n', "unknown or unsupported"),
        (lambda t: t.replace('bottom: "pool"', 'bottom: "nothing"'), "produced by no layer"),
        (lambda t: t.replace('bottom: "conv" top: "pool"', 'bottom: "up" top: "pool"'), "only by a later layer"),
        (lambda t: t.replace("num_output: 21", "num_output: ${N}"), "${N}"),
        (lambda t: t[:200], "tiny.prototxt"),
    ],
)
def test_info_bad_prototxt(tmp_path, edit, message):
    prototxt = tmp_path / "tiny.prototxt"
    prototxt.write_text(edit(NET))
    result = invoke(info, [prototxt])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_info_caffemodel_problems(tiny, tmp_path):
    prototxt, caffemodel = tiny
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(caffemodel.read_bytes()[:-7])
    result = invoke(info, [prototxt, cut])
    assert result.exit_code == 2 and "truncated or corrupt" in result.output
    other = tmp_path / "other.prototxt"
    other.write_text(NET.replace("num_output: 4", "num_output: 5"))
    result = invoke(info, [other, caffemodel])
    assert result.exit_code == 1 and "DOES NOT match" in result.output and "conv" in result.output


def test_convert_writes_a_loadable_artifact(tiny, tmp_path):
    prototxt, caffemodel = tiny
    out = tmp_path / "out"
    result = invoke(convert, [prototxt, caffemodel, "-o", out])
    assert result.exit_code == 0, result.output
    net = artifact.load(out / "model.safetensors")
    assert not list(out.glob("*.part"))
    x = np.random.default_rng(0).standard_normal((1, 3, 17, 17)).astype(np.float32)
    import torch

    from caffe2torch.pipeline import convert as convert_net
    direct, _ = convert_net(prototxt, caffemodel)
    with torch.no_grad():
        np.testing.assert_array_equal(net(torch.from_numpy(x)).numpy(), direct(torch.from_numpy(x)).numpy())


def test_artifact_rejects_other_files(tmp_path):
    junk = tmp_path / "x.safetensors"
    junk.write_bytes(b"not safetensors")
    with pytest.raises(artifact.ArtifactError):
        artifact.load(junk)


def test_verify_passes_on_golden_and_names_first_divergent_blob(tmp_path):
    folder = require_shared(REFERENCE / "v2_vgg16_aspp")
    args = [folder / "net.prototxt", folder / "weights.caffemodel", "--inputs", folder / "inputs.npz",
            "--reference", folder / "blobs.npz", "--json", tmp_path / "ok.json"]
    result = invoke(verify, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ok.json").read_text())
    assert report["ok"] and report["first_divergent"] is None
    assert {"name", "shape", "max_abs_err", "rel_err", "ok"} <= set(report["blobs"][0])
    blobs = dict(np.load(folder / "blobs.npz"))
    blobs["conv3_2"] = blobs["conv3_2"] + 1.0
    np.savez(tmp_path / "bad.npz", **blobs)
    args[5], args[7] = tmp_path / "bad.npz", tmp_path / "bad.json"
    result = invoke(verify, args)
    assert result.exit_code == 1
    assert json.loads((tmp_path / "bad.json").read_text())["first_divergent"] == "conv3_2"


def test_console_scripts_are_installed():
    for name in ("deeplab-info", "deeplab-convert", "deeplab-verify", "deeplab-run", "deeplab-eval"):
        result = subprocess.run([sys.executable, "-m", f"caffe2torch.cli.{name.split('-')[1]}", "--help"],
                                capture_output=True, text=True)
        assert result.returncode == 0 and "Usage" in result.stdout


def test_verify_a_given_onnx_model(tmp_path):
    folder = require_shared(REFERENCE / "v1_largefov")
    out = tmp_path / "conv"
    assert invoke(convert, [folder / "net.prototxt", folder / "weights.caffemodel", "-o", out]).exit_code == 0
    result = invoke(verify, [folder / "net.prototxt", folder / "weights.caffemodel", "--inputs",
                             folder / "inputs.npz", "--reference", folder / "blobs.npz", "--onnx", out / "model.onnx"])
    assert result.exit_code == 0, result.output
    assert "fc8_interp" in result.output and "2/2 blobs" in result.output  # the input and the ONNX output


def test_placeholder_in_layer_names_gets_a_hint(tmp_path):
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(NET.replace('name: "score" type: "Convolution" bottom: "pool" top: "score"',
                                    'name: "fc8_${EXP}" type: "Convolution" bottom: "pool" top: "score"'))
    caffemodel = tmp_path / "net.caffemodel"
    write_random_weights(net_from_text(NET.replace('"score" type: "Convolution"', '"fc8_voc12" type: "Convolution"')),
                         caffemodel)
    result = invoke(convert, [prototxt, caffemodel, "-o", tmp_path / "out"])
    assert result.exit_code == 2 and "--define EXP=voc12" in result.output
    fixed = invoke(convert, [prototxt, caffemodel, "-o", tmp_path / "out", "--define", "EXP=voc12", "--no-onnx"])
    assert fixed.exit_code == 0, fixed.output
