#!/usr/bin/env bash
# Convert every golden DeepLab case (made with DeepLab's own Caffe, in ../shared/reference) and prove the
# conversion blob by blob with deeplab-verify, in torch and in onnxruntime.
# Usage: bash scripts/verify_goldens.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-out/goldens}
shared=${CAFFE2TORCH_SHARED:-../shared}
if [ ! -d "$shared/reference" ]; then
  echo "error: $shared/reference (the DeepLab golden cases) is not beside this checkout" >&2
  exit 2
fi
mkdir -p "$out"
deeplab-info "$shared/corpus/c_v2_tpami/DeepLabv2-ResNet101-MSC-ASPP/test.prototxt" --define NUM_LABELS=21 \
  | tail -n 4
status=0
for case in "$shared"/reference/*/; do
  name=$(basename "$case")
  for variant in "" _v1; do
    [ -f "$case/net$variant.prototxt" ] || continue
    for backend in torch onnx; do
      report="$out/$name$variant.$backend"
      if deeplab-verify "$case/net$variant.prototxt" "$case/weights$variant.caffemodel" --backend $backend \
          --inputs "$case/inputs.npz" --reference "$case/blobs.npz" --json "$report.json" > "$report.txt"; then
        echo "PASS  $name$variant ($backend): $(tail -n 1 "$report.txt")"
      else
        echo "FAIL  $name$variant ($backend): $(tail -n 1 "$report.txt")"; status=1
      fi
    done
  done
done
deeplab-convert "$shared/reference/v2_resnet101_msc/net.prototxt" "$shared/reference/v2_resnet101_msc/weights.caffemodel" \
  -o "$out/v2_resnet101_msc" | tail -n 1
echo "reports in $out/"
exit $status
