"""DomainTransform (DeepLab v2, DT-EdgeNet) on score maps: the torch layer and its ONNX export in onnxruntime,
in one process, alternating, medians; and their agreement.

    python benchmarks/domain_transform.py [--sizes 65,513] [--channels 21] [--batch 1] [--runs 5] [--threads 2]

The features are random 21-class scores, the edge map uniform in [0, 1), num_iter 3 and the layer's default
sigmas; data_dim covers the whole blob (the most work). The ONNX model is exported once, at the first size,
and run at every size (its passes are onnx::Loops over the input's rows and columns).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternate, machine, table  # noqa: E402

NET = """input: "scores" input_shape {{ dim: {n} dim: {c} dim: {h} dim: {h} }}
input: "edges" input_shape {{ dim: {n} dim: 1 dim: {h} dim: {h} }}
input: "data_dim" input_shape {{ dim: {n} dim: 1 dim: 1 dim: 2 }}
layer {{ name: "dt" type: "DomainTransform" bottom: "scores" bottom: "edges" bottom: "data_dim" top: "dt"
        domain_transform_param {{ num_iter: 3 }} }}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="65,513", help="square blob sizes, comma-separated")
    parser.add_argument("--channels", type=int, default=21)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from caffe2torch.onnx_export import export_onnx
    from caffe2torch.parse import parse_prototxt_text
    from caffe2torch.pipeline import build_net
    from caffe2torch.upgrade import upgrade_net

    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        text = NET.format(n=args.batch, c=args.channels, h=sizes[0])
        net = build_net(upgrade_net(parse_prototxt_text(text, source="dt.prototxt")))
        export_onnx(net, Path(tmp) / "dt.onnx", ["dt"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(Path(tmp) / "dt.onnx"), options, providers=["CPUExecutionProvider"])
        layer = net.module("dt")
        for size in sizes:
            rng = np.random.default_rng(size)
            feeds = {"scores": rng.standard_normal((args.batch, args.channels, size, size)).astype(np.float32),
                     "edges": rng.random((args.batch, 1, size, size)).astype(np.float32),
                     "data_dim": np.full((args.batch, 1, 1, 2), size, np.float32)}
            tensors = {name: torch.from_numpy(value) for name, value in feeds.items()}

            def run_torch(tensors=tensors):
                with torch.no_grad():
                    return layer(tensors["scores"], tensors["edges"], tensors["data_dim"]).numpy()

            def run_onnx(feeds=feeds):
                return session.run(["dt"], feeds)[0]

            times = alternate({"torch (eager)": run_torch, "onnxruntime (onnx::Loop)": run_onnx}, args.runs)
            ours, theirs = run_torch(), run_onnx()
            print(table(times, "torch (eager)", f"\nDomainTransform {args.batch}x{args.channels}x{size}x{size}, "
                                                f"num_iter 3, {args.threads} threads"))
            medians = ", ".join(f"{name} {statistics.median(values) * 1000:.1f} ms" for name, values in times.items())
            print(f"medians: {medians}; onnxruntime vs torch: max |diff| / max |torch| = "
                  f"{float(np.abs(theirs - ours).max() / np.abs(ours).max()):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
