"""Deployment: bench, export (ONNX), explain (Grad-CAM)."""
