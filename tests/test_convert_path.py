"""The conversion's shortcuts give what the plain path gives: probes sharing per-layer shapes (ShapeMemo), layers
built on the meta device and loaded in one copy, one torch thread for small work, hashing beside the main
thread; and the conversion benchmark measures a child process's own memory."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from caffe2torch.definitions import bundled_definition
from caffe2torch.errors import NetDefinitionError
from caffe2torch.input_sizes import accepted_input_sizes, with_input_sizes
from caffe2torch.layers.registry import CaffeLayer
from caffe2torch.load_weights import load_caffemodel_weights
from caffe2torch.net import _holds_more_than_blobs, build_net
from caffe2torch.pipeline import convert, read_net
from caffe2torch.shapes import ShapeMemo, infer_shapes
from caffe2torch.util import in_background, single_threaded

from .conftest import net_from_text, spec_from_text, write_random_weights
from .test_shared_branches import MSC

ROOT = Path(__file__).resolve().parents[1]


# -- ShapeMemo ----------------------------------------------------------------------------------------------


def test_probes_with_a_memo_give_the_shapes_of_plain_inference():
    spec = read_net(bundled_definition("deeplab-v2-resnet101-msc"))
    memo = ShapeMemo(spec)
    for offset in (0, 1, 5, 32, 37, -256, 3):  # accepted sizes: 32k+1 .. 32k+6
        probed = with_input_sizes(spec, offset)
        plain = infer_shapes(probed, check=False)
        memoized = infer_shapes(probed, check=False, memo=memo)
        assert memoized.blobs == plain.blobs
        assert [(a.name, a.top_shapes, a.blob_shapes, a.bottom_shapes, a.params) for a in memoized.layers] == \
            [(a.name, a.top_shapes, a.blob_shapes, a.bottom_shapes, a.params) for a in plain.layers]
        assert {a.field for a in memoized.layers} == {None}  # shapes only: no receptive fields
    assert len(memo.infos) < 4 * len(spec.layers)  # seven sizes: many layers looked up, not computed


def test_a_refused_size_is_refused_with_a_memo_too_and_not_remembered():
    spec = read_net(bundled_definition("deeplab-v2-resnet101-msc"))
    memo = ShapeMemo(spec)
    infer_shapes(spec, check=False, memo=memo)
    remembered = len(memo.infos)
    with pytest.raises(NetDefinitionError, match="Eltwise bottoms must have the same shape"):
        infer_shapes(with_input_sizes(spec, 10), check=False)
    with pytest.raises(NetDefinitionError, match="Eltwise bottoms must have the same shape"):
        infer_shapes(with_input_sizes(spec, 10), check=False, memo=memo)
    fusion = [p for p, layer in enumerate(spec.layers) if layer.name == "fc_fusion"][0]
    assert len([key for key in memo.infos if key[0] == fusion]) == 1  # only the accepted size's
    assert len(memo.infos) > remembered


def test_a_memo_serves_one_net():
    memo = ShapeMemo(spec_from_text(MSC))
    with pytest.raises(ValueError, match="the net it was made for"):
        infer_shapes(spec_from_text(MSC), memo=memo)


def test_input_sizes_of_the_bundled_msc_net():
    sizes = accepted_input_sizes(read_net(bundled_definition("deeplab-v2-resnet101-msc")))
    assert sizes.describe() == ("dynamic batch, dynamic height and width (height 32k+1..32k+6 (>= 1), width "
                                "32k+1..32k+6 (>= 1))")


# -- building on meta, loading in one copy --------------------------------------------------------------------


def test_convert_loads_what_building_and_loading_gave(tmp_path):
    path = tmp_path / "w.caffemodel"
    write_random_weights(net_from_text(MSC), path)
    fast, report = convert(spec_from_text(MSC), path)
    plain = build_net(spec_from_text(MSC))  # every layer initialised, then overwritten
    load_caffemodel_weights(plain, path)
    assert report.ok  # shared blobs load from the caffemodel's last copy, as Caffe does (load_weights)
    fast_state, plain_state = fast.state_dict(), plain.state_dict()
    assert list(fast_state) == list(plain_state)
    for name, value in fast_state.items():
        assert not value.is_meta and value.dtype == torch.float32
        assert torch.equal(value, plain_state[name]), name
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in fast.parameters())
    assert fast.module("conv1_half").weight is fast.module("conv1").weight  # still shared, not copied
    assert fast.module("bn1_half").mean is fast.module("bn1").mean
    with torch.no_grad():
        x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 33, 33)).astype(np.float32))
        assert torch.equal(fast(x), plain(x))


def test_a_layer_the_caffemodel_lacks_keeps_its_initial_values(tmp_path):
    path = tmp_path / "w.caffemodel"
    text = MSC.replace('param { name: "sc_w" } param { name: "sc_b" }', "")  # score(_half) own their weights
    blobs = write_random_weights(net_from_text(text), path)
    from caffe2torch.caffemodel import WeightsLayer, write_caffemodel

    write_caffemodel(path, [WeightsLayer(name, next(x.type for x in spec_from_text(text).layers if x.name == name), b)
                            for name, b in blobs.items() if name != "score_half"])
    net, report = convert(spec_from_text(text), path, strict=False)
    assert report.missing == ["score_half"]
    assert not any(t.is_meta for t in [*net.parameters(), *net.buffers()])
    assert torch.equal(net.module("score").weight.detach(), torch.from_numpy(blobs["score"][0]))


class _WithScratch(CaffeLayer):
    blob_names = ("weight",)

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))
        self.register_buffer("scratch", torch.zeros(2))


def test_a_layer_holding_more_than_its_blobs_is_built_in_memory():
    assert _holds_more_than_blobs(_WithScratch())
    assert not _holds_more_than_blobs(net_from_text(MSC).module("bn1"))


# -- threads ----------------------------------------------------------------------------------------------------


def test_single_threaded_restores_the_thread_count():
    before = torch.get_num_threads()
    with single_threaded():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(KeyError), single_threaded():
        raise KeyError
    assert torch.get_num_threads() == before


def test_in_background_hands_back_the_result_or_the_error():
    main = threading.current_thread()
    assert in_background(lambda a, b: (a + b, threading.current_thread() is main), 2, 3).result(timeout=10) == \
        (5, False)
    with pytest.raises(FileNotFoundError):
        in_background(open, "/nonexistent/caffe2torch").result(timeout=10)


# -- the benchmark's measurement of a child -------------------------------------------------------------------


def _benchmark_common():
    spec = importlib.util.spec_from_file_location("c2t_benchmark_common", ROOT / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from common import own_memory
start = own_memory()["current"]
block = bytearray(200 << 20)
block[::4096] = b"\\x01" * len(range(0, 200 << 20, 4096))  # touch every page
memory = own_memory()
print(start, memory["peak"], memory["current"])
"""


def test_a_child_reports_its_own_peak_not_its_parents():
    common = _benchmark_common()
    parent = np.ones(300 << 18, np.float32)  # 300 MB held (and touched) here while the child runs
    run = common.run_child([sys.executable, "-c", CHILD, str(ROOT / "benchmarks")])
    assert run.returncode == 0, run.stderr
    start, peak, current = (int(v) for v in run.stdout.split())
    assert 195 << 20 <= peak - start <= 215 << 20  # the 200 MB it touched
    assert peak < parent.nbytes  # nothing of the parent's 300 MB
    assert current <= peak
    assert run.cpu_s > 0 and run.wall_s > 0


def test_weights_load_into_a_net_of_another_dtype(tmp_path):
    path = tmp_path / "w.caffemodel"
    blobs = write_random_weights(net_from_text(MSC), path)
    net = net_from_text(MSC).double()
    load_caffemodel_weights(net, path)
    assert net.module("conv2").weight.dtype == torch.float64
    # conv2 shares its weights with conv2_half by ParamSpec name: Caffe's last copy in the caffemodel wins
    assert torch.equal(net.module("conv2").weight.detach(), torch.from_numpy(blobs["conv2_half"][0]).double())
