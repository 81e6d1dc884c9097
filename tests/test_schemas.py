"""Our .proto schemas: each dialect equals its fork's caffe.proto field for field, the generated modules are
current, and the field numbers the DeepLab facts sheet pins."""

from __future__ import annotations

import importlib.util
import json
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from caffe2torch.proto import (
    common_pb2,
    deeplab_v1_pb2,
    deeplab_v2_pb2,
    enet_pb2,
    pspnet_pb2,
    segnet_pb2,
    shufflenet_pb2,
    upstream_pb2,
)

from .conftest import REPO

TABLES = REPO / "tests" / "data" / "schemas"
DIALECT_MODULES = {"upstream": upstream_pb2, "deeplab_v1": deeplab_v1_pb2, "deeplab_v2": deeplab_v2_pb2,
                   "segnet": segnet_pb2, "enet": enet_pb2, "pspnet": pspnet_pb2, "shufflenet": shufflenet_pb2}
# Where each table was extracted from (scripts/extract_schema_table.py; deeplab-caffe-facts.md names the forks).
SOURCES = {
    "upstream": ("BVLC/caffe", "9b891540183ddc834a02b2bd81b31afae71b2153"),
    "deeplab_v1": ("corenel/deeplab-public", "10d174fb15e6b1e4ba1fe9cc22ec5b07b701a81f"),
    "deeplab_v2": ("DrSleep/deeplab-public-ver2", "071ef5a59aad8d9e6e1f5b8dff3d7a5c984a3d3a"),
    # The segmentation zoo's forks (docs/zoo.md).
    "segnet": ("alexgkendall/caffe-segnet", "344c113bf1832886f1cbe9f33ffe28a3beeaf412"),
    "enet": ("TimoSaemann/caffe-enet", "22d356c956cdc5e752e6d40612e4f6c60fc8f471"),
    "pspnet": ("hszhao/PSPNet", "798bdc907c8630e8c3997ebfdd0d7cae0c5ab03b"),
    # The classifiers' forks: ShuffleNet ships no caffe.proto, only the lines its README says to add to
    # upstream's (the table is upstream's plus those; caffe-mobilenet and SENet change no schema).
    "shufflenet": ("farmingyard/ShuffleNet", "b9624442bd410bbd2aadc820122b138e63039d70"),
}
# Tables of forks that ship caffe.proto additions rather than a caffe.proto: {dialect: (path, base table)}.
ADDITIONS = {"shufflenet": ("README.md", "upstream")}
# Deliberate differences between our schema and the fork's, as table_differences() words them. None at present:
# each dialect reads exactly what its fork's Caffe reads.
DELIBERATE_DIFFERENCES: dict[str, list[str]] = {name: [] for name in SOURCES}


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_modules_are_current():
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.fail("grpcio-tools (the test extra) is needed to check the generated modules")
    for name, text in load_script("generate_protos").generate().items():
        assert (REPO / "caffe2torch" / "proto" / name).read_text() == text, (
            f"{name} is stale: run python scripts/generate_protos.py"
        )


def test_generated_modules_carry_no_runtime_version_guard():
    # The guard would refuse protobuf 4 and 5 runtimes.
    for name in ("common", *DIALECT_MODULES):
        text = (REPO / "caffe2torch" / "proto" / f"{name}_pb2.py").read_text()
        assert "ValidateProtobufRuntimeVersion" not in text


# ---- each dialect against its fork's caffe.proto ----


def our_table(module: ModuleType) -> dict[str, Any]:
    """The field table of a generated dialect module, through the same code that extracted the forks'."""
    files: list[descriptor_pb2.FileDescriptorProto] = []
    pending, seen = [module.DESCRIPTOR], set()
    while pending:
        file = pending.pop()
        if file.name in seen:
            continue
        seen.add(file.name)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        files.append(proto)
        pending.extend(file.dependencies)
    return load_script("extract_schema_table").schema_table(files, f"{module.DESCRIPTOR.package}.NetParameter")


def fork_table(dialect: str) -> dict[str, Any]:
    return json.loads((TABLES / f"{dialect}.json").read_text())


def table_differences(ours: dict[str, Any], fork: dict[str, Any]) -> list[str]:
    """Every message, field and enum on which the two tables disagree, both directions."""
    out = []
    for kind in ("messages", "enums"):
        a, b = ours[kind], fork[kind]
        out += [f"missing {kind[:-1]} {name}" for name in sorted(b.keys() - a.keys())]
        out += [f"extra {kind[:-1]} {name}" for name in sorted(a.keys() - b.keys())]
        for name in sorted(a.keys() & b.keys()):
            if kind == "enums":
                if a[name] != b[name]:
                    out.append(f"enum {name}: ours {a[name]}, fork {b[name]}")
                continue
            fields_a, fields_b = a[name], b[name]
            out += [f"missing field {name}.{f} {fields_b[f]}" for f in sorted(fields_b.keys() - fields_a.keys())]
            out += [f"extra field {name}.{f} {fields_a[f]}" for f in sorted(fields_a.keys() - fields_b.keys())]
            out += [f"field {name}.{f}: ours {fields_a[f]}, fork {fields_b[f]}"
                    for f in sorted(fields_a.keys() & fields_b.keys()) if fields_a[f] != fields_b[f]]
    return out


@pytest.mark.parametrize("dialect", sorted(DIALECT_MODULES))
def test_schema_equals_its_forks_caffe_proto(dialect):
    # Every message reachable from NetParameter, every field (number, label, type, default, packing) and every
    # enum value in declaration order; a missing field makes a whole file fail to open.
    differences = table_differences(our_table(DIALECT_MODULES[dialect]), fork_table(dialect))
    assert differences == DELIBERATE_DIFFERENCES[dialect]


@pytest.mark.parametrize("dialect", sorted(DIALECT_MODULES))
def test_field_tables_record_their_source(dialect):
    table = fork_table(dialect)
    assert (table["source"]["repository"], table["source"]["commit"]) == SOURCES[dialect]
    if dialect in ADDITIONS:
        path, base = ADDITIONS[dialect]
        assert table["source"]["path"] == path and table["base"] == fork_table(base)["source"]
    else:
        assert table["source"]["path"] == "src/caffe/proto/caffe.proto"
    assert table["root"] == "NetParameter"
    assert "SolverParameter" not in table["messages"]  # only what a net definition can reach


def test_table_differences_name_what_differs():
    ours, fork = our_table(deeplab_v2_pb2), fork_table("deeplab_v2")
    del ours["messages"]["PoolingParameter"]["global_pooling"]
    ours["messages"]["InterpParameter"]["zoom_factor"]["default"] = 2
    ours["messages"]["Extra"] = {}
    ours["enums"]["SegAccuracyParameter.AccuracyMetric"].reverse()
    differences = table_differences(ours, fork)
    assert differences[0] == "extra message Extra"
    assert any(d.startswith("missing field PoolingParameter.global_pooling ") for d in differences)
    assert any(d.startswith("field InterpParameter.zoom_factor: ours ") for d in differences)
    assert any(d.startswith("enum SegAccuracyParameter.AccuracyMetric: ") for d in differences)
    assert len(differences) == 4


def test_extractor_keeps_what_a_net_reaches(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.fail("grpcio-tools (the test extra) is needed to run protoc")
    extract = load_script("extract_schema_table")
    proto = tmp_path / "caffe.proto"
    proto.write_text("""syntax = "proto2";
package caffe;
enum Phase { TRAIN = 0; TEST = 1; }
message NetParameter { repeated Layer layer = 100; optional Phase phase = 2 [default = TEST]; }
message Layer {
  enum Kind { B = 1; A = 0; }
  optional Kind kind = 1;
  repeated int64 dim = 2 [packed = true];
  optional float eps = 3 [default = 1e-5];
  required string name = 4 [default = 'x'];
  optional Layer inner = 5;
}
message SolverParameter { optional NetParameter net = 1; }
""")
    table = extract.schema_table(extract.compile_proto(proto), "caffe.NetParameter")
    assert table == {
        "messages": {
            "Layer": {
                "kind": {"number": 1, "label": "optional", "type": "enum", "type_name": "Layer.Kind"},
                "dim": {"number": 2, "label": "repeated", "type": "int64", "packed": True},
                "eps": {"number": 3, "label": "optional", "type": "float", "default": 1e-05},
                "name": {"number": 4, "label": "required", "type": "string", "default": "x"},
                "inner": {"number": 5, "label": "optional", "type": "message", "type_name": "Layer"},
            },
            "NetParameter": {
                "layer": {"number": 100, "label": "repeated", "type": "message", "type_name": "Layer"},
                "phase": {"number": 2, "label": "optional", "type": "enum", "type_name": "Phase",
                          "default": "TEST"},
            },
        },
        "enums": {"Layer.Kind": [["B", 1], ["A", 0]], "Phase": [["TRAIN", 0], ["TEST", 1]]},
    }
    assert json.loads(extract.dump({"root": "NetParameter", **table})) == {"root": "NetParameter", **table}


# Fields that exist under the same message name in two or more forks with a different label, type, enum
# value set or default (numbers aside: a text file names fields). A parser that takes a field from another
# fork by name must not assume the shapes agree.
CROSS_FORK_CLASHES = {
    "ConvolutionParameter.kernel_size": "v1 optional (scalar); upstream, v2 repeated",
    "ConvolutionParameter.pad": "v1 optional (scalar, default 0); upstream, v2 repeated",
    "ConvolutionParameter.stride": "v1 optional (scalar, default 1); upstream, v2 repeated",
    "ImageDataParameter.batch_size": "v1 no default; upstream, v2 default 1",
    "LayerParameter.param": "v1 repeated string (V1 style); upstream, v2 repeated ParamSpec",
    "LayerParameter.type": "v1 enum LayerType; upstream, v2 string",
    "LossParameter.normalize": "segnet, enet default true; upstream, v2, pspnet no default",
    "NetParameter.layers": "v1 LayerParameter; upstream, v2 V1LayerParameter",
    "UniqueLabelParameter.ignore_label": "v1 repeated float; v2 repeated int32",
}


def test_cross_fork_clashes_by_field_name():
    tables = {d: fork_table(d) for d in DIALECT_MODULES}

    def shape(dialect: str, entry: dict[str, Any]) -> tuple:
        values = tables[dialect]["enums"].get(entry.get("type_name"), [])
        target = entry.get("type_name") if entry["type"] == "message" else None
        return entry["label"], entry["type"], target, tuple(sorted(v for v, _ in values)), entry.get("default")

    clashes = set()
    for name in set().union(*(t["messages"] for t in tables.values())):
        fields = [(d, t["messages"][name]) for d, t in tables.items() if name in t["messages"]]
        for field in set().union(*(f for _, f in fields)):
            shapes = {shape(d, f[field]) for d, f in fields if field in f}
            if len(shapes) > 1:
                clashes.add(f"{name}.{field}")
    assert clashes == set(CROSS_FORK_CLASHES)


# ---- the clashes the facts sheet pins ----


def number(message, field):
    return message.DESCRIPTOR.fields_by_name[field].number


def test_v1_conv_hole_clashes_with_upstream_fields():
    assert number(deeplab_v1_pb2.ConvolutionParameter, "hole") == 17
    assert number(deeplab_v1_pb2.ConvolutionParameter, "hole_h") == 18
    assert number(deeplab_v1_pb2.ConvolutionParameter, "hole_w") == 19
    assert number(common_pb2.ConvolutionParameter, "force_nd_im2col") == 17
    assert number(common_pb2.ConvolutionParameter, "dilation") == 18


def test_v2_deeplab_fields_at_143_to_151():
    expected = {"interp_param": 143, "seg_accuracy_param": 144, "mat_write_param": 145, "dense_crf_param": 146,
                "domain_transform_param": 147, "adaptive_bias_channel_param": 148, "bias_channel_param": 149,
                "unique_label_param": 150, "mat_read_param": 151}
    for field, num in expected.items():
        assert number(deeplab_v2_pb2.LayerParameter, field) == num
    assert number(upstream_pb2.LayerParameter, "input_param") == 143
    assert number(upstream_pb2.LayerParameter, "crop_param") == 144


def test_v1_layer_fields_and_enum():
    expected = {"seg_accuracy_param": 42, "interp_param": 43, "softmaxloss_param": 44, "padding_param": 45,
                "mat_write_param": 46, "mat_read_param": 47, "dense_crf_param": 48, "dominant_channel_param": 49,
                "bias_channel_param": 50, "unique_label_param": 51, "censor_label_param": 52,
                "adaptive_bias_channel_param": 53, "channel_aggregator_param": 54, "ignore_overlay_param": 55,
                "histogram_param": 56, "euclidean_loss_param": 57, "gain_channel_param": 58, "onehot_param": 59,
                "strict_dim": 1003}
    for field, num in expected.items():
        assert number(deeplab_v1_pb2.LayerParameter, field) == num
    v1_enum = deeplab_v1_pb2.LayerParameter.LayerType
    assert v1_enum.Value("IMAGE_SEG_DATA") == 39 and v1_enum.Value("ONEHOT") == 56
    assert "DECONVOLUTION" not in v1_enum.keys()
    assert upstream_pb2.V1LayerParameter.LayerType.Value("DECONVOLUTION") == 39
    assert number(upstream_pb2.V1LayerParameter, "loss_param") == 42


def test_deeplab_messages():
    assert [f.number for f in common_pb2.InterpParameter.DESCRIPTOR.fields] == [1, 2, 3, 4, 5, 6]
    crf = common_pb2.DenseCRFParameter.DESCRIPTOR.fields_by_name
    assert crf["max_iter"].default_value == 10 and crf["output_probability"].number == 7
    dt = deeplab_v2_pb2.DomainTransformParameter.DESCRIPTOR.fields_by_name
    defaults = (dt["num_iter"].default_value, dt["spatial_sigma"].default_value, dt["range_sigma"].default_value)
    assert defaults == (3, 50, 5)
    v2_image = deeplab_v2_pb2.ImageDataParameter.DESCRIPTOR.fields_by_name
    assert v2_image["ignore_label"].number == 15 and v2_image["label_type"].number == 16
    assert "has_label" not in v2_image
    v2_transform = deeplab_v2_pb2.TransformationParameter.DESCRIPTOR.fields_by_name
    assert (v2_transform["scale_factors"].number, v2_transform["crop_width"].number) == (8, 9)


def test_shufflenet_table_is_upstreams_plus_its_readmes_additions():
    # farmingyard/ShuffleNet README: "optional ShuffleChannelParameter shuffle_channel_param = 164;" and
    # "message ShuffleChannelParameter { optional uint32 group = 1[default = 1]; }", into upstream's caffe.proto.
    shufflenet, upstream = fork_table("shufflenet"), fork_table("upstream")
    assert shufflenet["enums"] == upstream["enums"]
    added = {name for name in shufflenet["messages"] if shufflenet["messages"][name] != upstream["messages"].get(name)}
    assert added == {"LayerParameter", "ShuffleChannelParameter"}
    layer = dict(shufflenet["messages"]["LayerParameter"])
    assert layer.pop("shuffle_channel_param") == {"number": 164, "label": "optional", "type": "message",
                                                  "type_name": "ShuffleChannelParameter"}
    assert layer == upstream["messages"]["LayerParameter"]
    assert shufflenet["messages"]["ShuffleChannelParameter"] == {
        "group": {"number": 1, "label": "optional", "type": "uint32", "default": 1}}
    assert number(shufflenet_pb2.LayerParameter, "shuffle_channel_param") == 164
