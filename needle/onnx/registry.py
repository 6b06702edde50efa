"""The converter table: one small function per ONNX op type, and what a converter receives.

A value of the imported graph is a numpy array while it is known at import (initializers,
constants, shape computations: folded with numpy) and a needle Tensor otherwise (float32;
ints, bools and ids carried as float32), or an `Nhwc` (a 4-D activation held in needle's
conv layout). A converter takes a `NodeInput` and returns the node's outputs, Tensors or
arrays; only converters registered with `layout=True` see (and may return) `Nhwc` values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import helper

from .. import ops
from ..autograd import Tensor
from .errors import UnsupportedModelError



class Nhwc:
    """A 4-D NCHW value of the graph held as the NHWC Tensor `t` (needle's conv layout), so
    that chains of convs, pools and elementwise ops permute only at their ends."""

    __slots__ = ("t", "_nchw")

    def __init__(self, t: Tensor):
        self.t, self._nchw = t, None

    @property
    def shape(self) -> tuple:
        n, h, w, c = self.t.shape
        return (n, c, h, w)

    def nchw(self) -> Tensor:
        """The value in ONNX's layout (one permute, made once)."""
        if self._nchw is None:
            self._nchw = ops.permute(self.t, (0, 3, 1, 2))
        return self._nchw


Value = Union[np.ndarray, Tensor, Nhwc]
#: a node's problem, if any, found before anything runs: (node, opset) -> reason or None
Check = Callable[[onnx.NodeProto, int], Optional[str]]


@dataclass(frozen=True)
class Converter:
    fn: Callable[["NodeInput"], Any]
    #: indices of inputs that must be known at import (shapes, axes, pads, ...)
    static: tuple[int, ...] = ()
    check: Optional[Check] = None
    #: takes `Nhwc` inputs as they are (others get them in ONNX's layout)
    layout: bool = False


CONVERTERS: dict[str, Converter] = {}


def converter(*op_types: str, static: Sequence[int] = (), check: Optional[Check] = None,
              layout: bool = False):
    """Register the decorated function as the converter of `op_types`."""
    def register(fn):
        for op in op_types:
            CONVERTERS[op] = Converter(fn, tuple(static), check, layout)
        return fn
    return register


def attr_is(name: str, allowed, default=None) -> Check:
    """A check: attribute `name` (bytes decoded) must be one of `allowed`."""
    def check(node: onnx.NodeProto, opset: int) -> Optional[str]:
        value = node_attrs(node).get(name, default)
        return None if value in allowed else f"{name}={value!r} is not supported (only {sorted(map(str, allowed))})"
    return check


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def to_tensor(value: Value) -> Tensor:
    """A Tensor of `value` (an array becomes a float32 constant; a zero-strided array, such
    as ConstantOfShape's, a broadcast scalar; an `Nhwc` in ONNX's layout)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, Nhwc):
        return value.nchw()
    arr = np.asarray(value)
    if arr.size > 1 and not any(arr.strides):
        return Tensor(np.asarray(arr.flat[0], np.float32).reshape((1,) * arr.ndim),
                      requires_grad=False).broadcast_to(arr.shape)
    return Tensor(np.array(arr, np.float32, order="C"), requires_grad=False)


@dataclass
class NodeInput:
    """What a converter receives: the node, its opset, its input values and attributes."""

    node: onnx.NodeProto
    opset: int
    inputs: list
    attrs: dict = field(default_factory=dict)

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def has(self, i: int) -> bool:
        """Input `i` is given (not absent, not the empty name)."""
        return i < len(self.inputs) and self.inputs[i] is not None

    def tensor(self, i: int) -> Tensor:
        return to_tensor(self.inputs[i])

    def const(self, i: int, default=None) -> Optional[np.ndarray]:
        """Input `i` as an array known at import (None or `default` when absent)."""
        if not self.has(i):
            return default
        v = self.inputs[i]
        if isinstance(v, (Tensor, Nhwc)):
            raise UnsupportedModelError([f"{describe(self.node, self.opset)}: input {i} "
                                         f"({self.node.input[i]!r}) must be known at import"])
        return np.asarray(v)

    def ints(self, i: int, default=None) -> Optional[list[int]]:
        """Input `i` (or, in older opsets, the attribute of the same role) as a list of ints."""
        c = self.const(i)
        return default if c is None else [int(x) for x in np.asarray(c).reshape(-1)]

    def since(self, version: int) -> bool:
        """The node's op is at least at this opset version."""
        return self.opset >= version


def describe(node: onnx.NodeProto, opset: int) -> str:
    name = node.name or (node.output[0] if node.output else "?")
    return f"node {name!r} ({node.op_type}, opset {opset})"


_FAMILIES = {"ops_math": "elementwise, activations, matmul, reductions, softmax",
             "ops_nn": "convolution, pooling, normalization", "ops_shape": "shapes, indexing, constants"}


def op_table() -> str:
    """The supported ONNX op types by family, as the Markdown table of docs/onnx.md."""
    rows = ["| family | ONNX op types |", "|---|---|"]
    for module, family in _FAMILIES.items():
        names = sorted(op for op, c in CONVERTERS.items() if c.fn.__module__.endswith(module))
        rows.append(f"| {family} | {' '.join(names)} |")
    return "\n".join(rows)
