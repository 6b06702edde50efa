"""Composite ops: functions of primitives with their own eager kernel and VJP.

The compiler's decompose pass expands them into primitives (`decompose`; an elementwise
composite's is its scalar formula, `element`, evaluated over Tensors).
"""
from __future__ import annotations

from ..backend_selection import array_api
from . import scalar as S
from .elementwise import Elementwise, compare, exp, log
from .reduce import Reduce, _reduced_shape, check_not_empty, summation
from .reduce import max as reduce_max
from .registry import TensorOp
from .shape import broadcast_to, reshape


class ReLU(Elementwise):
    """max(a, 0); decomposed as where(a <= 0, 0, a), which matches it also for -inf and NaN."""

    composite = True
    custom_vjp = True  # its VJP is eager's (0 at NaN; the decomposed Where's would be 1 there)

    def element(self, a):
        return S.where(a <= 0.0, 0.0, a)

    def compute(self, a):  # one kernel instead of the formula's compare and select
        return array_api.maximum(a, 0.0)

    def gradient(self, out_grad, node):
        return out_grad * compare(node.inputs[0], 0.0, "gt")


class Sigmoid(Elementwise):
    """1 / (1 + exp(-a)), computed as (tanh(a/2) + 1) / 2 so it never overflows."""

    composite = True

    def element(self, a):
        return (S.tanh(a * 0.5) + 1.0) * 0.5

    def gradient(self, out_grad, node):
        return out_grad * node * (1.0 - node)


class LogSumExp(Reduce):
    """log(sum(exp(a), axes)), stable for inputs of any magnitude."""

    composite = True
    custom_vjp = True  # autodiff uses `gradient` below; decompose expands it afterwards
    needs_elements = True  # its max shift

    def compute(self, a):
        axes = self._axes(len(a.shape))
        m = a.max(axis=axes, keepdims=True)
        z = array_api.exp(a - array_api.broadcast_to(m, a.shape))
        out = array_api.log(array_api.sum(z, axis=axes, keepdims=True)) + m
        return array_api.reshape(out, self.infer(a)[0])

    def gradient(self, out_grad, node):
        a = node.inputs[0]
        return self._keepdims_grad(out_grad, node) * exp(a - self._keepdims_grad(node, node))

    def decompose(self, a):
        """log(sum(exp(a - m))) + m with m = max(a) detached (its gradient would cancel)."""
        axes = self._axes(len(a.shape))
        m = reduce_max(a, axes).detach()
        kept = _reduced_shape(a.shape, axes, keepdims=True)
        z = a - broadcast_to(reshape(m, kept), a.shape)
        return log(summation(exp(z), axes)) + m


class LogSoftmax(TensorOp):
    """log-softmax over axis 1 of a 2-D input."""

    composite = True
    custom_vjp = True  # autodiff uses `gradient` below; decompose expands it afterwards
    kind = "reduce"

    def infer(self, a):
        if len(a.shape) != 2:
            raise self.error(f"expects a 2-D input, got shape {a.shape}")
        check_not_empty(self, a.shape, (1,))  # its max shift
        return a.shape, a.dtype

    def compute(self, a):
        z = a - array_api.broadcast_to(a.max(axis=1, keepdims=True), a.shape)
        lse = array_api.log(array_api.sum(array_api.exp(z), axis=1, keepdims=True))
        return z - array_api.broadcast_to(lse, a.shape)

    def gradient(self, out_grad, node):
        n, c = node.shape
        total = broadcast_to(reshape(summation(out_grad, (1,)), (n, 1)), (n, c))
        return out_grad - exp(node) * total

    def decompose(self, a):
        """z - log(sum(exp(z), 1)) with z = a - max(a, 1) (max detached), as `compute` does:
        subtracting the shift first keeps small results exact for inputs of any magnitude."""
        n, c = a.shape
        m = reduce_max(a, (1,)).detach()
        z = a - broadcast_to(reshape(m, (n, 1)), (n, c))
        lse = log(summation(exp(z), (1,)))
        return z - broadcast_to(reshape(lse, (n, 1)), (n, c))


def relu(a):
    return ReLU()(a)


def sigmoid(a):
    return Sigmoid()(a)


def logsumexp(a, axes=None):
    return LogSumExp(axes)(a)


def logsoftmax(a):
    return LogSoftmax()(a)


# ---- composites written with existing ops (no kernel or VJP of their own) ----------------
def softmax(a, axis: int = -1):
    """exp(z) / sum(exp(z), axis) with z = a - max(a, axis) (the max detached: its gradient
    cancels), stable for inputs of any magnitude."""
    n = len(a.shape)
    if not -n <= axis < n:
        raise ValueError(f"softmax: axis {axis} is out of range for a tensor of shape {a.shape}")
    axis %= n
    kept = tuple(1 if i == axis else d for i, d in enumerate(a.shape))
    m = reduce_max(a, (axis,)).detach()
    e = exp(a - broadcast_to(reshape(m, kept), a.shape))
    return e / broadcast_to(reshape(summation(e, (axis,)), kept), a.shape)


__all__ = ["ReLU", "Sigmoid", "LogSumExp", "LogSoftmax", "relu", "sigmoid", "logsumexp", "logsoftmax",
           "softmax"]
