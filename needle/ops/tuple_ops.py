"""Tuple ops: make_tuple, tuple_get_item, stack/split and concat."""
from __future__ import annotations

from ..backend_selection import array_api
from .. import value_types
from .registry import TensorOp, TensorTupleOp, constant
from .shape import GetItem, _compact


def part_types(value) -> list:
    """(shape, dtype) of each element of a TensorTuple, traced or computed."""
    trace = getattr(value, "_trace", None)
    if trace is not None:
        return [(t.shape, t.dtype) for t in trace.type]
    return [(tuple(a.shape), a.dtype) for a in value.realize_cached_data()]


class MakeTensorTuple(TensorTupleOp):
    def infer(self, *args):
        return tuple((a.shape, a.dtype) for a in args), None

    def compute(self, *args):
        return tuple(args)

    def gradient(self, out_grad, node):
        return tuple(out_grad[i] for i in range(len(out_grad)))


class TupleGetItem(TensorOp):
    kind = "tuple"

    def __init__(self, index: int):
        self.index = index

    def __call__(self, value, fold_const: bool = True):
        if not isinstance(value, value_types.TensorTuple):
            raise self.error(f"expects a TensorTuple, got {type(value).__name__}")
        if fold_const and isinstance(value.op, MakeTensorTuple):
            return value.inputs[self.index]
        return super().__call__(value)

    def infer(self, a):
        parts = part_types(a)
        n = len(parts)
        if not -n <= self.index < n:
            raise IndexError(f"TupleGetItem: index {self.index} out of range for a tuple of {n}")
        return parts[self.index]

    def compute(self, a):
        return a[self.index]

    def gradient(self, out_grad, node):
        parts = part_types(node.inputs[0])
        index = self.index % len(parts)
        return make_tuple(*[out_grad if i == index else constant(shape, 0.0, dtype, out_grad.device)
                            for i, (shape, dtype) in enumerate(parts)])


def _shape_tuple(op, args):
    shapes = [tuple(shape) for shape, _ in part_types(args)]
    if not shapes:
        raise op.error("needs at least one tensor")
    return shapes


class Stack(TensorOp):
    """Stack a TensorTuple of equal-shape tensors along a new axis."""

    kind = "injective"
    moves_data = True

    def __init__(self, axis: int):
        self.axis = axis

    def infer(self, args):
        shapes = _shape_tuple(self, args)
        if any(s != shapes[0] for s in shapes):
            raise self.error(f"all tensors must have the same shape, got {shapes}")
        ndim = len(shapes[0]) + 1
        if not -ndim <= self.axis < ndim:
            raise self.error(f"axis {self.axis} out of range for {ndim}-d output")
        out = list(shapes[0])
        out.insert(self.axis % ndim, len(shapes))
        return tuple(out), part_types(args)[0][1]

    def compute(self, args):
        return array_api.stack(list(args), axis=self.axis)

    def gradient(self, out_grad, node):
        return split(out_grad, self.axis)


class Split(TensorTupleOp):
    """Split along `axis` into a tuple of slices with that axis removed."""

    def __init__(self, axis: int):
        self.axis = axis

    def infer(self, a):
        if not -len(a.shape) <= self.axis < len(a.shape):
            raise self.error(f"axis {self.axis} out of range for shape {a.shape}")
        ax = self.axis % len(a.shape)
        shape = a.shape[:ax] + a.shape[ax + 1:]
        return tuple((shape, a.dtype) for _ in range(a.shape[ax])), None

    def compute(self, a):
        ax = self.axis % len(a.shape)
        shape = tuple(a.shape[:ax]) + tuple(a.shape[ax + 1:])
        out = []
        for i in range(a.shape[ax]):
            idx = tuple(slice(i, i + 1) if d == ax else slice(None) for d in range(len(a.shape)))
            out.append(array_api.reshape(_compact(a[idx]), shape))
        return tuple(out)

    def gradient(self, out_grad, node):
        return stack(out_grad, self.axis)


class Concat(TensorOp):
    """Concatenate a TensorTuple along an existing axis."""

    kind = "injective"
    moves_data = True

    def __init__(self, axis: int):
        self.axis = axis

    def infer(self, args):
        shapes = _shape_tuple(self, args)
        ndim = len(shapes[0])
        if not -ndim <= self.axis < ndim:
            raise self.error(f"axis {self.axis} out of range for shapes {shapes}")
        ax = self.axis % ndim
        rest = [s[:ax] + s[ax + 1:] for s in shapes]
        if any(len(s) != ndim or r != rest[0] for s, r in zip(shapes, rest)):
            raise self.error(f"shapes {shapes} differ outside axis {self.axis}")
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        return tuple(out), part_types(args)[0][1]

    def compute(self, args):
        return array_api.concatenate(list(args), axis=self.axis)

    def gradient(self, out_grad, node):
        shape = out_grad.shape
        ax = self.axis % len(shape)
        parts, start = [], 0
        for part_shape, _ in part_types(node.inputs[0]):
            size = part_shape[ax]
            slices = [(0, d, 1) for d in shape]
            slices[ax] = (start, start + size, 1)
            parts.append(GetItem(slices)(out_grad))
            start += size
        return make_tuple(*parts)


# ---- function forms --------------------------------------------------------------------
def make_tuple(*args):
    return MakeTensorTuple()(*args)


def tuple_get_item(value, index: int):
    return TupleGetItem(index)(value)


def stack(args, axis: int):
    return Stack(axis)(make_tuple(*args))


def split(a, axis: int):
    return Split(axis)(a)


def concat(args, axis: int = 0):
    return Concat(axis)(make_tuple(*args))


__all__ = [
    "MakeTensorTuple", "TupleGetItem", "Stack", "Split", "Concat",
    "make_tuple", "tuple_get_item", "stack", "split", "concat",
]
