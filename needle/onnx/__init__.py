"""ONNX: `needle.onnx.load` imports an ONNX model as a compiled callable, `needle.onnx.backend`
runs ONNX's backend tests, and `needle.onnx.export` writes a needle model or function as an
ONNX model."""
from .errors import InvalidModelError, OnnxError, UnsupportedModelError  # noqa: F401
from .importer import ImportedModel, load, supported_ops  # noqa: F401
from .export import export  # noqa: F401
