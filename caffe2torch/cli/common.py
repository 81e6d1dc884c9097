"""What every command shares: option parsing for --define/--input-shape/--phase, and error reporting that
prints one clear line (file, line, layer) instead of a traceback. CAFFE2TORCH_DEBUG=1 shows tracebacks."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator

import click

from caffe2torch.errors import CaffeError, printable

EXIT_USER_ERROR = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C: the command stops where it is, cleans up and says so."""

    signal_number = signal.SIGTERM


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """While the command runs, SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread, so that
    `kill`, `timeout` and service managers stop it as cleanly as Ctrl-C: finally blocks run, worker pools shut
    down, no temporary file is left. The previous handler comes back afterwards."""

    def raise_terminated(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread (e.g. a library call from a thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_defines(values: tuple[str, ...]) -> dict[str, str]:
    defines = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"'{value}' is not NAME=VALUE", param_hint="--define")
        if name in defines and defines[name] != text:
            raise click.BadParameter(f"{name} is given twice, as '{defines[name]}' and '{text}'", param_hint="--define")
        defines[name] = text
    return defines


def parse_input_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for value in values:
        name, sep, dims = value.partition("=")
        try:
            fields = [d.strip() for d in dims.replace("x", ",").split(",") if d.strip()]
            if not all(d.isascii() and d.lstrip("-").isdigit() for d in fields):  # not '1_000', not other digits
                raise ValueError(dims)
            shape = tuple(int(d) for d in fields)
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise click.BadParameter(f"'{value}' is not NAME=N,C,H,W", param_hint="--input-shape")
        if name in shapes and shapes[name] != shape:
            raise click.BadParameter(f"{name} is given twice, as {','.join(map(str, shapes[name]))} and "
                                     f"{','.join(map(str, shape))}", param_hint="--input-shape")
        shapes[name] = shape
    return shapes


def _stage_names(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    """--stage values: Caffe's stage names, non-empty and without surrounding white space (a rule's
    `stage: "x"` never matches ' x')."""
    for value in values:
        if not value or value != value.strip():
            raise click.BadParameter(f"{value!r} is not a stage name (give the name a rule's 'stage:' uses)",
                                     param_hint="--stage")
    return values


def net_options(func: Callable) -> Callable:
    """--define, --phase, --stage and --input-shape, as every command that reads a prototxt takes them."""
    func = click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=N,C,H,W",
                        help="Shape of a net input, overriding the prototxt (repeatable).")(func)
    func = click.option("--stage", "stages", multiple=True, metavar="NAME", callback=_stage_names,
                        help="A stage of Caffe's NetState for the include/exclude rules, as a solver's "
                             "test_state gives it (repeatable).")(func)
    func = click.option("--phase", type=click.Choice(["test", "train"]), default="test", show_default=True,
                        help="Caffe phase whose include/exclude rules apply.")(func)
    func = click.option("--define", "defines", multiple=True, metavar="NAME=VALUE",
                        help="Value for a ${NAME} template placeholder (repeatable).")(func)
    return func


def print_any_file_name() -> None:
    """File names need not be valid UTF-8 (Python keeps the undecodable bytes as lone surrogates): print
    them as \\udcXX escapes instead of failing with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")


def reports_errors(func: Callable) -> Callable:
    """Turn library errors into `error: ...` on stderr and exit status 2; never a raw traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        debug = os.environ.get("CAFFE2TORCH_DEBUG") == "1"
        print_any_file_name()
        try:
            with terminate_like_interrupt():
                return func(*args, **kwargs)
        except CaffeError as exc:
            if debug:
                raise
            click.echo(f"error: {printable(str(exc))}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated); a command may add what to do next
            name = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            click.echo(f"{name}{': ' + str(exc) if str(exc) else ''}", err=True)
            sys.exit(128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT))
        except BrokenPipeError:  # the reader went away (`deeplab-run ... | head`): stop quietly, as cat does
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(128 + signal.SIGPIPE)
        except (click.ClickException, click.exceptions.Exit, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence for users
            if debug:
                raise
            click.echo(f"internal error: {type(exc).__name__}: {printable(str(exc))}\n"
                       "(this is a bug in caffe2torch; rerun with CAFFE2TORCH_DEBUG=1 for the traceback)", err=True)
            sys.exit(1)

    return wrapper


def per_core_limit() -> int:
    """The most worker processes or net threads a command starts: 4 per core, at least 8. More only
    oversubscribe the cores, and each worker is a Python process with its own memory (a typo like --jobs 1000
    would start a thousand)."""
    return max(8, 4 * (os.cpu_count() or 1))


def _bounded_count(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value > per_core_limit():
        raise click.BadParameter(f"{value} is more than {per_core_limit()} (4 per core, at least 8)")
    return value


def parallelism_options(func: Callable) -> Callable:
    """--jobs and --threads, as deeplab-run and deeplab-eval take them."""
    func = click.option("--threads", type=click.IntRange(min=1), default=None, callback=_bounded_count,
                        help="Threads for the network [default: all cores].")(func)
    return click.option("--jobs", type=click.IntRange(min=1), default=None, callback=_bounded_count,
                        help="Worker processes for the CRF, scoring and writing [default: one per core with --crf, "
                             "else 1].")(func)


def max_pixels_option(func: Callable) -> Callable:
    """--max-pixels for commands that read images: the limit checked in each image's header before decoding."""
    from caffe2torch.images import DEFAULT_MAX_PIXELS

    return click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
                        help="Skip images with more pixels (width x height, read from the header before "
                             "decoding; also per test scale). Memory grows with it.")(func)


def allow_pixels(max_pixels: int) -> None:
    """Raise Pillow's own decompression-bomb limit (it refuses images over twice Image.MAX_IMAGE_PIXELS, 179
    Mpixels by default, when it opens them) to --max-pixels when that is higher, so that the option can allow
    larger images; never lowered (our own check, in the header, enforces --max-pixels)."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def interrupted_with(exc: KeyboardInterrupt, message: str) -> KeyboardInterrupt:
    """The same interrupt (Ctrl-C or SIGTERM), carrying what the command wants the user to know."""
    return type(exc)(message)


def echo_notes(notes: list[str]) -> None:
    for note in notes:
        click.echo(f"note: {printable(note)}", err=True)


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
