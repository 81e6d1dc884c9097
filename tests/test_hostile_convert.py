"""Hostile and careless input on the convert / verify / info / load side: each gets a located error (file,
line, layer, path) and exit status 2, never a traceback, an "internal error", a large allocation before the
input is validated, or a half-written output folder. docs/reliability.md lists these cases by test name."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import caffe2torch
from caffe2torch import artifact, limits
from caffe2torch.caffemodel import WeightsLayer, read_caffemodel, write_caffemodel
from caffe2torch.cli import convert, info, verify
from caffe2torch.errors import ArtifactError, CaffeError, InvalidNetError, LimitError, NetDefinitionError
from caffe2torch.pipeline import convert as convert_net
from caffe2torch.pipeline import read_net

from .conftest import net_from_text, write_net_files, write_random_weights
from .test_fuzz import capped_memory

NET = """name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 17 dim: 17 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "score" type: "Convolution" bottom: "pool" top: "score"
        convolution_param { num_output: 5 kernel_size: 1 } }
"""


def run(command, args, env=None):
    """Run a command in-process; a traceback or an internal error fails the test, whatever the exit code."""
    result = CliRunner().invoke(command.main, [str(a) for a in args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result


def refused(result, *fragments):
    assert result.exit_code == 2, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    return result


@pytest.fixture()
def tiny(tmp_path):
    prototxt, caffemodel = write_net_files(tmp_path, NET)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, data=np.random.default_rng(0).standard_normal((1, 3, 17, 17)).astype(np.float32))
    return prototxt, caffemodel, inputs


def edited(tmp_path, old, new, name="bad.prototxt"):
    assert old in NET
    path = tmp_path / name
    path.write_text(NET.replace(old, new))
    return path


# ---------------------------------------------------------------------------------------------------------
# Sizes: checked before anything is allocated
# ---------------------------------------------------------------------------------------------------------


def test_huge_num_output_is_refused_before_allocating(tiny, tmp_path):
    """The issue's 190-byte prototxt: num_output 100000000 took 11 GB before the caffemodel was looked at."""
    prototxt = edited(tmp_path, "num_output: 4", "num_output: 100000000")
    out = tmp_path / "out"
    with capped_memory():
        result = run(convert, [prototxt, tiny[1], "-o", out])
    refused(result, "bad.prototxt:4: layer 'conv' (Convolution)", "over Caffe's limit of INT_MAX")
    assert "GiB" in result.output and not out.exists()


def test_weights_budget_refuses_a_net_before_building(tiny, tmp_path, monkeypatch):
    """Parameters within Caffe's blob limit but over the weights budget: refused in human terms, with the
    variable that raises the limit; deeplab-info only warns (it builds nothing)."""
    prototxt = tmp_path / "fc.prototxt"
    prototxt.write_text('input: "data"\ninput_dim: 1 input_dim: 3 input_dim: 1 input_dim: 1\n'
                        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                        "inner_product_param { num_output: 400000000 } }\n")
    with capped_memory(), pytest.raises(LimitError, match=r"6\.0 GiB .* over the 4\.0 GiB limit for weights.*"
                                                          r"CAFFE2TORCH_MAX_WEIGHTS=6G"):
        net_from_text(prototxt.read_text())
    result = run(info, [prototxt])
    assert result.exit_code == 0 and "warning: converting this net would fail" in result.output
    # the same rule on a real conversion, with the limit lowered
    result = run(convert, [tiny[0], tiny[1], "-o", tmp_path / "out"], env={limits.WEIGHTS_VARIABLE: "256"})
    refused(result, "limit for weights", "tiny.prototxt:4: layer 'conv'")
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv(limits.WEIGHTS_VARIABLE, "lots")
    with pytest.raises(CaffeError, match="CAFFE2TORCH_MAX_WEIGHTS: 'lots' is not a size"):
        net_from_text(NET)


def test_absurd_input_shapes_are_refused(tiny, tmp_path):
    result = run(convert, [tiny[0], tiny[1], "-o", tmp_path / "out", "--input-shape", "data=1,3,100000,100000"])
    refused(result, "input 'data' of shape 1x3x100000x100000", "30 billion elements", "111.8 GiB")
    result = run(verify, [tiny[0], tiny[1], "--inputs", tiny[2], "--reference", tiny[2],
                          "--input-shape", "data=1,3,100000,100000"])
    refused(result, "input 'data' of shape 1x3x100000x100000")
    int_max = edited(tmp_path, "dim: 17 dim: 17", "dim: 2147483647 dim: 2147483647")
    refused(run(info, [int_max]), "over Caffe's limit of INT_MAX")
    overflow = edited(tmp_path, "dim: 17 dim: 17", "dim: 1099511627776 dim: 1099511627776")  # 2**80 elements
    refused(run(info, [overflow]), "over Caffe's limit of INT_MAX")
    negative = edited(tmp_path, "dim: 17 dim: 17", "dim: -17 dim: 17")
    refused(run(info, [negative]), "input 'data' has shape 1x3x-17x17: every dimension must be at least 1")
    assert not (tmp_path / "out").exists()


def test_verify_refuses_inputs_whose_blobs_exceed_the_budget(tiny, tmp_path):
    prototxt, caffemodel, inputs = tiny
    result = run(verify, [prototxt, caffemodel, "--inputs", inputs, "--reference", inputs],
                 env={limits.BLOBS_VARIABLE: "4K"})
    refused(result, "verifying (a forward pass keeping every blob) at input size data 1x3x17x17",
            "over the 4.0 KiB limit for blobs", limits.BLOBS_VARIABLE)


def test_caffemodel_is_matched_before_the_net_is_built(tmp_path):
    """A net within Caffe's limits but needing 6 GB, with a caffemodel that does not match: the mismatch is
    reported without building (the memory cap would turn a build into a MemoryError)."""
    prototxt = tmp_path / "fc.prototxt"
    prototxt.write_text('input: "data"\ninput_dim: 1 input_dim: 3 input_dim: 1 input_dim: 1\n'
                        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                        "inner_product_param { num_output: 400000000 } }\n")
    caffemodel = tmp_path / "fc.caffemodel"
    write_caffemodel(caffemodel, [WeightsLayer("fc", "InnerProduct", [np.zeros((1, 3), np.float32),
                                                                      np.zeros(1, np.float32)])])
    with capped_memory(), pytest.raises(CaffeError, match=r"fc \(InnerProduct\): blob 0: expected \(400000000, 3\)"):
        convert_net(prototxt, caffemodel)


def test_artifact_load_allocates_the_weights_once(tmp_path):
    """caffe2torch.load builds on the meta device and reads each tensor into its final place: the peak memory
    it adds is about the weights once (it was twice: a randomly initialised net, then a second copy)."""
    text = NET.replace("num_output: 5 kernel_size: 1", "num_output: 4096 kernel_size: 3 pad: 1").replace(
        "num_output: 4 kernel_size: 3", "num_output: 1024 kernel_size: 3")
    net = net_from_text(text)
    path = tmp_path / "model.safetensors"
    artifact.save_artifact(net, path)
    weights = path.stat().st_size
    assert weights > 140 << 20
    del net
    code = ("import resource, sys, caffe2torch, caffe2torch.artifact, torch; torch.set_num_threads(1); "
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; net = caffe2torch.load(sys.argv[1]); "
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    peak = int(out.stdout.strip().splitlines()[-1])
    assert peak < 1.3 * weights, (peak, weights)


# ---------------------------------------------------------------------------------------------------------
# Caffe's own checks, located (file, line, layer, type), exit 2
# ---------------------------------------------------------------------------------------------------------

INVALID_NETS = [
    # (case, old, new, expected fragments)
    ("concat_unequal_maps", 'layer { name: "score"',
     'layer { name: "cat" type: "Concat" bottom: "conv" bottom: "pool" top: "cat" }\nlayer { name: "score"',
     ["layer 'cat' (Concat)", "must match in every axis but the concat axis 1", "1x4x17x17", "1x4x9x9"]),
    ("eltwise_unequal_shapes", 'layer { name: "score"',
     'layer { name: "sum" type: "Eltwise" bottom: "conv" bottom: "pool" top: "sum" }\nlayer { name: "score"',
     ["layer 'sum' (Eltwise)", "must have the same shape"]),
    ("duplicate_top", 'top: "score"', 'top: "conv"',
     [":9: layer 'score' (Convolution)", "top 'conv' is produced by multiple sources (already by layer 'conv'"]),
    ("more_tops_than_type_makes", 'top: "conv" }', 'top: "conv" top: "extra" }',
     [":6: layer 'relu' (ReLU)", "ReLU makes exactly 1 top; this layer has 2"]),
    ("too_few_bottoms", 'layer { name: "score"',
     'layer { name: "sum" type: "Eltwise" bottom: "pool" top: "sum" }\nlayer { name: "score"',
     ["layer 'sum' (Eltwise)", "takes at least 2 bottoms; this layer has 1"]),
    ("group_zero", "num_output: 4 kernel_size: 3", "num_output: 4 kernel_size: 3 group: 0",
     [":4: layer 'conv' (Convolution)", "group 0: must be at least 1"]),
    ("group_not_dividing_channels", "num_output: 4 kernel_size: 3", "num_output: 4 kernel_size: 3 group: 2",
     ["layer 'conv' (Convolution)", "3 channels are not a multiple of group 2"]),
    ("group_not_dividing_outputs", "num_output: 5 kernel_size: 1", "num_output: 5 kernel_size: 1 group: 2",
     ["layer 'score' (Convolution)", "num_output 5 is not a multiple of group 2"]),
    ("kernel_zero", "num_output: 4 kernel_size: 3", "num_output: 4 kernel_size: 0",
     ["layer 'conv' (Convolution)", "kernel size 0x0"]),
    ("conv_stride_zero", "num_output: 4 kernel_size: 3", "num_output: 4 kernel_size: 3 stride: 0",
     ["layer 'conv' (Convolution)", "stride 0x0"]),
    ("pooling_stride_zero", "stride: 2", "stride: 0", [":7: layer 'pool' (Pooling)", "stride 0x0"]),
    ("pooling_pad_not_below_kernel", "stride: 2 pad: 1", "stride: 2 pad: 3",
     ["layer 'pool' (Pooling)", "pad 3 >= kernel 3"]),
    ("inner_product_num_output_zero", 'layer { name: "score"',
     'layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 0 } }\n'
     'layer { name: "score"', ["layer 'fc' (InnerProduct)", "num_output > 0"]),
    ("slice_points_out_of_order", 'layer { name: "score"',
     'layer { name: "s" type: "Slice" bottom: "pool" top: "a" top: "b" top: "c" '
     "slice_param { slice_point: 3 slice_point: 1 } }\nlayer { name: \"score\"",
     ["layer 's' (Slice)", "slice points [3, 1] must increase strictly"]),
    ("slice_point_out_of_range", 'layer { name: "score"',
     'layer { name: "s" type: "Slice" bottom: "pool" top: "a" top: "b" slice_param { slice_point: 4 } }\n'
     'layer { name: "score"', ["layer 's' (Slice)", "slice point 4 is not inside the sliced axis of size 4"]),
    ("crop_offset_past_end", 'layer { name: "score"',
     'layer { name: "c" type: "Crop" bottom: "conv" bottom: "pool" top: "c" crop_param { offset: 9 } }\n'
     'layer { name: "score"', ["layer 'c' (Crop)", "offset 9 + size 9 exceeds the input's 17"]),
    ("reshape_changes_count", 'layer { name: "score"',
     'layer { name: "r" type: "Reshape" bottom: "pool" top: "r" reshape_param { shape { dim: 1 dim: 7 } } }\n'
     'layer { name: "score"', ["layer 'r' (Reshape)", "must keep the element count"]),
    ("split_in_place", 'layer { name: "score"',
     'layer { name: "s" type: "Split" bottom: "pool" top: "pool" top: "p2" }\nlayer { name: "score"',
     ["layer 's' (Split)", "does not allow in-place computation"]),
    ("lrn_even_size", 'layer { name: "score"',
     'layer { name: "n" type: "LRN" bottom: "pool" top: "n" lrn_param { local_size: 4 } }\nlayer { name: "score"',
     ["layer 'n' (LRN)", "only odd sizes"]),
    ("log_base_one", 'layer { name: "score"',
     'layer { name: "l" type: "Log" bottom: "pool" top: "l" log_param { base: 1 } }\nlayer { name: "score"',
     ["layer 'l' (Log)", "1/log(base) is not finite"]),
    ("argmax_top_k_too_large", 'layer { name: "score"',
     'layer { name: "a" type: "ArgMax" bottom: "pool" top: "a" argmax_param { axis: 1 top_k: 5 } }\n'
     'layer { name: "score"', ["layer 'a' (ArgMax)", "top_k=5 exceeds the size 4 of axis 1"]),
    ("input_too_small", "num_output: 5 kernel_size: 1", "num_output: 5 kernel_size: 11",
     ["layer 'score' (Convolution)", "top 'score' would have shape 1x5x-1x-1 (from 1x4x9x9): every dimension must "
      "be at least 1"]),
]


@pytest.mark.parametrize("case, old, new, fragments", INVALID_NETS, ids=[c[0] for c in INVALID_NETS])
def test_invalid_nets_get_located_errors(tmp_path, case, old, new, fragments):
    prototxt = edited(tmp_path, old, new)
    refused(run(info, [prototxt]), "bad.prototxt:", *fragments)


def test_invalid_layers_are_listed_together(tmp_path):
    prototxt = edited(tmp_path, "num_output: 4 kernel_size: 3", "num_output: 0 kernel_size: 0")
    prototxt.write_text(prototxt.read_text().replace("stride: 2", "stride: 0"))
    with pytest.raises(InvalidNetError) as caught:
        read_net(prototxt) and net_from_text(prototxt.read_text())
    error = caught.value
    assert len(error.problems) == 3 and "3 invalid layer definitions" in str(error)
    assert [loc.layer for loc, _ in error.problems] == ["conv", "conv", "pool"]


def test_every_converter_declares_its_bottom_and_top_counts():
    from caffe2torch.layers import REGISTRY

    undeclared = [name for name, converter in REGISTRY.items()
                  if converter.bottom_counts is None or converter.top_counts is None]
    assert not undeclared


def test_convolution_with_several_bottoms_filters_each_with_the_same_weights():
    """Caffe's EqualNumBottomTopBlobs: the rule is implemented, not just checked."""
    net = net_from_text(NET.replace('layer { name: "score"', 'layer { name: "two" type: "Convolution" '
                                    'bottom: "pool" bottom: "pool" top: "t1" top: "t2" '
                                    "convolution_param { num_output: 2 kernel_size: 1 } }\nlayer { name: \"score\""))
    x = torch.randn(1, 3, 17, 17)
    with torch.no_grad():
        blobs = net.run({"data": x}, all_blobs=True)
    assert torch.equal(blobs["t1"], blobs["t2"]) and blobs["t1"].shape == (1, 2, 9, 9)


def test_duplicate_net_inputs_are_refused():
    with pytest.raises(NetDefinitionError, match="net input 'data' is declared twice"):
        net_from_text('input: "data"\ninput: "data"\ninput_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n'
                      'input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n'
                      'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')


# ---------------------------------------------------------------------------------------------------------
# Non-finite weights
# ---------------------------------------------------------------------------------------------------------


def test_nonfinite_weights_are_reported(tiny, tmp_path):
    prototxt, _, inputs = tiny
    net = net_from_text(NET)
    blobs = [[b.copy() for b in net.module(name).caffe_blobs()] for name in ("conv", "score")]
    blobs[0][0][0, 0, 0, :2] = np.nan
    blobs[1][1][3] = np.inf
    caffemodel = tmp_path / "nan.caffemodel"
    write_caffemodel(caffemodel, [WeightsLayer("conv", "Convolution", blobs[0]),
                                  WeightsLayer("score", "Convolution", blobs[1])])
    _, report = convert_net(prototxt, caffemodel)
    assert report.nonfinite == {"conv": (2, 112), "score": (1, 25)}
    expected = "NaN or infinite weights in conv (2 of 112 values), score (1 of 25 values)"
    result = run(convert, [prototxt, caffemodel, "-o", tmp_path / "out", "--no-onnx"])
    assert result.exit_code == 0 and expected in result.output
    assert expected in run(info, [prototxt, caffemodel]).output
    data = json.loads(run(info, [prototxt, caffemodel, "--json"]).stdout)
    assert data["caffemodel"]["nonfinite"]["conv"] == {"nonfinite": 2, "values": 112}
    result = run(verify, [prototxt, caffemodel, "--inputs", inputs, "--reference", inputs])
    assert expected in result.output


# ---------------------------------------------------------------------------------------------------------
# Careless arguments: wrong files, wrong places
# ---------------------------------------------------------------------------------------------------------


def test_onnx_outputs_naming_no_blob(tiny, tmp_path):
    out = tmp_path / "out"
    result = run(convert, [tiny[0], tiny[1], "-o", out, "--onnx-outputs", "score,nope"])
    refused(result, "--onnx-outputs: no blob named 'nope'; the net computes conv, pool, score")
    refused(run(convert, [tiny[0], tiny[1], "-o", out, "--onnx-outputs", "data"]), "'data' is a net input")
    assert not out.exists()


def test_unexportable_net_is_refused_before_writing(tmp_path):
    text = NET + ('input: "dims"\ninput_shape { dim: 1 dim: 1 dim: 1 dim: 2 }\n'
                  'layer { name: "crf" type: "DenseCRF" bottom: "score" bottom: "dims" top: "crf" }\n')
    prototxt = tmp_path / "crf.prototxt"
    prototxt.write_text(text)
    caffemodel = tmp_path / "crf.caffemodel"
    write_random_weights(net_from_text(text), caffemodel)
    out = tmp_path / "out"
    # asked for the CRF's own output: DenseCRF has no ONNX lowering (by default the model ends at its input)
    refused(run(convert, [prototxt, caffemodel, "-o", out, "--onnx-outputs", "crf"]), "DenseCRF has no ONNX lowering")
    assert not out.exists()
    assert run(convert, [prototxt, caffemodel, "-o", out, "--no-onnx"]).exit_code == 0


def test_bad_conversion_options_are_refused_before_writing(tiny, tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "no-images"
    empty.mkdir()
    refused(run(convert, [tiny[0], tiny[1], "-o", out, "--int8", empty]), "int8 calibration needs at least one image")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_text("not an image")
    refused(run(convert, [tiny[0], tiny[1], "-o", out, "--int8", broken]), "a.jpg: not an image file")
    refused(run(convert, [tiny[0], tiny[1], "-o", out, "--crf-preset", "bogus"]), "unknown CRF preset 'bogus'")
    assert not out.exists()


def _zip_bomb(path, shape, members=1):
    """An .npz whose members claim `shape` (float32) but are a few kilobytes compressed."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ["data", "other", "more"][:members]:
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array_header_1_0(member, header)
                member.write(b"\0" * (1 << 20))


# (case, writer, message, whether it is only wrong as --inputs: a reference may hold any blob names and shapes)
NPZ_CASES = [
    ("npy_instead_of_npz", lambda p: np.save(p, np.zeros((1, 3, 17, 17), np.float32)),
     "a .npy file holds one unnamed array", False),
    ("missing_input", lambda p: np.savez(p, other=np.zeros((1, 3, 17, 17), np.float32)),
     "no array for net input(s) data; the net takes data, the file holds other", True),
    ("object_array", lambda p: np.savez(p, data=np.array([{"x": 1}], dtype=object)),
     "'data' has dtype object", False),
    ("string_array", lambda p: np.savez(p, data=np.array(["a", "b"])), "'data' has dtype <U1", False),
    ("wrong_channels", lambda p: np.savez(p, data=np.zeros((1, 4, 17, 17), np.float32)),
     "input 'data' has shape (1, 4, 17, 17), but the net declares 1x3x17x17: axis 1 must be 3", True),
    ("wrong_rank", lambda p: np.savez(p, data=np.zeros((3, 17, 17), np.float32)),
     "but the net declares 4 axes", True),
    ("empty_npz", lambda p: np.savez(p), "the .npz holds no arrays", False),
    ("not_an_npz", lambda p: p.write_text("data: 1\n"), "not an .npz file", False),
    ("zip_bomb", lambda p: _zip_bomb(p, (1, 3, 20000, 20000), members=2), "over the 8.0 GiB limit for blobs", False),
    ("zip_bomb_over_int_max", lambda p: _zip_bomb(p, (1, 3, 100000, 100000)), "over Caffe's limit of INT_MAX",
     False),
]


@pytest.mark.parametrize("case, write, message, inputs_only", NPZ_CASES, ids=[c[0] for c in NPZ_CASES])
def test_bad_inputs_npz(tiny, tmp_path, case, write, message, inputs_only):
    prototxt, caffemodel, inputs = tiny
    bad = tmp_path / "bad.npz"
    write(bad)
    if not bad.exists():  # np.save adds .npy
        bad = tmp_path / "bad.npz.npy"
    out = tmp_path / "out"
    with capped_memory():
        refused(run(verify, [prototxt, caffemodel, "--inputs", bad, "--reference", inputs]), str(bad), message)
        refused(run(convert, [prototxt, caffemodel, "-o", out, "--inputs", bad, "--reference", inputs]), message)
        if not inputs_only:
            refused(run(verify, [prototxt, caffemodel, "--inputs", inputs, "--reference", bad]), message)
            refused(run(convert, [prototxt, caffemodel, "-o", out, "--inputs", inputs, "--reference", bad]), message)
    assert not out.exists()


def _caffemodel_cases(tmp_path, prototxt, caffemodel):
    truncated = tmp_path / "cut.caffemodel"
    truncated.write_bytes(caffemodel.read_bytes()[:-7])
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    png = tmp_path / "image.png"
    from PIL import Image
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png)
    return [
        (tmp_path, "is a "),  # "is a folder" (ours), or click's "is a directory" where the option says dir_okay
        (empty, "empty file, not a caffemodel"),
        (truncated, "truncated or corrupt caffemodel"),
        (png, "not a caffemodel: it looks like a PNG image"),
        (prototxt, "not a caffemodel: it looks like a text file (a prototxt?)"),
        (tmp_path / "missing.caffemodel", "no such file"),
    ]


def test_bad_caffemodels(tiny, tmp_path):
    prototxt, caffemodel, inputs = tiny
    out = tmp_path / "out"
    for path, message in _caffemodel_cases(tmp_path, prototxt, caffemodel):
        refused(run(convert, [prototxt, path, "-o", out]), str(path), message)
        refused(run(verify, [prototxt, path, "--inputs", inputs, "--reference", inputs]), message)
        refused(run(info, [prototxt, path]), message)
    assert not out.exists()


def test_prototxt_and_caffemodel_swapped(tiny, tmp_path):
    prototxt, caffemodel, _ = tiny
    result = run(convert, [caffemodel, prototxt, "-o", tmp_path / "out"])
    refused(result, "tiny.caffemodel: not a text prototxt")
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    refused(run(info, [png, caffemodel]), "x.png: not a text prototxt: it looks like a PNG image")
    refused(run(info, [tmp_path, caffemodel]), "is a directory")
    refused(run(convert, [tmp_path, caffemodel, "-o", tmp_path / "out"]), "is a folder, not a prototxt")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_arguments_are_refused_not_read(tiny, tmp_path):
    prototxt, caffemodel, inputs = tiny
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(run(convert, [prototxt, fifo, "-o", tmp_path / "out"]), "is not a regular file")
    refused(run(convert, [fifo, caffemodel, "-o", tmp_path / "out"]), "is not a regular file")
    refused(run(verify, [prototxt, caffemodel, "--inputs", fifo, "--reference", inputs]), "is not a regular file")
    with pytest.raises(ArtifactError, match="is not a regular file"):
        caffe2torch.load(fifo)


def test_oversized_prototxt_is_refused_before_parsing(tiny, tmp_path):
    big = tmp_path / "big.prototxt"
    big.write_text(NET + "# padding\n" * (limits.MAX_PROTOTXT_BYTES // 10))
    refused(run(info, [big]), "big.prototxt: 16.0 MiB: over the 16.0 MiB a prototxt may take")


def test_output_folder_that_is_a_file(tiny, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    result = run(convert, [tiny[0], tiny[1], "-o", target])
    assert result.exit_code == 2 and "is a file" in result.output
    assert target.read_text() == "keep me"
    refused(run(convert, [tiny[0], tiny[1], "-o", target / "sub"]), "is a file")


@pytest.fixture()
def read_only_dir(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: make the folder immutable instead
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)]).returncode:
            pytest.skip("running as root without chattr: cannot make a read-only folder")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)


def test_read_only_output_folder(tiny, read_only_dir):
    for out in (read_only_dir, read_only_dir / "sub"):
        result = run(convert, [tiny[0], tiny[1], "-o", out])
        refused(result, str(out))
        assert "not writable" in result.output or "cannot" in result.output
    assert list(read_only_dir.iterdir()) == []


def test_failed_conversion_writes_nothing_into_an_existing_folder(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"previous")
    bad = edited(tmp_path, "stride: 2", "stride: 0")
    refused(run(convert, [bad, tiny[1], "-o", out]), "stride 0x0")
    refused(run(convert, [tiny[0], tiny[1], "-o", out, "--inputs", tiny[2], "--reference", tmp_path / "no.npz"]),
            "no such file")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"previous"


# ---------------------------------------------------------------------------------------------------------
# Artifacts: validated before the net is built
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture()
def saved(tmp_path):
    path = tmp_path / "model.safetensors"
    artifact.save_artifact(net_from_text(NET), path)
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return raw, json.loads(raw[8: 8 + length]), raw[8 + length:]


def _write(tmp_path, header, payload):
    text = json.dumps(header).encode()
    path = tmp_path / "tampered.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + payload)
    return path


def _tamper_dtype(h):
    h["layers.conv.weight"]["dtype"] = "I32"


def _tamper_shape(h):
    h["layers.conv.weight"]["shape"] = [4, 3, 9, 1]


def _tamper_extra(h):
    h["layers.extra"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}


def _tamper_missing(h):
    del h["layers.score.bias"]


def _tamper_netspec_size(h):
    spec = json.loads(h["__metadata__"]["netspec"])
    spec["layers"][0]["params"]["convolution_param"]["num_output"] = 400000000
    h["__metadata__"]["netspec"] = json.dumps(spec)


def _tamper_netspec_type(h):
    spec = json.loads(h["__metadata__"]["netspec"])
    spec["layers"][0]["params"]["convolution_param"]["kernel"] = "three"
    h["__metadata__"]["netspec"] = json.dumps(spec)


def _tamper_offsets(h):
    h["layers.conv.weight"]["data_offsets"] = [0, 1 << 40]


ARTIFACT_CASES = [
    ("dtype_f32_to_i32", _tamper_dtype, "layers.conv.weight: dtype I32, the net needs F32"),
    ("shape_edited", _tamper_shape, "layers.conv.weight: shape [4, 3, 9, 1], the net needs [4, 3, 3, 3]"),
    ("extra_tensor", _tamper_extra, "not in the net layers.extra"),
    ("missing_tensor", _tamper_missing, "missing layers.score.bias"),
    ("netspec_huge_layer", _tamper_netspec_size, "over Caffe's limit of INT_MAX"),
    ("netspec_wrong_types", _tamper_netspec_type, "corrupt net definition in the artifact"),
    ("offsets_past_the_end", _tamper_offsets, "outside the file's"),
]


@pytest.mark.parametrize("case, tamper, message", ARTIFACT_CASES, ids=[c[0] for c in ARTIFACT_CASES])
def test_tampered_artifacts_are_refused_before_building(saved, tmp_path, case, tamper, message):
    _, header, payload = saved
    tamper(header)
    path = _write(tmp_path, header, payload)
    with capped_memory(), pytest.raises(ArtifactError) as caught:
        caffe2torch.load(path)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_damaged_artifacts(saved, tmp_path):
    raw, _, _ = saved
    path = tmp_path / "damaged.safetensors"
    cases = [
        (raw[:-10], "truncated?"),
        (raw[:5], "too short for a safetensors file"),
        (struct.pack("<Q", 1 << 40) + raw[8:], "its header claims 1.0 TiB, over the 16.0 MiB"),
        (struct.pack("<Q", 20) + b"[" * 20 + raw[28:], "its header is not JSON"),
        (b"\x89PNG\r\n\x1a\n" + raw[8:], "not a caffe2torch artifact: it looks like a PNG image"),
        (NET.encode(), "not a caffe2torch artifact: it looks like a text file"),
    ]
    for data, message in cases:
        path.write_bytes(data)
        with capped_memory(), pytest.raises(ArtifactError, match=message.replace("?", r"\?").replace(".", r"\.")):
            caffe2torch.load(path)
    with pytest.raises(ArtifactError, match="is a folder"):
        caffe2torch.load(tmp_path)
    path.write_bytes(raw)
    net = caffe2torch.load(path)
    assert all(not t.is_meta for t in net.state_dict().values())


def test_weights_of_a_loaded_artifact_equal_the_saved_ones(tmp_path):
    """Read once into place, shared parameters tied again: the loaded net equals the saved one."""
    shared = 'param { name: "shared_w" } param { name: "shared_b" } '
    text = NET.replace('top: "score"\n', 'top: "score"\n' + shared) + (
        'layer { name: "copy" type: "Convolution" bottom: "pool" top: "copy" ' + shared +
        "convolution_param { num_output: 5 kernel_size: 1 } }\n")
    net = net_from_text(text)
    assert net.ties
    path = tmp_path / "model.safetensors"
    artifact.save_artifact(net, path)
    loaded = caffe2torch.load(path)
    assert loaded.module("copy").weight is loaded.module("score").weight
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        x = torch.randn(1, 3, 17, 17)
        assert torch.equal(loaded(x)[0], net(x)[0])


def test_read_caffemodel_rejects_blob_shapes_beyond_caffe_limits(tmp_path):
    from caffe2torch.wire import len_field, varint

    def blob(shape_bytes):
        layer = len_field(1, b"x") + len_field(2, b"Convolution") + len_field(7, len_field(7, shape_bytes))
        return len_field(100, layer)

    too_many_axes = blob(len_field(1, b"".join(varint(1) for _ in range(40))))
    negative = blob(len_field(1, varint((1 << 64) - 5)))
    huge = blob(len_field(1, varint(1 << 40) + varint(1 << 40)))
    for data, message in ((too_many_axes, "more than 32 axes"), (negative, "negative dimension"),
                          (huge, "over Caffe's limit of INT_MAX")):
        path = tmp_path / "m.caffemodel"
        path.write_bytes(data)
        with pytest.raises(CaffeError, match=message):
            read_caffemodel(path)



def test_in_place_layer_that_changes_the_shape_is_refused(tmp_path):
    """Caffe would reshape the layer's own input; we used to build it with the wrong channel count."""
    prototxt = edited(tmp_path, 'bottom: "pool" top: "score"', 'bottom: "pool" top: "pool"')
    refused(run(info, [prototxt]), "layer 'score' (Convolution)",
            "top 'pool' is computed in place but would change its shape from 1x4x9x9 to 1x5x9x9")


def test_huge_lrn_window_runs_without_a_huge_scratch(tmp_path):
    """local_size up to Caffe's limit is valid; torch would pad by size/2 zero channels (terabytes): the
    window is cut to 2C+1 channels with alpha scaled, the same sums."""
    text = ('input: "data"\ninput_shape { dim: 2 dim: 3 dim: 1 dim: 1 }\n'
            'layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { local_size: 2147483645 alpha: 3 } }\n')
    net = net_from_text(text)
    x = torch.randn(2, 3, 1, 1)
    with capped_memory(), torch.no_grad():
        y = net(x)
    expected = x / (1 + 3 / 2147483645 * (x ** 2).sum(1, keepdim=True)) ** 0.75
    torch.testing.assert_close(y, expected)
    too_big = text.replace("dim: 1 dim: 1 }", "dim: 2 dim: 1 }")  # Caffe's scratch blob would exceed INT_MAX
    with pytest.raises(NetDefinitionError, match="scratch blob of 4,294,967,294 elements exceeds INT_MAX"):
        net_from_text(too_big)


def test_verify_odd_arguments(tiny, tmp_path):
    prototxt, caffemodel, inputs = tiny
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("not a model")
    refused(run(verify, [prototxt, caffemodel, "--inputs", inputs, "--reference", inputs, "--onnx", not_onnx]),
            "cannot load the ONNX model")
    refused(run(verify, [prototxt, caffemodel, "--inputs", inputs, "--reference", inputs, "--tol", "nan"]),
            "nan is not a tolerance")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        refused(run(info, [fifo]), "is not a regular file")


def test_reliability_doc_names_only_existing_tests():
    """docs/reliability.md backs each row of this side's table with a test: those tests must exist."""
    import re

    from .conftest import REPO

    text = (REPO / "docs" / "reliability.md").read_text()
    section = text.split("## Convert, verify and load", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| input")]
    assert len(rows) > 30
    sources = {path.name: path.read_text() for path in (REPO / "tests").glob("test_*.py")}
    current = "test_hostile_convert.py"
    for row in rows:
        names = re.findall(r"`(?:(test_\w+\.py)::)?(test_\w+)(\[\w+\])?`|`(\[\w+\])`", row.split(" | ")[-1])
        assert names, f"a row without a test: {row}"
        for file, test, case, bare_case in names:
            current = file or current
            if test:
                assert f"def {test}(" in sources[current], f"{current}::{test} does not exist"
            for param in filter(None, (case, bare_case)):
                assert f'("{param[1:-1]}"' in sources[current], f"no case {param} in {current}"
