#!/usr/bin/env bash
# Load the generated schema modules and parse prototxts of all three dialects with each protobuf major
# version we support (4 through 7), each installed into a throwaway folder. Needs the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
versions=${PROTOBUF_VERSIONS:-"4.21.12 4.25.9 5.29.6 6.33.6 7.36.2"}
for v in $versions; do
  target=$(mktemp -d)
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check --no-deps --target "$target" "protobuf==$v" 2>&1 | { grep -v "is ignored: it is neither" || true; }
  PYTHONPATH="$target:$PWD" python3 - "$v" <<'PY'
import sys
import google.protobuf
from caffe2torch.parse import parse_prototxt_text
assert google.protobuf.__version__ == sys.argv[1], google.protobuf.__version__
v1 = parse_prototxt_text('layers { name: "c" type: CONVOLUTION convolution_param { hole: 2 } }')
v2 = parse_prototxt_text('layer { name: "i" type: "Interp" interp_param { zoom_factor: 8 } }')
up = parse_prototxt_text('layer { name: "i" type: "Input" input_param { shape { dim: 1 } } }')
assert (v1.dialect, v2.dialect, up.dialect) == ("deeplab_v1", "deeplab_v2", "caffe")
print(f"protobuf {sys.argv[1]}: schemas load, all three dialects parse")
PY
  rm -rf "$target"
done
