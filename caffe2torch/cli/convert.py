"""deeplab-convert PROTOTXT CAFFEMODEL: a Caffe model → a safe caffe2torch artifact (+ a parity report)."""

from __future__ import annotations

import json
import os
import time

import click

from caffe2torch.artifact import save_artifact
from caffe2torch.caffemodel import read_caffemodel
from caffe2torch.class_names import model_class_names, read_class_names
from caffe2torch.cli.common import echo_notes, net_options, parse_defines, parse_input_shapes, reports_errors
from caffe2torch.crf import crf_preset as crf_preset_params
from caffe2torch.definitions import bundled_definition
from caffe2torch.errors import CaffeError, Location, printable
from caffe2torch.images import list_images, read_image
from caffe2torch.in_net_crf import runner_outputs
from caffe2torch.input_sizes import known_input_sizes
from caffe2torch.known_models import identify, known_model
from caffe2torch.onnx_export import check_exportable, export_onnx
from caffe2torch.outputs import check_files_spare_inputs
from caffe2torch.paths import check_output_dir, make_output_dir
from caffe2torch.pipeline import (
    check_blob_names,
    check_input_arrays,
    check_run_budget,
    convert,
    input_shapes_of,
    read_net,
    set_input_shapes,
    verify_torch,
)
from caffe2torch.quantize import quantize_int8
from caffe2torch.runner import model_info
from caffe2torch.util import atomic_write_text, file_sha256, in_background
from caffe2torch.verify import DEFAULT_TOLERANCE, format_report, load_npz

ARTIFACT_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("files", nargs=-1, metavar="[PROTOTXT] CAFFEMODEL")
@click.option("--model", "model_id", default=None, metavar="ID",
              help="Use the bundled definition of a known model instead of a PROTOTXT (see deeplab-info).")
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False), default="converted", show_default=True,
              help="Folder for the artifact (model.safetensors) and reports.")
@net_options
@click.option("--inputs", type=click.Path(dir_okay=False), help="Net inputs (.npz) for a parity check.")
@click.option("--reference", type=click.Path(dir_okay=False), help="Reference blobs (.npz) from Caffe.")
@click.option("--tol", type=float, default=DEFAULT_TOLERANCE, show_default=True,
              help="Parity tolerance relative to each reference blob's max magnitude.")
@click.option("--onnx/--no-onnx", "write_onnx", default=True, show_default=True, help="Also write OUTDIR/model.onnx.")
@click.option("--onnx-outputs", default="", metavar="BLOB,...", help="Blobs the ONNX model returns (default: the "
              "net outputs).")
@click.option("--int8", "int8_images", type=click.Path(exists=True), default=None, metavar="IMAGES",
              help="Also write model.int8.onnx, calibrated on these images (a folder; up to 16 are used).")
@click.option("--crf-preset", default=None, metavar="NAME", help="CRF preset recorded for deeplab-run "
              "(default: the net's own DenseCRF layer if it has one, else v1 for DeepLab v1 nets, v2 otherwise).")
@click.option("--classes", default=None, metavar="FILE|A,B,...", help="Class names: a file with one name per "
              "line, or a comma list; as many as the net's output channels (default: a known model's, VOC's "
              "for 21 channels, else class_0..class_N-1).")
@reports_errors
def main(files, model_id, outdir, defines, phase, stages, input_shapes, inputs, reference, tol, write_onnx,
         onnx_outputs, int8_images, crf_preset, classes):
    """Convert PROTOTXT + CAFFEMODEL (or a known model's bundled definition + CAFFEMODEL with --model ID) into
    OUTDIR/model.safetensors, a file that caffe2torch.load() turns back
    into a ready torch module without pickle, prototxt or caffemodel, and OUTDIR/model.onnx for onnxruntime
    (deeplab-run --onnx), which carries its preprocessing, input sizes, class names and CRF setting as metadata.
    A net with DeepLab's DenseCRF layer inside is exported up to the CRF's scores input; the layer's
    parameters become the model's CRF setting (deeplab-run --crf).

    \b
    Examples:
      deeplab-convert test.prototxt train_iter_20000.caffemodel --define NUM_LABELS=21 --define EXP=voc12
      deeplab-convert --model deeplab-v2-resnet101-msc train_iter_20000.caffemodel -o resnet
      deeplab-convert net.prototxt net.caffemodel --inputs inputs.npz --reference blobs.npz --int8 photos/
      deeplab-convert net.prototxt net.caffemodel --classes background,road,car
    """
    if bool(inputs) != bool(reference):
        raise click.UsageError("--inputs and --reference go together")
    if model_id:
        if len(files) != 1:
            raise click.UsageError("with --model give only the CAFFEMODEL")
        prototxt, caffemodel = str(bundled_definition(known_model(model_id).definition)), files[0]
    elif len(files) == 2:
        prototxt, caffemodel = files
    else:
        raise click.UsageError("give PROTOTXT and CAFFEMODEL, or --model ID and CAFFEMODEL")
    if crf_preset is not None:
        try:
            crf_preset_params(crf_preset)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--crf-preset") from None
    started = time.perf_counter()
    # Everything is validated before anything is written into OUTDIR.
    out = check_output_dir(outdir)
    written = [out / ARTIFACT_NAME] + [out / ONNX_NAME] * write_onnx + [out / INT8_NAME] * bool(int8_images)
    check_files_spare_inputs(written + [out / "parity.json"] * bool(inputs), [
        prototxt, caffemodel, inputs, reference, classes if classes and os.path.isfile(classes) else None,
        *(list_images([int8_images]) if int8_images else [])], out)
    given_classes = read_class_names(classes) if classes is not None else None
    spec = read_net(prototxt, parse_defines(defines), phase, parse_input_shapes(input_shapes), stages=stages)
    arrays = load_npz(inputs, "inputs") if inputs else None
    expected = load_npz(reference, "reference") if reference else None
    if arrays:
        check_input_arrays(spec, arrays, inputs)
        set_input_shapes(spec, input_shapes_of(arrays))
    model = read_caffemodel(caffemodel)
    hashes = in_background(source_hashes, prototxt, caffemodel)  # (on the other core, beside the conversion)
    net, loaded = convert(spec, model)
    echo_notes(spec.notes)
    if loaded.nonfinite:
        click.echo(f"warning: {printable(loaded.nonfinite_text())}", err=True)
    for dropped in spec.dropped:
        click.echo(printable(f"dropped {dropped.name} ({dropped.type}): {dropped.reason}"), err=True)
    known = identify(model)
    requested = [o for o in onnx_outputs.split(",") if o] or None
    if requested:
        check_blob_names(net, requested, "--onnx-outputs")
    chosen = runner_outputs(spec, requested, net.shapes.blobs)
    echo_notes(chosen.notes)
    preset = crf_preset or (known.crf_preset if known and chosen.crf is None else None)
    sizes = known_input_sizes(spec, chosen.outputs)
    shape = net.shapes.blobs[chosen.outputs[0]]
    channels = shape[1] if len(shape) > 1 else None
    names = model_class_names(channels, given_classes, known.class_names if known else None)
    info = model_info(spec, preset, chosen.outputs, names, sizes)
    info.model_id = known.id if known else None
    if write_onnx:
        check_exportable(net, chosen.outputs)
    elif int8_images:
        raise click.UsageError("--int8 needs the ONNX export (drop --no-onnx)")
    images = [read_image(p) for p in list_images([int8_images])[:16]] if int8_images else []
    if int8_images and not images:
        raise CaffeError("int8 calibration needs at least one image", Location(str(int8_images)))
    if arrays is not None:
        check_run_budget(net, arrays, inputs)
    make_output_dir(out)
    if known:
        click.echo(f"recognised {known.name} ({known.id})")
    artifact = out / ARTIFACT_NAME
    prototxt_sha256, caffemodel_sha256 = hashes.result()
    sources = {
        "model_id": known.id if known else "", "crf_preset": info.crf_preset or "",
        "source_prototxt": str(prototxt), "source_prototxt_sha256": prototxt_sha256,
        "source_caffemodel": str(caffemodel), "source_caffemodel_sha256": caffemodel_sha256,
    }
    if write_onnx:
        metadata = {**sources, **info.to_metadata()}
        export_onnx(net, out / ONNX_NAME, chosen.outputs, metadata, sizes=sizes)
        described = "see its metadata" if sizes is None else sizes.describe()
        click.echo(f"wrote {out / ONNX_NAME} (onnxruntime, output {', '.join(chosen.outputs)}; {described})")
    save_artifact(net, artifact, {**sources, "runner": json.dumps(info.to_metadata())})
    params = sum(p.numel() for p in net.parameters())
    # Caffe's blobs also hold statistics (BatchNorm's mean, variance and factor; PSPNet's BN): deeplab-info's
    # caffemodel total counts them, so they are named here rather than silently left out.
    statistics = sum(b.numel() for b in net.buffers())
    click.echo(f"wrote {artifact} ({len(spec.layers)} layers, {params:,} parameters"
               + (f" + {statistics:,} statistics" if statistics else "")
               + f", {len(loaded.loaded)} layers with weights) in {time.perf_counter() - started:.1f} s")
    if is_classifier_output(shape):
        click.echo(f"classes: {describe_classes(info.class_names)}; a classifier (output '{chosen.outputs[0]}' "
                   f"{'x'.join(map(str, shape))}, not a score map): use caffe2torch.load or the ONNX model directly "
                   "(deeplab-run and deeplab-eval segment images)")
    else:
        click.echo(f"classes: {describe_classes(info.class_names)}; CRF setting: {describe_crf_default(info)}")
    if images:
        quantize_int8(out / ONNX_NAME, out / INT8_NAME, spec, images, info)
        click.echo(f"wrote {out / INT8_NAME} (int8, calibrated on {len(images)} image(s))")
    if arrays is not None:
        report = verify_torch(net, arrays, expected, tol)
        atomic_write_text(out / "parity.json", report.to_json())
        click.echo(printable(format_report(report)))
        click.echo(f"wrote {out / 'parity.json'}")
        if not report.ok:
            raise SystemExit(1)


def is_classifier_output(shape) -> bool:
    """An output that labels the whole image, not each pixel: not (N, C, H, W), or a 1x1 map (global pooling)."""
    return len(shape) != 4 or tuple(shape[2:]) == (1, 1)


def source_hashes(prototxt: str, caffemodel: str) -> tuple[str, str]:
    return file_sha256(prototxt), file_sha256(caffemodel)


def describe_classes(names: list[str]) -> str:
    shown = ", ".join(names[:6]) + (f", ... {names[-1]}" if len(names) > 6 else "")
    return f"{len(names)} ({shown})"


def describe_crf_default(info) -> str:
    if info.crf_setting is not None:
        params = info.crf_setting["params"]
        return (f"the net's DenseCRF layer '{info.crf_setting['layer']}' ({params['max_iter']} iterations, "
                f"colours: {info.crf_setting['colours']})")
    return f"preset {info.crf_preset}"


if __name__ == "__main__":
    main()
