"""Careless and hostile input found by a second round of probing (issue 12): enum fields given as numbers,
run records nested too deeply for Python's JSON decoder, outputs that would replace an input, list files from
editors, caffemodel blobs with both float and double data, and the Python API called with wrong types. Each
test builds its own fixture; docs/reliability.md lists each case and what the user gets."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from caffe2torch.caffemodel import read_caffemodel_bytes
from caffe2torch.cli import convert, info, run, verify
from caffe2torch.cli import eval as eval_cli
from caffe2torch.wire import len_field, varint

from .conftest import net_from_text, write_net_files
from .runtime_helpers import convert_tiny_model, save_photo, tree_digest, voc_layout

NET = """name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 17 dim: 17 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
"""


def invoke(command, *args):
    """Run a command in-process; a traceback or an internal error fails the test, whatever the exit code."""
    result = CliRunner().invoke(command.main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return convert_tiny_model(tmp_path_factory.mktemp("tiny")) / "model.onnx"


@pytest.fixture()
def tiny(tmp_path):
    return write_net_files(tmp_path, NET)


# ---------------------------------------------------------------------------------------------------------
# Prototxt: enums given as numbers
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("old, new, message", [
    ("pool: MAX", "pool: 9", "bad.prototxt:7:31: 'layer.pooling_param.pool' = 9 is not a value of PoolMethod (MAX=0"),
    ('top: "pool"', 'top: "pool" include { phase: 7 }', ":6:82: 'layer.include.phase' = 7 is not a value of Phase"),
    ('top: "pool"', 'top: "pool" include { phase: -1 }', "= -1 is not a value of Phase (TRAIN=0, TEST=1)"),
])
def test_enum_numbers_that_name_no_value_are_located_errors(tmp_path, old, new, message):
    """Caffe's proto2 enums are closed; `include { phase: 7 }` used to be an internal AttributeError."""
    path = tmp_path / "bad.prototxt"
    path.write_text(NET.replace(old, new))
    result = invoke(info, path)
    assert result.exit_code == 2 and message in result.output, result.output


def test_enum_numbers_that_name_a_value_are_that_value(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET.replace("pool: MAX", "pool: 1").replace('top: "pool"', 'top: "pool" include { phase: 0 }'))
    result = invoke(info, path)
    assert result.exit_code == 0 and "not in TEST phase" in result.output, result.output  # phase 0 is TRAIN
    path.write_text(NET.replace('top: "pool"', 'top: "pool" include { phase: 1 }'))
    assert "not in TEST phase" not in invoke(info, path).output


# ---------------------------------------------------------------------------------------------------------
# Outputs never replace an input
# ---------------------------------------------------------------------------------------------------------

def test_convert_refuses_outputs_that_would_replace_its_inputs(tiny, tmp_path):
    prototxt, caffemodel = tiny
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text(NET)  # the prototxt, saved under the name of an output
    (out / "model.safetensors").write_text("a\nb\nc\nd\n")  # a class names file, likewise
    before = tree_digest(tmp_path)
    result = invoke(convert, out / "model.onnx", caffemodel, "-o", out)
    assert result.exit_code == 2 and f"{out / 'model.onnx'} would be overwritten by this command's outputs" \
        in result.output, result.output
    result = invoke(convert, prototxt, caffemodel, "-o", out, "--no-onnx", "--classes", out / "model.safetensors")
    assert result.exit_code == 2 and "would be overwritten" in result.output, result.output
    assert tree_digest(tmp_path) == before


def test_verify_json_report_may_not_replace_an_input(tiny, tmp_path):
    prototxt, caffemodel = tiny
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, data=np.zeros((1, 3, 17, 17), np.float32))
    reference = tmp_path / "ref.npz"
    np.savez(reference, data=np.zeros((1, 3, 17, 17), np.float32))
    link = tmp_path / "report.json"
    link.symlink_to(prototxt.name)
    before = tree_digest(tmp_path)
    for target in (prototxt, inputs, link):
        result = invoke(verify, prototxt, caffemodel, "--inputs", inputs, "--reference", reference, "--json", target)
        assert result.exit_code == 2 and "would be overwritten by this command's outputs" in result.output
    assert tree_digest(tmp_path) == before
    ok = invoke(verify, prototxt, caffemodel, "--inputs", inputs, "--reference", reference,
                "--json", tmp_path / "parity.json")
    assert ok.exit_code == 0, ok.output


def test_run_refuses_a_model_file_among_its_outputs(model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    photos = tmp_path / "photos"
    photos.mkdir()
    save_photo(photos / "a.png", 1)
    for name in ("legend.json", "a.png", "a_overlay.png"):
        (out / name).write_bytes(model.read_bytes())
        before = tree_digest(tmp_path)
        result = invoke(run, "--onnx", out / name, photos, "-o", out)
        assert result.exit_code == 2 and f"{out / name} would be overwritten" in result.output, result.output
        assert tree_digest(tmp_path) == before
        (out / name).unlink()


# ---------------------------------------------------------------------------------------------------------
# Records in the output folder nested too deeply for Python's JSON decoder
# ---------------------------------------------------------------------------------------------------------

def test_deeply_nested_run_records_are_not_internal_errors(model, tmp_path):
    nested = "[" * 100_000 + "]" * 100_000
    root = tmp_path / "VOC2012"
    voc_layout(root, count=1)
    out = tmp_path / "r"
    out.mkdir()
    (out / "run.json").write_text(nested)
    result = invoke(eval_cli, "--onnx", model, "--voc-root", root, "-o", out)
    assert result.exit_code == 2 and "run.json: cannot read the settings of the earlier run (JSON nested too " \
                                      "deeply)" in result.output, result.output
    seg = tmp_path / "seg"
    seg.mkdir()
    (seg / ".deeplab-run.jsonl").write_text(nested + "\n")
    save_photo(tmp_path / "a.png", 2)
    result = invoke(run, "--onnx", model, tmp_path / "a.png", "-o", seg)
    assert result.exit_code == 0 and (seg / "a.png").exists(), result.output


# ---------------------------------------------------------------------------------------------------------
# List files as editors write them
# ---------------------------------------------------------------------------------------------------------

def test_list_files_with_a_bom_comments_and_crlf_are_read(model, tmp_path):
    root = tmp_path / "VOC2012"
    ids = voc_layout(root, count=2)
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbf# ids of the test\r\n" + f"{ids[0]}\r\n\r\n  # {ids[1]}\r\n".encode())
    result = invoke(eval_cli, "--onnx", model, "--voc-root", root, "--list", listing, "-o", tmp_path / "r")
    assert result.exit_code == 0 and "1 image(s) scored" in result.output, result.output


# ---------------------------------------------------------------------------------------------------------
# Caffemodel blobs: Blob::FromProto's rules
# ---------------------------------------------------------------------------------------------------------

def _one_blob_model(blob: bytes) -> bytes:
    return len_field(100, len_field(1, b"conv") + len_field(2, b"Convolution") + len_field(7, blob))


def test_double_data_and_legacy_dims_take_precedence_as_in_caffe():
    floats = np.arange(6, dtype="<f4").tobytes()
    doubles = (np.arange(6, dtype="<f8") * 10).tobytes()
    shape = len_field(7, len_field(1, b"".join(varint(d) for d in (2, 3))))
    # Both float and double data: Caffe reads the doubles (we used to join both: "needs 6 values but holds 12").
    blob = read_caffemodel_bytes(_one_blob_model(shape + len_field(5, floats) + len_field(8, doubles))).layers[0]
    assert blob.blobs[0].shape == (2, 3) and blob.blobs[0].reshape(-1).tolist() == [0, 10, 20, 30, 40, 50]
    # Legacy num/channels/height/width beside `shape`: Caffe uses the legacy dims.
    legacy = b"".join(varint((n << 3) | 0) + varint(v) for n, v in ((1, 1), (2, 1), (3, 3), (4, 2)))
    blob = read_caffemodel_bytes(_one_blob_model(shape + legacy + len_field(5, floats))).layers[0]
    assert blob.blobs[0].shape == (1, 1, 3, 2) and blob.legacy_shape == [True]


# ---------------------------------------------------------------------------------------------------------
# Models that are not what they claim
# ---------------------------------------------------------------------------------------------------------

def test_onnx_metadata_that_is_not_utf8_is_a_located_error(model, tmp_path):
    """onnxruntime decodes metadata strings as UTF-8 when Python asks for them: one flipped byte used to be an
    internal UnicodeDecodeError. (Concatenated protobuf messages merge: the entry is appended.)"""
    entry = len_field(1, b"caffe2torch.palette") + len_field(2, b"v\xffc")
    tampered = tmp_path / "tampered.onnx"
    tampered.write_bytes(model.read_bytes() + len_field(14, entry))
    save_photo(tmp_path / "a.png", 3)
    result = invoke(run, "--onnx", tampered, tmp_path / "a.png", "-o", tmp_path / "out")
    assert result.exit_code == 2 and f"{tampered}: cannot load the ONNX model: its metadata or input/output " \
                                      "names are not UTF-8 text" in result.output, result.output


def test_an_onnx_model_where_a_caffemodel_or_artifact_goes_is_named(model, tiny, tmp_path):
    import caffe2torch

    prototxt, caffemodel = tiny
    result = invoke(convert, prototxt, model, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "not a caffemodel: it looks like an ONNX model" in result.output
    with pytest.raises(caffe2torch.errors.ArtifactError, match="not a caffe2torch artifact: it looks like an ONNX"):
        caffe2torch.load(model)
    with pytest.raises(caffe2torch.errors.ArtifactError, match="caffe2torch.convert"):
        caffe2torch.load(caffemodel)


# ---------------------------------------------------------------------------------------------------------
# The Python API called with wrong types
# ---------------------------------------------------------------------------------------------------------

def test_python_api_refuses_wrong_types_with_one_clear_error(tiny):
    import caffe2torch
    from caffe2torch.errors import ArgumentTypeError, CaffeError

    prototxt, caffemodel = tiny
    calls = [
        (lambda: caffe2torch.convert(None, caffemodel), "expected a path to a prototxt (str or os.PathLike), not "
                                                        "NoneType"),
        (lambda: caffe2torch.convert(prototxt, 3), "a caffemodel (str or os.PathLike), not int"),
        (lambda: caffe2torch.convert("", caffemodel), "a prototxt: an empty path"),
        (lambda: caffe2torch.convert(prototxt, caffemodel, defines=1), "defines must be a mapping"),
        (lambda: caffe2torch.convert(prototxt, caffemodel, defines={"A": None}), "'A': None is not NAME"),
        (lambda: caffe2torch.convert(prototxt, caffemodel, phase=None), "phase must be 'test' or 'train'"),
        (lambda: caffe2torch.convert(prototxt, caffemodel, input_shapes=[1]), "input_shapes must be a mapping"),
        (lambda: caffe2torch.convert(prototxt, caffemodel, input_shapes={"data": "1,3,9,9"}), "not a sequence"),
        (lambda: caffe2torch.convert(prototxt, caffemodel, input_shapes={"data": (1, 3, 9.5, 9)}), "not a sequence"),
        (lambda: caffe2torch.convert(prototxt, caffemodel, input_shapes={"data": (1, True, 9, 9)}), "not a sequence"),
        (lambda: caffe2torch.load(None), "expected a path to a caffe2torch artifact"),
        (lambda: caffe2torch.load(""), "an empty path"),
    ]
    for call, message in calls:
        with pytest.raises(ArgumentTypeError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
            call()
        assert isinstance(caught.value, TypeError) and isinstance(caught.value, CaffeError)
    # bytes and os.PathLike paths, numbers as define values and numpy integers as dims are fine
    net, _ = caffe2torch.convert(bytes(prototxt), str(caffemodel), defines={"UNUSED": 21},
                                 input_shapes={"data": (1, 3, np.int64(9), 9)})
    assert net.shapes.blobs["data"] == (1, 3, 9, 9)


# ---------------------------------------------------------------------------------------------------------
# Options given twice, empty or in other digits
# ---------------------------------------------------------------------------------------------------------

def test_options_given_twice_differently_or_empty_are_usage_errors(model, tiny, tmp_path, monkeypatch):
    prototxt, caffemodel = tiny
    save_photo(tmp_path / "a.png", 4)
    cases = [
        (info, [prototxt, "--input-shape", "data=1,3,9,9", "--input-shape", "data=1,3,11,11"],
         "data is given twice, as 1,3,9,9 and 1,3,11,11"),
        (info, [prototxt, "--input-shape", "data=1,3,\u0669,9"], "is not NAME=N,C,H,W"),  # an Arabic-Indic 9
        (info, [prototxt, "--input-shape", "data=1,3,1_0,9"], "is not NAME=N,C,H,W"),
        (info, [prototxt, "--define", "A=1", "--define", "A=2"], "A is given twice, as '1' and '2'"),
        (run, ["--onnx", model, tmp_path / "a.png", "-o", tmp_path / "o", "--crf-params", "bi_w=4,bi_w=5"],
         "bi_w is given twice, as 4 and 5"),
        (run, ["--onnx", model, tmp_path / "a.png", "-o", tmp_path / "o", "--crf-preset", ""],
         "an empty CRF preset name"),
    ]
    for command, args, message in cases:
        result = invoke(command, *args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert not (tmp_path / "o").exists()
    same_twice = invoke(info, prototxt, "--define", "A=1", "--define", "A=1", "--input-shape", "data=1,3,9,9",
                        "--input-shape", "data=1,3,9,9")
    assert same_twice.exit_code == 0, same_twice.output
    monkeypatch.setenv("CAFFE2TORCH_MAX_WEIGHTS", "\u0661\u0662")  # Arabic-Indic 12: not a size
    result = invoke(convert, prototxt, caffemodel, "-o", tmp_path / "c")
    assert result.exit_code == 2 and "CAFFE2TORCH_MAX_WEIGHTS: '" in result.output and "is not a size" in result.output


# ---------------------------------------------------------------------------------------------------------
# Long file names
# ---------------------------------------------------------------------------------------------------------

def test_inputs_with_names_near_the_file_system_limit_get_outputs(model, tmp_path):
    """A 250-byte image name is valid, but `<name>_overlay.png` and the temporary `.<name>.XXXXXXXX.part` were
    not ("File name too long": the image was skipped)."""
    import os

    from caffe2torch.util import atomic_write_text

    photos = tmp_path / "photos"
    photos.mkdir()
    long_ascii, long_utf8 = "a" * 249, "\u00e9" * 125  # 253 and 254 bytes with their extensions
    save_photo(photos / f"{long_ascii}.png", 5)
    save_photo(photos / f"{long_utf8}.jpg", 6)
    out = tmp_path / "out"
    result = invoke(run, "--onnx", model, photos, "-o", out, "--save-probs")
    assert result.exit_code == 0 and "segmented 2 of 2" in result.output, result.output
    names = os.listdir(out)
    assert len([n for n in names if n.endswith("_overlay.png")]) == 2
    assert max(len(os.fsencode(n)) for n in names) <= 255
    assert any(n.startswith("a" * 200) for n in names) and any(n.startswith("\u00e9" * 100) for n in names)
    atomic_write_text(out / ("b" * 255), "a final name of 255 bytes has a temporary that fits")
    assert (out / ("b" * 255)).read_text().startswith("a final name")


# ---------------------------------------------------------------------------------------------------------
# Names that hold terminal controls, and non-ASCII names written as protobuf escapes
# ---------------------------------------------------------------------------------------------------------

def test_terminal_controls_in_names_are_printed_escaped(model, tmp_path):
    """A layer, blob or file name holding ESC sequences (colour, window title) or a right-to-left override
    used to reach the terminal as is."""
    path = tmp_path / "net.prototxt"
    path.write_text(NET.replace('name: "pool"', 'name: "p\\033]0;pwned\\007\\342\\200\\256"')
                    .replace('bottom: "conv" top: "pool"', 'bottom: "nope" top: "pool"'))
    result = invoke(info, path)
    assert result.exit_code == 2 and "layer 'p\\x1b]0;pwned\\x07\\u202e' (Pooling)" in result.output, result.output
    assert "\x1b" not in result.output and "\u202e" not in result.output
    path.write_text(NET.replace('name: "pool"', 'name: "p\\033[2J"'))
    result = invoke(info, path)
    assert result.exit_code == 0 and "p\\x1b[2J" in result.output and "\x1b" not in result.output, result.output
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "evil\x1b[2J.png").write_bytes(b"not an image")
    result = invoke(run, "--onnx", model, photos, "-o", tmp_path / "out")
    assert result.exit_code == 1 and "evil\\x1b[2J.png: not an image file" in result.output, result.output
    assert "\x1b" not in result.output


def test_non_ascii_names_written_as_octal_escapes_match_the_caffemodel(tmp_path):
    """protobuf's text printer writes 'é' as "\\303\\251" (UTF-8 bytes); it was read as two Latin-1 characters,
    so the layer found no weights in a caffemodel that names it 'é'."""
    from caffe2torch.caffemodel import WeightsLayer, write_caffemodel
    from caffe2torch.pipeline import convert as convert_net

    text = NET.replace('name: "conv"', 'name: "c\\303\\251\\u00e9"')
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    weights = [np.ones((4, 3, 3, 3), np.float32), np.zeros(4, np.float32)]
    write_caffemodel(tmp_path / "w.caffemodel", [WeightsLayer("c\u00e9\u00e9", "Convolution", weights)])
    net, report = convert_net(path, tmp_path / "w.caffemodel")
    assert report.ok and "c\u00e9\u00e9" in [layer.name for layer in net.spec.layers]


def test_caffes_counts_for_convolution_geometry_and_input_shapes():
    # BaseConvolutionLayer: kernel_size once or once per spatial axis (three equal values for two axes are
    # refused: the count matters); InputLayer: one shape, one per top, or none.
    with pytest.raises(Exception, match=r"must be given once, or once per spatial axis \(2\)"):
        net_from_text(NET.replace("kernel_size: 3 pad: 1", "kernel_size: 3 kernel_size: 3 kernel_size: 3 pad: 1"))
    two_shapes = ('layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 9 dim: 9 } '
                  'shape { dim: 1 dim: 3 dim: 9 dim: 9 } } }\n'
                  'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
                  'convolution_param { num_output: 2 kernel_size: 3 } }')
    with pytest.raises(Exception, match=r"test.prototxt:1: layer 'in' \(Input\): input_param gives 2 shapes for 1"):
        net_from_text(two_shapes)


def test_crf_weights_beyond_any_use_and_absurd_scales_are_refused_up_front(model, tmp_path):
    photo = save_photo(tmp_path / "photo.jpg", seed=1)
    result = invoke(run, "--onnx", model, photo, "-o", tmp_path / "a", "--crf", "--crf-params", "bi_w=1e308")
    assert result.exit_code == 2 and "bi_w 1e+308 is out of range" in result.output, result.output
    result = invoke(run, "--onnx", model, photo, "-o", tmp_path / "b", "--scales", "1e300")
    assert result.exit_code == 2 and "at most 1000" in result.output and "1e300" in result.output, result.output
    assert len(result.output) < 600  # no 300-digit pixel count
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_skipped_image_is_named_once_as_the_user_gave_it(model, tmp_path, monkeypatch):
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    monkeypatch.chdir(tmp_path)
    result = invoke(run, "--onnx", model, "broken.jpg", "-o", "out")
    assert result.exit_code == 1, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("skipped:"))
    assert line.startswith("skipped: broken.jpg: ") and str(tmp_path) not in line, line
