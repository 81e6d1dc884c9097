#!/usr/bin/env bash
# The main job, on the bundled demo model (a small DeepLab-v2-style net trained on generated scenes, not on
# photographs): convert it to an artifact and ONNX, verify torch against onnxruntime blob by blob, segment
# the bundled sample scenes with and without the dense CRF, and score held-out scenes with and without CRF.
# Usage: bash scripts/main.sh [OUTDIR]      (default out/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
echo "== 0. setup (the first time: 1-2 minutes, see scripts/setup.sh)"
bash scripts/setup.sh
out=${1:-out/demo}
rm -rf "$out"
mkdir -p "$out"
caffemodel=caffe2torch/weights/deeplab-demo-synthetic.caffemodel
prototxt=caffe2torch/prototxt/deeplab-demo-synthetic.prototxt

echo "== 1. the caffemodel, recognised from its layers"
deeplab-info "$caffemodel" | tail -n 2
echo "== 2. convert (artifact + ONNX)"
deeplab-convert --model deeplab-demo-synthetic "$caffemodel" -o "$out/model" 2>/dev/null
echo "== 3. torch vs onnxruntime, every blob"
python3 -m caffe2torch.demo parity "$out/parity"
deeplab-verify "$prototxt" "$caffemodel" --inputs "$out/parity/inputs.npz" --reference "$out/parity/blobs.npz" \
  --backend onnx | tail -n 1
echo "== 4. segment the sample scenes, without and with the dense CRF"
deeplab-run --onnx "$out/model/model.onnx" caffe2torch/demo/samples -o "$out/samples"
deeplab-run --onnx "$out/model/model.onnx" caffe2torch/demo/samples -o "$out/samples_crf" --crf --jobs 2
echo "== 5. held-out generated scenes: mIoU without and with the dense CRF"
python3 -m caffe2torch.demo heldout "$out/heldout"
deeplab-eval --onnx "$out/model/model.onnx" --voc-root "$out/heldout" --list "$out/heldout/ImageSets/Segmentation/val.txt" \
  --crf --jobs 2 -o "$out/eval"
echo "label PNGs and overlays (with a legend): $out/samples, $out/samples_crf"
echo "scores: $out/eval/report.md, with the per-class chart $out/eval/per_class_iou.png and panels in $out/eval/panels"
echo "main job done in $((SECONDS - started)) s"
