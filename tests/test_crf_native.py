"""caffe2torch's native dense CRF (caffe2torch._densecrf) against pydensecrf, DeepLab's CRF code: the same
lattice and updates, so the same floats (bit for bit on x86-64; the contract is max |dQ| <= 1e-5 and every
label equal), on real photographs with DeepLab-like logits, for every preset, several kernel sets and
iteration counts; the DenseCRF golden; the pydensecrf fallback and its switch; bad inputs."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caffe2torch import crf_native
from caffe2torch.crf import CRFParams, crf_preset, dense_crf, kernel_features

from .conftest import REFERENCE, REPO, require_shared

if not crf_native.native_available():
    message = (f"caffe2torch._densecrf is not built ({crf_native.IMPORT_ERROR}): `pip install -e .` with a C++ "
               "compiler builds it")
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)

from caffe2torch import _densecrf  # noqa: E402

# On x86-64 the native CRF performs pydensecrf's SSE2 operations exactly; elsewhere the contract holds.
BIT_EXACT = platform.machine().lower() in ("x86_64", "amd64")
PRESETS = ["v1", "v2", "run-densecrf", "dense-inference", "demo-synthetic"]


@pytest.fixture(autouse=True)
def _auto_backend(monkeypatch):
    monkeypatch.delenv(crf_native.BACKEND_VARIABLE, raising=False)


def photo(name: str, height: int, width: int, labels: int = 21, seed: int = 0):
    """A crop of a real photograph (3, H, W) and smooth stride-8 logits with noise, as DeepLab's nets give."""
    from skimage import data

    image = getattr(data, name)()[:height, :width, :3]
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    coarse = torch.from_numpy(rng.normal(0, 2.5, (1, labels, h // 8 + 1, w // 8 + 1)).astype(np.float32))
    logits = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)[0].numpy()
    logits += rng.normal(0, 0.3, logits.shape).astype(np.float32)
    return np.ascontiguousarray(image.transpose(2, 0, 1)), logits


def pydensecrf_q(scores, image, params, monkeypatch):
    monkeypatch.setenv(crf_native.BACKEND_VARIABLE, "pydensecrf")
    try:
        return dense_crf(scores, image, params)
    finally:
        monkeypatch.delenv(crf_native.BACKEND_VARIABLE)


def assert_same(ours, reference, moved=True):
    assert ours.shape == reference.shape and ours.dtype == np.float32
    assert float(np.abs(ours - reference).max()) <= 1e-5
    assert np.array_equal(ours.argmax(0), reference.argmax(0))
    if BIT_EXACT:
        assert np.array_equal(ours, reference), f"max |dQ| {np.abs(ours - reference).max():.3g}"


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
@pytest.mark.parametrize("preset", PRESETS)
def test_presets_on_photographs(name, preset, monkeypatch):
    # 121 x 161: 19481 pixels, not a multiple of 4 (pydensecrf's lattice then has the origin's vertices too)
    image, logits = photo(name, 121, 161, seed=len(name))
    params = crf_preset(preset)
    reference = pydensecrf_q(logits, image, params, monkeypatch)
    assert (reference.argmax(0) != logits.argmax(0)).mean() > 0.01  # the CRF does move labels here
    assert_same(crf_native.dense_crf_native(logits, image, params), reference)
    assert_same(dense_crf(logits, image, params), reference)  # the default backend is the native one


@pytest.mark.parametrize("max_iter", [0, 1, 2])
@pytest.mark.parametrize("preset", PRESETS)
def test_iteration_counts(preset, max_iter, monkeypatch):
    image, logits = photo("coffee", 96, 128, seed=max_iter)
    params = crf_preset(preset)
    params.max_iter = max_iter
    assert_same(crf_native.dense_crf_native(logits, image, params), pydensecrf_q(logits, image, params, monkeypatch))


@pytest.fixture(params=["wavefront", "chains"])
def blur_mode(request):
    """Force one of the native blur's two schedules (automatic: wavefront for raster-ordered lattices,
    chains for the others); both must give pydensecrf's floats on every lattice."""
    previous = _densecrf.blur_mode(request.param)
    yield request.param
    _densecrf.blur_mode(previous)


@pytest.mark.parametrize("params", [crf_preset("v2"), crf_preset("dense-inference"),
                                    CRFParams(4, [3.0, 1.0], [3.0, 1.5], [49.0, 20.0], [5.0, 13.0], [4.0, 2.0])])
def test_both_blur_schedules(params, blur_mode, monkeypatch):
    image, logits = photo("coffee", 83, 117, seed=4)
    assert_same(crf_native.dense_crf_native(logits, image, params), pydensecrf_q(logits, image, params, monkeypatch))


def test_benchmark_setting_full_size(monkeypatch):
    # The benchmark's case: a 500 x 375 photograph, 21 labels, DeepLab v2's preset.
    image, logits = photo("astronaut", 375, 500)
    params = crf_preset("v2")
    assert_same(crf_native.dense_crf_native(logits, image, params), pydensecrf_q(logits, image, params, monkeypatch))


@pytest.mark.parametrize("params", [
    CRFParams(10, [1.0], [3.0], [], [], []),                             # positional only (image given)
    CRFParams(5, [3.0, 1.0], [3.0, 1.5], [49.0, 20.0], [5.0, 13.0], [4.0, 2.0]),  # several kernels
    CRFParams(3, [], [], [80.0], [13.0], [5.0]),                          # bilateral only
    CRFParams(4, [0.5], [2.0], [10.0], [1.0], [10.0]),                    # narrow kernels: large lattices
    CRFParams(3, [], [], [], [], []),                                     # no kernel: softmax
])
def test_kernel_sets(params, monkeypatch):
    image, logits = photo("chelsea", 75, 101, seed=3)
    assert_same(crf_native.dense_crf_native(logits, image, params), pydensecrf_q(logits, image, params, monkeypatch))
    assert_same(crf_native.dense_crf_native(logits, None, params), pydensecrf_q(logits, None, params, monkeypatch))


@pytest.mark.parametrize("labels", [1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 33, 60])
def test_label_counts(labels, monkeypatch):
    # Eigen's exp and sum treat whole 4-float packets and the leftover labels differently; strides other
    # than 8/16/24/32 take the generic loops.
    image, logits = photo("astronaut", 37, 53, labels=labels, seed=labels)
    params = crf_preset("v1")
    params.max_iter = 3
    assert_same(crf_native.dense_crf_native(logits, image, params), pydensecrf_q(logits, image, params, monkeypatch))


@pytest.mark.parametrize("d, spread", [(1, 30.0), (3, 12.0), (4, 9.0), (7, 6.0), (5, 1500.0)])
def test_other_feature_dimensions_and_wide_keys(d, spread):
    # Kernels other than DeepLab's d = 2 and 5 take the generic lattice code; features spread over ~1500
    # units in 5 dimensions need lattice keys wider than 64 bits (still inside pydensecrf's 16-bit range).
    import pydensecrf.densecrf as dcrf

    rng = np.random.default_rng(d)
    points, labels = 1999, 6
    features = rng.uniform(0, spread, (d, points)).astype(np.float32)
    scores = rng.normal(0, 2, (labels, points)).astype(np.float32)
    reference_crf = dcrf.DenseCRF(points, labels)
    reference_crf.setUnaryEnergy(np.ascontiguousarray(-scores))
    reference_crf.addPairwiseEnergy(features, compat=3.0, kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_AFTER)
    reference = np.asarray(reference_crf.inference(5), dtype=np.float32)
    ours = np.empty_like(scores)
    _densecrf.inference(scores, ours, [(features, 3.0)], 5)
    assert_same(ours, reference.reshape(labels, points))


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (2, 3), (5, 5), (4, 4)])
def test_tiny_images(shape, monkeypatch):
    rng = np.random.default_rng(sum(shape))
    logits = rng.normal(0, 2, (4, *shape)).astype(np.float32)
    image = rng.integers(0, 256, (3, *shape)).astype(np.float32)
    params = crf_preset("v2")
    assert_same(crf_native.dense_crf_native(logits, image, params), pydensecrf_q(logits, image, params, monkeypatch))


def test_deeplab_layer_inputs_extreme_logits_and_negative_colours(monkeypatch):
    # The in-net layer feeds mean-subtracted BGR (negative colours) and raw logits, whose spread can exceed
    # Eigen's exp range (-88.38): those probabilities are exactly 0 in both.
    image, logits = photo("coffee", 64, 80, labels=6, seed=9)
    bgr = image[::-1].astype(np.float32) - np.array([104.008, 116.669, 122.675], np.float32)[:, None, None]
    logits = logits * 40
    params = CRFParams(10, [3.0], [3.0], [121.0], [5.0], [4.0])
    reference = pydensecrf_q(logits, bgr, params, monkeypatch)
    assert (reference == 0).any()
    assert_same(crf_native.dense_crf_native(logits, bgr, params), reference)


def test_densecrf_golden_within_1e6():
    # DeepLab's own DenseCRF layer (Caffe): probabilities within 1e-6 through the layer, which now runs the
    # native CRF, and bit-equal to pydensecrf on the same inputs.
    from caffe2torch.caffemodel import read_caffemodel
    from caffe2torch.pipeline import convert, read_net, run_all_blobs, set_input_shapes

    folder = require_shared(REFERENCE / "densecrf")
    inputs = dict(np.load(folder / "inputs.npz"))
    blobs = np.load(folder / "blobs.npz")
    spec = set_input_shapes(read_net(folder / "net.prototxt"), {k: v.shape for k, v in inputs.items()})
    net, _ = convert(spec, read_caffemodel(folder / "weights.caffemodel"))
    outputs = run_all_blobs(net, inputs)
    for name in json.loads((folder / "case.json").read_text())["outputs"]:
        if not name.endswith("_log"):
            assert float(np.abs(outputs[name] - blobs[name]).max()) <= 1e-6, name


def test_avx2_and_baseline_loops_agree(tmp_path):
    # The AVX2 loops are chosen at import; the SSE2 ones run when the CPU lacks AVX2 (or with
    # CAFFE2TORCH_CRF_NO_AVX2 set, as here in a fresh process).
    image, logits = photo("astronaut", 61, 83, seed=5)
    params = crf_preset("v2")
    ours = crf_native.dense_crf_native(logits, image, params)
    code = ("import sys, numpy as np; from caffe2torch import crf_native; from caffe2torch.crf import crf_preset;"
            "d = np.load(sys.argv[1]); q = crf_native.dense_crf_native(d['logits'], d['image'], crf_preset('v2'));"
            "np.save(sys.argv[2], q)")
    folder = tmp_path
    np.savez(folder / "in.npz", logits=logits, image=image)
    env = {**os.environ, "CAFFE2TORCH_CRF_NO_AVX2": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code, str(folder / "in.npz"), str(folder / "out.npy")], check=True,
                   env=env, timeout=120)
    assert np.array_equal(np.load(folder / "out.npy"), ours)


def test_threads_run_concurrently_and_agree():
    # The GIL is released during inference and each thread keeps its own buffers.
    cases = [photo(name, 90, 120, seed=i) for i, name in enumerate(["astronaut", "chelsea", "coffee", "rocket"])]
    params = crf_preset("v2")
    expected = [crf_native.dense_crf_native(logits, image, params) for image, logits in cases]
    results = [None] * len(cases)

    def work(i):
        image, logits = cases[i]
        results[i] = crf_native.dense_crf_native(logits, image, params)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.array_equal(r, e) for r, e in zip(results, expected))


def test_memory_kept_between_calls_can_be_released():
    image, logits = photo("coffee", 50, 70, seed=2)
    params = crf_preset("v2")
    first = crf_native.dense_crf_native(logits, image, params)
    crf_native.release_memory()
    assert np.array_equal(crf_native.dense_crf_native(logits, image, params), first)
    small = crf_native.dense_crf_native(logits[:, :9, :11].copy(), image[:, :9, :11].copy(), params)
    assert small.shape == (21, 9, 11)  # a smaller image after a larger one reuses the buffers


def test_timings_split_lattice_and_iterations():
    image, logits = photo("astronaut", 40, 60)
    q, lattice_seconds, iteration_seconds = crf_native.dense_crf_native_timed(logits, image, crf_preset("v2"))
    assert q.shape == logits.shape and lattice_seconds > 0 and iteration_seconds > 0


def test_lattice_vertices_match_the_torch_lattice():
    # Same lattice as permutohedral.py (a port of the same construction); 4 x 6 = 24 pixels, a multiple of 4,
    # so pydensecrf adds no origin points.
    from caffe2torch.permutohedral import PermutohedralLattice

    image, _ = photo("astronaut", 4, 6)
    for features, _ in kernel_features(4, 6, image, crf_preset("v2")):
        expected = PermutohedralLattice(torch.from_numpy(features.T.copy())).vertices
        assert _densecrf.lattice_vertices(features) == expected


# --- the backend switch and the fallback ------------------------------------------------------------------

def test_backend_switch(monkeypatch):
    image, logits = photo("astronaut", 20, 30)
    params = crf_preset("v2")
    calls = []
    monkeypatch.setattr(crf_native, "dense_crf_native", lambda *a: calls.append(a) or np.zeros(1))
    dense_crf(logits, image, params)
    assert len(calls) == 1
    monkeypatch.setenv(crf_native.BACKEND_VARIABLE, "pydensecrf")
    assert dense_crf(logits, image, params).shape == logits.shape and len(calls) == 1
    monkeypatch.setenv(crf_native.BACKEND_VARIABLE, "cuda")
    with pytest.raises(ValueError, match="CAFFE2TORCH_CRF='cuda': choose one of auto, native, pydensecrf"):
        dense_crf(logits, image, params)


def test_fallback_when_not_built(monkeypatch, caplog):
    image, logits = photo("astronaut", 20, 30)
    params = crf_preset("v2")
    expected = dense_crf(logits, image, params)
    monkeypatch.setattr(crf_native, "_densecrf", None)
    monkeypatch.setattr(crf_native, "IMPORT_ERROR", "No module named 'caffe2torch._densecrf'")
    monkeypatch.setattr(crf_native, "_fallback_reported", False)
    with caplog.at_level(logging.WARNING, logger="caffe2torch.crf_native"):
        assert np.array_equal(dense_crf(logits, image, params), expected)
        assert np.array_equal(dense_crf(logits, image, params), expected)
    warnings = [r.getMessage() for r in caplog.records if r.name == "caffe2torch.crf_native"]
    assert len(warnings) == 1 and "native dense CRF is not built" in warnings[0] and "pydensecrf" in warnings[0]
    monkeypatch.setenv(crf_native.BACKEND_VARIABLE, "native")
    with pytest.raises(ValueError, match="not built"):
        dense_crf(logits, image, params)


# --- bad inputs: a clear ValueError, never a crash ------------------------------------------------------

def test_bad_inputs_are_refused():
    params = crf_preset("v2")
    good = np.zeros((2, 4, 5), np.float32)
    image = np.zeros((3, 4, 5), np.float32)
    nan_scores = good.copy()
    nan_scores[0, 1, 1] = np.nan
    inf_image = image.copy()
    inf_image[2, 0, 0] = np.inf
    for scores, colours, message in [
        (np.zeros((0, 4, 5), np.float32), None, "non-empty"),
        (np.zeros((4, 5), np.float32), None, "non-empty"),
        (nan_scores, None, "finite"),
        (good, inf_image, "finite"),
        (good, np.zeros((3, 5, 4), np.float32), "does not match"),
        (good, np.zeros((4, 5), np.float32), "does not match"),
    ]:
        with pytest.raises(ValueError, match=message):
            crf_native.dense_crf_native(scores, colours, params)
    with pytest.raises(ValueError, match="too wide a range"):
        crf_native.dense_crf_native(good, np.full((3, 4, 5), 3e38, np.float32), params)


def test_extension_defends_itself():
    scores = np.zeros((3, 10), np.float32)
    out = np.empty_like(scores)
    features = np.zeros((2, 10), np.float32)
    cases = [
        ((scores.astype(np.float64), out, [], 1), "float32"),
        ((scores[:, ::2], np.empty((3, 5), np.float32), [], 1), "C-contiguous"),
        ((scores, out[:2], [], 1), "shape of scores"),
        ((scores, np.empty_like(scores).reshape(30, 1), [], 1), "shape of scores"),
        ((scores, out, [(features[:, :9].copy(), 1.0)], 1), r"features must be \(d, 10\)"),
        ((scores, out, [(np.zeros((17, 10), np.float32), 1.0)], 1), r"1 <= d <= 16"),
        ((scores, out, [(features, float("nan"))], 1), "NaN or infinite"),
        ((scores, out, [(np.full((2, 10), np.inf, np.float32), 1.0)], 1), "NaN or infinite"),
        ((scores, out, [features], 1), r"\(features, weight\) tuple"),
        ((scores, out, 5, 1), "sequence"),
        ((scores, out, [], -1), "max_iter"),
        ((np.full((3, 10), np.nan, np.float32), out, [], 1), "NaN or infinite"),
        ((np.zeros((0, 10), np.float32), np.zeros((0, 10), np.float32), [], 1), "labels"),
    ]
    for arguments, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            _densecrf.inference(*arguments)
    readonly = np.empty_like(scores)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        _densecrf.inference(scores, readonly, [], 1)
