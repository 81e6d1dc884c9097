"""The classic Caffe classifiers, written from their published deploy files' structure (docs/zoo.md lists each
source with its repository, path and commit): the same layer names, types, bottoms, tops and parameters, in the
same order, with channel widths divided where they are large and a batch of 2 (the files declare 10, 64 or 1).
Input sizes are kept: each of these nets runs at its declared size only (an InnerProduct's weights, or a fixed
pooling window, fix it). Fillers, which inference never reads, are left out except where a file's identity is
its fine-tuning setup (Flickr style). VGG-16's file is the V1 format (`layers`, enum types, `input_dim`) and is
written so.

Each builder returns a `ClassicNet`; OpenCV 4 reads the very same text (it has every layer these nets use).
`classic_weights` gives every layer random blobs scaled so that activations keep their size (He-style
convolutions and InnerProducts; BatchNorm statistics stored times a moving-average factor of 2, as Caffe
stores them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from caffe2torch.caffemodel import WeightsLayer

from .zoo_nets import Enum, _fields, conv, layer, layer_text, pool, relu

BVLC_REPO, BVLC_COMMIT = "BVLC/caffe", "9b891540183ddc834a02b2bd81b31afae71b2153"
LR = [{"lr_mult": 1, "decay_mult": 1}, {"lr_mult": 2, "decay_mult": 0}]
LR_SHORT = [{"lr_mult": 1}, {"lr_mult": 2}]
V1_TYPES = {"Convolution": "CONVOLUTION", "ReLU": "RELU", "Pooling": "POOLING", "InnerProduct": "INNER_PRODUCT",
            "Dropout": "DROPOUT", "Softmax": "SOFTMAX"}


@dataclass
class ClassicNet:
    key: str
    title: str
    source: tuple[str, str, str]  # repository, path, commit
    inputs: dict[str, tuple[int, ...]]
    reduced: str
    header: str = ""
    layers: list[dict[str, Any]] = field(default_factory=list)
    v1: bool = False

    def add(self, *items: dict[str, Any]) -> None:
        self.layers += items

    def text(self) -> str:
        if not self.v1:
            return "\n".join([f'name: "{self.key}"', self.header, *map(layer_text, self.layers)]) + "\n"
        out = [f'name: "{self.key}"', self.header]
        for item in self.layers:
            body = {k: v for k, v in item.items() if k not in ("name", "type", "bottom", "top")}
            head = [f'  bottom: "{b}"' for b in item.get("bottom", [])] + [f'  top: "{t}"' for t in item["top"]]
            out += ["layers {", *head, f'  name: "{item["name"]}"', f"  type: {V1_TYPES[item['type']]}",
                    *_fields(body, 1), "}"]
        return "\n".join(out) + "\n"


def input_layer(shape: tuple[int, ...]) -> dict[str, Any]:
    return layer("data", "Input", (), "data", input_param={"shape": {"dim": list(shape)}})


def lrn(name: str, bottom: str, top: str, size: int = 5, alpha: float = 0.0001, region: str | None = None):
    param: dict[str, Any] = {"local_size": size, "alpha": alpha, "beta": 0.75}
    if region:
        param["norm_region"] = Enum(region)
    return layer(name, "LRN", bottom, top, lrn_param=param)


def inner_product(name: str, bottom: str, outputs: int, params=LR, fillers: dict | None = None):
    extra = {"param": params} if params else {}
    return layer(name, "InnerProduct", bottom, name, **extra,
                 inner_product_param={"num_output": outputs, **(fillers or {})})


def dropout(name: str, blob: str, ratio: float = 0.5):
    return layer(name, "Dropout", blob, blob, dropout_param={"dropout_ratio": ratio})


def softmax(bottom: str):
    return layer("prob", "Softmax", bottom, "prob")


def _fillers(std: float, bias: float) -> dict[str, Any]:
    return {"weight_filler": {"type": "gaussian", "std": std}, "bias_filler": {"type": "constant", "value": bias}}


# ---- AlexNet, CaffeNet, R-CNN, Flickr style (BVLC/caffe models/) ----


def _caffenet_body(net: ClassicNet, div: int, fc: int, alexnet: bool = False, flickr: bool = False) -> None:
    """conv1..fc7 of AlexNet (LRN before pooling) or CaffeNet (pooling before LRN); AlexNet's and Flickr's files
    give learning-rate multipliers (CaffeNet's and R-CNN's none), Flickr's fillers too."""
    params = LR if alexnet or flickr else None
    widths = {1: 96, 2: 256, 3: 384, 4: 384, 5: 256}
    geometry = {1: {"kernel": 11, "stride": 4}, 2: {"pad": 2, "kernel": 5, "group": 2}, 3: {"pad": 1, "kernel": 3},
                4: {"pad": 1, "kernel": 3, "group": 2}, 5: {"pad": 1, "kernel": 3, "group": 2}}
    conv_bias = {1: 0, 2: 1, 3: 0, 4: 1, 5: 1}
    bottom = "data"
    for i in range(1, 6):
        item = conv(f"conv{i}", bottom, widths[i] // div, params=params, **geometry[i])
        if flickr:
            item["convolution_param"].update(_fillers(0.01, conv_bias[i]))
        net.add(item, relu(f"relu{i}", f"conv{i}"))
        bottom = f"conv{i}"
        if i in (1, 2):
            if alexnet:
                net.add(lrn(f"norm{i}", bottom, f"norm{i}"), pool(f"pool{i}", f"norm{i}", "MAX", 3, 2))
                bottom = f"pool{i}"
            else:
                net.add(pool(f"pool{i}", bottom, "MAX", 3, 2), lrn(f"norm{i}", f"pool{i}", f"norm{i}"))
                bottom = f"norm{i}"
    net.add(pool("pool5", "conv5", "MAX", 3, 2))
    fillers = _fillers(0.005, 1) if flickr else None
    net.add(inner_product("fc6", "pool5", fc, params, fillers), relu("relu6", "fc6"), dropout("drop6", "fc6"),
            inner_product("fc7", "fc6", fc, params, fillers), relu("relu7", "fc7"), dropout("drop7", "fc7"))


def alexnet(div: int = 8, fc_div: int = 16) -> ClassicNet:
    """models/bvlc_alexnet/deploy.prototxt: 5 convolutions (groups of 2 in conv2/4/5), LRN then MAX pooling after
    conv1 and conv2, three InnerProducts (fc6 reads pool5's 6x6 map, which fixes the input at 227), Softmax."""
    net = ClassicNet("alexnet", "AlexNet", (BVLC_REPO, "models/bvlc_alexnet/deploy.prototxt", BVLC_COMMIT),
                     {"data": (2, 3, 227, 227)}, f"widths / {div}, fc6/fc7 4096 -> {4096 // fc_div}, batch 2")
    net.add(input_layer((2, 3, 227, 227)))
    _caffenet_body(net, div, 4096 // fc_div, alexnet=True)
    net.add(inner_product("fc8", "fc7", 1000), softmax("fc8"))
    return net


def caffenet(div: int = 8, fc_div: int = 16) -> ClassicNet:
    """models/bvlc_reference_caffenet/deploy.prototxt: AlexNet with pooling before each LRN."""
    net = ClassicNet("caffenet", "CaffeNet", (BVLC_REPO, "models/bvlc_reference_caffenet/deploy.prototxt",
                                              BVLC_COMMIT),
                     {"data": (2, 3, 227, 227)}, f"widths / {div}, fc6/fc7 4096 -> {4096 // fc_div}, batch 2")
    net.add(input_layer((2, 3, 227, 227)))
    _caffenet_body(net, div, 4096 // fc_div)
    net.add(inner_product("fc8", "fc7", 1000, params=None), softmax("fc8"))
    return net


def rcnn(div: int = 8, fc_div: int = 16) -> ClassicNet:
    """models/bvlc_reference_rcnn_ilsvrc13/deploy.prototxt: CaffeNet whose classifier is fc-rcnn (200 outputs,
    the R-CNN ILSVRC13 SVMs), with no Softmax."""
    net = ClassicNet("rcnn", "R-CNN ILSVRC13", (BVLC_REPO, "models/bvlc_reference_rcnn_ilsvrc13/deploy.prototxt",
                                                BVLC_COMMIT),
                     {"data": (2, 3, 227, 227)}, f"widths / {div}, fc6/fc7 4096 -> {4096 // fc_div}, batch 2")
    net.add(input_layer((2, 3, 227, 227)))
    _caffenet_body(net, div, 4096 // fc_div)
    net.add(inner_product("fc-rcnn", "fc7", 200, params=None))
    return net


def flickr_style(div: int = 8, fc_div: int = 16) -> ClassicNet:
    """models/finetune_flickr_style/deploy.prototxt: CaffeNet with its fine-tuning fillers and a 20-way
    fc8_flickr classifier."""
    net = ClassicNet("flickr_style", "Flickr style (fine-tuned CaffeNet)",
                     (BVLC_REPO, "models/finetune_flickr_style/deploy.prototxt", BVLC_COMMIT),
                     {"data": (2, 3, 227, 227)}, f"widths / {div}, fc6/fc7 4096 -> {4096 // fc_div}, batch 2")
    net.add(input_layer((2, 3, 227, 227)))
    _caffenet_body(net, div, 4096 // fc_div, flickr=True)
    net.add(inner_product("fc8_flickr", "fc7", 20, params=[{"lr_mult": 10, "decay_mult": 1},
                                                            {"lr_mult": 20, "decay_mult": 0}],
                          fillers=_fillers(0.01, 0)), softmax("fc8_flickr"))
    return net


# ---- GoogLeNet (BVLC/caffe models/bvlc_googlenet) ----

INCEPTIONS = {  # 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64), "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


def _inception(net: ClassicNet, module: str, bottom: str, div: int) -> str:
    n1, r3, n3, r5, n5, proj = (w // div for w in INCEPTIONS[module])
    p = f"inception_{module}"
    net.add(conv(f"{p}/1x1", bottom, n1, kernel=1, params=LR), relu(f"{p}/relu_1x1", f"{p}/1x1"),
            conv(f"{p}/3x3_reduce", bottom, r3, kernel=1, params=LR),
            relu(f"{p}/relu_3x3_reduce", f"{p}/3x3_reduce"),
            conv(f"{p}/3x3", f"{p}/3x3_reduce", n3, pad=1, kernel=3, params=LR), relu(f"{p}/relu_3x3", f"{p}/3x3"),
            conv(f"{p}/5x5_reduce", bottom, r5, kernel=1, params=LR),
            relu(f"{p}/relu_5x5_reduce", f"{p}/5x5_reduce"),
            conv(f"{p}/5x5", f"{p}/5x5_reduce", n5, pad=2, kernel=5, params=LR), relu(f"{p}/relu_5x5", f"{p}/5x5"),
            pool(f"{p}/pool", bottom, "MAX", 3, 1, pad=1),
            conv(f"{p}/pool_proj", f"{p}/pool", proj, kernel=1, params=LR),
            relu(f"{p}/relu_pool_proj", f"{p}/pool_proj"),
            layer(f"{p}/output", "Concat", [f"{p}/1x1", f"{p}/3x3", f"{p}/5x5", f"{p}/pool_proj"], f"{p}/output"))
    return f"{p}/output"


def googlenet(div: int = 4) -> ClassicNet:
    """models/bvlc_googlenet/deploy.prototxt: 7x7/2 stem, LRNs, nine inception modules (1x1, 3x3, 5x5 and a
    3x3/1 pad-1 MAX pooling branch, concatenated), 7x7 AVE pooling, dropout, loss3/classifier, Softmax."""
    net = ClassicNet("googlenet", "GoogLeNet", (BVLC_REPO, "models/bvlc_googlenet/deploy.prototxt", BVLC_COMMIT),
                     {"data": (2, 3, 224, 224)}, f"widths / {div}, batch 2")
    net.add(input_layer((2, 3, 224, 224)),
            conv("conv1/7x7_s2", "data", 64 // div, pad=3, kernel=7, stride=2, params=LR),
            relu("conv1/relu_7x7", "conv1/7x7_s2"), pool("pool1/3x3_s2", "conv1/7x7_s2", "MAX", 3, 2),
            lrn("pool1/norm1", "pool1/3x3_s2", "pool1/norm1"),
            conv("conv2/3x3_reduce", "pool1/norm1", 64 // div, kernel=1, params=LR),
            relu("conv2/relu_3x3_reduce", "conv2/3x3_reduce"),
            conv("conv2/3x3", "conv2/3x3_reduce", 192 // div, pad=1, kernel=3, params=LR),
            relu("conv2/relu_3x3", "conv2/3x3"), lrn("conv2/norm2", "conv2/3x3", "conv2/norm2"),
            pool("pool2/3x3_s2", "conv2/norm2", "MAX", 3, 2))
    bottom = "pool2/3x3_s2"
    for module in INCEPTIONS:
        bottom = _inception(net, module, bottom, div)
        if module in ("3b", "4e"):
            name = "pool3/3x3_s2" if module == "3b" else "pool4/3x3_s2"
            net.add(pool(name, bottom, "MAX", 3, 2))
            bottom = name
    net.add(pool("pool5/7x7_s1", bottom, "AVE", 7, 1), dropout("pool5/drop_7x7_s1", "pool5/7x7_s1", 0.4),
            inner_product("loss3/classifier", "pool5/7x7_s1", 1000), softmax("loss3/classifier"))
    return net


# ---- VGG-16 (gist ksimonyan/211839e770f7b538e2d8, V1 format) ----

VGG_STAGES = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


def vgg16(div: int = 8, fc_div: int = 16) -> ClassicNet:
    """VGG_ILSVRC_16_layers_deploy.prototxt: V1 `layers` with enum types and `input_dim`; thirteen 3x3 pad-1
    convolutions in five stages, each followed by a 2x2/2 MAX pooling; fc6 (on pool5's 7x7 map), fc7, fc8,
    ReLUs and dropouts in place, Softmax."""
    net = ClassicNet("vgg16", "VGG-16", ("gist ksimonyan/211839e770f7b538e2d8",
                                         "VGG_ILSVRC_16_layers_deploy.prototxt", "(gist)"),
                     {"data": (2, 3, 224, 224)}, f"widths / {div}, fc6/fc7 4096 -> {4096 // fc_div}, batch 2", v1=True)
    net.header = 'input: "data"\n' + "\n".join(f"input_dim: {d}" for d in (2, 3, 224, 224))
    bottom = "data"
    for stage, (count, width) in enumerate(VGG_STAGES, start=1):
        for i in range(1, count + 1):
            name = f"conv{stage}_{i}"
            net.add(conv(name, bottom, width // div, pad=1, kernel=3), relu(f"relu{stage}_{i}", name))
            bottom = name
        net.add(pool(f"pool{stage}", bottom, "MAX", 2, 2))
        bottom = f"pool{stage}"
    fc = 4096 // fc_div
    for item in (inner_product("fc6", "pool5", fc, None), relu("relu6", "fc6"), dropout("drop6", "fc6"),
                 inner_product("fc7", "fc6", fc, None), relu("relu7", "fc7"), dropout("drop7", "fc7"),
                 inner_product("fc8", "fc7", 1000, None)):
        net.add(item)
    net.add(softmax("fc8"))
    return net


# ---- ResNet-50/101/152 (KaimingHe/deep-residual-networks prototxt/) ----

RESNET_REPO, RESNET_COMMIT = "KaimingHe/deep-residual-networks", "a7026cb6d478e131b765b898c312e25f9f6dc031"
RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _bn_scale(net: ClassicNet, suffix: str, blob: str) -> None:
    net.add(layer(f"bn{suffix}", "BatchNorm", blob, blob, batch_norm_param={"use_global_stats": True}),
            layer(f"scale{suffix}", "Scale", blob, blob, scale_param={"bias_term": True}))


def _res_conv(net: ClassicNet, name: str, suffix: str, bottom: str, width: int, kernel: int, stride: int,
              pad: int, activate: bool) -> str:
    net.add(conv(name, bottom, width, kernel=kernel, pad=pad, stride=stride, bias=False))
    _bn_scale(net, suffix, name)
    if activate:
        net.add(relu(f"{name}_relu", name))
    return name


def _block_names(depth: int, stage: int, count: int) -> list[str]:
    """res2a, res2b, res2c (ResNet-50, and stages 2 and 5 everywhere); res3b1, res3b2, ... for the deeper stages
    of ResNet-101/152."""
    letters = [chr(ord("a") + i) for i in range(count)]
    if depth == 50 or stage in (2, 5):
        return letters
    return ["a"] + [f"b{i}" for i in range(1, count)]


def resnet(depth: int = 50, div: int = 8) -> ClassicNet:
    """prototxt/ResNet-{depth}-deploy.prototxt: net-level `input_dim`; conv1 7x7/2 (with a bias in ResNet-50,
    without in 101/152), BatchNorm (use_global_stats) + Scale (bias) + ReLU after every convolution, 3x3/2 MAX
    pooling, bottleneck blocks (1x1 with the stride, 3x3, 1x1 x4; projection branch1 in each stage's first
    block), Eltwise SUM + ReLU, 7x7 AVE pooling, fc1000, Softmax."""
    net = ClassicNet(f"resnet{depth}", f"ResNet-{depth}",
                     (RESNET_REPO, f"prototxt/ResNet-{depth}-deploy.prototxt", RESNET_COMMIT),
                     {"data": (1, 3, 224, 224)}, f"widths / {div}")
    net.header = 'input: "data"\n' + "\n".join(f"input_dim: {d}" for d in (1, 3, 224, 224))
    net.add(conv("conv1", "data", 64 // div, kernel=7, pad=3, stride=2, bias=False if depth > 50 else None))
    _bn_scale(net, "_conv1", "conv1")
    net.add(relu("conv1_relu", "conv1"), pool("pool1", "conv1", "MAX", 3, 2))
    bottom = "pool1"
    for stage, count in zip(range(2, 6), RESNET_BLOCKS[depth]):
        inner = 64 * 2 ** (stage - 2) // div
        for index, block in enumerate(_block_names(depth, stage, count)):
            name = f"res{stage}{block}"
            stride = 2 if index == 0 and stage > 2 else 1
            if index == 0:
                shortcut = _res_conv(net, f"{name}_branch1", f"{stage}{block}_branch1", bottom, inner * 4, 1,
                                     stride, 0, activate=False)
            else:
                shortcut = bottom
            x = _res_conv(net, f"{name}_branch2a", f"{stage}{block}_branch2a", bottom, inner, 1, stride, 0, True)
            x = _res_conv(net, f"{name}_branch2b", f"{stage}{block}_branch2b", x, inner, 3, 1, 1, True)
            x = _res_conv(net, f"{name}_branch2c", f"{stage}{block}_branch2c", x, inner * 4, 1, 1, 0, False)
            net.add(layer(name, "Eltwise", [shortcut, x], name), relu(f"{name}_relu", name))
            bottom = name
    for item in net.layers:  # the published files give every convolution its pad and stride explicitly
        p = item.get("convolution_param")
        if p is not None:
            p.setdefault("pad", 0)
            p.setdefault("stride", 1)
    net.add(pool("pool5", bottom, "AVE", 7, 1), layer("fc1000", "InnerProduct", "pool5", "fc1000",
                                                      inner_product_param={"num_output": 1000}), softmax("fc1000"))
    return net


# ---- SqueezeNet v1.0 and v1.1 (DeepScale/SqueezeNet) ----

SQUEEZE_REPO, SQUEEZE_COMMIT = "DeepScale/SqueezeNet", "51147dc0681638c28aad593b9e923f3500117125"
FIRES = {2: (16, 64), 3: (16, 64), 4: (32, 128), 5: (32, 128), 6: (48, 192), 7: (48, 192), 8: (64, 256),
         9: (64, 256)}


def _fire(net: ClassicNet, number: int, bottom: str, div: int) -> str:
    squeeze, expand = (w // div for w in FIRES[number])
    p = f"fire{number}"
    net.add(conv(f"{p}/squeeze1x1", bottom, squeeze, kernel=1), relu(f"{p}/relu_squeeze1x1", f"{p}/squeeze1x1"),
            conv(f"{p}/expand1x1", f"{p}/squeeze1x1", expand, kernel=1),
            relu(f"{p}/relu_expand1x1", f"{p}/expand1x1"),
            conv(f"{p}/expand3x3", f"{p}/squeeze1x1", expand, pad=1, kernel=3),
            relu(f"{p}/relu_expand3x3", f"{p}/expand3x3"),
            layer(f"{p}/concat", "Concat", [f"{p}/expand1x1", f"{p}/expand3x3"], f"{p}/concat"))
    return f"{p}/concat"


def squeezenet(version: str = "1.0", div: int = 4) -> ClassicNet:
    """SqueezeNet_v{version}/deploy.prototxt. v1.0: net-level input_shape, conv1 7x7/2 (96), MAX pooling after
    conv1, fire4 and fire8, and conv10 1x1 with pad 1 (as published). v1.1: an Input layer, conv1 3x3/2 (64),
    pooling after conv1, fire3 and fire5, conv10 without pad. Both: dropout, conv10 (1000), global AVE
    pooling, Softmax over (N, 1000, 1, 1)."""
    key = "squeezenet" + version.replace(".", "")
    net = ClassicNet(key, f"SqueezeNet v{version}",
                     (SQUEEZE_REPO, f"SqueezeNet_v{version}/deploy.prototxt", SQUEEZE_COMMIT),
                     {"data": (2, 3, 227, 227)}, f"widths / {div} (conv10 keeps 1000), batch 2")
    if version == "1.0":
        net.header = 'input: "data"\ninput_shape { dim: 2 dim: 3 dim: 227 dim: 227 }'
        net.add(conv("conv1", "data", 96 // div, kernel=7, stride=2))
        pools = {4: "pool4", 8: "pool8"}
    else:
        net.add(input_layer((2, 3, 227, 227)), conv("conv1", "data", 64 // div, kernel=3, stride=2))
        pools = {3: "pool3", 5: "pool5"}
    net.add(relu("relu_conv1", "conv1"), pool("pool1", "conv1", "MAX", 3, 2))
    bottom = "pool1"
    for number in FIRES:
        bottom = _fire(net, number, bottom, div)
        if number in pools:
            net.add(pool(pools[number], bottom, "MAX", 3, 2))
            bottom = pools[number]
    conv10 = conv("conv10", bottom, 1000, pad=1, kernel=1) if version == "1.0" else conv("conv10", bottom, 1000,
                                                                                          kernel=1)
    net.add(dropout("drop9", bottom), conv10, relu("relu_conv10", "conv10"),
            layer("pool10", "Pooling", "conv10", "pool10",
                  pooling_param={"pool": Enum("AVE"), "global_pooling": True}), softmax("pool10"))
    return net


# ---- LeNet and the CIFAR-10 nets (BVLC/caffe examples/) ----

XAVIER = {"weight_filler": {"type": "xavier"}, "bias_filler": {"type": "constant"}}


def lenet() -> ClassicNet:
    """examples/mnist/lenet.prototxt: two 5x5 convolutions with 2x2/2 MAX pooling, ip1 (500) + ReLU, ip2 (10),
    Softmax; fillers as published (the file is also the training template)."""
    net = ClassicNet("lenet", "LeNet (MNIST)", (BVLC_REPO, "examples/mnist/lenet.prototxt", BVLC_COMMIT),
                     {"data": (2, 1, 28, 28)}, "batch 2 (full widths)")
    net.add(input_layer((2, 1, 28, 28)))
    bottom = "data"
    for i, width in ((1, 20), (2, 50)):
        item = conv(f"conv{i}", bottom, width, kernel=5, stride=1, params=LR_SHORT)
        item["convolution_param"].update(XAVIER)
        net.add(item, pool(f"pool{i}", f"conv{i}", "MAX", 2, 2))
        bottom = f"pool{i}"
    net.add(inner_product("ip1", "pool2", 500, params=LR_SHORT, fillers=XAVIER), relu("relu1", "ip1"),
            inner_product("ip2", "ip1", 10, params=LR_SHORT, fillers=XAVIER), softmax("ip2"))
    return net


def cifar10(full: bool = False) -> ClassicNet:
    """examples/cifar10/cifar10_quick.prototxt and cifar10_full.prototxt: three 5x5 pad-2 convolutions, MAX
    then two AVE 3x3/2 poolings (ReLU after the first pooling); the full net adds LRN WITHIN_CHANNEL (local_size 3)
    after the first two stages and has one InnerProduct, the quick one two."""
    path = "examples/cifar10/cifar10_full.prototxt" if full else "examples/cifar10/cifar10_quick.prototxt"
    net = ClassicNet("cifar10_full" if full else "cifar10_quick",
                     "CIFAR-10 full" if full else "CIFAR-10 quick", (BVLC_REPO, path, BVLC_COMMIT),
                     {"data": (2, 3, 32, 32)}, "batch 2 (full widths)")
    net.add(input_layer((2, 3, 32, 32)),
            conv("conv1", "data", 32, pad=2, kernel=5, stride=1, params=LR_SHORT),
            pool("pool1", "conv1", "MAX", 3, 2), relu("relu1", "pool1"))
    bottom = "pool1"
    if full:
        net.add(lrn("norm1", "pool1", "norm1", size=3, alpha=5e-05, region="WITHIN_CHANNEL"))
        bottom = "norm1"
    net.add(conv("conv2", bottom, 32, pad=2, kernel=5, stride=1, params=LR_SHORT), relu("relu2", "conv2"),
            pool("pool2", "conv2", "AVE", 3, 2))
    bottom = "pool2"
    if full:
        net.add(lrn("norm2", "pool2", "norm2", size=3, alpha=5e-05, region="WITHIN_CHANNEL"))
        bottom = "norm2"
    net.add(conv("conv3", bottom, 64, pad=2, kernel=5, stride=1, params=None if full else LR_SHORT),
            relu("relu3", "conv3"), pool("pool3", "conv3", "AVE", 3, 2))
    if full:
        net.add(inner_product("ip1", "pool3", 10, params=[{"lr_mult": 1, "decay_mult": 250},
                                                          {"lr_mult": 2, "decay_mult": 0}]), softmax("ip1"))
    else:
        net.add(inner_product("ip1", "pool3", 64, params=LR_SHORT), inner_product("ip2", "ip1", 10, params=LR_SHORT),
                softmax("ip2"))
    return net


def classic_weights(net, seed: int = 0) -> list[WeightsLayer]:
    """Random blobs of the right shapes for every layer of a built CaffeNet: He-style convolution and
    InnerProduct weights (fan-in), small biases, BatchNorm statistics stored times a factor of 2 (Caffe's
    third blob) with positive variances, Scale near 1."""
    rng = np.random.default_rng(seed)
    layers = []
    for info in net.shapes.layers:
        if not info.blob_shapes:
            continue
        shapes = [tuple(int(d) for d in s) for s in info.blob_shapes]
        if info.type in ("Convolution", "InnerProduct"):
            fan_in = int(np.prod(shapes[0][1:]))
            blobs = [rng.standard_normal(shapes[0]) * np.sqrt(2.0 / fan_in)]
            blobs += [rng.standard_normal(s) * 0.1 for s in shapes[1:]]
        elif info.type == "BatchNorm":
            factor = 2.0
            blobs = [rng.normal(0, 0.2, shapes[0]) * factor, rng.uniform(0.5, 2.0, shapes[1]) * factor,
                     np.full(shapes[2], factor)]
        elif info.type == "Scale":
            blobs = [rng.uniform(0.5, 1.5, shapes[0])] + [rng.normal(0, 0.1, s) for s in shapes[1:]]
        else:
            blobs = [rng.standard_normal(s) for s in shapes]
        layers.append(WeightsLayer(net.spec.layers[[lay.name for lay in net.spec.layers].index(info.name)].file_name,
                                   info.type, [np.asarray(b, np.float32) for b in blobs]))
    return layers


CLASSICS: dict[str, Callable[[], ClassicNet]] = {
    "alexnet": alexnet, "caffenet": caffenet, "rcnn": rcnn, "flickr_style": flickr_style, "googlenet": googlenet,
    "vgg16": vgg16, "resnet50": lambda: resnet(50), "resnet101": lambda: resnet(101),
    "resnet152": lambda: resnet(152), "squeezenet10": lambda: squeezenet("1.0"),
    "squeezenet11": lambda: squeezenet("1.1"), "lenet": lenet, "cifar10_quick": cifar10,
    "cifar10_full": lambda: cifar10(full=True),
}
