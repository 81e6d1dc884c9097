"""Write the bundled deploy definitions in caffe2torch/prototxt/ (our own generator, one function per net).

    python scripts/write_definitions.py           # rewrite them
    python scripts/write_definitions.py --check   # exit 1 if a file differs from what this script writes

Layer names, types and parameters follow the released DeepLab nets exactly (tests/test_definitions.py compares
each with its original in ../shared/corpus after upgrade, data and IO layers aside), so released caffemodels
load into them. Each file keeps DeepLab's test-time data layer, so the preprocessing (BGR mean, crop size)
travels with the definition. DeepLab v1 nets are written in v1 syntax (`layers`, enum types, `hole`), v2 nets
in v2 syntax, as they were released.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "caffe2torch" / "prototxt"
MEAN = (104.008, 116.669, 122.675)
V1_TYPES = {"Convolution": "CONVOLUTION", "ReLU": "RELU", "Pooling": "POOLING", "Dropout": "DROPOUT",
            "Interp": "INTERP", "Padding": "PADDING", "Eltwise": "ELTWISE", "ImageSegData": "IMAGE_SEG_DATA"}


class Net:
    """Collects layers and writes them in the DeepLab v1 or v2 text syntax."""

    def __init__(self, name: str, dialect: str, header: str):
        self.name, self.dialect, self.header = name, dialect, header
        self.blocks: list[str] = []

    def layer(self, name, kind, bottoms, tops, params=None, param_specs=()):
        v1 = self.dialect == "v1"
        lines = [f'  name: "{name}"', f"  type: {V1_TYPES[kind]}" if v1 else f'  type: "{kind}"']
        lines += [f'  bottom: "{b}"' for b in bottoms] + [f'  top: "{t}"' for t in tops]
        for spec in param_specs:
            fields = " ".join(f"{k}: {v}" if k != "name" else f'name: "{v}"' for k, v in spec.items())
            lines.append(f"  param {{ {fields} }}")
        for message, fields in (params or {}).items():
            body = []
            for key, value in fields.items():
                for item in value if isinstance(value, list) else [value]:
                    body.append(f"    {key}: {item}")
            lines += [f"  {message} {{", *body, "  }"]
        self.blocks.append(("layers" if v1 else "layer") + " {\n" + "\n".join(lines) + "\n}")

    def data(self, crop: int):
        self.layer("data", "ImageSegData", [], ["data"],
                   {"transform_param": {"mean_value": list(MEAN), "crop_size": crop, "mirror": "false"}})
        self.blocks[-1] = self.blocks[-1].replace("\n}", "\n  include: { phase: TEST }\n}")

    def conv(self, name, bottom, out, kernel, pad=0, stride=1, dilation=1, top=None, bias=True, specs=()):
        fields = {"num_output": out, "kernel_size": kernel}
        if pad:
            fields["pad"] = pad
        if stride != 1:
            fields["stride"] = stride
        if dilation != 1:
            fields["hole" if self.dialect == "v1" else "dilation"] = dilation
        if not bias:
            fields["bias_term"] = "false"
        self.layer(name, "Convolution", [bottom], [top or name], {"convolution_param": fields}, specs)

    def relu(self, name, blob):
        self.layer(name, "ReLU", [blob], [blob])

    def dropout(self, name, blob):
        self.layer(name, "Dropout", [blob], [blob], {"dropout_param": {"dropout_ratio": 0.5}})

    def pool(self, name, bottom, kernel, stride, pad, method="MAX"):
        self.layer(name, "Pooling", [bottom], [name],
                   {"pooling_param": {"pool": method, "kernel_size": kernel, "stride": stride, "pad": pad}})

    def interp(self, name, bottom, **fields):
        self.layer(name, "Interp", [bottom], [name], {"interp_param": fields})

    def eltwise(self, name, bottoms, operation):
        self.layer(name, "Eltwise", bottoms, [name], {"eltwise_param": {"operation": operation}})

    def text(self) -> str:
        return self.header + f'name: "{self.name}"\n\n' + "\n".join(self.blocks) + "\n"


def header(title: str, source: str) -> str:
    return (f"# {title}\n# Deploy definition bundled with caffe2torch, written by scripts/write_definitions.py.\n"
            f"# Layer names, types and parameters are those of the released net ({source}).\n")


def vgg_trunk(net: Net, pool_kernel: int = 3, after_pool=None) -> None:
    """VGG-16 conv1-conv5 as DeepLab modified it: pool4 and pool5 at stride 1, conv5 with hole/dilation 2.
    `after_pool(name)` adds layers right after pool1-pool4 (MSc's side classifiers)."""
    bottom = "data"
    for stage, (width, convs) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], start=1):
        for index in range(1, convs + 1):
            name = f"conv{stage}_{index}"
            if stage == 5:
                net.conv(name, bottom, width, 3, pad=2, dilation=2)
            else:
                net.conv(name, bottom, width, 3, pad=1)
            net.relu(f"relu{stage}_{index}", name)
            bottom = name
        if stage < 5:
            net.pool(f"pool{stage}", bottom, pool_kernel, 2 if stage < 4 else 1, 1)
            bottom = f"pool{stage}"
            if after_pool:
                after_pool(bottom)
    net.pool("pool5", bottom, 3, 1, 1)


def largefov_head(net: Net) -> None:
    """pool5a (3x3 AVE) and the LargeFOV classifier: fc6 3x3 with hole 12, fc7, fc8_voc12."""
    net.pool("pool5a", "pool5", 3, 1, 1, method="AVE")
    net.conv("fc6", "pool5a", 1024, 3, pad=12, dilation=12)
    net.relu("relu6", "fc6")
    net.dropout("drop6", "fc6")
    net.conv("fc7", "fc6", 1024, 1)
    net.relu("relu7", "fc7")
    net.dropout("drop7", "fc7")
    net.conv("fc8_voc12", "fc7", 21, 1)


def deeplab_v1_largefov() -> Net:
    net = Net("DeepLab-LargeFOV", "v1", header("DeepLab-LargeFOV (ICLR'15)", "DeepLab-LargeFOV/test.prototxt"))
    net.data(513)
    vgg_trunk(net)
    largefov_head(net)
    net.interp("fc8_interp", "fc8_voc12", zoom_factor=8)
    return net


def deeplab_v1_msc_largefov() -> Net:
    net = Net("DeepLab-MSc-LargeFOV", "v1", header(
        "DeepLab-MSc-LargeFOV (ICLR'15): LargeFOV plus classifiers on the image and pool1-pool4, summed",
        "TheLegendAli/DeepLab-Context config/DeepLab-MSc-LargeFOV/test.prototxt @12df7fc"))
    net.data(513)

    def side_path(source: str) -> None:
        net.conv(f"{source}_conv", source, 128, 3, pad=1)
        net.relu(f"relu_{source}_conv", f"{source}_conv")
        net.dropout(f"drop_{source}_conv", f"{source}_conv")
        net.conv(f"{source}_fc", f"{source}_conv", 128, 1)
        net.relu(f"relu_{source}_fc", f"{source}_fc")
        net.dropout(f"drop_{source}_fc", f"{source}_fc")
        net.conv(f"{source}_ms", f"{source}_fc", 21, 1)

    side_path("data")
    vgg_trunk(net, after_pool=side_path)
    largefov_head(net)
    for stage, zoom in ((1, 2), (2, 4), (3, 8), (4, 8)):
        net.interp(f"pool{stage}_interp", f"pool{stage}_ms", zoom_factor=zoom)
    net.interp("fc8_interp", "fc8_voc12", zoom_factor=8)
    net.eltwise("fc_fusion", ["data_ms", "pool1_interp", "pool2_interp", "pool3_interp", "pool4_interp",
                              "fc8_interp"], "SUM")
    return net


def deeplab_v1() -> Net:
    net = Net("DeepLab", "v1", header("DeepLab (ICLR'15), fc6 4x4 with hole 4; input 514 = 32*16+2",
                                      "DeepLab/test.prototxt"))
    net.data(514)
    vgg_trunk(net, pool_kernel=2)
    net.conv("fc6", "pool5", 4096, 4, pad=6, dilation=4)
    net.relu("relu6", "fc6")
    net.dropout("drop6", "fc6")
    net.conv("fc7", "fc6", 4096, 1)
    net.relu("relu7", "fc7")
    net.dropout("drop7", "fc7")
    net.conv("fc8_pascal", "fc7", 21, 1)
    net.interp("fc8_interp", "fc8_pascal", zoom_factor=8)
    net.layer("fc8_crop", "Padding", ["fc8_interp"], ["fc8_crop"], {"padding_param": {"pad_beg": -7, "pad_end": -8}})
    return net


def deeplab_v2_vgg16_aspp_l() -> Net:
    net = Net("DeepLabv2-VGG16-ASPP-L", "v2", header("DeepLab v2 VGG-16 ASPP-L (TPAMI): rates 6, 12, 18, 24",
                                                     "exper/voc12/config/vgg16/test.prototxt"))
    net.data(513)
    vgg_trunk(net)
    for branch, rate in enumerate((6, 12, 18, 24), start=1):
        net.conv(f"fc6_{branch}", "pool5", 1024, 3, pad=rate, dilation=rate)
        net.relu(f"relu6_{branch}", f"fc6_{branch}")
        net.dropout(f"drop6_{branch}", f"fc6_{branch}")
        net.conv(f"fc7_{branch}", f"fc6_{branch}", 1024, 1)
        net.relu(f"relu7_{branch}", f"fc7_{branch}")
        net.dropout(f"drop7_{branch}", f"fc7_{branch}")
        net.conv(f"fc8_voc12_{branch}", f"fc7_{branch}", 21, 1)
    net.eltwise("fc8_voc12", [f"fc8_voc12_{b}" for b in range(1, 5)], "SUM")
    net.interp("fc8_interp", "fc8_voc12", zoom_factor=8)
    return net


RESNET_STAGES = [  # stage, block names, bottleneck width, stride of the first block, dilation
    (2, ["a", "b", "c"], 64, 1, 1),
    (3, ["a", "b1", "b2", "b3"], 128, 2, 1),
    (4, ["a"] + [f"b{i}" for i in range(1, 23)], 256, 1, 2),
    (5, ["a", "b", "c"], 512, 1, 4),
]


def resnet101_branch(net: Net, data: str, suffix: str) -> str:
    """One ResNet-101 trunk; the MSC branches (suffix _res05, _res075) share every parameter by name."""

    def names(n: str) -> str:
        return n + suffix

    def conv_bn(conv: str, bn: str, scale: str, bottom: str, out: int, kernel: int, pad=0, stride=1, dilation=1):
        net.conv(names(conv), bottom, out, kernel, pad, stride, dilation, bias=False, specs=[{"name": f"{conv}_0"}])
        net.layer(names(bn), "BatchNorm", [names(conv)], [names(conv)], {"batch_norm_param":
                  {"use_global_stats": "true"}}, [{"name": f"{bn}_{i}", "lr_mult": 0} for i in range(3)])
        net.layer(names(scale), "Scale", [names(conv)], [names(conv)], {"scale_param": {"bias_term": "true"}},
                  [{"name": f"{scale}_{i}", "lr_mult": 0} for i in range(2)])

    conv_bn("conv1", "bn_conv1", "scale_conv1", data, 64, 7, pad=3, stride=2)
    net.relu(names("conv1_relu"), names("conv1"))
    net.pool(names("pool1"), names("conv1"), 3, 2, 1)
    bottom = names("pool1")
    for stage, blocks, width, stride, dilation in RESNET_STAGES:
        for index, block in enumerate(blocks):
            tag = f"{stage}{block}"
            first = index == 0
            if first:
                conv_bn(f"res{tag}_branch1", f"bn{tag}_branch1", f"scale{tag}_branch1", bottom, 4 * width, 1,
                        stride=stride)
            conv_bn(f"res{tag}_branch2a", f"bn{tag}_branch2a", f"scale{tag}_branch2a", bottom, width, 1,
                    stride=stride if first else 1)
            net.relu(names(f"res{tag}_branch2a_relu"), names(f"res{tag}_branch2a"))
            conv_bn(f"res{tag}_branch2b", f"bn{tag}_branch2b", f"scale{tag}_branch2b", names(f"res{tag}_branch2a"),
                    width, 3, pad=dilation, dilation=dilation)
            net.relu(names(f"res{tag}_branch2b_relu"), names(f"res{tag}_branch2b"))
            conv_bn(f"res{tag}_branch2c", f"bn{tag}_branch2c", f"scale{tag}_branch2c", names(f"res{tag}_branch2b"),
                    4 * width, 1)
            shortcut = names(f"res{tag}_branch1") if first else bottom
            net.layer(names(f"res{tag}"), "Eltwise", [shortcut, names(f"res{tag}_branch2c")], [names(f"res{tag}")])
            net.relu(names(f"res{tag}_relu"), names(f"res{tag}"))
            bottom = names(f"res{tag}")
    return bottom


def deeplab_v2_resnet101_msc() -> Net:
    net = Net("DeepLabv2-ResNet101-MSC-ASPP", "v2", header(
        "DeepLab v2 ResNet-101 MSC ASPP-L (TPAMI; the released train_iter_20000 model): scales 1, 0.5, 0.75",
        "exper/voc12/config/resnet101/test.prototxt"))
    net.data(513)
    net.interp("data_res05", "data", shrink_factor=2, pad_beg=0, pad_end=0)
    net.interp("data_res075", "data", shrink_factor=4, zoom_factor=3, pad_beg=0, pad_end=0)
    tops = {suffix: resnet101_branch(net, data, suffix)
            for suffix, data in (("", "data"), ("_res05", "data_res05"), ("_res075", "data_res075"))}
    for suffix in ("", "_res05", "_res075"):
        for branch, rate in enumerate((6, 12, 18, 24)):
            name = f"fc1_voc12{suffix}_c{branch}"
            net.conv(name, tops[suffix], 21, 3, pad=rate, dilation=rate,
                     specs=[{"name": f"fc1_voc12_c{branch}_w"}, {"name": f"fc1_voc12_c{branch}_b"}])
        net.eltwise(f"fc1_voc12{suffix}", [f"fc1_voc12{suffix}_c{b}" for b in range(4)], "SUM")
    net.interp("fc1_voc12_res05_interp", "fc1_voc12_res05", zoom_factor=2, pad_beg=0, pad_end=0)
    net.interp("fc1_voc12_res075_interp", "fc1_voc12_res075", zoom_factor=4, shrink_factor=3, pad_beg=0, pad_end=0)
    net.eltwise("fc_fusion", ["fc1_voc12", "fc1_voc12_res075_interp", "fc1_voc12_res05_interp"], "MAX")
    net.interp("fc1_interp", "fc_fusion", zoom_factor=8)
    return net


def demo_synthetic() -> Net:
    net = Net("deeplab-demo-synthetic", "v2", (
        "# caffe2torch demo: a small DeepLab-v2-style net (atrous convolutions, ASPP, Interp) trained on\n"
        "# procedurally generated scenes (caffe2torch/demo/synthetic.py), NOT on real photographs.\n"
        "# Classes: background, disc, box, triangle, ring. Input 129x129 (8k+1), output stride 8.\n"))
    net.data(129)
    bottom = "data"
    for stage, (width, convs, dilation) in enumerate([(16, 2, 1), (32, 2, 1), (64, 2, 1), (64, 2, 2)], start=1):
        for index in range(1, convs + 1):
            name = f"conv{stage}_{index}"
            net.conv(name, bottom, width, 3, pad=dilation, dilation=dilation)
            net.relu(f"relu_{name}", name)
            bottom = name
        if stage < 4:
            net.pool(f"pool{stage}", bottom, 3, 2, 1)
            bottom = f"pool{stage}"
    for branch, rate in enumerate((2, 4, 8), start=1):
        net.conv(f"fc6_{branch}", bottom, 64, 3, pad=rate, dilation=rate)
        net.relu(f"relu_fc6_{branch}", f"fc6_{branch}")
        net.conv(f"fc7_{branch}", f"fc6_{branch}", 64, 1)
        net.relu(f"relu_fc7_{branch}", f"fc7_{branch}")
        net.conv(f"fc8_synthetic_{branch}", f"fc7_{branch}", 5, 1)
    net.eltwise("fc8_synthetic", [f"fc8_synthetic_{b}" for b in range(1, 4)], "SUM")
    net.interp("fc8_interp", "fc8_synthetic", zoom_factor=8)
    return net


DEFINITIONS = {
    "deeplab-v1-largefov": deeplab_v1_largefov,
    "deeplab-v1-msc-largefov": deeplab_v1_msc_largefov,
    "deeplab-v1": deeplab_v1,
    "deeplab-v2-vgg16-aspp-l": deeplab_v2_vgg16_aspp_l,
    "deeplab-v2-resnet101-msc": deeplab_v2_resnet101_msc,
    "deeplab-demo-synthetic": demo_synthetic,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for name, build in DEFINITIONS.items():
        path = OUT / f"{name}.prototxt"
        text = build().text()
        if not path.exists() or path.read_text() != text:
            stale.append(name)
            if not args.check:
                path.write_text(text)
    if args.check and stale:
        print("stale: " + ", ".join(stale), file=sys.stderr)
        return 1
    print("up to date" if not stale else "wrote " + ", ".join(stale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
