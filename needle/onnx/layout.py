"""Activations in needle's conv layout: ONNX is NCHW, needle's Conv NHWC. A conv's output is
kept NHWC (an `Nhwc` value) through the elementwise ops, pools, normalizations and concats
that follow it; other ops get the value permuted back once. So a CNN permutes at its input
and its output only."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .. import ops
from ..autograd import Tensor
from .registry import Converter, Nhwc, NodeInput, Value, to_tensor

#: ONNX ops whose output element i depends on their inputs' elements i only (numpy broadcasting)
ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
    "And", "Or", "Xor", "Neg", "Abs", "Sqrt", "Exp", "Log", "Tanh", "Sigmoid", "Relu", "Erf",
    "Sin", "Cos", "Tan", "Reciprocal", "Floor", "Ceil", "Not", "Softplus", "Softsign", "Sign",
    "LeakyRelu", "Elu", "Selu", "HardSigmoid", "HardSwish", "Gelu", "Clip", "Sum", "Max", "Min",
    "Mean", "Where", "Identity", "Dropout", "Cast"})
_TO_NHWC, _TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


def convert(op_type: str, conv: Converter, n: NodeInput) -> list:
    """The node's outputs, its `Nhwc` inputs passed as they are to a layout-aware converter,
    kept NHWC through an elementwise op, and permuted to NCHW for any other."""
    if not any(isinstance(v, Nhwc) for v in n.inputs) or conv.layout:
        return _outputs(conv.fn(n))
    held = _channels_last(n.inputs) if op_type in ELEMENTWISE else None
    if held is None:
        n.inputs = [v.nchw() if isinstance(v, Nhwc) else v for v in n.inputs]
        return _outputs(conv.fn(n))
    n.inputs = held
    return [_from_channels_last(v) for v in _outputs(conv.fn(n))]


def _outputs(out) -> list:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _channels_last(inputs: Sequence[Optional[Value]]) -> Optional[list]:
    """The inputs of an elementwise op in NHWC (each broadcast to 4-D), or None when one has
    more than 4 axes."""
    if any(v is not None and len(v.shape) > 4 for v in inputs):
        return None
    return [v if v is None else to_channels_last(v) for v in inputs]


def to_channels_last(v: Value) -> Value:
    """A value of at most 4 axes (NCHW, numpy broadcasting) as its 4-D NHWC counterpart."""
    if isinstance(v, Nhwc):
        return v.t
    lead = (1,) * (4 - len(v.shape))
    if isinstance(v, np.ndarray):
        return np.transpose(v.reshape(lead + v.shape), _TO_NHWC)
    v = ops.reshape(v, lead + v.shape) if lead else v
    n, c, h, w = v.shape
    return ops.reshape(v, (n, h, w, c)) if c == 1 or h == w == 1 else ops.permute(v, _TO_NHWC)


def _from_channels_last(v):
    """An elementwise op's output computed in NHWC, as a graph value."""
    if isinstance(v, np.ndarray):
        return np.transpose(v, _TO_NCHW)
    return Nhwc(v) if isinstance(v, Tensor) else v


def as_nhwc(v: Value) -> Tensor:
    """A 4-D value as an NHWC Tensor."""
    return to_channels_last(v if isinstance(v, Nhwc) else to_tensor(v))
