"""imagpose.export: ONNX / ONNX Runtime / TensorRT export paths (issue #4)."""
