"""The OpenVINO backend: float32 equals onnxruntime (and Caffe's golden blobs), bf16 is labelled and keeps the
demo's labels, int8 models run, the CLI paths, and the message when OpenVINO is not installed. Without OpenVINO
these tests skip, except in CI (CI=true), which installs the [openvino] extra: there they fail."""

from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from caffe2torch.cli import convert, run, verify
from caffe2torch.cli import eval as eval_cli
from caffe2torch.demo.__main__ import main as demo_cli
from caffe2torch.demo.train import CAFFEMODEL, bundled
from caffe2torch.errors import CaffeError
from caffe2torch.images import read_image
from caffe2torch.layers import get_converter
from caffe2torch.onnx_export import export_onnx, required_layers
from caffe2torch.pipeline import convert as convert_net
from caffe2torch.pipeline import read_net, set_input_shapes, verify_onnx
from caffe2torch.runner import BACKENDS, OnnxBackend, image_logits, open_backend
from caffe2torch.verify import DEFAULT_TOLERANCE

from .conftest import REFERENCE, REPO, net_from_text, reference_cases, require_shared
from .test_model_metadata import BAD_VALUES, tampered_onnx
from .test_model_metadata import model as model  # noqa: F401, PLC0414 - the fixture, shared

SAMPLES = REPO / "caffe2torch" / "demo" / "samples"


@pytest.fixture(scope="session")
def openvino():
    """The openvino module: a missing one fails in CI (CI=true installs the [openvino] extra) and skips elsewhere."""
    try:
        import openvino as ov
    except ImportError:
        message = "openvino is not installed (pip install 'caffe2torch[openvino]'; scripts/setup.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return ov


def rel(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / max(float(np.abs(reference).max()), 1e-12))


def cpu_has_bf16() -> bool:
    from caffe2torch.runner.openvino_backend import cpu_flags

    return any(flag in cpu_flags() for flag in ("amx_bf16", "avx512_bf16"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory, openvino):
    """The bundled demo model converted by deeplab-convert, with its int8 model calibrated on the samples."""
    out = tmp_path_factory.mktemp("demo") / "converted"
    result = CliRunner().invoke(convert.main, ["--model", "deeplab-demo-synthetic", str(bundled(CAFFEMODEL)),
                                               "-o", str(out), "--int8", str(SAMPLES)])
    assert result.exit_code == 0, result.output
    return out


# -- float32 equals onnxruntime and Caffe ---------------------------------------------------------------------


@pytest.mark.parametrize("case", reference_cases())
def test_f32_equals_onnxruntime_and_caffe_on_every_golden_blob(case, tmp_path, openvino):
    from caffe2torch.runner.openvino_backend import run_onnx_outputs

    folder = require_shared(REFERENCE / case)
    inputs = dict(np.load(folder / "inputs.npz"))
    blobs = np.load(folder / "blobs.npz")
    reference = {k: blobs[k] for k in blobs.files}
    spec = set_input_shapes(read_net(folder / "net.prototxt"), {k: v.shape for k, v in inputs.items()})
    net, _ = convert_net(spec, folder / "weights.caffemodel")
    blocked = {layer.name for layer in net.spec.layers if not get_converter(layer.type).exportable}
    wanted = [b for b in net.execution_order() if b in reference and b not in net.input_names
              and not (required_layers(net, [b]) & blocked)]
    path = export_onnx(net, tmp_path / "all.onnx", wanted)
    ours = run_onnx_outputs(path, inputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = dict(zip(wanted, session.run(wanted, {i.name: inputs[i.name] for i in session.get_inputs()})))
    for blob in wanted:
        assert ours[blob].shape == theirs[blob].shape, blob
        assert rel(ours[blob], theirs[blob]) <= 1e-4, blob
        assert rel(ours[blob], reference[blob]) <= DEFAULT_TOLERANCE, blob
    assert wanted


def test_deeplab_verify_with_openvino_passes_the_pooling_golden(openvino):
    """The case where OpenVINO's ONNX reader pools otherwise than Caffe (openvino_pooling.py)."""
    folder = require_shared(REFERENCE / "pooling")
    args = [str(folder / "net.prototxt"), str(folder / "weights.caffemodel"), "--inputs", str(folder / "inputs.npz"),
            "--reference", str(folder / "blobs.npz"), "--backend", "openvino"]
    result = CliRunner().invoke(verify.main, args)
    assert result.exit_code == 0, result.output
    assert "29/29 blobs within" in result.output
    inputs = dict(np.load(folder / "inputs.npz"))
    blobs = np.load(folder / "blobs.npz")
    spec = set_input_shapes(read_net(folder / "net.prototxt"), {k: v.shape for k, v in inputs.items()})
    net, _ = convert_net(spec, folder / "weights.caffemodel")
    report = verify_onnx(net, inputs, {k: blobs[k] for k in blobs.files}, runtime="openvino")
    assert report.ok and {"p5_k3s3p1_max", "p9_k3s3p1_ave", "p7x10_rect_ave"} <= {b.name for b in report.blobs}


class Pool(torch.nn.Module):
    def __init__(self, method, kernel, stride, pad):
        super().__init__()
        self.method, self.kernel, self.stride, self.pad = method, kernel, stride, pad

    def forward(self, x):
        if self.method == "max":
            return F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=True)
        return F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=True, count_include_pad=True)


@pytest.mark.parametrize("method", ["max", "ave"])
@pytest.mark.parametrize("kernel, stride, pad", [(3, 3, 1), (3, 2, 1), (3, 1, 1), (2, 2, 0), (3, 2, 0), (5, 3, 2),
                                                 ((3, 2), (2, 3), (1, 0)), (4, 3, 1)])
def test_caffe_pooling_in_openvino_equals_torch_at_every_size(method, kernel, stride, pad, tmp_path, openvino):
    """Caffe's pooling is torch's ceil_mode pooling; OpenVINO (after openvino_pooling's rewrite) computes the same
    shapes and values at every input size of one dynamic-size model, the last window's overhang included."""
    from caffe2torch.runner.openvino_pooling import caffe_pooling

    module = Pool(method, kernel, stride, pad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 2, 17, 17),), str(tmp_path / "pool.onnx"), input_names=["x"],
                          dynamo=False, opset_version=17, dynamic_axes={"x": {2: "h", 3: "w"}})
    core = openvino.Core()
    model = core.read_model(str(tmp_path / "pool.onnx"))
    caffe_pooling(model)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    rng = np.random.default_rng(0)
    for height, width in [(5, 5), (9, 9), (10, 10), (7, 10), (17, 13), (6, 11)]:
        x = torch.from_numpy(rng.standard_normal((1, 2, height, width)).astype(np.float32))
        expected = module(x).numpy()
        ours = compiled({0: x.numpy()})[0]
        assert ours.shape == expected.shape, (height, width)
        np.testing.assert_allclose(ours, expected, atol=1e-5)


# -- the demo model: f32, bf16, int8 ---------------------------------------------------------------------------


def test_f32_equals_onnxruntime_on_the_demo_model(demo):
    ours = open_backend("openvino", demo / "model.onnx", precision="f32")
    theirs = OnnxBackend(demo / "model.onnx")
    assert ours.precision == "f32" and not ours.quantized
    assert ours.info == theirs.info
    assert "computes in f32" in ours.describe() and "opt-in" not in ours.describe()
    for path in sorted(SAMPLES.glob("*.png")):
        rgb = read_image(path)
        a, b = image_logits(ours, rgb), image_logits(theirs, rgb)
        assert rel(a, b) <= 1e-4
        np.testing.assert_array_equal(a.argmax(0), b.argmax(0))
    # multi-scale and flip go through the same call at other sizes (the model's H and W are dynamic)
    rgb = read_image(sorted(SAMPLES.glob("*.png"))[0])
    assert rel(image_logits(ours, rgb, (0.5, 0.75, 1.0), True), image_logits(theirs, rgb, (0.5, 0.75, 1.0), True)) \
        <= 1e-4


def test_bf16_is_labelled_and_keeps_the_demo_labels(demo):
    f32 = open_backend("openvino", demo / "model.onnx", precision="f32")
    for precision in ("bf16", "auto"):
        ours = open_backend("openvino", demo / "model.onnx", precision=precision)
        if not cpu_has_bf16():  # OpenVINO computes in f32 on such a CPU, and says so
            assert ours.precision == "f32" and (precision == "auto" or "asked for bf16" in ours.describe())
            continue
        assert ours.precision == "bf16"
        assert "computes in bf16" in ours.describe() and "opt-in" in ours.describe()
        agreement = []
        for path in sorted(SAMPLES.glob("*.png")):
            rgb = read_image(path)
            a, b = image_logits(ours, rgb), image_logits(f32, rgb)
            assert 1e-5 < rel(a, b) < 0.05  # really bf16, and close
            agreement.append(float((a.argmax(0) == b.argmax(0)).mean()))
        assert min(agreement) >= 0.99, agreement  # measured: 99.95-99.98%


def test_int8_model_runs_and_agrees_with_onnxruntime_int8(demo):
    """An int8 (QDQ) model: OpenVINO and onnxruntime both run the quantised convolutions in int8 but requantise at
    different places, so they agree to a few quantisation steps, not to 1e-4 (onnxruntime with and without its
    graph optimisations differs by as much: up to 1.3e-2 on the samples)."""
    ours = open_backend("openvino", demo / "model.int8.onnx", precision="f32")
    theirs = OnnxBackend(demo / "model.int8.onnx")
    f32 = OnnxBackend(demo / "model.onnx")
    assert ours.quantized and "int8" in ours.describe() and ours.precision == "f32"
    for path in sorted(SAMPLES.glob("*.png")):
        rgb = read_image(path)
        a, b = image_logits(ours, rgb), image_logits(theirs, rgb)
        assert rel(a, b) <= 5e-2  # measured up to 2.6e-2
        assert (a.argmax(0) == b.argmax(0)).mean() >= 0.995  # measured 99.95-99.99%
        assert (a.argmax(0) == image_logits(f32, rgb).argmax(0)).mean() >= 0.99


# -- the command line --------------------------------------------------------------------------------------------


def label_pngs(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("scene_?.png"))}


def test_deeplab_run_with_openvino_writes_what_onnxruntime_writes(demo, tmp_path):
    onnx_path = str(demo / "model.onnx")
    plain = CliRunner().invoke(run.main, ["--onnx", onnx_path, str(SAMPLES), "-o", str(tmp_path / "ort")])
    assert plain.exit_code == 0, plain.output
    assert "note:" not in plain.output  # the default says nothing more than before
    result = CliRunner().invoke(run.main, ["--onnx", onnx_path, str(SAMPLES), "--backend", "openvino",
                                           "--threads", "1", "-o", str(tmp_path / "ov")])
    assert result.exit_code == 0, result.output
    assert "note: OpenVINO" in result.output and "computes in f32" in result.output
    expected, ours = label_pngs(tmp_path / "ort"), label_pngs(tmp_path / "ov")
    assert len(expected) == 4 and expected.keys() == ours.keys()
    for name in expected:
        np.testing.assert_array_equal(ours[name], expected[name])
    bf16 = CliRunner().invoke(run.main, ["--onnx", onnx_path, str(SAMPLES), "--backend", "openvino",
                                         "--precision", "bf16", "-o", str(tmp_path / "bf16")])
    assert bf16.exit_code == 0, bf16.output
    assert ("computes in bf16" if cpu_has_bf16() else "asked for bf16") in bf16.output


@pytest.mark.parametrize("args, message", [
    (["--backend", "torch", "--onnx", "m.onnx"], "--backend torch runs a caffe2torch artifact"),
    (["--backend", "openvino", "--model", "m.safetensors"], "--backend openvino runs an ONNX model"),
    (["--backend", "onnxruntime", "--model", "m.safetensors"], "--backend onnxruntime runs an ONNX model"),
])
def test_backend_and_model_options_must_match(args, message, tmp_path):
    result = CliRunner().invoke(run.main, [*args, str(tmp_path), "-o", str(tmp_path / "s")])
    assert result.exit_code == 2 and message in result.output, result.output


def test_bf16_is_refused_by_the_float32_backends(model, tmp_path):
    result = CliRunner().invoke(run.main, ["--onnx", str(model / "out" / "model.onnx"), str(model / "photo.png"),
                                           "--precision", "bf16", "-o", str(tmp_path / "s")])
    assert result.exit_code == 2, result.output
    assert "--precision bf16 needs a backend that computes in bfloat16 (openvino)" in result.output
    auto = CliRunner().invoke(run.main, ["--model", str(model / "out" / "model.safetensors"),
                                         str(model / "photo.png"), "--precision", "auto", "-o", str(tmp_path / "t")])
    assert auto.exit_code == 0 and "torch" in auto.output and "float32" in auto.output, auto.output


def test_deeplab_eval_with_openvino_records_backend_and_precision(demo, tmp_path):
    voc = tmp_path / "voc"
    assert CliRunner().invoke(demo_cli, ["heldout", str(voc), "--count", "3"]).exit_code == 0
    common = ["--onnx", str(demo / "model.onnx"), "--voc-root", str(voc), "-o", str(tmp_path / "r")]
    result = CliRunner().invoke(eval_cli.main, [*common, "--backend", "openvino"])
    assert result.exit_code == 0, result.output
    assert "3 image(s) scored" in result.output
    settings = json.loads((tmp_path / "r" / "run.json").read_text())
    assert settings["backend"] == "openvino" and settings["precision"] == "f32"
    baseline = CliRunner().invoke(eval_cli.main, [*common[:-1], str(tmp_path / "ort")])
    assert baseline.exit_code == 0
    ours = json.loads((tmp_path / "r" / "results.json").read_text())
    theirs = json.loads((tmp_path / "ort" / "results.json").read_text())
    assert "backend" not in json.loads((tmp_path / "ort" / "run.json").read_text())  # old folders still resume
    assert ours["scores"] == theirs["scores"]
    other = CliRunner().invoke(eval_cli.main, [*common, "--backend", "openvino", "--precision", "bf16"])
    if cpu_has_bf16():  # a results folder made in f32 is not resumed in bf16
        assert other.exit_code == 2 and "precision" in other.output, other.output


@pytest.mark.parametrize("key, value, message", BAD_VALUES)
def test_tampered_metadata_is_refused_by_openvino_as_by_onnxruntime(model, tmp_path, key, value, message, openvino):
    """The metadata OpenVINO reads (its rt_info copy of the file's metadata_props) goes through the same checks."""
    path = tampered_onnx(model, tmp_path, key, value)
    result = CliRunner().invoke(run.main, ["--onnx", str(path), str(model / "photo.png"), "--backend", "openvino",
                                           "-o", str(tmp_path / "seg")])
    assert result.exit_code == 2, result.output
    assert result.output.count("error:") == 1 and message in result.output and f"'{key}'" in result.output
    assert not (tmp_path / "seg").exists()


# -- what OpenVINO cannot do, and when it is missing ---------------------------------------------------------------


DT_NET = """input: "x" input_shape { dim: 1 dim: 3 dim: 9 dim: 11 }
input: "edges" input_shape { dim: 1 dim: 1 dim: 9 dim: 11 }
layer { name: "dtf" type: "DomainTransformForwardOnly" bottom: "x" bottom: "edges" top: "dtf"
        domain_transform_param { num_iter: 1 spatial_sigma: 12 range_sigma: 3 } }
"""


def test_a_model_openvino_cannot_read_is_one_clear_error_or_equals_onnxruntime(tmp_path, openvino):
    """DomainTransform exports onnx::Loop collecting a sequence, which OpenVINO 2026.4 cannot read: one error
    naming the ops and the way out. A later OpenVINO that reads it must compute what onnxruntime does."""
    from caffe2torch.runner.openvino_backend import run_onnx_outputs

    path = export_onnx(net_from_text(DT_NET), tmp_path / "dt.onnx", ["dtf"])
    rng = np.random.default_rng(1)
    inputs = {"x": rng.standard_normal((1, 3, 9, 11)).astype(np.float32),
              "edges": rng.uniform(0, 1, (1, 1, 9, 11)).astype(np.float32)}
    try:
        ours = run_onnx_outputs(path, inputs)
    except CaffeError as exc:
        assert "OpenVINO cannot" in str(exc) and "Loop" in str(exc) and "--backend onnxruntime" in str(exc)
        assert str(path) in str(exc)
        return
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert rel(ours["dtf"], session.run(["dtf"], inputs)[0]) <= 1e-4


def test_missing_openvino_says_how_to_install_it(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    result = CliRunner().invoke(run.main, ["--onnx", str(model / "out" / "model.onnx"), str(model / "photo.png"),
                                           "--backend", "openvino", "-o", str(tmp_path / "s")])
    assert result.exit_code == 2, result.output
    assert "error: --backend openvino needs OpenVINO, which is not installed" in result.output
    assert "pip install 'caffe2torch[openvino]'" in result.output
    assert not (tmp_path / "s").exists()
    voc = tmp_path / "voc"
    assert CliRunner().invoke(demo_cli, ["heldout", str(voc), "--count", "1"]).exit_code == 0
    scored = CliRunner().invoke(eval_cli.main, ["--onnx", str(model / "out" / "model.onnx"), "--backend", "openvino",
                                                "--voc-root", str(voc), "-o", str(tmp_path / "r")])
    assert scored.exit_code == 2, scored.output
    assert "pip install 'caffe2torch[openvino]'" in scored.output


def test_backend_registry_names_every_backend():
    assert set(BACKENDS) == {"onnxruntime", "openvino", "torch"}
    with pytest.raises(CaffeError, match="unknown backend 'tensorrt'"):
        open_backend("tensorrt", "m.onnx")
    assert all(hasattr(b, "logits") and hasattr(b, "describe") and b.model_kind in ("onnx", "artifact")
               for b in BACKENDS.values())


def test_rewritten_model_file_is_not_touched(demo, tmp_path):
    """Opening a model never writes (the pooling rewrite happens in memory)."""
    before = (demo / "model.onnx").read_bytes()
    open_backend("openvino", demo / "model.onnx")
    assert (demo / "model.onnx").read_bytes() == before


def test_bf16_note_says_where_it_keeps_fewer_than_99_percent(model, tmp_path, openvino):
    """A known model whose bf16 labels were measured below 99% agreement gets told so with the precision."""
    path = tampered_onnx(model, tmp_path, "model_id", '"deeplab-v2-resnet101-msc"')
    backend = open_backend("openvino", path, precision="bf16")
    if backend.precision != "bf16":
        pytest.skip("this CPU computes no bf16")
    assert "98.59% agree for deeplab-v2-resnet101-msc" in backend.describe()
    assert "--precision f32 is recommended for this model" in backend.describe()
    plain = open_backend("openvino", model / "out" / "model.onnx", precision="bf16")
    assert "opt-in" in plain.describe() and "recommended for this model" not in plain.describe()
