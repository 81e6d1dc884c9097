"""deeplab-verify PROTOTXT CAFFEMODEL --inputs X.npz --reference Y.npz: blob-by-blob parity with Caffe."""

from __future__ import annotations

from pathlib import Path

import click

from caffe2torch.caffemodel import read_caffemodel
from caffe2torch.cli.common import net_options, parse_defines, parse_input_shapes, reports_errors
from caffe2torch.errors import CaffeError, printable
from caffe2torch.outputs import check_files_spare_inputs
from caffe2torch.paths import check_output_dir, require_file
from caffe2torch.pipeline import (
    check_input_arrays,
    check_run_budget,
    convert,
    input_shapes_of,
    read_net,
    set_input_shapes,
    verify_onnx,
    verify_torch,
)
from caffe2torch.util import atomic_write_text
from caffe2torch.verify import DEFAULT_TOLERANCE, format_report, load_npz


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("prototxt", type=click.Path(dir_okay=False))
@click.argument("caffemodel", type=click.Path(dir_okay=False))
@click.option("--inputs", required=True, type=click.Path(dir_okay=False), help="Net inputs (.npz), by blob name.")
@click.option("--reference", required=True, type=click.Path(dir_okay=False),
              help="Reference blobs (.npz), by blob name, e.g. every blob Caffe computed.")
@click.option("--backend", type=click.Choice(["torch", "onnx", "openvino"]), default="torch", show_default=True,
              help="torch: the converted module; onnx: an ONNX export run by onnxruntime; openvino: the same "
                   "export run by OpenVINO in float32 (pip install 'caffe2torch[openvino]').")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False),
              help="Check this ONNX model (its outputs) instead of a fresh export; implies --backend onnx "
                   "unless --backend openvino.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the report as JSON here.")
@click.option("--tol", type=float, default=DEFAULT_TOLERANCE, show_default=True,
              help="Allowed max |ours - reference| relative to each reference blob's max magnitude.")
@net_options
@reports_errors
def main(prototxt, caffemodel, inputs, reference, backend, onnx_path, json_out, tol, defines, phase, stages,
         input_shapes):
    """Run the converted net on INPUTS and compare every blob present in REFERENCE. Prints one row per blob
    and names the first blob that diverges, in execution order. Exit status 0 only if all blobs compared pass.
    In onnxruntime, reference blobs it cannot compute (a DenseCRF layer's: it has no ONNX lowering) or that
    the --onnx model does not output are listed as not checked, with why (also in the JSON, "unchecked").

    \b
    Examples:
      deeplab-verify net.prototxt weights.caffemodel --inputs inputs.npz --reference blobs.npz
      deeplab-verify net.prototxt weights.caffemodel --inputs inputs.npz --reference blobs.npz --backend onnx
      deeplab-verify net.prototxt weights.caffemodel --inputs inputs.npz --reference blobs.npz --backend openvino
    """
    if not tol >= 0 or tol == float("inf"):
        raise click.BadParameter(f"{tol} is not a tolerance (a finite number >= 0)", param_hint="--tol")
    arrays = load_npz(inputs, "inputs")
    expected = load_npz(reference, "reference")
    if onnx_path:
        require_file(onnx_path, "an ONNX model")
    if json_out:
        check_output_dir(Path(json_out).parent)
        check_files_spare_inputs([json_out], [prototxt, caffemodel, inputs, reference, onnx_path], json_out)
    spec = read_net(prototxt, parse_defines(defines), phase, parse_input_shapes(input_shapes), stages=stages)
    check_input_arrays(spec, arrays, inputs)
    set_input_shapes(spec, input_shapes_of(arrays))
    net, loaded = convert(spec, read_caffemodel(caffemodel))
    if loaded.nonfinite:
        click.echo(f"warning: {printable(loaded.nonfinite_text())}", err=True)
    check_run_budget(net, arrays, inputs)
    if backend in ("onnx", "openvino") or onnx_path:
        runtime = "openvino" if backend == "openvino" else "onnxruntime"
        report = verify_onnx(net, arrays, expected, tol, onnx_path, runtime)
        if not report.blobs:
            raise CaffeError("no reference blob is an output of the ONNX model")
    else:
        report = verify_torch(net, arrays, expected, tol)
    click.echo(printable(format_report(report)))
    if json_out:
        atomic_write_text(json_out, report.to_json())
    if not report.ok:
        raise SystemExit(1)

if __name__ == "__main__":
    main()
