"""Running a trained cascade: real early exit on image files with PyTorch or ONNX Runtime, and the
ONNX export both deployment paths read."""
