"""The node agent: runs ONNX models on an emulated satellite edge node."""
