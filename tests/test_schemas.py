"""Our .proto schemas: generated modules current, and the field numbers the DeepLab facts sheet pins."""

from __future__ import annotations

import importlib.util

import pytest

from caffe2torch.proto import common_pb2, deeplab_v1_pb2, deeplab_v2_pb2, upstream_pb2

from .conftest import REPO


def test_generated_modules_are_current():
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.fail("grpcio-tools (the test extra) is needed to check the generated modules")
    spec = importlib.util.spec_from_file_location("generate_protos", REPO / "scripts" / "generate_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, text in module.generate().items():
        assert (REPO / "caffe2torch" / "proto" / name).read_text() == text, (
            f"{name} is stale: run python scripts/generate_protos.py"
        )


def test_generated_modules_carry_no_runtime_version_guard():
    # The guard would refuse protobuf 4 and 5 runtimes.
    for name in ("common", "upstream", "deeplab_v1", "deeplab_v2"):
        text = (REPO / "caffe2torch" / "proto" / f"{name}_pb2.py").read_text()
        assert "ValidateProtobufRuntimeVersion" not in text


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
