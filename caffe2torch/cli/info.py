"""deeplab-info PROTOTXT [CAFFEMODEL]: what a Caffe net is, layer by layer, and whether its weights fit."""

from __future__ import annotations

import json

import click

from caffe2torch.caffemodel import read_caffemodel
from caffe2torch.cli.common import net_options, parse_defines, parse_input_shapes, reports_errors
from caffe2torch.errors import CaffeError, printable
from caffe2torch.known_models import KnownModel, identify
from caffe2torch.paths import require_file
from caffe2torch.pipeline import read_net
from caffe2torch.report import describe
from caffe2torch.shapes import check_weights_budget


def looks_binary(path: str) -> bool:
    """A caffemodel, not a text prototxt (protobuf binaries are not UTF-8 text, or hold control bytes)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return any(ord(c) < 9 or 13 < ord(c) < 32 for c in text)


def known_model_text(known: KnownModel | None) -> str:
    if known is None:
        return "known model: none (the layer names and shapes match no released DeepLab model we know)"
    text = f"known model: {known.name} [{known.id}]; CRF preset {known.crf_preset}"
    published = known.published
    if published.get("no_crf") is None:
        text += f"\n  no published numbers ({published.get('source')})"
    else:
        text += (f"\n  published VOC 2012 val mIoU: {published['no_crf']} without CRF, "
                 f"{published.get('crf', '-')} with CRF ({published.get('status')}: {published.get('source')})")
    if known.also:
        text += f"\n  note: {known.also}"
    return text


def describe_caffemodel(model, as_json: bool) -> None:
    known = identify(model)
    layers = [{"name": layer.name, "type": layer.type, "blobs": [list(b.shape) for b in layer.blobs]}
              for layer in model.layers]
    if as_json:
        click.echo(json.dumps({"caffemodel": model.source, "name": model.name, "layers": layers,
                               "known_model": known.id if known else None}, indent=1))
        return
    click.echo(printable(f"caffemodel: {model.source} ({model.name or 'unnamed'}; "
                         f"{'V1 layers' if model.dialect_hint == 'layers' else 'layer'} entries)"))
    for layer in layers:
        if layer["blobs"]:
            shapes = ", ".join("x".join(map(str, s)) for s in layer["blobs"])
            click.echo(printable(f"  {layer['name']:<32} {layer['type']:<14} {shapes}"))
    total = sum(b.size for layer in model.layers for b in layer.blobs)
    click.echo(f"{len(model.with_blobs())} layers with weights, {total:,} parameters")
    click.echo(known_model_text(known))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("prototxt", metavar="PROTOTXT|CAFFEMODEL", type=click.Path(dir_okay=False))
@click.argument("caffemodel", required=False, type=click.Path(dir_okay=False))
@net_options
@click.option("--json", "as_json", is_flag=True, help="Write the report as JSON on stdout.")
@reports_errors
def main(prototxt, caffemodel, defines, phase, stages, input_shapes, as_json):
    """Show a Caffe net's dialect, layers, shapes, parameters and receptive fields; with CAFFEMODEL, check
    that its weights match the net and say which known DeepLab model they are. A caffemodel alone (as the
    only argument) is listed layer by layer and recognised.

    \b
    Examples:
      deeplab-info test.prototxt --define NUM_LABELS=21 --define EXP=voc12
      deeplab-info test.prototxt train_iter_20000.caffemodel --define NUM_LABELS=21 --define EXP=voc12
      deeplab-info train_iter_20000.caffemodel
      deeplab-info train_test.prototxt --phase test --stage test-on-test   # a solver's test_state
    """
    require_file(prototxt, "a prototxt or caffemodel")  # not a FIFO: looks_binary would wait on it forever
    if caffemodel is None and looks_binary(prototxt):
        describe_caffemodel(read_caffemodel(prototxt), as_json)
        return
    spec = read_net(prototxt, parse_defines(defines), phase, parse_input_shapes(input_shapes), stages=stages)
    model = read_caffemodel(caffemodel) if caffemodel else None
    report = describe(spec, model)
    known = identify(model) if model is not None else None
    warnings = []
    if report.weights is not None and report.weights.nonfinite:
        warnings.append(report.weights.nonfinite_text())
    try:
        check_weights_budget(spec, report.shapes)
    except CaffeError as exc:  # info builds nothing; converting would refuse
        warnings.append(f"converting this net would fail: {exc.message}")
    if as_json:
        data = report.to_dict()
        if model is not None:
            data["known_model"] = known.id if known else None
            data["caffemodel"]["nonfinite"] = {name: {"nonfinite": bad, "values": total}
                                               for name, (bad, total) in report.weights.nonfinite.items()}
        data["warnings"] = warnings
        click.echo(json.dumps(data, indent=1))
    else:
        click.echo(printable(report.to_text()))
        if model is not None:
            click.echo(known_model_text(known))
    for warning in warnings:
        click.echo(f"warning: {printable(warning)}", err=True)
    if report.weights is not None and not report.weights.ok:
        raise SystemExit(1)

if __name__ == "__main__":
    main()
