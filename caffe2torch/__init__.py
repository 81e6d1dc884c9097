"""caffe2torch: DeepLab's Caffe models in PyTorch and ONNX Runtime, numerically identical to Caffe."""

__version__ = "0.1.0"


def load(path):
    """A ready CaffeNet (eval mode) from a converted artifact (`deeplab-convert`'s model.safetensors); opening
    it runs no code and needs neither the prototxt nor the caffemodel."""
    from caffe2torch.artifact import load as load_artifact

    return load_artifact(path)


def convert(prototxt, caffemodel, **kwargs):
    """(CaffeNet, LoadReport) for a prototxt and caffemodel of any dialect; see caffe2torch.pipeline.convert."""
    from caffe2torch.pipeline import convert as convert_net

    return convert_net(prototxt, caffemodel, **kwargs)
