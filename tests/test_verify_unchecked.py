"""deeplab-verify --backend onnx says which reference blobs it could not check and why (issue 13): a DenseCRF
layer's output (no ONNX lowering) and what is computed from it, and, with --onnx MODEL, blobs that model does
not output; in the text report and in the JSON. They do not change the exit status."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from caffe2torch.cli import verify as verify_cli
from caffe2torch.pipeline import verify_onnx, verify_torch

from .conftest import net_from_text, run_net, write_random_weights

NET = """name: "crf_net"
input: "data" input_shape { dim: 1 dim: 3 dim: 12 dim: 16 }
input: "dim" input_shape { dim: 1 dim: 1 dim: 1 dim: 2 }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layer { name: "crf" type: "DenseCRF" bottom: "score" bottom: "dim" bottom: "data" top: "crf"
        dense_crf_param { max_iter: 2 pos_w: 3 pos_xy_std: 3 bi_w: 4 bi_xy_std: 20 bi_rgb_std: 5 } }
layer { name: "after" type: "Power" bottom: "crf" top: "after" power_param { scale: 2 } }
"""


def case(tmp_path):
    net = net_from_text(NET)
    (tmp_path / "net.prototxt").write_text(NET)
    write_random_weights(net, tmp_path / "net.caffemodel")
    rng = np.random.default_rng(0)
    inputs = {"data": rng.uniform(0, 255, (1, 3, 12, 16)).astype(np.float32),
              "dim": np.array([12, 16], np.float32).reshape(1, 1, 1, 2)}
    np.savez(tmp_path / "inputs.npz", **inputs)
    from caffe2torch.pipeline import convert

    net, _ = convert(tmp_path / "net.prototxt", tmp_path / "net.caffemodel")
    blobs = run_net(net, **inputs)
    np.savez(tmp_path / "blobs.npz", **blobs)
    return net, inputs, blobs


def test_the_report_names_each_unchecked_blob_with_why(tmp_path):
    net, inputs, blobs = case(tmp_path)
    report = verify_onnx(net, inputs, blobs)
    assert report.ok and {b.name for b in report.blobs} == {"data", "dim", "score"}
    reasons = {u.name: u.reason for u in report.unchecked}
    assert list(reasons) == ["crf", "after"]  # execution order
    assert reasons["crf"].startswith("DenseCRF layer 'crf' has no ONNX lowering: it runs in torch")
    assert "runner's CRF" in reasons["crf"]
    assert reasons["after"].startswith("computed from DenseCRF layer 'crf', which has no ONNX lowering")
    assert verify_torch(net, inputs, blobs).unchecked == []  # torch checks them all


def test_text_and_json_say_what_was_not_checked_and_the_exit_status_stays_0(tmp_path):
    case(tmp_path)
    args = [str(tmp_path / "net.prototxt"), str(tmp_path / "net.caffemodel"), "--inputs", str(tmp_path / "inputs.npz"),
            "--reference", str(tmp_path / "blobs.npz"), "--backend", "onnx", "--json", str(tmp_path / "r.json")]
    result = CliRunner().invoke(verify_cli.main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == ("3/3 blobs within 0.0001 of the reference's max magnitude; 2 not checked in onnxruntime "
                         "(crf, after; see above)")
    assert "not checked in onnxruntime: 2 reference blob(s)" in result.output
    assert any(line.split()[:2] == ["crf", "DenseCRF"] for line in lines)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["backend"] == "onnx" and [u["name"] for u in data["unchecked"]] == ["crf", "after"]
    assert "no ONNX lowering" in data["unchecked"][0]["reason"]


def test_with_a_given_onnx_model_the_blobs_it_does_not_output_are_listed(tmp_path):
    net, inputs, blobs = case(tmp_path)
    from caffe2torch.onnx_export import export_onnx

    export_onnx(net, tmp_path / "score.onnx", ["score"])
    report = verify_onnx(net, inputs, {**blobs, "stranger": np.zeros(2, np.float32)}, onnx_path=tmp_path / "score.onnx")
    reasons = {u.name: u.reason for u in report.unchecked}
    assert reasons["crf"].startswith("not an output of score.onnx")
    assert reasons["stranger"] == "not a blob of the converted net"
    assert report.ok and {b.name for b in report.blobs} == {"data", "dim", "score"}
