"""Errors of ONNX import: a model that cannot be read, and a model needle cannot run."""
from __future__ import annotations

from ..errors import NeedleError


class OnnxError(NeedleError, ValueError):
    """Base class of the ONNX front end's errors."""


class InvalidModelError(OnnxError):
    """The file or model is not a valid ONNX model (truncated, malformed, unsafe paths,
    declared sizes beyond the limits)."""


class UnsupportedModelError(OnnxError):
    """The model uses ops, attributes, dtypes or dynamic shapes needle does not import; the
    message lists every offending node at once (`problems` holds them as strings)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"cannot import this ONNX model ({len(self.problems)} problem"
                         f"{'s' if len(self.problems) != 1 else ''}):\n{lines}")
