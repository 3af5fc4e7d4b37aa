"""Exports: ONNX (plain or re-parameterised) and TensorRT engines."""
