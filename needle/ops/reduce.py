"""Reductions: sum, max (primitives), argmax, and mean (a composite function)."""
from __future__ import annotations

from math import prod

from ..backend_selection import array_api
from .elementwise import compare
from .registry import TensorOp, normalize_axes, zeros_like
from .shape import broadcast_to, reshape


def _reduced_shape(shape, axes, keepdims=False):
    if axes is None:
        return (1,) * len(shape) if keepdims else ()
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def check_not_empty(op, shape, axes) -> None:
    """A maximum over no elements has no value: raise (as eager kernels do) when a non-empty
    result would reduce an axis of size 0 (`axes` None: all of them)."""
    reduced = range(len(shape)) if axes is None else axes
    out = [d for i, d in enumerate(shape) if i not in reduced]
    if prod(out) and not prod(shape[i] for i in reduced):
        raise op.error(f"zero-size array to reduction operation maximum which has no identity "
                       f"(axes {tuple(reduced)} of shape {tuple(shape)})")


class Reduce(TensorOp, abstract=True):
    """Base of reductions over `axes` (None, an int or a tuple); reduced axes are removed."""

    kind = "reduce"
    #: a maximum (or a reduction shifted by one): reducing an axis of size 0 raises
    needs_elements = False

    def __init__(self, axes=None):
        self.axes = axes

    def _axes(self, ndim):
        return normalize_axes(self, self.axes, ndim)

    def infer(self, a):
        axes = self._axes(len(a.shape))
        if self.needs_elements:
            check_not_empty(self, a.shape, axes)
        return _reduced_shape(a.shape, axes), a.dtype

    def _keepdims_grad(self, out_grad, node):
        """out_grad reshaped with the reduced axes kept (size 1), broadcast to the input."""
        shape = node.inputs[0].shape
        kd = _reduced_shape(shape, self._axes(len(shape)), keepdims=True)
        return broadcast_to(reshape(out_grad, kd), shape)


class Summation(Reduce):
    identity = 0.0
    combine = "add"

    def compute(self, a):
        return array_api.sum(a, axis=self._axes(len(a.shape)))

    def gradient(self, out_grad, node):
        return self._keepdims_grad(out_grad, node)


class Max(Reduce):
    """Maximum over axes; the gradient is shared equally among tied maxima."""

    needs_elements = True
    identity = float("-inf")
    combine = "maximum"

    def compute(self, a):
        return array_api.max(a, axis=self._axes(len(a.shape)))

    def gradient(self, out_grad, node):
        a = node.inputs[0]
        mask = compare(a, self._keepdims_grad(node.detach(), node), "eq")
        count = self._keepdims_grad(Summation(self.axes)(mask), node)
        return self._keepdims_grad(out_grad, node) * mask / count


class Min(Max):
    """Minimum over axes; the gradient is shared equally among tied minima (as Max's)."""

    identity = float("inf")
    combine = "minimum"

    def compute(self, a):
        return a.min(axis=self._axes(len(a.shape)))


class Argmax(TensorOp):
    """Index of the maximum along `axis` (all axes flattened when None); not differentiable."""

    kind = "reduce"
    differentiable = False

    def __init__(self, axis=None):
        self.axis = axis

    def infer(self, a):
        axes = normalize_axes(self, self.axis, len(a.shape))
        return _reduced_shape(a.shape, axes), a.dtype

    def compute(self, a):
        if self.axis is None:
            return array_api.argmax(array_api.reshape(a.compact() if hasattr(a, "compact") else a,
                                                      (prod(a.shape),)), axis=0)
        return array_api.argmax(a, axis=self.axis)

    def gradient(self, out_grad, node):
        return zeros_like(node.inputs[0])


def summation(a, axes=None):
    return Summation(axes)(a)


def max(a, axes=None):  # noqa: A001  (course/numpy name)
    return Max(axes)(a)


def min(a, axes=None, keepdims: bool = False):  # noqa: A001  (course/numpy name)
    """Minimum over axes (all when None); `keepdims` keeps them with size 1."""
    op = Min(axes)
    out = op(a)
    return reshape(out, _reduced_shape(a.shape, op._axes(len(a.shape)), keepdims=True)) if keepdims else out


def argmax(a, axis=None):
    return Argmax(axis)(a)


def mean(a, axes=None):
    """Mean over axes (all when None), as summation / count."""
    shape = a.shape
    ax = normalize_axes(Summation(axes), axes, len(shape))
    count = prod(shape) if ax is None else prod(shape[i] for i in ax)
    return summation(a, axes) / count


__all__ = ["Summation", "Max", "Min", "Argmax", "summation", "max", "min", "argmax", "mean", "check_not_empty"]
