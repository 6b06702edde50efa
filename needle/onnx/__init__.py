"""ONNX: `needle.onnx.export` writes a needle model or function as an ONNX model."""
from .export import export
