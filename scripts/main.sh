#!/usr/bin/env bash
# The main job: convert every golden DeepLab case (made with DeepLab's own Caffe) and prove the conversion
# blob by blob with deeplab-verify. Usage: bash scripts/main.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-out/main}
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
    if deeplab-verify "$case/net$variant.prototxt" "$case/weights$variant.caffemodel" \
        --inputs "$case/inputs.npz" --reference "$case/blobs.npz" --json "$out/$name$variant.json" > "$out/$name$variant.txt"; then
      echo "PASS  $name$variant: $(tail -n 1 "$out/$name$variant.txt")"
    else
      echo "FAIL  $name$variant: $(tail -n 1 "$out/$name$variant.txt")"; status=1
    fi
  done
done
deeplab-convert "$shared/reference/v2_resnet101_msc/net.prototxt" "$shared/reference/v2_resnet101_msc/weights.caffemodel" \
  -o "$out/v2_resnet101_msc" | tail -n 1
echo "reports in $out/"
exit $status
