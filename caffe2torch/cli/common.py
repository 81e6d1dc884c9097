"""What every command shares: option parsing for --define/--input-shape/--phase, and error reporting that
prints one clear line (file, line, layer) instead of a traceback. CAFFE2TORCH_DEBUG=1 shows tracebacks."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

import click

from caffe2torch.errors import CaffeError

EXIT_USER_ERROR = 2


def parse_defines(values: tuple[str, ...]) -> dict[str, str]:
    defines = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"'{value}' is not NAME=VALUE", param_hint="--define")
        defines[name] = text
    return defines


def parse_input_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for value in values:
        name, sep, dims = value.partition("=")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise click.BadParameter(f"'{value}' is not NAME=N,C,H,W", param_hint="--input-shape")
        shapes[name] = shape
    return shapes


def net_options(func: Callable) -> Callable:
    """--define, --phase and --input-shape, as every command that reads a prototxt takes them."""
    func = click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=N,C,H,W",
                        help="Shape of a net input, overriding the prototxt (repeatable).")(func)
    func = click.option("--phase", type=click.Choice(["test", "train"]), default="test", show_default=True,
                        help="Caffe phase whose include/exclude rules apply.")(func)
    func = click.option("--define", "defines", multiple=True, metavar="NAME=VALUE",
                        help="Value for a ${NAME} template placeholder (repeatable).")(func)
    return func


def reports_errors(func: Callable) -> Callable:
    """Turn library errors into `error: ...` on stderr and exit status 2; never a raw traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        debug = os.environ.get("CAFFE2TORCH_DEBUG") == "1"
        try:
            return func(*args, **kwargs)
        except CaffeError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence for users
            if debug:
                raise
            click.echo(f"internal error: {type(exc).__name__}: {exc}\n"
                       "(this is a bug in caffe2torch; rerun with CAFFE2TORCH_DEBUG=1 for the traceback)", err=True)
            sys.exit(1)

    return wrapper


def echo_notes(notes: list[str]) -> None:
    for note in notes:
        click.echo(f"note: {note}", err=True)


def _crf_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from caffe2torch.crf import check_crf_device

    if value is None:
        return None
    try:
        return check_crf_device(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


crf_device_option = click.option(
    "--crf-device", default=None, metavar="DEVICE", callback=_crf_device,
    help="Run the dense CRF in torch on this device (cuda, cuda:1, cpu) instead of pydensecrf, in this process; "
         "it agrees with pydensecrf to float rounding (see docs/benchmarks.md).")


def crf_settings(backend, preset: str | None, overrides: str):
    """The CRF setting of a run (runner.crf_setting): the preset asked for (RGB colours), else the model's own
    (the net's DenseCRF layer with the colours it saw, or the model's preset), with --crf-params applied."""
    from caffe2torch.runner import crf_setting

    try:
        return crf_setting(backend.info, preset, overrides)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--crf-preset/--crf-params") from None
