"""deeplab-info PROTOTXT [CAFFEMODEL]: what a Caffe net is, layer by layer, and whether its weights fit."""

from __future__ import annotations

import json

import click

from caffe2torch.caffemodel import read_caffemodel
from caffe2torch.cli.common import net_options, parse_defines, parse_input_shapes, reports_errors
from caffe2torch.pipeline import read_net
from caffe2torch.report import describe


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("prototxt", type=click.Path(dir_okay=False))
@click.argument("caffemodel", required=False, type=click.Path(dir_okay=False))
@net_options
@click.option("--json", "as_json", is_flag=True, help="Write the report as JSON on stdout.")
@reports_errors
def main(prototxt, caffemodel, defines, phase, input_shapes, as_json):
    """Show a Caffe net's dialect, layers, shapes, parameters and receptive fields; with CAFFEMODEL, check
    that its weights match the net."""
    spec = read_net(prototxt, parse_defines(defines), phase, parse_input_shapes(input_shapes))
    model = read_caffemodel(caffemodel) if caffemodel else None
    report = describe(spec, model)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        click.echo(report.to_text())
    if report.weights is not None and not report.weights.ok:
        raise SystemExit(1)

if __name__ == "__main__":
    main()
