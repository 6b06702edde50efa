"""Elementwise primitives: binary, scalar, unary, compare and where."""
from __future__ import annotations

import operator

from .. import value_types
from ..backend_selection import array_api
from . import scalar as S
from .registry import Op, TensorOp, broadcast_shapes, constant, zeros_like
from .shape import broadcast_to, sum_to_shape


class Elementwise(TensorOp, abstract=True):
    """Base of elementwise ops: `element(*xs)` is the op's output element over its inputs',
    and by default its eager kernel too (the formula evaluated on the backend arrays)."""

    kind = "elementwise"

    def compute(self, *arrays):
        return S.compute(S.formula(self.element, len(arrays)), arrays)

    def decompose(self, *tensors):
        """The op written with primitive needle ops: `element` evaluated over Tensors (the
        decompose pass expands composite elementwise ops with it)."""
        return S.evaluate(S.formula(self.element, len(tensors)), tensors, TENSOR_TABLE)


class EWiseBinary(Elementwise, abstract=True):
    """Base of same-shape binary elementwise ops (the function forms broadcast explicitly)."""

    def infer(self, a, b):
        if a.shape != b.shape:
            raise self.error(f"shapes {a.shape} and {b.shape} differ (broadcast_to one of them first)")
        return a.shape, a.dtype


class ScalarOp(Elementwise, abstract=True):
    """Base of ops combining a tensor with a Python scalar attribute."""

    def __init__(self, scalar):
        self.scalar = scalar


def _broadcast_pair(op: Op, a, b):
    """Insert explicit BroadcastTo nodes when the shapes differ (numpy rules)."""
    sa, sb = a.shape, b.shape
    if sa == sb:
        return a, b
    shape = broadcast_shapes(op, sa, sb)
    return (a if sa == shape else broadcast_to(a, shape)), (b if sb == shape else broadcast_to(b, shape))


class EWiseAdd(EWiseBinary):
    def element(self, a, b):
        return a + b

    def compute(self, a, b):
        return a + b

    def gradient(self, out_grad, node):
        return out_grad, out_grad


class AddScalar(ScalarOp):
    def element(self, a):
        return a + self.scalar

    def compute(self, a):
        return a + self.scalar

    def gradient(self, out_grad, node):
        return out_grad


class EWiseMul(EWiseBinary):
    def element(self, a, b):
        return a * b

    def compute(self, a, b):
        return a * b

    def gradient(self, out_grad, node):
        lhs, rhs = node.inputs
        return out_grad * rhs, out_grad * lhs


class MulScalar(ScalarOp):
    def element(self, a):
        return a * self.scalar

    def compute(self, a):
        return a * self.scalar

    def gradient(self, out_grad, node):
        return out_grad * self.scalar


class EWiseDiv(EWiseBinary):
    def element(self, a, b):
        return a / b

    def compute(self, a, b):
        return a / b

    def gradient(self, out_grad, node):
        lhs, rhs = node.inputs
        return out_grad / rhs, -out_grad * lhs / (rhs * rhs)


class DivScalar(ScalarOp):
    def element(self, a):
        return a / self.scalar

    def compute(self, a):
        return a / self.scalar

    def gradient(self, out_grad, node):
        return out_grad / self.scalar


class EWisePow(EWiseBinary):
    """a ** b elementwise, differentiable in both arguments."""

    def element(self, a, b):
        return S.pow(a, b)

    def compute(self, a, b):
        return a ** b

    def gradient(self, out_grad, node):
        a, b = node.inputs
        return out_grad * b * power(a, b - 1), out_grad * node * log(a)


class PowerScalar(ScalarOp):
    """a ** scalar for an integer or float (possibly negative) exponent."""

    def element(self, a):
        return a ** self.scalar

    def compute(self, a):
        return a ** self.scalar

    def gradient(self, out_grad, node):
        a = node.inputs[0]
        if self.scalar == 0:
            return out_grad * 0.0
        return out_grad * power_scalar(a, self.scalar - 1) * self.scalar


class Negate(Elementwise):
    def element(self, a):
        return -a

    def compute(self, a):
        return -a

    def gradient(self, out_grad, node):
        return -out_grad


class Log(Elementwise):
    def element(self, a):
        return S.log(a)

    def compute(self, a):
        return array_api.log(a)

    def gradient(self, out_grad, node):
        return out_grad / node.inputs[0]


class Exp(Elementwise):
    def element(self, a):
        return S.exp(a)

    def compute(self, a):
        return array_api.exp(a)

    def gradient(self, out_grad, node):
        return out_grad * node


class Tanh(Elementwise):
    def element(self, a):
        return S.tanh(a)

    def compute(self, a):
        return array_api.tanh(a)

    def gradient(self, out_grad, node):
        return out_grad * (1.0 - node * node)


class Sin(Elementwise):
    def element(self, a):
        return S.sin(a)

    def gradient(self, out_grad, node):
        return out_grad * cos(node.inputs[0])


class Cos(Elementwise):
    def element(self, a):
        return S.cos(a)

    def gradient(self, out_grad, node):
        return -out_grad * sin(node.inputs[0])


class Minimum(EWiseBinary):
    """Elementwise minimum (NaN if either is NaN); a tie sends half the gradient each way."""

    def element(self, a, b):
        return S.minimum(a, b)

    def gradient(self, out_grad, node):
        a, b = node.inputs
        share = compare(a, b, "lt") + compare(a, b, "eq") * 0.5
        return out_grad * share, out_grad * (1.0 - share)


class Abs(Elementwise):
    """|a|; the gradient is sign(a) (0 at 0)."""

    def element(self, a):
        return S.abs(a)

    def gradient(self, out_grad, node):
        a = node.inputs[0]
        return out_grad * (compare(a, 0.0, "gt") - compare(a, 0.0, "lt"))


class Sqrt(Elementwise):
    """sqrt(a) (NaN below 0; the gradient 0.5 / sqrt(a) is inf at 0)."""

    def element(self, a):
        return S.sqrt(a)

    def gradient(self, out_grad, node):
        return out_grad / (node * 2.0)


_COMPARE = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}


class Compare(Elementwise):
    """Elementwise comparison giving 1.0/0.0 in the input's dtype; not differentiable.

    With `scalar` set the op has one input and compares it with the scalar.
    """

    differentiable = False

    def __init__(self, cmp: str, scalar=None):
        if cmp not in _COMPARE:
            raise ValueError(f"Compare: unknown comparison {cmp!r}; use one of {sorted(_COMPARE)}")
        self.cmp = cmp
        self.scalar = scalar

    def infer(self, a, b=None):
        if b is not None and a.shape != b.shape:
            raise self.error(f"shapes {a.shape} and {b.shape} differ")
        return a.shape, a.dtype

    def element(self, a, b=None):
        return _COMPARE[self.cmp](a, self.scalar if b is None else b)

    def compute(self, a, b=None):
        out = _COMPARE[self.cmp](a, self.scalar if b is None else b)
        return out.astype(a.dtype)

    def gradient(self, out_grad, node):
        return tuple(zeros_like(x) for x in node.inputs)


class Where(Elementwise):
    """where(cond, a, b): a where cond is nonzero, else b (same shapes)."""

    def element(self, cond, a, b):
        return S.where(cond, a, b)

    def infer(self, cond, a, b):
        if not cond.shape == a.shape == b.shape:
            raise self.error(f"shapes {cond.shape}, {a.shape} and {b.shape} differ")
        return a.shape, a.dtype

    def compute(self, cond, a, b):
        return array_api.where(cond, a, b).astype(a.dtype)

    def gradient(self, out_grad, node):
        cond = node.inputs[0]
        zero = zeros_like(out_grad)
        return zeros_like(cond), where(cond, out_grad, zero), where(cond, zero, out_grad)


# ---- function forms --------------------------------------------------------------------
def add(a, b):
    op = EWiseAdd()
    return op(*_broadcast_pair(op, a, b))


def add_scalar(a, scalar):
    return AddScalar(scalar)(a)


def multiply(a, b):
    op = EWiseMul()
    return op(*_broadcast_pair(op, a, b))


def mul_scalar(a, scalar):
    return MulScalar(scalar)(a)


def divide(a, b):
    op = EWiseDiv()
    return op(*_broadcast_pair(op, a, b))


def divide_scalar(a, scalar):
    return DivScalar(scalar)(a)


def power(a, b):
    op = EWisePow()
    return op(*_broadcast_pair(op, a, b))


def power_scalar(a, scalar):
    return PowerScalar(scalar)(a)


def negate(a):
    return Negate()(a)


def log(a):
    return Log()(a)


def exp(a):
    return Exp()(a)


def tanh(a):
    return Tanh()(a)


def sin(a):
    return Sin()(a)


def cos(a):
    return Cos()(a)


def minimum(a, b):
    """Elementwise minimum; the inputs broadcast."""
    op = Minimum()
    return op(*_broadcast_pair(op, a, b))


def sqrt(a):
    return Sqrt()(a)


def abs(a):  # noqa: A001  (numpy/torch name)
    return Abs()(a)


def compare(a, b, cmp: str):
    """Elementwise a <cmp> b (cmp in eq, ne, gt, ge, lt, le) as 1.0/0.0; b a tensor or scalar."""
    if isinstance(b, value_types.Tensor):
        op = Compare(cmp)
        return op(*_broadcast_pair(op, a, b))
    return Compare(cmp, b)(a)


def where(cond, a, b):
    """Elementwise select; the three inputs broadcast together."""
    op = Where()
    shape = broadcast_shapes(op, cond.shape, a.shape, b.shape)
    cond, a, b = (x if x.shape == shape else broadcast_to(x, shape) for x in (cond, a, b))
    return op(cond, a, b)


# ---- the scalar vocabulary on Tensors (`Elementwise.decompose`) -------------------------------
def _as_tensors(xs: tuple, like) -> tuple:
    """`xs` with Python numbers filled to Tensors of `like`'s shape, dtype and device."""
    return tuple(x if isinstance(x, value_types.Tensor) else constant(like.shape, x, like.dtype, like.device)
                 for x in xs)


def _filling(fn):
    """`fn` (a needle op's function form) with its number inputs filled to Tensors."""
    def f(*xs):
        return fn(*_as_tensors(xs, next(x for x in xs if isinstance(x, value_types.Tensor))))
    return f


_MIRRORED = {"eq": "eq", "ne": "ne", "lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}


def _compare_with(cmp: str):
    def f(a, b):
        if isinstance(a, value_types.Tensor):
            return compare(a, b, cmp)
        if isinstance(b, value_types.Tensor):
            return compare(b, a, _MIRRORED[cmp])
        return float(_COMPARE[cmp](a, b))
    return f


def _where_with(c, a, b):
    if not isinstance(c, value_types.Tensor):
        return a if c != 0.0 else b
    return where(c, *_as_tensors((a, b), c))


#: each vocabulary function as needle ops (`maximum` has no op of its own)
TENSOR_TABLE = {
    "const": float, "add": operator.add, "sub": operator.sub, "mul": operator.mul,
    "div": operator.truediv, "pow": operator.pow, "neg": operator.neg, "where": _where_with,
    **{cmp: _compare_with(cmp) for cmp in _MIRRORED},
    **{name: S.folding(name, _filling(fn)) for name, fn in (
        ("abs", abs), ("exp", exp), ("log", log), ("tanh", tanh), ("sqrt", sqrt), ("sin", sin),
        ("cos", cos), ("minimum", minimum))},
}


__all__ = [
    "Elementwise", "EWiseAdd", "AddScalar", "EWiseMul", "MulScalar", "EWiseDiv", "DivScalar", "EWisePow",
    "PowerScalar", "Negate", "Log", "Exp", "Tanh", "Compare", "Where", "Sin", "Cos", "Minimum", "Abs", "Sqrt",
    "add", "add_scalar", "multiply", "mul_scalar", "divide", "divide_scalar", "power",
    "power_scalar", "negate", "log", "exp", "tanh", "sin", "cos", "minimum", "sqrt", "abs", "compare", "where", "sum_to_shape",
]
