"""The segmentation zoo of Caffe forks, written from the published net definitions' structure (docs/zoo.md lists
each source file with its repository, path and commit): same layer names, types, bottoms, tops and parameters,
channel widths divided where they are large, and, where the layer sizes allow it, a smaller input.

Each builder returns a `ZooNet`: the fork's own prototxt text, and an OpenCV-side equivalent for the
independent reference (tests/opencv_reference.py) in which the fork layers OpenCV 4 lacks are replaced by
OpenCV layers that compute the same thing by the fork's source:
- SegNet/ENet BN (bn_mode INFERENCE: x * scale + shift) -> Scale with a bias, same blobs;
- PSPNet BN (TEST: (x - mean) / sqrt(var + eps) * slope + bias) -> BatchNorm (mean, var, factor 1, eps) + Scale;
- Upsample (mask-driven unpooling) -> OpenCV's MaxUnpool (from its Torch importer) with the pooling input's size;
- data layers (DenseImageData, a Python data layer) -> a net input.
So OpenCV checks everything around those layers (convolutions, dilations, the pooling masks' indices, the
unpooling, Deconvolution, Crop, Interp, PReLU, ...), and the fork layers themselves are pinned by the
hand-computed cases of tests/test_zoo_layers.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from caffe2torch.caffemodel import WeightsLayer


class Enum(str):
    """An enum value: written unquoted."""


def _value(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _fields(message: dict[str, Any], indent: int) -> list[str]:
    pad, lines = "  " * indent, []
    for key, value in message.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, dict):
                lines += [f"{pad}{key} {{", *_fields(item, indent + 1), f"{pad}}}"]
            else:
                lines.append(f"{pad}{key}: {_value(item)}")
    return lines


def layer_text(layer: dict[str, Any]) -> str:
    return "\n".join(["layer {", *_fields(layer, 1), "}"])


def layer(name: str, kind: str, bottom=(), top=(), **params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "type": kind}
    if bottom:
        out["bottom"] = list(bottom) if not isinstance(bottom, str) else [bottom]
    if top:
        out["top"] = list(top) if not isinstance(top, str) else [top]
    out.update(params)
    return out


def net_input(name: str, shape: tuple[int, ...]) -> str:
    return f'input: "{name}"\ninput_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}'


# Weights of one layer in the OpenCV net, from the fork layer's blobs.
WeightsTranslation = Callable[[str, list[np.ndarray]], list[WeightsLayer]]


@dataclass
class ZooNet:
    key: str
    title: str
    source: tuple[str, str, str]  # repository, path, commit
    dialect: str
    inputs: dict[str, tuple[int, ...]]
    header: str = ""
    cv_header: str = ""
    layers: list[dict[str, Any]] = field(default_factory=list)
    cv_layers: list[dict[str, Any]] = field(default_factory=list)
    cv_weights: dict[str, WeightsTranslation] = field(default_factory=dict)
    reduced: str = ""

    def add(self, fork: dict[str, Any], cv: list[dict[str, Any]] | None = None,
            weights: WeightsTranslation | None = None) -> None:
        """A layer of the fork's net, and (when OpenCV needs another form) its OpenCV equivalent."""
        self.layers.append(fork)
        self.cv_layers += [fork] if cv is None else cv
        if weights is not None:
            self.cv_weights[fork["name"]] = weights

    def text(self) -> str:
        return "\n".join([f'name: "{self.key}"', self.header, *map(layer_text, self.layers)]) + "\n"

    def cv_text(self) -> str:
        head = self.cv_header or "\n".join(net_input(n, s) for n, s in self.inputs.items())
        return "\n".join([f'name: "{self.key}"', head, *map(layer_text, self.cv_layers)]) + "\n"

    def opencv_weights(self, layers: list[WeightsLayer]) -> list[WeightsLayer]:
        out = []
        for item in layers:
            translate = self.cv_weights.get(item.name)
            out += translate(item.name, list(item.blobs)) if translate else [item]
        return out


# ---- the layer kinds every net uses ----


def conv(name, bottom, num_output, kernel=None, pad=None, stride=None, dilation=None, bias=None, top=None,
         group=None, kernel_hw=None, kind="Convolution", scalar=False, params=None):
    """A convolution as the published files write them (`scalar`: SegNet's pre-2015 single values)."""
    p: dict[str, Any] = {"num_output": num_output}
    if bias is not None:
        p["bias_term"] = bias
    if pad is not None:
        p["pad"] = pad
    if kernel is not None:
        p["kernel_size"] = kernel
    if kernel_hw is not None:
        p["kernel_h"], p["kernel_w"] = kernel_hw
    if stride is not None:
        p["stride"] = stride
    if dilation is not None:
        p["dilation"] = dilation
    if group is not None:
        p["group"] = group
    extra = {"param": params} if params else {}
    return layer(name, kind, bottom, top or name, **extra, convolution_param=p)


def relu(name, blob, top=None):
    return layer(name, "ReLU", blob, top or blob)


def pool(name, bottom, method, kernel, stride, pad=None, mask=None, kernel_hw=None, stride_hw=None, top=None):
    p: dict[str, Any] = {"pool": Enum(method)}
    if kernel is not None:
        p["kernel_size"] = kernel
    if kernel_hw is not None:
        p["kernel_h"], p["kernel_w"] = kernel_hw
    if stride is not None:
        p["stride"] = stride
    if stride_hw is not None:
        p["stride_h"], p["stride_w"] = stride_hw
    if pad is not None:
        p["pad"] = pad
    return layer(name, "Pooling", bottom, [top or name] + ([mask] if mask else []), pooling_param=p)


def masked_pool(net: ZooNet, name: str, bottom: str, mask: str, **kwargs) -> None:
    """A MAX pool keeping its mask. OpenCV 4 plans the memory of a layer's second output as if nothing read it
    later (the mask is overwritten before the unpooling reads it), so its net copies the mask at once with an
    identity Power layer under the mask's name."""
    net.add(pool(name, bottom, "MAX", mask=mask, **kwargs),
            [pool(name, bottom, "MAX", mask=f"{mask}_cv_raw", **kwargs),
             layer(f"{mask}_cv_copy", "Power", f"{mask}_cv_raw", mask, power_param={"power": 1.0, "shift": 0.0})])


def segnet_bn(net: ZooNet, name: str, blob: str, top: str | None = None, mode: str = "INFERENCE",
              params: bool = False) -> None:
    """SegNet's / ENet's BN; for OpenCV, a Scale with bias (x * scale + shift, the same two blobs)."""
    spec = {"param": [{"lr_mult": 1, "decay_mult": 1}, {"lr_mult": 1, "decay_mult": 0}]} if params else {}
    fork = layer(name, "BN", blob, top or blob, **spec, bn_param={
        "bn_mode": Enum(mode), "scale_filler": {"type": "constant", "value": 1},
        "shift_filler": {"type": "constant", "value": 0.001}})
    net.add(fork, [layer(name, "Scale", blob, top or blob, scale_param={"bias_term": True})])


def _pspnet_bn_weights(eps: float) -> WeightsTranslation:
    def translate(name: str, blobs: list[np.ndarray]) -> list[WeightsLayer]:
        slope, bias, mean, variance = (b.reshape(-1) for b in blobs)
        return [WeightsLayer(name, "BatchNorm", [mean, variance, np.ones(1, np.float32)]),
                WeightsLayer(name + "_cv_scale", "Scale", [slope, bias])]
    return translate


def pspnet_bn(net: ZooNet, name: str, blob: str, lr: int = 1) -> None:
    """PSPNet's BN as the published files write it; for OpenCV, BatchNorm (eps as PSPNet's) then Scale."""
    statistics = [{"lr_mult": 0, "decay_mult": 0}] * 2
    if name == "conv5_4/bn" and net.key == "pspnet50":  # as published
        statistics = [{"lr_mult": 0, "decay_mult": 1}, {"lr_mult": 0, "decay_mult": 0}]
    fork = layer(name, "BN", blob, blob, param=[{"lr_mult": lr, "decay_mult": 0}] * 2 + statistics,
                 bn_param={"slope_filler": {"type": "constant", "value": 1},
                           "bias_filler": {"type": "constant", "value": 0}, "frozen": True, "momentum": 0.95})
    cv = [layer(name, "BatchNorm", blob, blob, batch_norm_param={"use_global_stats": True, "eps": 1e-5}),
          layer(name + "_cv_scale", "Scale", blob, blob, scale_param={"bias_term": True})]
    net.add(fork, cv, _pspnet_bn_weights(1e-5))


def upsample(net: ZooNet, name: str, bottom: str, mask: str, pooled_input: str, top: str | None = None,
             window: int = 2, **param: Any) -> None:
    """SegNet's Upsample; for OpenCV, MaxUnpool sized like the pooling's input (its third bottom)."""
    fork = layer(name, "Upsample", [bottom, mask], top or name, upsample_param=param)
    cv = layer(name, "MaxUnpool", [bottom, mask, pooled_input], top or name, pool_k_h=window, pool_k_w=window,
               pool_stride_h=window, pool_stride_w=window, pool_pad_h=0, pool_pad_w=0)
    net.add(fork, [cv])


# ---- FCN (shelhamer/fcn.berkeleyvision.org, upstream Caffe) ----

FCN_REPO, FCN_COMMIT = "shelhamer/fcn.berkeleyvision.org", "1305c7378a9f0ab44b2c936f4d60e4687e3d8743"
VGG_STAGES = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
LR = [{"lr_mult": 1, "decay_mult": 1}, {"lr_mult": 2, "decay_mult": 0}]


def _fcn_vgg(net: ZooNet, div: int, fc: int) -> None:
    bottom = "data"
    for stage, (count, width) in enumerate(VGG_STAGES, start=1):
        for i in range(1, count + 1):
            name = f"conv{stage}_{i}"
            net.add(conv(name, bottom, width // div, kernel=3, pad=100 if name == "conv1_1" else 1, stride=1,
                         params=LR))
            net.add(relu(f"relu{stage}_{i}", name))
            bottom = name
        net.add(pool(f"pool{stage}", bottom, "MAX", 2, 2))
        bottom = f"pool{stage}"
    net.add(conv("fc6", "pool5", fc, kernel=7, pad=0, stride=1, params=LR))
    net.add(relu("relu6", "fc6"))
    net.add(layer("drop6", "Dropout", "fc6", "fc6", dropout_param={"dropout_ratio": 0.5}))
    net.add(conv("fc7", "fc6", fc, kernel=1, pad=0, stride=1, params=LR))
    net.add(relu("relu7", "fc7"))
    net.add(layer("drop7", "Dropout", "fc7", "fc7", dropout_param={"dropout_ratio": 0.5}))


def _python_voc_data(net: ZooNet) -> None:
    net.add(layer("data", "Python", (), ["data", "label"], python_param={
        "module": "voc_layers", "layer": "VOCSegDataLayer",
        "param_str": "{'voc_dir': '../data/pascal/VOC2011', 'seed': 1337, 'split': 'seg11valid', "
                     "'mean': (104.00699, 116.66877, 122.67892)}"}), [])


def _fcn_loss(net: ZooNet) -> None:
    net.add(layer("loss", "SoftmaxWithLoss", ["score", "label"], "loss",
                  loss_param={"ignore_label": 255, "normalize": False}), [])


def fcn32s(div: int = 16, size: tuple[int, int] = (64, 80)) -> ZooNet:
    """voc-fcn32s/val.prototxt: FCN's Python data layer, VGG-16, fc6/fc7 as convolutions, one 64x64
    Deconvolution (stride 32, no bias), Crop offset 19 against the data, SoftmaxWithLoss."""
    net = ZooNet("fcn32s", "FCN-32s (PASCAL VOC)", (FCN_REPO, "voc-fcn32s/val.prototxt", FCN_COMMIT), "caffe",
                 {"data": (1, 3, *size)}, reduced=f"widths / {div} (fc6/fc7 4096 -> 64), input {size[0]}x{size[1]}")
    _python_voc_data(net)
    _fcn_vgg(net, div, 64)
    net.add(conv("score_fr", "fc7", 21, kernel=1, pad=0, params=LR))
    net.add(conv("upscore", "score_fr", 21, kernel=64, stride=32, bias=False, kind="Deconvolution",
                 params=[{"lr_mult": 0}]))
    net.add(layer("score", "Crop", ["upscore", "data"], "score", crop_param={"axis": 2, "offset": 19}))
    _fcn_loss(net)
    return net


def fcn8s(div: int = 16, size: tuple[int, int] = (64, 80), deploy: bool = True) -> ZooNet:
    """voc-fcn8s/deploy.prototxt (an Input layer; `deploy=False`: val.prototxt's Python data layer, dropouts
    and loss): three Deconvolutions (no bias) fused with the pool4/pool3 scores through Crops at offsets 5, 9, 31."""
    path = "voc-fcn8s/deploy.prototxt" if deploy else "voc-fcn8s/val.prototxt"
    net = ZooNet("fcn8s" if deploy else "fcn8s_val", "FCN-8s (PASCAL VOC)", (FCN_REPO, path, FCN_COMMIT), "caffe",
                 {"data": (1, 3, *size)}, reduced=f"widths / {div} (fc6/fc7 4096 -> 64), input {size[0]}x{size[1]}")
    if deploy:
        net.add(layer("input", "Input", (), "data", input_param={"shape": {"dim": [1, 3, *size]}}), [])
    else:
        _python_voc_data(net)
    _fcn_vgg(net, div, 64)
    if deploy:  # the deploy file has no dropouts
        net.layers = [lay for lay in net.layers if lay["type"] != "Dropout"]
        net.cv_layers = [lay for lay in net.cv_layers if lay["type"] != "Dropout"]
    net.add(conv("score_fr", "fc7", 21, kernel=1, pad=0, params=LR))
    deconv = {"bias": False, "kind": "Deconvolution", "params": [{"lr_mult": 0}]}
    net.add(conv("upscore2", "score_fr", 21, kernel=4, stride=2, **deconv))
    net.add(conv("score_pool4", "pool4", 21, kernel=1, pad=0, params=LR))
    net.add(layer("score_pool4c", "Crop", ["score_pool4", "upscore2"], "score_pool4c",
                  crop_param={"axis": 2, "offset": 5}))
    net.add(layer("fuse_pool4", "Eltwise", ["upscore2", "score_pool4c"], "fuse_pool4",
                  eltwise_param={"operation": Enum("SUM")}))
    net.add(conv("upscore_pool4", "fuse_pool4", 21, kernel=4, stride=2, **deconv))
    net.add(conv("score_pool3", "pool3", 21, kernel=1, pad=0, params=LR))
    net.add(layer("score_pool3c", "Crop", ["score_pool3", "upscore_pool4"], "score_pool3c",
                  crop_param={"axis": 2, "offset": 9}))
    net.add(layer("fuse_pool3", "Eltwise", ["upscore_pool4", "score_pool3c"], "fuse_pool3",
                  eltwise_param={"operation": Enum("SUM")}))
    net.add(conv("upscore8", "fuse_pool3", 21, kernel=16, stride=8, **deconv))
    net.add(layer("score", "Crop", ["upscore8", "data"], "score", crop_param={"axis": 2, "offset": 31}))
    if not deploy:
        _fcn_loss(net)
    return net


# ---- SegNet (alexgkendall/SegNet-Tutorial, caffe-segnet) ----

SEGNET_REPO, SEGNET_COMMIT = "alexgkendall/SegNet-Tutorial", "bb68b64e72cb004b3ed927fee0f5624dd8097498"


def _dense_image_data(net: ZooNet) -> None:
    net.add(layer("data", "DenseImageData", (), ["data", "label"],
                  dense_image_data_param={"source": "/SegNet/CamVid/test.txt", "batch_size": 1}), [])


def segnet_basic(div: int = 16, size: tuple[int, int] = (360, 480)) -> ZooNet:
    """Models/segnet_basic_inference.prototxt: DenseImageData, LRN, four 7x7 conv + BN + ReLU + MAX pool (with
    mask) stages, four Upsample (the first with pad_out_h: 45 = 23 * 2 - 1 rows) + 7x7 conv + BN stages, 1x1
    classifier, Softmax."""
    net = ZooNet("segnet_basic", "SegNet Basic (CamVid)",
                 (SEGNET_REPO, "Models/segnet_basic_inference.prototxt", SEGNET_COMMIT), "segnet",
                 {"data": (1, 3, *size)}, reduced=f"widths / {div} (64 -> {64 // div})")
    _dense_image_data(net)
    net.add(layer("norm", "LRN", "data", "norm", lrn_param={"local_size": 5, "alpha": 0.0001, "beta": 0.75}))
    bottom, width = "norm", 64 // div
    inputs = {}
    for i in range(1, 5):
        net.add(conv(f"conv{i}", bottom, width, kernel=7, pad=3, scalar=True, params=LR))
        segnet_bn(net, f"conv{i}_bn", f"conv{i}")
        net.add(relu(f"relu{i}", f"conv{i}"))
        masked_pool(net, f"pool{i}", f"conv{i}", f"pool{i}_mask", kernel=2, stride=2)
        inputs[i], bottom = f"conv{i}", f"pool{i}"
    for i in range(4, 0, -1):
        extra = {"pad_out_h": True} if i == 4 else {}
        upsample(net, f"upsample{i}", bottom, f"pool{i}_mask", inputs[i], scale=2, **extra)
        net.add(conv(f"conv_decode{i}", f"upsample{i}", width, kernel=7, pad=3, params=LR))
        segnet_bn(net, f"conv_decode{i}_bn", f"conv_decode{i}")
        bottom = f"conv_decode{i}"
    net.add(conv("conv_classifier", bottom, 11, kernel=1, params=LR))
    net.add(layer("prob", "Softmax", "conv_classifier", "prob", softmax_param={"engine": Enum("CAFFE")}))
    return net


SEGNET_ENCODER = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
SEGNET_DECODER = {5: (512, 512, 512), 4: (512, 512, 256), 3: (256, 256, 128), 2: (128, 64), 1: (64, 11)}


def segnet(div: int = 16, size: tuple[int, int] = (360, 480)) -> ZooNet:
    """Models/segnet_inference.prototxt: VGG-16 encoder with BN, five MAX pools with masks, decoder of five
    Upsample stages (upsample_h/_w 23x30 and 45x60 for a 360x480 input, scale 2 for the others)."""
    net = ZooNet("segnet", "SegNet (CamVid)", (SEGNET_REPO, "Models/segnet_inference.prototxt", SEGNET_COMMIT),
                 "segnet", {"data": (1, 3, *size)}, reduced=f"widths / {div} (the 11 classes kept)")
    _dense_image_data(net)
    bottom, inputs = "data", {}
    for stage, (count, width) in enumerate(SEGNET_ENCODER, start=1):
        for i in range(1, count + 1):
            name = f"conv{stage}_{i}"
            net.add(conv(name, bottom, width // div, kernel=3, pad=1, params=LR))
            segnet_bn(net, f"{name}_bn", name, params=True)
            net.add(relu(f"relu{stage}_{i}", name))
            bottom = name
        inputs[stage] = bottom
        masked_pool(net, f"pool{stage}", bottom, f"pool{stage}_mask", kernel=2, stride=2)
        bottom = f"pool{stage}"
    for stage in range(5, 0, -1):
        if stage in (5, 4):  # the published file gives these two their exact sizes (pool5/pool4 inputs)
            side = 2 ** (stage - 1)
            param = {"scale": 2, "upsample_w": -(-size[1] // side), "upsample_h": -(-size[0] // side)}
        else:
            param = {"scale": 2}
        upsample(net, f"upsample{stage}", bottom, f"pool{stage}_mask", inputs[stage], top=f"pool{stage}_D", **param)
        bottom = f"pool{stage}_D"
        widths = SEGNET_DECODER[stage]
        for j, width in enumerate(widths):
            name = f"conv{stage}_{len(widths) - j}_D"
            classifier = stage == 1 and j == len(widths) - 1
            net.add(conv(name, bottom, width if classifier else width // div, kernel=3, pad=1, params=LR))
            if not classifier:
                segnet_bn(net, f"{name}_bn", name, params=True)
                net.add(relu(f"relu{stage}_{len(widths) - j}_D", name))
            bottom = name
    net.add(layer("prob", "Softmax", bottom, "prob", softmax_param={"engine": Enum("CAFFE")}))
    return net


# ---- ENet (TimoSaemann/ENet, caffe-enet) ----

ENET_REPO, ENET_COMMIT = "TimoSaemann/ENet", "bb681cc5df1945f8d625aa0de8aeaf33a6bd4550"


def _prelu(net: ZooNet, name: str, bottom: str) -> None:
    net.add(layer(name, "PReLU", bottom, name))


def _bottleneck(net: ZooNet, stage: int, block: int, bottom: str, inner: int, outer: int, kind: str = "regular",
                dilation: int = 1, act: str = "PReLU") -> str:
    """One ENet bottleneck of enet_deploy_final.prototxt (BN folded into the convolutions by BN-absorber)."""
    p = f"{stage}_{block}"
    activate = (lambda name, b: _prelu(net, name, b)) if act == "PReLU" else (
        lambda name, b: net.add(layer(name, "ReLU", b, name)))
    first = {"kernel": 2, "stride": 2} if kind == "down" else {"kernel": 1, "stride": 1}
    net.add(conv(f"conv{p}_0", bottom, inner, bias=True, **first))
    activate(f"prelu{p}_0", f"conv{p}_0")
    if kind == "asymmetric":
        net.add(conv(f"conv{p}_1_a", f"prelu{p}_0", inner, bias=True, pad=1, stride=1, kernel_hw=(5, 1)))
        net.add(conv(f"conv{p}_1", f"conv{p}_1_a", inner, bias=True, pad=1, stride=1, kernel_hw=(1, 5)))
    else:
        extra = {"dilation": dilation} if dilation > 1 else {}
        net.add(conv(f"conv{p}_1", f"prelu{p}_0", inner, bias=True, pad=dilation, kernel=3, stride=1, **extra))
    activate(f"prelu{p}_1", f"conv{p}_1")
    net.add(conv(f"conv{p}_2", f"prelu{p}_1", outer, bias=True, kernel=1, stride=1))
    if kind == "down":
        masked_pool(net, f"pool{p}_4", bottom, f"pool{p}_4_mask", kernel=2, stride=2)
        net.add(conv(f"conv{p}_4", f"pool{p}_4", outer, bias=True, kernel=1, stride=1))
        net.add(layer(f"eltwise{p}_4", "Eltwise", [f"conv{p}_4", f"conv{p}_2"], f"eltwise{p}_4"))
    else:
        net.add(layer(f"eltwise{p}_4", "Eltwise", [bottom, f"conv{p}_2"], f"eltwise{p}_4"))
    activate(f"prelu{p}_4", f"eltwise{p}_4")
    return f"prelu{p}_4"


def _upsampling_bottleneck(net: ZooNet, stage: int, bottom: str, inner: int, outer: int, mask: str,
                           pooled_input: str) -> str:
    p = f"{stage}_0"
    net.add(conv(f"conv{p}_0", bottom, inner, bias=True, kernel=1, stride=1))
    net.add(layer(f"prelu{p}_0", "ReLU", f"conv{p}_0", f"prelu{p}_0"))
    net.add(conv(f"deconv{p}_1", f"prelu{p}_0", inner, bias=True, kernel=2, stride=2, kind="Deconvolution"))
    segnet_bn(net, f"bn{p}_1", f"deconv{p}_1", top=f"bn{p}_1", params=True)
    net.add(layer(f"prelu{p}_1", "ReLU", f"bn{p}_1", f"prelu{p}_1"))
    net.add(conv(f"conv{p}_2", f"prelu{p}_1", outer, bias=True, kernel=1, stride=1))
    net.add(conv(f"conv{p}_4", bottom, outer, bias=True, kernel=1, stride=1))
    upsample(net, f"upsample{p}_4", f"conv{p}_4", mask, pooled_input, scale=2)
    net.add(layer(f"eltwise{p}_4", "Eltwise", [f"upsample{p}_4", f"conv{p}_2"], f"eltwise{p}_4"))
    net.add(layer(f"prelu{p}_4", "ReLU", f"eltwise{p}_4", f"prelu{p}_4"))
    return f"prelu{p}_4"


ENET_STAGE2 = (("down", 1), ("regular", 1), ("regular", 2), ("asymmetric", 1), ("regular", 4), ("regular", 1),
               ("regular", 8), ("asymmetric", 1), ("regular", 16))


def enet(size: tuple[int, int] = (128, 256), classes: int = 19) -> ZooNet:
    """prototxts/enet_deploy_final.prototxt: initial block (3x3/2 conv concatenated with a MAX pool, BN,
    PReLU), bottlenecks with PReLU, dilations 2-16 and asymmetric 5x1/1x5 convolutions (pad 1 both ways), two
    mask-keeping pools whose masks drive the decoder's Upsample layers, Deconvolutions with BN, and the final
    2x2/2 Deconvolution. ENet's widths (16-128) are kept."""
    h, w = size
    net = ZooNet("enet", "ENet (Cityscapes)", (ENET_REPO, "prototxts/enet_deploy_final.prototxt", ENET_COMMIT),
                 "enet", {"data": (1, 3, h, w)}, reduced=f"input {h}x{w} (published 512x1024)")
    net.add(layer("data", "Input", (), "data", input_param={"shape": {"dim": [1, 3, h, w]}}), [])
    net.add(conv("conv0_1", "data", 13, bias=True, pad=1, kernel=3, stride=2))
    net.add(pool("pool0_1", "data", "MAX", 2, 2))
    net.add(layer("concat0_1", "Concat", ["conv0_1", "pool0_1"], "concat0_1", concat_param={"axis": 1}))
    segnet_bn(net, "bn0_1", "concat0_1", top="bn0_1", params=True)
    _prelu(net, "prelu0_1", "bn0_1")
    bottom = _bottleneck(net, 1, 0, "prelu0_1", 16, 64, "down")
    for block in range(1, 5):
        bottom = _bottleneck(net, 1, block, bottom, 16, 64)
    stage1 = "prelu1_4_4"
    for stage in (2, 3):
        for block, (kind, dilation) in enumerate(ENET_STAGE2):
            if stage == 3 and block == 0:
                continue
            bottom = _bottleneck(net, stage, block, bottom, 32, 128, kind, dilation)
    bottom = _upsampling_bottleneck(net, 4, bottom, 16, 64, "pool2_0_4_mask", stage1)
    for block in (1, 2):
        bottom = _bottleneck(net, 4, block, bottom, 16, 64, act="ReLU")
    bottom = _upsampling_bottleneck(net, 5, bottom, 4, 16, "pool1_0_4_mask", "prelu0_1")
    bottom = _bottleneck(net, 5, 1, bottom, 4, 16, act="ReLU")
    net.add(conv("deconv6_0_0", bottom, classes, bias=True, kernel=2, stride=2, kind="Deconvolution"))
    return net


# ---- PSPNet and ICNet (hszhao/PSPNet, hszhao/ICNet) ----

PSPNET_REPO, PSPNET_COMMIT = "hszhao/PSPNet", "798bdc907c8630e8c3997ebfdd0d7cae0c5ab03b"
ICNET_REPO, ICNET_COMMIT = "hszhao/ICNet", "dd2bf78ff3f9ff05f6d35c40a3ee216158d9e892"
PSP_BN = [{"lr_mult": 1, "decay_mult": 0}] * 2 + [{"lr_mult": 0, "decay_mult": 0}] * 2
RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _conv_bn(net: ZooNet, name: str, bottom: str, width: int, kernel: int, stride: int = 1, pad: int | None = 0,
             dilation: int = 1, act: bool = True, lr: int = 1) -> str:
    extra = {"dilation": dilation} if dilation > 1 else {}
    net.add(conv(name, bottom, width, kernel=kernel, pad=pad, stride=stride, bias=False, **extra,
                 params=[{"lr_mult": lr, "decay_mult": 1}]))
    pspnet_bn(net, f"{name}/bn", name, lr)
    if act:
        net.add(relu(f"{name}/relu", name))
    return name


def _resnet_psp(net: ZooNet, depth: int, div: int, bottom: str, stem: int = 64) -> str:
    """The dilated ResNet of PSPNet: conv1_1..1_3 (3x3, the first /2), MAX pool 3x3/2 pad 1, bottleneck stages
    conv2..conv5 (conv3_1 /2: in its 1x1 reduce for PSPNet-50, in its 3x3 for PSPNet-101, as published; conv4
    and conv5 dilated 2 and 4)."""
    _conv_bn(net, "conv1_1_3x3_s2", bottom, stem // div, 3, stride=2, pad=1)
    _conv_bn(net, "conv1_2_3x3", "conv1_1_3x3_s2", stem // div, 3, pad=1)
    _conv_bn(net, "conv1_3_3x3", "conv1_2_3x3", 2 * stem // div, 3, pad=1)
    net.add(pool("pool1_3x3_s2", "conv1_3_3x3", "MAX", 3, 2, pad=1))
    bottom = "pool1_3x3_s2"
    for stage, count in zip((2, 3, 4, 5), RESNET_BLOCKS[depth]):
        inner = stem * 2 ** (stage - 2) // div
        dilation = {4: 2, 5: 4}.get(stage, 1)
        for block in range(1, count + 1):
            p = f"conv{stage}_{block}"
            stride = 2 if stage == 3 and block == 1 else 1
            reduce_stride, middle_stride = (1, stride) if depth == 101 else (stride, 1)
            _conv_bn(net, f"{p}_1x1_reduce", bottom, inner, 1, stride=reduce_stride)
            _conv_bn(net, f"{p}_3x3", f"{p}_1x1_reduce", inner, 3, stride=middle_stride, pad=dilation,
                     dilation=dilation)
            _conv_bn(net, f"{p}_1x1_increase", f"{p}_3x3", 4 * inner, 1, act=False)
            if block == 1:
                _conv_bn(net, f"{p}_1x1_proj", bottom, 4 * inner, 1, stride=stride, act=False)
                shortcut = f"{p}_1x1_proj"
            else:
                shortcut = bottom
            net.add(layer(p, "Eltwise", [shortcut, f"{p}_1x1_increase"], p, eltwise_param={"operation": Enum("SUM")}))
            net.add(relu(f"{p}/relu", p))
            bottom = p
    return bottom


def pspnet(depth: int = 50, div: int = 16, size: int = 473, classes: int = 150) -> ZooNet:
    """evaluation/prototxt/pspnet50_ADE20K_473.prototxt (depth 50) or pspnet101_VOC2012_473.prototxt (101):
    the dilated ResNet to a 60x60 feature map (473 input), the pyramid pooling module (AVE pooling 60/30/20/10
    with equal strides: 1, 2, 3, 6 bins, 1x1 conv + BN + ReLU, Interp to 60x60), Concat, 3x3 conv, Dropout,
    classifier, Interp zoom 8."""
    path = {50: "evaluation/prototxt/pspnet50_ADE20K_473.prototxt",
            101: "evaluation/prototxt/pspnet101_VOC2012_473.prototxt"}[depth]
    net = ZooNet(f"pspnet{depth}", f"PSPNet-{depth} ({'ADE20K' if depth == 50 else 'VOC 2012'})",
                 (PSPNET_REPO, path, PSPNET_COMMIT), "pspnet", {"data": (1, 3, size, size)},
                 reduced=f"widths / {div} (2048 -> {2048 // div}), {classes} classes"
                 + (" (published 150)" if depth == 50 and classes != 150 else ""))
    net.header = 'input: "data"\n' + "\n".join(f"input_dim: {d}" for d in (1, 3, size, size))
    feature = _resnet_psp(net, depth, div, "data")
    side = -(-size // 8)  # 473 -> 60: the feature map the pyramid's kernels are cut for
    for bins in (1, 2, 3, 6):
        p = f"conv5_3_pool{bins}"
        net.add(pool(p, feature, "AVE", side // bins, side // bins))
        _conv_bn(net, f"{p}_conv", p, 512 // div, 1, pad=None, lr=10)
        net.add(layer(f"{p}_interp", "Interp", f"{p}_conv", f"{p}_interp",
                      interp_param={"height": side, "width": side}))
    net.add(layer("conv5_3_concat", "Concat", [feature] + [f"conv5_3_pool{b}_interp" for b in (6, 3, 2, 1)],
                  "conv5_3_concat"))
    _conv_bn(net, "conv5_4", "conv5_3_concat", 512 // div, 3, pad=1, lr=10)
    net.add(layer("conv5_4/dropout", "Dropout", "conv5_4", "conv5_4", dropout_param={"dropout_ratio": 0.1}))
    net.add(conv("conv6", "conv5_4", classes, kernel=1, stride=1,
                 params=[{"lr_mult": 10, "decay_mult": 1}, {"lr_mult": 20, "decay_mult": 1}]))
    net.add(layer("conv6_interp", "Interp", "conv6", "conv6_interp", interp_param={"zoom_factor": 8}))
    return net


def icnet(div: int = 16, size: tuple[int, int] = (1025, 2049), classes: int = 4) -> ZooNet:
    """evaluation/prototxt/icnet_cityscapes_bnnomerge.prototxt: a learned Scale on the data, Interp shrink 2 to
    the half-size branch (the PSPNet-50 ResNet with half widths, its conv3_1 shrunk by 2 again to the 1/32
    branch), pyramid pooling with the published fixed kernels (33x65 / 17x33 stride 16x32 / 13x25 stride 10x20 /
    8x15 stride 5x10 on the 33x65 map), cascade feature fusion by Interp zoom 2 + dilated 3x3 conv, the
    full-size branch of three stride-2 convolutions, Interp zoom 4."""
    net = ZooNet("icnet", "ICNet (Cityscapes)",
                 (ICNET_REPO, "evaluation/prototxt/icnet_cityscapes_bnnomerge.prototxt", ICNET_COMMIT), "pspnet",
                 {"data": (1, 3, *size)}, reduced=f"widths / {div}, {classes} classes (published 19)")
    net.header = 'input: "data"\n' + "\n".join(f"input_dim: {d}" for d in (1, 3, *size))
    net.add(layer("data_sub1", "Scale", "data", "data_sub1"))
    net.add(layer("data_sub2", "Interp", "data_sub1", "data_sub2", interp_param={"shrink_factor": 2}),
            [layer("data_sub2", "Interp", "data_sub1", "data_sub2",
                   interp_param={"height": (size[0] - 1) // 2 + 1, "width": (size[1] - 1) // 2 + 1})])
    _icnet_resnet(net, div)
    grid = ((33, 65), (33, 65)), ((17, 33), (16, 32)), ((13, 25), (10, 20)), ((8, 15), (5, 10))
    for bins, (kernel, stride) in zip((1, 2, 3, 6), grid):
        p = f"conv5_3_pool{bins}"
        net.add(pool(p, "conv5_3", "AVE", None, None, kernel_hw=kernel, stride_hw=stride))
        net.add(layer(f"{p}_interp", "Interp", p, f"{p}_interp", interp_param={"height": 33, "width": 65}))
    net.add(layer("conv5_3_sum", "Eltwise", ["conv5_3"] + [f"conv5_3_pool{b}_interp" for b in (6, 3, 2, 1)],
                  "conv5_3_sum"))
    _conv_bn(net, "conv5_4_k1", "conv5_3_sum", 256 // div, 1)
    net.add(layer("conv5_4_interp", "Interp", "conv5_4_k1", "conv5_4_interp", interp_param={"zoom_factor": 2}))
    _conv_bn(net, "conv_sub4", "conv5_4_interp", 128 // div, 3, pad=2, dilation=2, act=False)
    _conv_bn(net, "conv3_1_sub2_proj", "conv3_1", 128 // div, 1, act=False)
    net.add(layer("sub24_sum", "Eltwise", ["conv3_1_sub2_proj", "conv_sub4"], "sub24_sum"))
    net.add(relu("sub24_sum/relu", "sub24_sum"))
    net.add(layer("sub24_sum_interp", "Interp", "sub24_sum", "sub24_sum_interp", interp_param={"zoom_factor": 2}))
    _conv_bn(net, "conv_sub2", "sub24_sum_interp", 128 // div, 3, pad=2, dilation=2, act=False)
    _conv_bn(net, "conv1_sub1", "data_sub1", 32 // div, 3, stride=2, pad=1)
    _conv_bn(net, "conv2_sub1", "conv1_sub1", 32 // div, 3, stride=2, pad=1)
    _conv_bn(net, "conv3_sub1", "conv2_sub1", 64 // div, 3, stride=2, pad=1)
    _conv_bn(net, "conv3_sub1_proj", "conv3_sub1", 128 // div, 1, act=False)
    net.add(layer("sub12_sum", "Eltwise", ["conv3_sub1_proj", "conv_sub2"], "sub12_sum"))
    net.add(relu("sub12_sum/relu", "sub12_sum"))
    net.add(layer("sub12_sum_interp", "Interp", "sub12_sum", "sub12_sum_interp", interp_param={"zoom_factor": 2}))
    net.add(conv("conv6_cls", "sub12_sum_interp", classes, kernel=1, stride=1,
                 params=[{"lr_mult": 1, "decay_mult": 1}, {"lr_mult": 2, "decay_mult": 1}]))
    net.add(layer("conv6_interp", "Interp", "conv6_cls", "conv6_interp", interp_param={"zoom_factor": 4}))
    return net


def _icnet_resnet(net: ZooNet, div: int) -> None:
    """ICNet's half-width PSPNet-50 trunk, whose conv3_2.. runs on conv3_1 shrunk by 2 (conv3_1_sub4)."""
    _conv_bn(net, "conv1_1_3x3_s2", "data_sub2", 32 // div, 3, stride=2, pad=1)
    _conv_bn(net, "conv1_2_3x3", "conv1_1_3x3_s2", 32 // div, 3, pad=1)
    _conv_bn(net, "conv1_3_3x3", "conv1_2_3x3", 64 // div, 3, pad=1)
    net.add(pool("pool1_3x3_s2", "conv1_3_3x3", "MAX", 3, 2, pad=1))
    bottom = "pool1_3x3_s2"
    for stage, count in zip((2, 3, 4, 5), RESNET_BLOCKS[50]):
        inner = 32 * 2 ** (stage - 2) // div
        dilation = {4: 2, 5: 4}.get(stage, 1)
        for block in range(1, count + 1):
            p = f"conv{stage}_{block}"
            stride = 2 if stage == 3 and block == 1 else 1
            _conv_bn(net, f"{p}_1x1_reduce", bottom, inner, 1, stride=stride)
            _conv_bn(net, f"{p}_3x3", f"{p}_1x1_reduce", inner, 3, pad=dilation, dilation=dilation)
            _conv_bn(net, f"{p}_1x1_increase", f"{p}_3x3", 4 * inner, 1, act=False)
            if block == 1:
                _conv_bn(net, f"{p}_1x1_proj", bottom, 4 * inner, 1, stride=stride, act=False)
                shortcut = f"{p}_1x1_proj"
            else:
                shortcut = bottom
            net.add(layer(p, "Eltwise", [shortcut, f"{p}_1x1_increase"], p, eltwise_param={"operation": Enum("SUM")}))
            net.add(relu(f"{p}/relu", p))
            bottom = p
            if p == "conv3_1":
                net.add(layer("conv3_1_sub4", "Interp", "conv3_1", "conv3_1_sub4", interp_param={"shrink_factor": 2}),
                        [layer("conv3_1_sub4", "Interp", "conv3_1", "conv3_1_sub4",
                               interp_param={"height": 33, "width": 65})])
                bottom = "conv3_1_sub4"


def zoo_weights(net, seed: int = 0) -> list[WeightsLayer]:
    """Random blobs of the right shapes for every layer of a built CaffeNet, scaled so that activations keep
    their size through a hundred layers (He-style convolution weights, BN close to an identity, PReLU slopes
    in [0, 0.5)): the comparison then measures the arithmetic, not an overflow."""
    rng = np.random.default_rng(seed)
    layers = []
    for info in net.shapes.layers:
        if not info.blob_shapes:
            continue
        shapes = [tuple(int(d) for d in s) for s in info.blob_shapes]
        if info.type in ("Convolution", "Deconvolution"):
            w = shapes[0]
            fan_in = (w[1] if info.type == "Convolution" else w[0]) * int(np.prod(w[2:]))
            if info.type == "Deconvolution":
                stride = net.spec.layer(info.name).params["convolution_param"]["stride"]
                fan_in = max(1, fan_in // (stride[0] * stride[1]))
            blobs = [rng.standard_normal(w) * np.sqrt(2.0 / fan_in)]
            blobs += [rng.standard_normal(s) * 0.1 for s in shapes[1:]]
        elif info.type == "BN" and len(shapes) == 4:  # PSPNet: slope, bias, mean, variance
            blobs = [rng.uniform(0.5, 1.5, shapes[0]), rng.normal(0, 0.1, shapes[1]), rng.normal(0, 0.1, shapes[2]),
                     rng.uniform(0.5, 2.0, shapes[3])]
        elif info.type in ("BN", "Scale"):  # SegNet scale, shift; Scale's scale (and bias)
            blobs = [rng.uniform(0.5, 1.5, shapes[0])] + [rng.normal(0, 0.1, s) for s in shapes[1:]]
        elif info.type == "PReLU":
            blobs = [rng.uniform(0.0, 0.5, shapes[0])]
        else:
            blobs = [rng.standard_normal(s) for s in shapes]
        layers.append(WeightsLayer(info.name, info.type, [np.asarray(b, np.float32) for b in blobs]))
    return layers


ZOO: dict[str, Callable[[], ZooNet]] = {
    "fcn32s": fcn32s, "fcn8s": fcn8s, "segnet_basic": segnet_basic, "segnet": segnet, "enet": enet,
    "pspnet50": lambda: pspnet(50, classes=12), "pspnet101": lambda: pspnet(101, div=32, classes=21), "icnet": icnet,
}
