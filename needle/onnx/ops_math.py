"""Converters of ONNX's elementwise, activation, matmul, reduction and softmax ops."""
from __future__ import annotations

import math
from math import prod

import numpy as np

from .. import ops
from ..autograd import Tensor
from .registry import NodeInput, attr_is, converter, to_tensor
from .tensor_ops import binary, broadcast, floor, fold, keepdims, maximum, normalize_axes

_BINARY = {
    "Add": ops.add, "Sub": lambda a, b: a - b, "Mul": ops.multiply, "Div": ops.divide,
    "Equal": lambda a, b: ops.compare(a, b, "eq"),
    "Less": lambda a, b: ops.compare(a, b, "lt"), "Greater": lambda a, b: ops.compare(a, b, "gt"),
    "LessOrEqual": lambda a, b: ops.compare(a, b, "le"), "GreaterOrEqual": lambda a, b: ops.compare(a, b, "ge"),
    "And": ops.multiply, "Or": lambda a, b: maximum(a, b), "Xor": lambda a, b: ops.compare(a, b, "ne"),
    "PRelu": lambda x, s: ops.where(ops.compare(x, 0.0, "lt"), x * s, x),
}


for _name, _fn in _BINARY.items():
    converter(_name)(lambda n, fn=_fn: binary(fn, n.inputs[0], n.inputs[1]))


@converter("Pow")
def _pow_node(n: NodeInput):
    b = n.inputs[1]
    if not isinstance(b, Tensor) and np.asarray(b).size == 1:
        e = float(np.asarray(b).reshape(-1)[0])
        out = ops.power_scalar(n.tensor(0), int(e) if e.is_integer() else e)
        return broadcast(out, np.broadcast_shapes(out.shape, np.shape(b)))
    return binary(ops.power, n.inputs[0], b)


_UNARY = {
    "Neg": ops.negate, "Abs": ops.abs, "Sqrt": ops.sqrt, "Exp": ops.exp, "Log": ops.log, "Tanh": ops.tanh,
    "Sigmoid": ops.sigmoid, "Relu": ops.relu, "Erf": ops.erf, "Sin": ops.sin, "Cos": ops.cos,
    "Reciprocal": lambda x: 1.0 / x, "Floor": floor, "Ceil": lambda x: -floor(-x),
    "Not": lambda x: 1.0 - ops.compare(x, 0.0, "ne"),
    "Softplus": lambda x: maximum(x, 0.0) + ops.log(1.0 + ops.exp(-ops.abs(x))),
    "Softsign": lambda x: x / (1.0 + ops.abs(x)),
    "Sign": lambda x: ops.compare(x, 0.0, "gt") - ops.compare(x, 0.0, "lt"),
    "Tan": lambda x: ops.sin(x) / ops.cos(x),
}
for _name, _fn in _UNARY.items():
    converter(_name)(lambda n, fn=_fn: fn(n.tensor(0)))


@converter("LeakyRelu")
def _leaky_relu(n: NodeInput):
    x = n.tensor(0)
    return ops.where(ops.compare(x, 0.0, "lt"), x * n.attr("alpha", 0.01), x)


@converter("Elu")
def _elu(n: NodeInput):
    x = n.tensor(0)
    return ops.where(ops.compare(x, 0.0, "lt"), (ops.exp(x) - 1.0) * n.attr("alpha", 1.0), x)


@converter("Selu")
def _selu(n: NodeInput):
    x = n.tensor(0)
    alpha, gamma = n.attr("alpha", 1.67326319217681884765625), n.attr("gamma", 1.05070102214813232421875)
    return ops.where(ops.compare(x, 0.0, "le"), (ops.exp(x) - 1.0) * (alpha * gamma), x * gamma)


@converter("HardSigmoid")
def _hard_sigmoid(n: NodeInput):
    y = n.tensor(0) * n.attr("alpha", 0.2) + n.attr("beta", 0.5)
    return ops.minimum(maximum(y, 0.0), to_tensor(np.ones(y.shape, np.float32)))


@converter("HardSwish")
def _hard_swish(n: NodeInput):
    x = n.tensor(0)
    return x * ops.minimum(maximum(x / 6.0 + 0.5, 0.0), to_tensor(np.ones(x.shape, np.float32)))


@converter("Gelu", check=attr_is("approximate", ("none", "tanh"), "none"))
def _gelu(n: NodeInput):
    x = n.tensor(0)
    if n.attr("approximate", "none") == "tanh":
        return x * 0.5 * (1.0 + ops.tanh((x + x * x * x * 0.044715) * math.sqrt(2.0 / math.pi)))
    return x * 0.5 * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))


@converter("Clip")
def _clip(n: NodeInput):
    x = n.tensor(0)
    lo = (n.inputs[1] if n.has(1) else None) if n.since(11) else n.attr("min")
    hi = (n.inputs[2] if n.has(2) else None) if n.since(11) else n.attr("max")
    if lo is not None:
        x = binary(maximum, x, np.float32(lo) if isinstance(lo, float) else lo)
    if hi is not None:
        x = binary(ops.minimum, x, np.float32(hi) if isinstance(hi, float) else hi)
    return x


def _variadic(fn):
    return lambda n: fold(lambda a, b: binary(fn, a, b), [n.tensor(i) for i in range(len(n.inputs))])


converter("Sum")(_variadic(ops.add))
converter("Max")(_variadic(maximum))
converter("Min")(_variadic(ops.minimum))


@converter("Mean")
def _mean(n: NodeInput):
    return _variadic(ops.add)(n) / float(len(n.inputs))


@converter("Where")
def _where(n: NodeInput):
    c, a, b = (n.tensor(i) for i in range(3))
    shape = np.broadcast_shapes(c.shape, a.shape, b.shape)
    return ops.where(*(broadcast(t, shape) for t in (c, a, b)))


@converter("MatMul")
def _matmul(n: NodeInput):
    a, b = n.tensor(0), n.tensor(1)
    if len(a.shape) > 2 and len(b.shape) == 2:  # a stack of rows by one matrix: one GEMM
        rows = ops.matmul(ops.reshape(a, (prod(a.shape[:-1]), a.shape[-1])), b)
        return ops.reshape(rows, a.shape[:-1] + b.shape[1:])
    a2 = ops.reshape(a, (1,) + a.shape) if len(a.shape) == 1 else a
    b2 = ops.reshape(b, b.shape + (1,)) if len(b.shape) == 1 else b
    out = ops.matmul(a2, b2)
    shape = out.shape[:-2] + out.shape[-2:-1] * (len(a.shape) > 1) + out.shape[-1:] * (len(b.shape) > 1)
    return ops.reshape(out, shape) if shape != out.shape else out


@converter("Gemm")
def _gemm(n: NodeInput):
    a, b = (_transposed(n.inputs[i]) if n.attr(f"trans{ab}", 0) else n.tensor(i) for i, ab in enumerate("AB"))
    out = ops.matmul(a, b)
    if n.attr("alpha", 1.0) != 1.0:
        out = out * n.attr("alpha", 1.0)
    if n.has(2):
        c = n.tensor(2)
        out = out + broadcast(c * n.attr("beta", 1.0) if n.attr("beta", 1.0) != 1.0 else c, out.shape)
    return out


def _transposed(v) -> Tensor:
    """A matrix transposed (a weight known at import: once, at import)."""
    return to_tensor(v.T) if isinstance(v, np.ndarray) else ops.transpose(to_tensor(v))


def _reduction(fn, since_input: int = 18, prepare=None, finish=None, empty: float = 0.0):
    """A Reduce* converter: `fn(x, axes)` after `prepare(x)`, then `finish(y, count)`; a
    reduction over no elements is `empty` (finished)."""
    def convert(n: NodeInput):
        x = n.tensor(0)
        axes = n.ints(1) if n.since(since_input) else n.attr("axes")
        if prepare:
            x = prepare(x)
        if not axes and n.attr("noop_with_empty_axes", 0):
            return finish(x, 1) if finish else x
        axes = normalize_axes(axes or None, len(x.shape))
        count = int(np.prod([x.shape[a] for a in axes]))
        if count == 0:
            kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
            y = to_tensor(np.full(kept if n.attr("keepdims", 1) else
                                  tuple(d for i, d in enumerate(x.shape) if i not in axes), empty, np.float32))
            return finish(y, 1) if finish else y
        out = keepdims(fn(x, axes), x.shape, axes, n.attr("keepdims", 1))
        return finish(out, count) if finish else out
    return convert


converter("ReduceSum")(_reduction(ops.summation, since_input=13))
converter("ReduceMean")(_reduction(ops.summation, finish=lambda y, k: y / float(k)))
converter("ReduceMax")(_reduction(ops.max, empty=-np.inf))
converter("ReduceMin")(_reduction(ops.min, empty=np.inf))
converter("ReduceSumSquare")(_reduction(ops.summation, prepare=lambda x: x * x))
converter("ReduceL1")(_reduction(ops.summation, prepare=ops.abs))
converter("ReduceL2")(_reduction(ops.summation, prepare=lambda x: x * x, finish=lambda y, k: ops.sqrt(y)))
converter("ReduceLogSumExp")(_reduction(lambda x, axes: ops.logsumexp(x, axes), empty=-np.inf))
converter("ReduceLogSum")(_reduction(ops.summation, finish=lambda y, k: ops.log(y)))


def _softmax_family(log: bool):
    def convert(n: NodeInput):
        x = n.tensor(0)
        axis = n.attr("axis", -1 if n.since(13) else 1) % max(len(x.shape), 1)
        if n.since(13):
            z, axes, shape = x, (axis,), x.shape
        else:  # the input flattened to 2-D at `axis`, normalised over the second part
            shape = x.shape
            z = ops.reshape(x, (int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))))
            axes = (1,)
        z = z - broadcast(keepdims(ops.max(z, axes).detach(), z.shape, axes, True), z.shape)
        lse = broadcast(keepdims(ops.logsumexp(z, axes), z.shape, axes, True), z.shape)
        out = z - lse if log else ops.exp(z - lse)
        return ops.reshape(out, shape)
    return convert


converter("Softmax")(_softmax_family(log=False))
converter("LogSoftmax")(_softmax_family(log=True))
