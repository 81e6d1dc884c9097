"""caffe2torch: DeepLab's Caffe models in PyTorch and ONNX Runtime, numerically identical to Caffe."""

__version__ = "0.1.0"
