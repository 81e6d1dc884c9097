"""deeplab-run (--onnx MODEL.onnx | --model ARTIFACT) IMAGE_OR_DIR...: segment images as DeepLab's test did."""

from __future__ import annotations

import math
import os
from pathlib import Path

import click
import numpy as np

from caffe2torch.batch import describe_failure
from caffe2torch.cli.backend import backend_options, backend_settings, chosen_backend, open_cli_backend
from caffe2torch.cli.cluster import check_ray_options, open_executor, ray_options
from caffe2torch.cli.common import (
    allow_pixels,
    crf_device_option,
    crf_settings,
    echo_notes,
    interrupted_with,
    max_pixels_option,
    parallelism_options,
    reports_errors,
)
from caffe2torch.crf import PRESET_ALIASES, PRESETS, CRFParams, check_scores
from caffe2torch.errors import CaffeError, OutputError
from caffe2torch.executors import ImageJob, InferenceSettings
from caffe2torch.images import list_images, write_label_png, write_rgb_png
from caffe2torch.outputs import (
    RUN_OUTPUT_SUFFIXES,
    RunJournal,
    assign_stems,
    check_files_spare_inputs,
    check_inputs_outside,
    distinct_inputs,
    prepare_output_folder,
)
from caffe2torch.pictures import overlay_with_legend
from caffe2torch.progress import Progress
from caffe2torch.runner import legend_json, padded_size, postprocess
from caffe2torch.util import atomic_path, atomic_write_text, file_sha256

MAX_SCALES = 16
# A test scale beyond this is a typo (DeepLab tests at 0.5 to 1.5); below it, --max-pixels bounds what a scale
# may cost, image by image.
MAX_SCALE = 1000.0
MAX_LABELS = 256  # a palette PNG holds labels 0..255


def finish_image(stem: str, rgb: np.ndarray, logits: np.ndarray, crf: CRFParams | None, outdir: str,
                 save_probs: bool, crf_device: str | None = None, class_names: list[str] | None = None) -> str:
    """CRF (optional), labels, and the output files of one image; runs in a worker process with --jobs. The
    overlay carries a legend of the classes present under the image (`class_names`: the model's)."""
    from caffe2torch.class_names import default_class_names

    result = postprocess(logits, rgb, crf, crf_device)
    out = Path(outdir)
    write_label_png(out / f"{stem}.png", result.labels)
    names = class_names or default_class_names(logits.shape[0])
    write_rgb_png(out / f"{stem}_overlay.png", overlay_with_legend(rgb, result.labels, names))
    if save_probs:
        with atomic_path(out / f"{stem}_probs.npy") as tmp, open(tmp, "wb") as handle:
            np.save(handle, result.probabilities.astype(np.float16))
    return stem


def parse_scales(text: str) -> tuple[float, ...]:
    """Test scales: finite, positive numbers, at most MAX_SCALES of them (each is a pass of the net). Their
    effect on memory is checked per image against --max-pixels (`check_scaled_size`)."""
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        scales = ()
    if not scales or not all(math.isfinite(s) and 0 < s <= MAX_SCALE for s in scales) or len(scales) > MAX_SCALES:
        raise click.BadParameter(f"'{text}' is not a list of 1 to {MAX_SCALES} scales above 0 and at most "
                                 f"{MAX_SCALE:g}, like 0.5,0.75,1", param_hint="--scales")
    return scales


def check_scaled_size(rgb: np.ndarray, scales: tuple[float, ...], max_pixels: int,
                      crop_size: int | None = None) -> None:
    """Refuse an image that some test scale would blow up past --max-pixels, or whose padded net input would
    exceed twice that (padding to the 32k+1 grid adds up to 32 rows and columns: a 16-million-pixel image one
    pixel tall would become a 33-pixel-tall input of 550 million pixels), before the net allocates anything.
    Padding up to the model's own crop size is always allowed."""
    height, width = rgb.shape[:2]
    for scale in scales:
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        where = (f"at scale {scale:g} the {width}x{height} image becomes" if scale != 1
                 else f"the {width}x{height} image is")
        if h * w > max_pixels:
            raise CaffeError(f"{where} {w}x{h} = {h * w} pixels, over the limit of {max_pixels} (--max-pixels)")
        padded_h, padded_w = padded_size(h, w, crop_size)
        if padded_h * padded_w > max(2 * max_pixels, (crop_size or 0) ** 2):
            raise CaffeError(f"{where} {w}x{h}, which the net sees padded to {padded_w}x{padded_h} = "
                             f"{padded_h * padded_w} pixels, over twice the limit of {max_pixels} (--max-pixels)")


def check_class_count(backend) -> None:
    """Label PNGs hold labels 0..255: refuse a model with more classes before any image is run (the output's
    channel count when the ONNX graph states it, else the model's class names)."""
    classes = None
    session = getattr(backend, "session", None)
    if session is not None:
        for output in session.get_outputs():
            if output.name == backend.info.output_name and len(output.shape) > 1 and isinstance(output.shape[1], int):
                classes = output.shape[1]
    classes = classes or len(backend.info.class_names)
    if classes > MAX_LABELS:
        raise CaffeError(f"the model gives {classes} classes; label PNGs hold at most {MAX_LABELS}")


def check_logits(logits: np.ndarray) -> None:
    """Scores the rest of the pipeline can use: finite (NaN would silently become label 0), and no more
    classes than a label PNG holds."""
    check_scores(logits)
    if logits.shape[0] > MAX_LABELS:
        raise CaffeError(f"the net gives {logits.shape[0]} classes; label PNGs hold at most {MAX_LABELS}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), help="An ONNX model from deeplab-convert.")
@click.option("--model", "artifact", type=click.Path(dir_okay=False), help="A caffe2torch artifact (torch backend).")
@backend_options
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False), default="segmentations", show_default=True,
              help="The output folder (created; it may not hold the input images).")
@click.option("--crf/--no-crf", default=False, show_default=True, help="Refine with DeepLab's dense CRF.")
@click.option("--crf-preset", default=None, metavar="NAME",
              help=f"CRF settings: {', '.join([*PRESET_ALIASES, *PRESETS])} (default: the model's own).")
@click.option("--crf-params", default="", metavar="K=V,...", help="Override CRF settings, e.g. bi_w=4,bi_xy_std=67.")
@crf_device_option
@click.option("--scales", default="1", show_default=True, help="Test scales, e.g. 0.5,0.75,1.")
@click.option("--flip", is_flag=True, help="Also run the horizontally flipped image.")
@click.option("--fuse", type=click.Choice(["max", "mean"]), default="max", show_default=True,
              help="How scales and flips are fused.")
@click.option("--save-probs", is_flag=True, help="Also write <image>_probs.npy (C x H x W, float16).")
@parallelism_options
@max_pixels_option
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Skip images this output folder already holds from a run with the same settings.")
@ray_options
@reports_errors
def main(images, onnx_path, artifact, outdir, crf, crf_preset, crf_params, crf_device, scales, flip, fuse,
         save_probs, jobs, threads, max_pixels, resume, backend_name, precision, ray_address, ray_actors):
    """Segment images or folders of images. For each image writes OUTDIR/<name>.png (labels as a palette
    PNG), <name>_overlay.png (the labels over the image, with a legend of the classes present under it) and,
    with --save-probs, the class probabilities; OUTDIR/legend.json names each label and its colour. Names
    that would collide get _2, _3, ... The output folder may not hold the input images. A bad image is
    reported and skipped; the exit status is 1 if any image failed. An interrupted run (Ctrl-C, SIGTERM, a
    kill) resumes when the same command runs again: images already done with the same settings are skipped
    (--no-resume redoes them). Progress: a bar on a terminal, else a line every few seconds (done/total,
    images/s, ETA, skipped).

    \b
    Examples:
      deeplab-run --onnx converted/model.onnx photos/ -o segmentations
      deeplab-run --onnx converted/model.onnx img.jpg --crf --crf-preset v2 --save-probs
      deeplab-run --model converted/model.safetensors photos/ --scales 0.5,0.75,1 --flip
      deeplab-run --onnx converted/model.onnx photos/ --crf --crf-device cuda
      deeplab-run --onnx converted/model.onnx photos/ --backend openvino --precision bf16
      deeplab-run --onnx /shared/model.onnx /shared/photos -o /shared/out --crf --ray auto
    """
    if bool(onnx_path) == bool(artifact):
        raise click.UsageError("give exactly one of --onnx MODEL.onnx or --model ARTIFACT")
    chosen_backend(backend_name, onnx_path, artifact)  # usage errors before anything is read
    check_ray_options(ray_address, ray_actors, crf_device)
    scale_list = parse_scales(scales)
    use_crf = crf or (crf_preset is not None or bool(crf_params or crf_device))
    crf_in_workers = use_crf and crf_device is None
    explicit_jobs, ray_threads = jobs is not None, threads
    jobs = default_jobs(jobs, crf_in_workers)
    threads = default_threads(threads)
    allow_pixels(max_pixels)
    paths, notes = distinct_inputs(list_images(list(images)))
    if not paths:
        raise CaffeError("no images found in " + ", ".join(images))
    check_inputs_outside(Path(outdir), paths)
    stems = assign_stems(paths)
    model_file = onnx_path or artifact
    suffixes = RUN_OUTPUT_SUFFIXES if save_probs else RUN_OUTPUT_SUFFIXES[:2]
    check_files_spare_inputs([Path(outdir) / name for name in ("legend.json", RunJournal.NAME)]
                             + [Path(outdir) / f"{stem}{suffix}" for stem in stems.values() for suffix in suffixes],
                             [model_file], outdir)
    # The model (and its metadata, untrusted input) is checked before anything is written.
    backend = open_cli_backend(backend_name, precision, onnx_path, artifact, threads)
    check_class_count(backend)
    params = crf_settings(backend, crf_preset, crf_params) if use_crf else None
    out = prepare_output_folder(outdir)
    atomic_write_text(out / "legend.json", legend_json(backend.info))
    echo_notes(notes)
    settings = {"model_sha256": file_sha256(model_file), "scales": list(scale_list), "flip": flip, "fuse": fuse,
                "crf": None if params is None else params.__dict__, "crf_device": crf_device,
                "save_probs": save_probs, "version": _version(), **backend_settings(backend)}
    journal = RunJournal(out, settings, resume)
    failed: list[str] = []
    done = resumed = 0
    progress = Progress("segmenting")
    class_names = list(backend.info.class_names)

    def outputs_of(stem: str) -> list[Path]:
        return [out / f"{stem}{suffix}" for suffix in suffixes]

    def fail(path: Path, exc: BaseException) -> None:
        message = describe_failure(path, exc)
        failed.append(message)
        progress.write(f"skipped: {message}")
        progress.advance(done=0, skipped=1)

    def handle(outcomes) -> None:
        nonlocal done
        for outcome in outcomes:
            if outcome.error is None:
                journal.finished(outcome.key, stems[outcome.key])
                done += 1
                progress.advance()
            elif isinstance(outcome.error, OutputError) and outcome.error.fatal:
                raise OutputError(f"{outcome.error.message}; {done} image(s) were finished, and running the same "
                                  "command again resumes after them", outcome.error.location, fatal=True)
            else:
                fail(outcome.key, outcome.error)

    def image_jobs():
        nonlocal resumed
        for path in paths:
            stem = stems[path]
            if resume and journal.is_done(path, stem, outputs_of(stem)):
                resumed += 1
                progress.advance(done=0, reused=1)
                continue
            journal.started(path, stem)
            yield ImageJob(path, finish_image, {"stem": stem, "crf": params, "outdir": str(out.absolute()),
                                                "save_probs": save_probs, "crf_device": crf_device,
                                                "class_names": class_names}, path.absolute())

    inference = InferenceSettings(scale_list, flip, fuse, max_pixels)
    summary = None
    try:
        with open_executor(ray_address, ray_actors, model_file, backend, inference, jobs, ray_threads,
                           explicit_jobs, crf_device, out) as executor, progress.start(len(paths)):
            handle(executor.map(image_jobs()))
            summary = executor.summary()
    except KeyboardInterrupt as exc:
        raise interrupted_with(exc, f"{done + resumed} of {len(paths)} image(s) are done in {out} (every file "
                                    "written is complete); running the same command again resumes") from None
    finally:
        journal.close()
    if summary:
        click.echo(summary, err=True)
    click.echo(f"segmented {done + resumed} of {len(paths)} image(s) into {out}"
               + (f" ({resumed} from an earlier run with the same settings)" if resumed else "")
               + (f" with the dense CRF ({describe(params)})" if params else ""))
    if failed:
        click.echo(f"{len(failed)} image(s) failed (reported above as 'skipped')", err=True)
        raise SystemExit(1)


def _version() -> str:
    from caffe2torch import __version__

    return __version__


def default_jobs(jobs: int | None, crf: bool) -> int:
    """Worker processes: as asked, else one per core when the CRF runs (measured end to end with deeplab-eval
    on 2 cores: 0.81 images/s against 0.58 with the CRF in the main process), else none (the rest is cheap
    next to the network)."""
    if jobs is not None:
        return jobs
    return (os.cpu_count() or 1) if crf else 1


def default_threads(threads: int | None) -> int:
    """Threads for the network: as asked, else one per core, CRF workers or not.
    Why: with the native CRF (0.4 s per image against the net's 1 core-second) the net is the bottleneck, and
    the CRF workers are idle most of the time, so the net gains more from every core than it loses to a worker
    now and then (deeplab-eval with CRF and --jobs 2 on a quiet 2-core Xeon, 24 images: 0.79 images/s with two
    net threads against 0.66 with one; on an AMD EPYC with pydensecrf's slower CRF the two were even, 0.78 and
    0.80)."""
    if threads is not None:
        return threads
    return os.cpu_count() or 1


def describe(params: CRFParams) -> str:
    return (f"{params.max_iter} iterations, positional w={params.pos_w} xy={params.pos_xy_std}, "
            f"bilateral w={params.bi_w} xy={params.bi_xy_std} rgb={params.bi_rgb_std}"
            + (f"; {params.source}, colours {params.colours}" if getattr(params, "source", "") else ""))


if __name__ == "__main__":
    main()
