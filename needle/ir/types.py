"""The IR's value types and source locations: `TensorType` (shape, dtype, device), tuple
types, and `SourceLoc` (the user's file and line)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class TensorType:
    """Static type of a value: shape, dtype name and device name."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    device: str = "cpu"

    def __str__(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        return f"{_DTYPE_SHORT.get(self.dtype, self.dtype)}[{dims}] {self.device}"


_DTYPE_SHORT = {"float32": "f32", "float64": "f64", "int64": "i64", "int32": "i32", "bool": "bool"}
DTYPE_LONG = {v: k for k, v in _DTYPE_SHORT.items()}

#: the type of a node: one tensor, or a tuple of tensors (split, make_tuple, grad)
ValueType = Union[TensorType, tuple[TensorType, ...]]


@dataclass(frozen=True)
class SourceLoc:
    """Where in the user's code a node was created."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"
