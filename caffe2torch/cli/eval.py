"""deeplab-eval: PASCAL VOC 2012 scores with DeepLab's protocol, for a model or for label PNGs made elsewhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

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
from caffe2torch.cli.run import check_class_count, default_jobs, default_threads, parse_scales
from caffe2torch.crf import PRESET_ALIASES, PRESETS
from caffe2torch.errors import CaffeError, Location
from caffe2torch.eval_report import (
    CHART,
    DEFAULT_FIRST_PANELS,
    DEFAULT_WORST_PANELS,
    PANELS_DIR,
    write_panels,
    write_reports,
)
from caffe2torch.evaluate import evaluate_model, evaluate_predictions, voc_samples
from caffe2torch.executors import InferenceSettings
from caffe2torch.outputs import check_outputs_spare_inputs, prepare_output_folder
from caffe2torch.progress import Progress
from caffe2torch.util import atomic_write_text, file_sha256, loads_json


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), help="An ONNX model from deeplab-convert.")
@click.option("--model", "artifact", type=click.Path(dir_okay=False), help="A caffe2torch artifact (torch backend).")
@backend_options
@click.option("--predictions", type=click.Path(file_okay=False), help="Score these label PNGs (<id>.png) instead.")
@click.option("--voc-root", required=True, type=click.Path(), help="VOCdevkit/VOC2012 (JPEGImages, "
              "SegmentationClass, ImageSets/Segmentation).")
@click.option("--split", default="val", show_default=True, help="ImageSets/Segmentation/<split>.txt")
@click.option("--list", "list_file", type=click.Path(dir_okay=False), help="A list file instead of --split: ids, "
              "or DeepLab's 'image label' path pairs.")
@click.option("--labels", "label_dir", type=click.Path(file_okay=False), help="Another label folder, e.g. SBD's "
              "SegmentationClassAug.")
@click.option("--crf/--no-crf", default=False, show_default=True, help="Also score with the dense CRF (same pass).")
@click.option("--crf-preset", default=None, metavar="NAME", help=f"{', '.join([*PRESET_ALIASES, *PRESETS])}")
@click.option("--crf-params", default="", metavar="K=V,...", help="Override CRF settings.")
@crf_device_option
@click.option("--scales", default="1", show_default=True, help="Test scales whose scores are fused, e.g. 0.5,0.75,1.")
@click.option("--flip", is_flag=True, help="Also run the horizontally flipped image (fused with --fuse).")
@click.option("--fuse", type=click.Choice(["max", "mean"]), default="max", show_default=True,
              help="How scales and flips are fused.")
@parallelism_options
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images.")
@max_pixels_option
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Reuse the predictions of an interrupted run in the results folder.")
@click.option("--panels", "first_panels", type=click.IntRange(min=0), default=DEFAULT_FIRST_PANELS,
              show_default=True, help="Draw panels (image | ground truth | without CRF | with CRF, with a "
              "legend) for the first N images.")
@click.option("--worst-panels", type=click.IntRange(min=0), default=DEFAULT_WORST_PANELS, show_default=True,
              help="Also draw panels for the K images with the lowest mIoU (with the CRF when there is one).")
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False), default="results", show_default=True,
              help="The results folder: results.json, report.md, per_class_iou.png, panels/, predictions/.")
@ray_options
@reports_errors
def main(onnx_path, artifact, predictions, voc_root, split, list_file, label_dir, crf, crf_preset, crf_params,
         crf_device, scales, flip, fuse, jobs, threads, limit, max_pixels, resume, first_panels, worst_panels, outdir,
         backend_name, precision, ray_address, ray_actors):
    """Score a model (mIoU, per-class IoU, pixel accuracy, mean class accuracy, frequency-weighted IoU) on
    PASCAL VOC 2012 with one dataset-level confusion matrix, label 255 ignored; with --crf, with and without
    the dense CRF in one pass. Writes RESULTS/results.json, report.md (with a per-class IoU chart,
    per_class_iou.png), predictions/, and panels/ for the first images and those with the lowest mIoU.
    An image that cannot be scored is reported and skipped, and the exit status is then 1; when none can be,
    no score is written. An interrupted run resumes from its predictions when the same command runs again.

    \b
    Examples:
      deeplab-eval --onnx resnet/model.onnx --voc-root VOCdevkit/VOC2012 --split val --crf -o results
      deeplab-eval --predictions caffe_labels/ --voc-root VOCdevkit/VOC2012 --split val
      deeplab-eval --onnx resnet/model.onnx --voc-root VOCdevkit/VOC2012 --crf-device cuda -o results_gpu_crf
      deeplab-eval --onnx /shared/model.onnx --voc-root /shared/VOC2012 --crf -o /shared/results --ray auto
    """
    if sum(bool(x) for x in (onnx_path, artifact, predictions)) != 1:
        raise click.UsageError("give exactly one of --onnx, --model or --predictions")
    if not predictions:
        chosen_backend(backend_name, onnx_path, artifact)  # a usage error before anything is read
    check_ray_options(ray_address, ray_actors, crf_device)
    scale_list = parse_scales(scales)
    allow_pixels(max_pixels)
    notes: list[str] = []
    samples = voc_samples(voc_root, split, list_file, label_dir, notes=notes)[:limit]
    echo_notes(notes)
    out = prepare_output_folder(outdir)
    inputs = [p for s in samples for p in (s.image, s.label)] + [Path(x) for x in (list_file,) if x]
    dataset = f"{voc_root} ({Path(list_file).name if list_file else split})"
    if predictions:
        from caffe2torch.images import VOC_CLASSES

        check_outputs_spare_inputs([out / PANELS_DIR], [out / "results.json", out / "report.md", out / CHART],
                                   inputs + [Path(predictions) / f"{s.id}.png" for s in samples], out)
        result = evaluate_predictions(samples, predictions, len(VOC_CLASSES), max_pixels, Progress("scoring"))
        header = {"model": f"predictions in {predictions}", "dataset": dataset}
        panel_notes: list[str] = []
        panels = write_panels(out, samples, result, list(VOC_CLASSES), first_panels, worst_panels, max_pixels,
                              panel_notes)
        report(out, result, list(VOC_CLASSES), header, None, panels, panel_notes)
        return
    model_file = onnx_path or artifact
    check_outputs_spare_inputs([out / "predictions", out / PANELS_DIR],
                               [out / "results.json", out / "report.md", out / "run.json", out / CHART],
                               inputs + [Path(model_file)], out)
    # CRF settings imply --crf, as in deeplab-run
    crf = crf or (crf_preset is not None or bool(crf_params or crf_device))
    crf_in_workers = crf and crf_device is None
    explicit_jobs, ray_threads = jobs is not None, threads
    jobs = default_jobs(jobs, crf_in_workers)
    threads = default_threads(threads)
    backend = open_cli_backend(backend_name, precision, onnx_path, artifact, threads)
    check_class_count(backend)
    class_names = list(backend.info.class_names)
    params = crf_settings(backend, crf_preset, crf_params) if crf else None
    settings = {"model": str(model_file), "model_sha256": file_sha256(model_file), "dataset": dataset,
                "scales": list(scale_list), "flip": flip, "fuse": fuse,
                "crf": None if params is None else params.__dict__, **backend_settings(backend)}
    if crf_device:  # the torch CRF agrees with pydensecrf to float rounding, not bit for bit: no mixing
        settings["crf_device"] = crf_device
    check_resume(out, settings, resume)

    inference = InferenceSettings(scale_list, flip, fuse, max_pixels)
    with open_executor(ray_address, ray_actors, model_file, backend, inference, jobs, ray_threads, explicit_jobs,
                       crf_device, out) as executor:
        result = evaluate_model(executor, samples, out, len(class_names), params, resume,
                                progress=Progress("evaluating"), crf_device=crf_device, max_pixels=max_pixels)
        summary = executor.summary()
    if summary:
        click.echo(summary, err=True)
    header = {"model": str(model_file), "dataset": dataset, "settings": settings}
    panel_notes: list[str] = []
    try:
        panels = write_panels(out, samples, result, class_names, first_panels, worst_panels, max_pixels, panel_notes)
        report(out, result, class_names, header, backend.info, panels, panel_notes)
    except KeyboardInterrupt as exc:
        raise interrupted_with(exc, f"while writing the report: {result.images} image(s) were scored and their "
                                    f"predictions saved in {out / 'predictions'}; running the same command again "
                                    "resumes from them and writes the report") from None


def check_resume(out: Path, settings: dict, resume: bool) -> None:
    """A results folder belongs to one set of settings: resuming with others would mix predictions."""
    state = out / "run.json"
    if state.exists() and resume:
        try:
            previous = loads_json(state.read_text(encoding="utf-8"))
            if not isinstance(previous, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise CaffeError(f"cannot read the settings of the earlier run ({exc}); use another -o folder, or "
                             "--no-resume to start again", Location(str(state))) from None
        changed = sorted(k for k in settings.keys() | previous.keys() if previous.get(k) != settings.get(k))
        if changed:
            raise CaffeError(f"the results folder holds a run with other settings ({', '.join(changed)}); use "
                             "another -o folder, or --no-resume to start again", Location(str(state)))
    if not resume and (out / "predictions").exists():
        shutil.rmtree(out / "predictions")
    atomic_write_text(state, json.dumps(settings, indent=1))


def report(out: Path, result, class_names, header, info, panels=(), notes=()) -> None:
    """Print and write the scores; exit status 1 when any image was skipped (and no score at all is shown or
    written when none could be scored)."""
    from caffe2torch.known_models import published_for

    published = published_for(info) if info is not None else None
    if published and not any(published.get(v) is not None for v in result.scores):
        published = None  # a known model without published numbers (the demo)
    echo_notes(list(notes))
    results_json, report_md = write_reports(out, result, class_names, header, published, list(panels))
    if result.resumed:
        click.echo(f"resumed: {result.resumed} image(s) scored from an earlier run's predictions")
    click.echo(f"{result.images} image(s) scored" + (f", {len(result.skipped)} skipped" if result.skipped else ""))
    if result.scores:
        width = max(len(k) for k in result.scores)
        click.echo(f"{'':{width}}  {'mIoU':>7}  {'pix acc':>7}  {'mean acc':>8}  {'fw IoU':>7}"
                   + ("  published" if published else ""))
        for variant, s in result.scores.items():
            line = (f"{variant:{width}}  {100 * s.miou:7.2f}  {100 * s.pixel_accuracy:7.2f}  "
                    f"{100 * s.mean_class_accuracy:8.2f}  {100 * s.frequency_weighted_iou:7.2f}")
            if published and published.get(variant) is not None:
                line += f"  {published[variant]:.2f} ({published.get('source', '')})"
            click.echo(line)
    for skipped in result.skipped[:10]:
        click.echo(f"skipped: {skipped}", err=True)
    if len(result.skipped) > 10:
        click.echo(f"... and {len(result.skipped) - 10} more (all listed in {report_md})", err=True)
    click.echo(f"wrote {results_json} and {report_md}"
               + (f" (chart: {out / CHART}; {len(panels)} panel(s) in {out / PANELS_DIR})" if result.scores else ""))
    if not result.scores:
        click.echo("error: no image could be scored, so there are no scores", err=True)
    if result.skipped:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
