"""Helpers of the main job (scripts/main.sh) around the demo model.

    python -m caffe2torch.demo heldout DIR [--count 60]   # held-out generated scenes in the VOC layout
    python -m caffe2torch.demo parity DIR                 # inputs.npz and torch's blobs.npz for deeplab-verify
    python -m caffe2torch.demo samples DIR [--count 4]    # the bundled sample scenes (how they were made)
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from caffe2torch.demo.synthetic import make_scene, write_voc_layout
from caffe2torch.util import atomic_path

HELD_OUT_SEED, SAMPLES_SEED = 2024, 77


@click.group()
def main() -> None:
    """Demo-model helpers (the demo is trained on generated scenes, not photographs)."""


@main.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--count", default=60, show_default=True)
def heldout(folder: str, count: int) -> None:
    """Write COUNT held-out scenes (a seed never used in training) in the VOC layout, with a list file."""
    listing = write_voc_layout(folder, HELD_OUT_SEED, count)
    click.echo(f"wrote {count} held-out scenes to {folder} (list: {listing})")


@main.command()
@click.argument("folder", type=click.Path(file_okay=False))
def parity(folder: str) -> None:
    """inputs.npz (one preprocessed sample) and blobs.npz (every blob as the torch module computes it)."""
    import torch

    from caffe2torch.definitions import bundled_definition
    from caffe2torch.demo.train import CAFFEMODEL, bundled, to_input
    from caffe2torch.pipeline import convert

    net, _ = convert(bundled_definition("deeplab-demo-synthetic"), bundled(CAFFEMODEL))
    image, _ = make_scene(np.random.default_rng(HELD_OUT_SEED + 1))
    inputs = {"data": to_input(image[None]).numpy()}
    with torch.no_grad():
        blobs = {k: v.numpy() for k, v in net.run({"data": torch.from_numpy(inputs["data"])}, all_blobs=True).items()}
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, arrays in (("inputs.npz", inputs), ("blobs.npz", blobs)):
        with atomic_path(out / name) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    click.echo(f"wrote {out / 'inputs.npz'} and {out / 'blobs.npz'} ({len(blobs)} blobs)")


@main.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--count", default=4, show_default=True)
def samples(folder: str, count: int) -> None:
    """Write the sample scenes bundled in caffe2torch/demo/samples (regenerates them exactly)."""
    from PIL import Image

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SAMPLES_SEED)
    for index in range(count):
        image, _ = make_scene(rng, 161, 225)  # not the training size: the net takes any size
        Image.fromarray(image).save(out / f"scene_{index + 1}.png", optimize=True)
    click.echo(f"wrote {count} sample scenes to {out}")


if __name__ == "__main__":
    main()
