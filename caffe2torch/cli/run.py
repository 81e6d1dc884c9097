"""deeplab-run (--onnx MODEL.onnx | --model ARTIFACT) IMAGE_OR_DIR...: segment images as DeepLab's test did."""

from __future__ import annotations

import concurrent.futures as futures
import os
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from caffe2torch.cli.backend import backend_options, open_cli_backend
from caffe2torch.cli.common import crf_device_option, crf_settings, reports_errors
from caffe2torch.crf import PRESET_ALIASES, PRESETS, CRFParams
from caffe2torch.errors import CaffeError
from caffe2torch.images import list_images, overlay, read_image, write_label_png, write_rgb_png
from caffe2torch.runner import image_logits, legend_json, postprocess
from caffe2torch.util import atomic_path, atomic_write_text, worker_pool


def finish_image(stem: str, rgb: np.ndarray, logits: np.ndarray, crf: CRFParams | None, outdir: str,
                 save_probs: bool, crf_device: str | None = None) -> str:
    """CRF (optional), labels, and the output files of one image; runs in a worker process with --jobs."""
    result = postprocess(logits, rgb, crf, crf_device)
    out = Path(outdir)
    write_label_png(out / f"{stem}.png", result.labels)
    write_rgb_png(out / f"{stem}_overlay.png", overlay(rgb, result.labels))
    if save_probs:
        with atomic_path(out / f"{stem}_probs.npy") as tmp, open(tmp, "wb") as handle:
            np.save(handle, result.probabilities.astype(np.float16))
    return stem


def parse_scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        scales = ()
    if not scales or min(scales) <= 0:
        raise click.BadParameter(f"'{text}' is not a list of positive scales like 0.5,0.75,1", param_hint="--scales")
    return scales


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), help="An ONNX model from deeplab-convert.")
@click.option("--model", "artifact", type=click.Path(dir_okay=False), help="A caffe2torch artifact (torch backend).")
@backend_options
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False), default="segmentations", show_default=True)
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
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes for CRF and writing [default: one per core with --crf, else 1].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for the network [default: all cores; half of them beside CRF workers].")
@reports_errors
def main(images, onnx_path, artifact, outdir, crf, crf_preset, crf_params, crf_device, scales, flip, fuse,
         save_probs, jobs, threads, backend_name, precision):
    """Segment images or folders of images. For each image writes OUTDIR/<name>.png (labels as a palette
    PNG), <name>_overlay.png and, with --save-probs, the class probabilities; OUTDIR/legend.json names each
    label and its colour. A bad image is reported and skipped; the exit status is 1 if any image failed.

    \b
    Examples:
      deeplab-run --onnx converted/model.onnx photos/ -o segmentations
      deeplab-run --onnx converted/model.onnx img.jpg --crf --crf-preset v2 --save-probs
      deeplab-run --model converted/model.safetensors photos/ --scales 0.5,0.75,1 --flip
      deeplab-run --onnx converted/model.onnx photos/ --crf --crf-device cuda
      deeplab-run --onnx converted/model.onnx photos/ --backend openvino --precision bf16
    """
    if bool(onnx_path) == bool(artifact):
        raise click.UsageError("give exactly one of --onnx MODEL.onnx or --model ARTIFACT")
    scale_list = parse_scales(scales)
    use_crf = crf or bool(crf_preset or crf_params or crf_device)
    crf_in_workers = use_crf and crf_device is None
    jobs = default_jobs(jobs, crf_in_workers)
    threads = default_threads(threads, jobs, crf_in_workers)
    backend = open_cli_backend(backend_name, precision, onnx_path, artifact, threads)
    params = crf_settings(backend, crf_preset, crf_params) if use_crf else None
    paths = list_images(list(images))
    if not paths:
        raise CaffeError("no images found in " + ", ".join(images))
    Path(outdir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(outdir) / "legend.json", legend_json(backend.info))
    failed: list[str] = []
    pool = worker_pool(jobs) if jobs > 1 else None
    pending: dict[futures.Future, Path] = {}
    stems: set[str] = set()
    try:
        for path in tqdm(paths, desc="segmenting", unit="image", disable=None):
            try:
                rgb = read_image(path)
                logits = image_logits(backend, rgb, scale_list, flip, fuse)
            except CaffeError as exc:
                failed.append(f"{exc}")
                tqdm.write(f"skipped: {exc}")
                continue
            stem = unique_stem(path, stems)
            if pool is None:
                finish_image(stem, rgb, logits, params, outdir, save_probs, crf_device)
            else:
                pending[pool.submit(finish_image, stem, rgb, logits, params, outdir, save_probs, crf_device)] = path
                if len(pending) >= 2 * jobs:  # keep memory bounded: wait for the oldest results
                    done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
                    collect(done, pending, failed)
        if pending:
            collect(futures.wait(pending).done, pending, failed)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    written = len(paths) - len(failed)
    click.echo(f"segmented {written} of {len(paths)} image(s) into {outdir}"
               + (f" with the dense CRF ({describe(params)})" if params else ""))
    if failed:
        click.echo(f"{len(failed)} image(s) failed:", err=True)
        for message in failed:
            click.echo(f"  {message}", err=True)
        raise SystemExit(1)


def default_jobs(jobs: int | None, crf: bool) -> int:
    """Worker processes: as asked, else one per core when the CRF runs (measured end to end with deeplab-eval
    on 2 cores: 0.81 images/s against 0.58 with the CRF in the main process), else none (the rest is cheap
    next to the network)."""
    if jobs is not None:
        return jobs
    return (os.cpu_count() or 1) if crf else 1


def default_threads(threads: int | None, jobs: int, crf: bool) -> int:
    """Threads for the network: as asked, else all cores, else half of them when CRF workers run beside it.
    Why: the net's threads and the CRF workers then share the cores, and a parallel operator waits for its
    slowest thread, which is the one a CRF worker took the core from (deeplab-eval with CRF and --jobs 2 on
    2 cores, 24 images: 0.81 images/s with one net thread against 0.75 with two)."""
    if threads is not None:
        return threads
    cores = os.cpu_count() or 1
    return max(1, cores // 2) if crf and jobs > 1 else cores


def describe(params: CRFParams) -> str:
    return (f"{params.max_iter} iterations, positional w={params.pos_w} xy={params.pos_xy_std}, "
            f"bilateral w={params.bi_w} xy={params.bi_xy_std} rgb={params.bi_rgb_std}"
            + (f"; {params.source}, colours {params.colours}" if getattr(params, "source", "") else ""))


def unique_stem(path: Path, taken: set[str]) -> str:
    stem, index = path.stem, 1
    while stem in taken:
        index += 1
        stem = f"{path.stem}_{index}"
    taken.add(stem)
    return stem


def collect(done, pending, failed) -> None:
    for future in done:
        path = pending.pop(future)
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - one image's failure must not stop the others
            failed.append(f"{path}: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
