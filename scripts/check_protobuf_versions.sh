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
# Fields the schemas gained from their forks' caffe.proto (issue 15): upstream round_mode, v2 update_global_stats.
pool = parse_prototxt_text('layer { name: "p" type: "Pooling" pooling_param { kernel_size: 2 round_mode: FLOOR } }')
assert pool.net["layer"][0]["pooling_param"]["round_mode"] == "FLOOR"
bn = parse_prototxt_text('layer { name: "b" type: "Interp" interp_param { zoom_factor: 2 } }\n'
                         'layer { name: "n" type: "BatchNorm" batch_norm_param { update_global_stats: true } }')
assert bn.dialect == "deeplab_v2" and bn.net["layer"][1]["batch_norm_param"]["update_global_stats"] is True
# The segmentation zoo's forks (docs/zoo.md).
seg = parse_prototxt_text('layer { name: "u" type: "Upsample" upsample_param { scale: 2 pad_out_h: true } }')
psp = parse_prototxt_text('layer { name: "b" type: "BN" bn_param { frozen: true } }\n'
                          'layer { name: "i" type: "Interp" interp_param { zoom_factor: 8 } }')
assert (seg.dialect, psp.dialect) == ("segnet", "pspnet")
# The classifiers' forks (README "Classifiers").
shuffle = parse_prototxt_text('layer { name: "s" type: "ShuffleChannel" shuffle_channel_param { group: 3 } }')
assert shuffle.dialect == "shufflenet" and shuffle.net["layer"][0]["shuffle_channel_param"]["group"] == 3
# Each dialect's descriptors, as this runtime loads them, still equal its fork's field table.
import importlib.util
import json
from google.protobuf import descriptor_pb2
from caffe2torch.proto import deeplab_v1_pb2, deeplab_v2_pb2, enet_pb2, pspnet_pb2, segnet_pb2, shufflenet_pb2, upstream_pb2
spec = importlib.util.spec_from_file_location("extract", "scripts/extract_schema_table.py")
extract = importlib.util.module_from_spec(spec)
spec.loader.exec_module(extract)
for dialect, module in (("upstream", upstream_pb2), ("deeplab_v1", deeplab_v1_pb2), ("deeplab_v2", deeplab_v2_pb2),
                        ("segnet", segnet_pb2), ("enet", enet_pb2), ("pspnet", pspnet_pb2),
                        ("shufflenet", shufflenet_pb2)):
    files, pending = [], [module.DESCRIPTOR]
    while pending:
        file = pending.pop()
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        files.append(proto)
        pending.extend(file.dependencies)
    ours = extract.schema_table(files, f"{module.DESCRIPTOR.package}.NetParameter")
    fork = json.load(open(f"tests/data/schemas/{dialect}.json"))
    assert ours == {"messages": fork["messages"], "enums": fork["enums"]}, dialect
print(f"protobuf {sys.argv[1]}: schemas load and equal the forks' field tables, every dialect parses")
PY
  rm -rf "$target"
done
