"""The dense CRF never reaches native code with values it cannot take (issue 12, item 1).

pydensecrf segfaults or corrupts its heap on NaN or vanishing standard deviations, NaN or huge colours; and,
long before it crashes, its 16-bit lattice keys wrap and the result is silently wrong. crf.py checks settings
(`CRFParams.validate`) and inputs (`check_crf_inputs`) in one place, used by the DenseCRF layer, deeplab-run and
deeplab-eval. Cases that used to crash run in a subprocess, so that a regression fails a test instead of
killing the test run.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from caffe2torch.crf import (
    MAX_ITERATIONS,
    CRFInputError,
    CRFParams,
    check_crf_inputs,
    crf_preset,
    elevation_matrix,
    lattice_extent,
    lattice_limit,
    parse_crf_overrides,
)
from caffe2torch.errors import UnsupportedError
from caffe2torch.shapes import check_supported

from .conftest import REPO, spec_from_text


def test_pydensecrf_lattice_keys_wrap_beyond_16_bits():
    """Why the limit is 16 bits and not the crash point: two pixels 56,756 standard deviations apart (one
    lattice period of 65,536 along the single elevated axis of a 1-D feature) are coupled by pydensecrf as if
    they were the same point; a few standard deviations apart, correctly, they are not."""
    import pydensecrf.densecrf as dcrf

    def second_pixel_q(distance: float) -> np.ndarray:
        crf = dcrf.DenseCRF(2, 2)
        crf.setUnaryEnergy(np.ascontiguousarray(-np.array([[10.0, 0.0], [0.0, 0.0]], np.float32)))
        crf.addPairwiseEnergy(np.array([[0.0, distance]], np.float32), compat=10.0, kernel=dcrf.DIAG_KERNEL,
                              normalization=dcrf.NORMALIZE_AFTER)
        return np.asarray(crf.inference(5))[:, 1]

    period = 65536 / elevation_matrix(1)[0, 0]  # feature distance whose elevated coordinates differ by 2^16
    assert second_pixel_q(3.0) == pytest.approx([0.5, 0.5], abs=1e-3)  # independent: its own unary (0, 0)
    assert second_pixel_q(period)[0] > 0.999  # aliased onto the first pixel: pulled to its label
    with pytest.raises(CRFInputError, match="16-bit"):  # and our check refuses that input
        check_crf_inputs(np.zeros((2, 1, 2), np.float32), None, CRFParams(5, [1 / period], [10.0], [], [], []))


def test_elevation_matches_the_lattice_code():
    """elevation_matrix is permutohedral.cpp's loop: elevated[j] = sum_{i>=j} cf_i - j cf_{j-1}."""
    rng = np.random.default_rng(0)
    for d in (1, 2, 5):
        feature = rng.normal(0, 10, d)
        scale = math.sqrt(2 / 3) * (d + 1) / np.sqrt((np.arange(d) + 1) * (np.arange(d) + 2))
        cf = feature * scale
        elevated = np.zeros(d + 1)
        total = 0.0
        for j in range(d, 0, -1):
            elevated[j] = total - j * cf[j - 1]
            total += cf[j - 1]
        elevated[0] = total
        np.testing.assert_allclose(elevation_matrix(d) @ feature, elevated)
        assert lattice_extent(feature, feature) == pytest.approx(np.abs(elevated).max())
    assert lattice_limit(5) == 32767 - 24 and lattice_limit(2) == 32767 - 12


@pytest.mark.parametrize("override, message", [
    ("bi_xy_std=1e-30", "too small"), ("bi_xy_std=nan", "finite"), ("bi_xy_std=inf", "finite"),
    ("bi_xy_std=0", "> 0"), ("bi_xy_std=-3", "> 0"), ("bi_rgb_std=1e-30", "too small"),
    ("pos_xy_std=1e-9", "too small"), ("bi_w=nan", "finite"), ("pos_w=-inf", "finite"),
    ("max_iter=-1", "0 to"), (f"max_iter={MAX_ITERATIONS + 1}", "0 to"), ("max_iter=1e9", "integer"),
    ("bi_w=abc", "number"), ("nonsense=1", "NAME=VALUE"), ("validate=1", "NAME=VALUE"), ("bi_w", "NAME=VALUE"),
])
def test_crf_settings_that_pydensecrf_cannot_take_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        parse_crf_overrides(crf_preset("v2"), override)


def test_too_many_kernels_and_mismatched_lists_are_refused():
    params = CRFParams(10, [3.0] * 5, [3.0] * 5, [50.0] * 4, [5.0] * 4, [4.0] * 4)
    assert any("kernels" in p for p in params.validate())
    assert any("same number" in p for p in CRFParams(10, [3.0], [], [], [], []).validate())


CRASH_CASES = {
    # name: (scores, colours, overrides) as code; each of these segfaulted or corrupted the heap in pydensecrf
    "nan colour": ("s", "c; c[0, 0, 0] = np.nan", ""),
    "inf colour": ("s", "c; c[1, 2, 3] = np.inf", ""),
    "huge colour": ("s", "c; c[2, 0, 0] = 1e30", ""),
    "colours out of the lattice": ("s", "c * 1e5", ""),
    "nan score": ("s; s[0, 0, 0] = np.nan", "c", ""),
    "inf score": ("s; s[3, 1, 1] = np.inf", "c", ""),
    "xy std too small for the image": ("s", "c", "bi_xy_std=0.001"),
    "positional std too small for the image": ("s", "c", "pos_xy_std=0.0005"),
    "zero-size image": ("s[:, :0]", "c[:, :0]", ""),
    "colours of another size": ("s", "c[:, :5]", ""),
}

_CRASH_SCRIPT = """
import json, sys, numpy as np
from caffe2torch.crf import dense_crf, crf_preset, parse_crf_overrides
cases = json.loads(sys.argv[1])
results = {}
for name, (scores, colours, overrides) in cases.items():
    rng = np.random.default_rng(0)
    s = rng.normal(0, 3, (4, 40, 48)).astype(np.float32)
    c = rng.integers(0, 256, (3, 40, 48)).astype(np.float32)
    env = {"np": np, "s": s, "c": c}
    for var, code in (("s", scores), ("c", colours)):
        exec(code.replace(code.split(";")[0], var + " = " + code.split(";")[0], 1) if ";" in code else
             var + " = " + code, env)
    params = parse_crf_overrides(crf_preset("v2"), overrides) if overrides else crf_preset("v2")
    try:
        q = dense_crf(env["s"], env["c"], params)
        results[name] = "ran: finite %s" % bool(np.isfinite(q).all())
    except ValueError as exc:
        results[name] = "refused: %s: %s" % (type(exc).__name__, exc)
print(json.dumps(results))
"""


def test_inputs_that_crashed_pydensecrf_are_refused_before_native_code():
    run = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, json.dumps(CRASH_CASES)], capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, f"the CRF process died ({run.returncode}): {run.stderr[-2000:]}"
    results = json.loads(run.stdout)
    for name in CRASH_CASES:
        assert results[name].startswith("refused: CRFInputError"), (name, results[name])
    assert "NaN or infinite" in results["nan score"] and "NaN or infinite" in results["nan colour"]
    assert "multiply both standard deviations by at least" in results["colours out of the lattice"]
    assert "pos_xy_std must be at least" in results["positional std too small for the image"]


_EDGE_SCRIPT = """
import json, numpy as np
from caffe2torch.crf import dense_crf, crf_preset, parse_crf_overrides, lattice_extent, lattice_limit
rng = np.random.default_rng(1)
out = {}
def run(name, labels, h, w, overrides="", scale=1.0):
    s = rng.normal(0, 2, (labels, h, w)).astype(np.float32)
    c = rng.integers(0, 256, (3, h, w)).astype(np.float32)
    c[:, 0, 0], c[:, -1, -1] = 0, 255  # the full colour range, so the box bound is reached
    c *= np.float32(scale)
    p = parse_crf_overrides(crf_preset("v2"), overrides)
    try:
        q = dense_crf(s, c, p)
        out[name] = ["ran", bool(np.isfinite(q).all()), float(np.abs(q.sum(0) - 1).max())]
    except ValueError as exc:
        out[name] = ["refused", str(exc)]
run("one pixel", 21, 1, 1)
run("one label", 1, 20, 20)
run("300 labels", 300, 12, 12)
run("one row", 5, 1, 300)
run("1000 iterations", 3, 8, 8, "max_iter=1000")
run("0 iterations", 3, 8, 8, "max_iter=0")
run("huge std", 3, 8, 8, "bi_xy_std=1e30,bi_rgb_std=1e30,pos_xy_std=1e30")
# colours scaled so that the bilateral features sit just inside and just outside the 16-bit lattice
p = crf_preset("v2")
hi = np.array([9 / 67, 9 / 67, 255 / 3, 255 / 3, 255 / 3])
k = lattice_limit(5) / lattice_extent(np.zeros(5), hi)
run("just inside", 3, 10, 10, scale=k * 0.999)
run("just outside", 3, 10, 10, scale=k * 1.01)
print(json.dumps(out))
"""


def test_edge_sizes_and_the_lattice_boundary_run_or_are_refused_cleanly():
    run = subprocess.run([sys.executable, "-c", _EDGE_SCRIPT], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, f"the CRF process died ({run.returncode}): {run.stderr[-2000:]}"
    out = json.loads(run.stdout)
    for name in ("one pixel", "one label", "300 labels", "one row", "1000 iterations", "0 iterations", "huge std",
                 "just inside"):
        assert out[name][0] == "ran" and out[name][1] and out[name][2] < 1e-4, (name, out[name])
    assert out["just outside"][0] == "refused" and "16-bit" in out["just outside"][1]


DENSECRF_NET = """name: "crfnet"
input: "data"
input_shape {{ dim: 1 dim: 3 dim: 9 dim: 9 }}
input: "dim"
input_shape {{ dim: 1 dim: 1 dim: 1 dim: 2 }}
layer {{ name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param {{ num_output: 3 kernel_size: 1 }} }}
layer {{ name: "crf" type: "DenseCRF" bottom: "score" bottom: "dim" bottom: "data" top: "crf"
        dense_crf_param {{ {param} }} }}
"""


@pytest.mark.parametrize("param, message", [
    ("max_iter: 5 bi_xy_std: 1e-30 bi_rgb_std: 3 bi_w: 4", "bi_xy_std 1e-30 is too small"),
    ("max_iter: 5 bi_xy_std: nan bi_rgb_std: 3 bi_w: 4", "bi_xy_std nan must be finite"),
    ("max_iter: 5 pos_xy_std: inf pos_w: 3", "pos_xy_std inf must be finite"),
    ("max_iter: 5 pos_xy_std: 3 pos_w: nan", "pos_w nan must be finite"),
    ("max_iter: 100000 pos_xy_std: 3 pos_w: 3", "max_iter 100000"),
    ("max_iter: -1 pos_xy_std: 3 pos_w: 3", "max_iter -1"),
    ("pos_xy_std: 0 pos_w: 3", "must be > 0"),
])
def test_densecrf_layer_settings_are_located_errors_at_conversion(param, message):
    spec = spec_from_text(DENSECRF_NET.format(param=param))
    with pytest.raises(UnsupportedError, match=message) as caught:
        check_supported(spec)
    assert "test.prototxt:8: layer 'crf' (DenseCRF)" in str(caught.value)


def test_densecrf_layer_refuses_bad_inputs_naming_the_layer():
    """The data blob is whatever the net computes: NaN or colours beyond the lattice are refused at forward
    time, naming the layer, in this process (the check runs before pydensecrf)."""
    import torch

    from caffe2torch.errors import CaffeError
    from caffe2torch.layers import get_converter

    spec = spec_from_text(DENSECRF_NET.format(param="max_iter: 3 pos_xy_std: 3 pos_w: 3 bi_xy_std: 50 "
                                                    "bi_rgb_std: 3 bi_w: 4"))
    layer = next(layer for layer in spec.layers if layer.type == "DenseCRF")
    module = get_converter("DenseCRF").build(layer, [], None)
    scores = torch.randn(1, 3, 9, 9)
    dims = torch.tensor([[[[9.0, 9.0]]]])
    data = torch.rand(1, 3, 9, 9) * 255
    assert torch.isfinite(module(scores, dims, data)).all()
    for bad in (data.clone().index_put_((torch.tensor(0), torch.tensor(1), torch.tensor(2), torch.tensor(3)),
                                        torch.tensor(float("nan"))), data * 1e6):
        with pytest.raises(CaffeError, match="layer 'crf' \\(DenseCRF\\)"):
            module(scores, dims, bad)


def test_run_refuses_bad_crf_params_with_exit_2_even_with_workers(tmp_path):
    from caffe2torch.cli import run

    from .runtime_helpers import convert_tiny_model, save_photo

    model = convert_tiny_model(tmp_path / "model")
    image = save_photo(tmp_path / "a.png", 0)
    for override in ("bi_xy_std=1e-30", "bi_rgb_std=nan", "max_iter=99999999999", "bi_w=", "max_iter=2.5"):
        result = CliRunner().invoke(run.main, ["--onnx", str(model / "model.onnx"), str(image), "-o",
                                               str(tmp_path / "out"), "--crf-params", override, "--jobs", "2"])
        assert result.exit_code == 2, (override, result.output)
        assert "--crf-preset/--crf-params" in result.output and "Traceback" not in result.output


def test_run_skips_an_image_the_crf_lattice_cannot_hold_and_goes_on(tmp_path):
    """bi_xy_std 0.002 is valid for small images and not for large ones: the large image is skipped with the
    reason and the smallest usable value, the small one is segmented, in worker processes (no
    BrokenProcessPool)."""
    from caffe2torch.cli import run

    from .runtime_helpers import convert_tiny_model, save_photo

    model = convert_tiny_model(tmp_path / "model")
    folder = tmp_path / "photos"
    folder.mkdir()
    save_photo(folder / "small.png", 0, 4, 5)
    save_photo(folder / "large.png", 1, 60, 80)
    out = tmp_path / "out"
    result = CliRunner().invoke(run.main, ["--onnx", str(model / "model.onnx"), str(folder), "-o", str(out),
                                           "--crf-params", "bi_xy_std=0.002", "--jobs", "2"])
    assert result.exit_code == 1, result.output
    assert "large.png: the bilateral kernel (bi_xy_std 0.002, bi_rgb_std 3) cannot represent a 80x60 image" \
        in result.output
    assert "segmented 1 of 2" in result.output and (out / "small.png").is_file()
    assert not (out / "large.png").exists()
