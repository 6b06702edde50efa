"""The scalar vocabulary: one float32 element of an elementwise op, written once for every target.

An elementwise op's `scalar(*xs)` returns its output element as an `Expr` over its inputs'
elements `xs`. The vocabulary:

* `+ - * /` (a Python number on either side is a constant), unary `-`;
* `x ** p` with a constant exponent `p` (`pow(a, b)` for a computed one);
* comparisons `== != < <= > >=`, giving 1.0 or 0.0 (`!=` is true for NaN, the others false);
* `abs exp log tanh sqrt sin cos`, `maximum minimum` (NaN-propagating, like numpy's) and
  `where(c, a, b)` (a where c is nonzero, else b).

Every target reads an expression through its own table of these functions
(`evaluate(expr, args, table)`): eager compute on backend arrays (`array_table()`), codegen's loop IR
(`needle.codegen.loop_ir.SCALAR`), and from that the LLVM, C and CUDA C renderers.
"""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..backend_selection import array_api

#: every function of the vocabulary and its number of arguments
FUNCTIONS: dict[str, int] = {
    "add": 2, "sub": 2, "mul": 2, "div": 2, "pow": 2, "neg": 1,
    "eq": 2, "ne": 2, "lt": 2, "le": 2, "gt": 2, "ge": 2,
    "abs": 1, "exp": 1, "log": 1, "tanh": 1, "sqrt": 1, "sin": 1, "cos": 1,
    "maximum": 2, "minimum": 2, "where": 3,
}


class Expr:
    """A scalar expression; Python operators build larger ones."""

    __slots__ = ()
    __hash__ = object.__hash__

    def __add__(self, o): return call("add", self, o)
    def __radd__(self, o): return call("add", o, self)
    def __sub__(self, o): return call("sub", self, o)
    def __rsub__(self, o): return call("sub", o, self)
    def __mul__(self, o): return call("mul", self, o)
    def __rmul__(self, o): return call("mul", o, self)
    def __truediv__(self, o): return call("div", self, o)
    def __rtruediv__(self, o): return call("div", o, self)
    def __neg__(self): return call("neg", self)
    def __eq__(self, o): return call("eq", self, o)  # type: ignore[override]
    def __ne__(self, o): return call("ne", self, o)  # type: ignore[override]
    def __lt__(self, o): return call("lt", self, o)
    def __le__(self, o): return call("le", self, o)
    def __gt__(self, o): return call("gt", self, o)
    def __ge__(self, o): return call("ge", self, o)

    def __pow__(self, p):
        if isinstance(p, Expr):
            raise TypeError("scalar expression ** takes a constant exponent; use scalar.pow(a, b)")
        return call("pow", self, p)

    def __bool__(self):
        raise TypeError("a scalar expression has no truth value (it is computed per element): "
                        "use scalar.where(cond, a, b)")


@dataclass(frozen=True, eq=False)
class Arg(Expr):
    """The op's `index`-th input element."""
    index: int


@dataclass(frozen=True, eq=False)
class Const(Expr):
    value: float


@dataclass(frozen=True, eq=False)
class Call(Expr):
    fn: str
    args: tuple


def const(x) -> Expr:
    """`x` as an expression (a number becomes a constant)."""
    if isinstance(x, Expr):
        return x
    if isinstance(x, (bool, int, float, np.number)):
        return Const(float(x))
    raise TypeError(f"scalar expressions combine with numbers, not {type(x).__name__}")


def call(fn: str, *args) -> Call:
    """`fn` of the vocabulary applied to `args` (numbers become constants)."""
    if FUNCTIONS.get(fn) != len(args):
        raise TypeError(f"scalar function {fn!r} " + (f"takes {FUNCTIONS[fn]} arguments, got {len(args)}"
                                                      if fn in FUNCTIONS else "is not in the vocabulary"))
    return Call(fn, tuple(const(a) for a in args))


def _function(fn: str) -> Callable[..., Call]:
    f = lambda *args: call(fn, *args)  # noqa: E731
    f.__name__ = f.__qualname__ = fn
    f.__doc__ = f"scalar {fn} ({FUNCTIONS[fn]} argument{'s' if FUNCTIONS[fn] > 1 else ''})"
    return f


abs = _function("abs")  # noqa: A001  (numpy's name)
exp = _function("exp")
log = _function("log")
tanh = _function("tanh")
sqrt = _function("sqrt")
sin = _function("sin")
cos = _function("cos")
maximum = _function("maximum")
minimum = _function("minimum")
where = _function("where")
pow = _function("pow")  # noqa: A001


def formula(fn: Callable[..., Any], nargs: int) -> Expr:
    """`fn(x0, ..., x<nargs-1>)` over argument placeholders (a number result is a constant)."""
    return const(fn(*(Arg(k) for k in range(nargs))))


def evaluate(expr: Expr, args: Sequence[Any], table: Mapping[str, Callable]) -> Any:
    """`expr` with its arguments bound to `args`, each function applied through `table` (which
    also maps "const" for constants). A sub-expression used twice is evaluated once, so
    shared values stay shared in the result."""
    memo: dict = {}
    stack = [(expr, False)]
    while stack:
        e, ready = stack.pop()
        if id(e) in memo:
            continue
        if isinstance(e, Arg):
            memo[id(e)] = args[e.index]
        elif isinstance(e, Const):
            memo[id(e)] = table["const"](e.value)
        elif ready:
            memo[id(e)] = table[e.fn](*(memo[id(a)] for a in e.args))
        else:
            stack.append((e, True))
            stack += ((a, False) for a in e.args)
    return memo[id(expr)]


def folding(name: str, fn: Callable) -> Callable:
    """`fn` for vocabulary function `name` in a target's table, except on numbers alone (a
    constant part of a formula, like `exp(1.0)`): numpy's float32 function, a number."""
    def f(*xs):
        if all(isinstance(x, float) for x in xs):
            return float(getattr(np, name)(*map(np.float32, xs)))
        return fn(*xs)
    f.__name__ = name
    return f


# ---- eager: the table over backend arrays (numpy, or NDArray through the array API) ----------
def _array_fn(name: str) -> Callable:
    """The array API's function `name` (numpy's, or NDArray's through backend_ndarray's)."""
    return getattr(array_api, name)


def _as_float(compare: Callable) -> Callable:
    """A comparison giving 1.0/0.0 in its operands' float dtype (numpy gives booleans)."""
    def f(a, b):
        out = compare(a, b)
        if isinstance(out, (bool, np.bool_)):
            return float(out)
        if getattr(out, "dtype", None) != np.bool_:
            return out
        return out.astype(getattr(a, "dtype", None) or getattr(b, "dtype", "float32"))
    return f


def _where(c, a, b):
    if not hasattr(c, "shape") or c.shape == ():
        return a if float(c) != 0.0 else b
    return array_api.where(c, a, b)


_ARITH = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
          "pow": operator.pow, "neg": operator.neg}
_CMP = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
        "gt": operator.gt, "ge": operator.ge}


@functools.cache
def array_table() -> dict[str, Callable]:
    """The eager table: each vocabulary function on backend arrays (or numbers)."""
    table: dict[str, Callable] = {"const": float, **_ARITH, "where": _where}
    table.update({k: _as_float(f) for k, f in _CMP.items()})
    for fn in ("abs", "exp", "log", "tanh", "sqrt", "sin", "cos", "maximum", "minimum"):
        table[fn] = folding(fn, _array_fn(fn))
    return table


def compute(expr: Expr, arrays: Sequence[Any]) -> Any:
    """Eager value of `expr` over backend arrays of one shape (a constant result is filled)."""
    out = evaluate(expr, arrays, array_table())
    if isinstance(out, float):
        a = arrays[0]
        return array_api.full(a.shape, out, dtype="float32", device=getattr(a, "device", None))
    return out

__all__ = ["Expr", "Arg", "Const", "Call", "FUNCTIONS", "call", "const", "formula", "evaluate", "folding", "compute",
           "abs", "exp", "log", "tanh", "sqrt", "sin", "cos", "maximum", "minimum", "where", "pow"]
