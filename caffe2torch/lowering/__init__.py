"""ONNX lowerings that no exporter provides: each module turns one Caffe computation into a form that
torch's TorchScript-based exporter (`onnx_export.export_onnx`) writes as standard ONNX operators."""
