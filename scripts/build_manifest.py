"""Build caffe2torch/weights/manifest.json: the known DeepLab models, their class names, their published numbers (from
../shared/docs/published-numbers.md, with their status) and the layer signature that identifies their
caffemodels (weight-layer names and blob shapes, inferred from the original prototxts in ../shared/corpus at
full width, ${EXP}=voc12 and 21 labels, as in the released files).

    python scripts/build_manifest.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from caffe2torch.definitions import bundled_definition
from caffe2torch.demo.synthetic import CLASS_NAMES as DEMO_CLASSES
from caffe2torch.images import VOC_CLASSES
from caffe2torch.pipeline import read_net
from caffe2torch.shapes import infer_shapes
from caffe2torch.util import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
VOC = "VOC 2012 (21 classes)"

MODELS = [
    {
        "id": "deeplab-v1-msc-largefov",
        "name": "DeepLab-MSc-LargeFOV (ICLR'15, LargeFOV plus multi-scale classifiers on the image and pool1-4)",
        "files": ["test.prototxt"],
        "definition": "deeplab-v1-msc-largefov",
        "crf_preset": "deeplab-v1-largefov",
        "published": {"no_crf": 64.21, "crf": 68.70, "test_crf": 71.6, "status": "test V, val M",
                      "source": "arXiv 1412.7062 abstract (test 71.6); val as commonly quoted"},
    },
    {
        "id": "deeplab-demo-synthetic",
        "name": "caffe2torch demo (DeepLab-v2-style, trained on generated scenes, not photographs)",
        "files": ["deeplab-demo-synthetic.caffemodel"],
        "definition": "deeplab-demo-synthetic",
        "crf_preset": "demo-synthetic",
        "classes": "background, disc, box, triangle, ring",
        "class_names": DEMO_CLASSES,
        "published": {"status": "demo", "source": "scores of the held-out generated scenes are printed by "
                      "scripts/main.sh; this model has no published numbers"},
    },
    {
        "id": "deeplab-v1-largefov",
        "name": "DeepLab-LargeFOV (ICLR'15, VGG-16, fc6 3x3 hole 12)",
        "corpus": "a_v1_iclr15/DeepLab-LargeFOV/test.prototxt",
        "files": ["test.prototxt", "train_iter_6000.caffemodel"],
        "definition": "deeplab-v1-largefov",
        "crf_preset": "deeplab-v1-largefov",
        "published": {"no_crf": 62.25, "crf": 67.64, "test_crf": 70.3, "status": "V",
                      "source": "paper, quoted by wangleihitcs/DeepLab-V1-PyTorch and BardOfCodes (val); "
                                "ml-lab/tensorflow-deeplab-lfov (test)"},
        "also": "the weakly/semi-supervised ICCV'15 models (e.g. Weak-EM-Adapt: 38.2 val, M) share this "
                "architecture and layer names; their numbers differ",
    },
    {
        "id": "deeplab-v1",
        "name": "DeepLab (ICLR'15, VGG-16, fc6 4x4 hole 4)",
        "corpus": "a_v1_iclr15/DeepLab/test.prototxt",
        "files": ["test.prototxt"],
        "definition": "deeplab-v1",
        "crf_preset": "deeplab-v1-largefov",
        "published": {"no_crf": 59.80, "crf": 63.74, "test_crf": 66.4, "status": "M",
                      "source": "paper tables as commonly quoted (unverified)"},
    },
    {
        "id": "deeplab-v2-vgg16-aspp-l",
        "name": "DeepLab v2 VGG-16 ASPP-L (TPAMI)",
        "corpus": "c_v2_tpami/DeepLabv2-VGG16-ASPP-L/test.prototxt",
        "files": ["test.prototxt"],
        "definition": "deeplab-v2-vgg16-aspp-l",
        "crf_preset": "deeplab-v2-resnet",
        "published": {"no_crf": 68.96, "crf": 71.57, "status": "M",
                      "source": "paper tables as commonly quoted (unverified)"},
    },
    {
        "id": "deeplab-v2-resnet101-msc",
        "name": "DeepLab v2 ResNet-101 MSC + COCO + ASPP-L (TPAMI; the released model)",
        "corpus": "c_v2_tpami/DeepLabv2-ResNet101-MSC-ASPP/test.prototxt",
        "files": ["test.prototxt", "train_iter_20000.caffemodel"],
        "definition": "deeplab-v2-resnet101-msc",
        "crf_preset": "deeplab-v2-resnet",
        "published": {"no_crf": 76.35, "crf": 77.69, "status": "V",
                      "source": "kazuto1011/deeplab-pytorch README @4219467, rows marked Official"},
    },
]


def signature(spec) -> dict[str, list[list[int]]]:
    """Weight-layer name → blob shapes, for layers that own their blobs (shared MSC branches excluded)."""
    shared = spec.shared_parameters()
    out = {}
    for info in infer_shapes(spec).layers:
        if info.blob_shapes and not all((info.name, i) in shared for i in range(len(info.blob_shapes))):
            out[info.name] = [list(s) for s in info.blob_shapes]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args()
    models = []
    for entry in MODELS:
        # The signature comes from the original where ../shared has it, else from our bundled definition.
        if "corpus" in entry:
            source = args.shared / "corpus" / entry["corpus"]
            origin = f"../shared/corpus/{entry['corpus']}"
        else:
            source = bundled_definition(entry["definition"])
            origin = f"caffe2torch/prototxt/{entry['definition']}.prototxt"
        spec = read_net(source, defines={"NUM_LABELS": "21", "EXP": "voc12"})
        shared = sorted({layer for layer, _ in spec.shared_parameters()})
        models.append({"classes": VOC, "class_names": VOC_CLASSES, **{k: v for k, v in entry.items() if k != "corpus"},
                       "source_prototxt": origin, "signature": signature(spec), "shared_layers": shared})
    atomic_write_text(ROOT / "caffe2torch" / "weights" / "manifest.json", json.dumps({"models": models}, indent=1))
    print(f"wrote {len(models)} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
