"""User-defined elementwise ops: one scalar formula, every target.

```python
from needle.ops import elementwise_op, scalar as S

@elementwise_op("softsign")
def softsign(x):
    return x / (1.0 + S.abs(x))

@softsign.defvjp
def _(out_grad, x):
    return out_grad / (1.0 + ndl.abs(x)) ** 2
```

The formula, written in the scalar vocabulary (`needle.ops.scalar`), becomes an op class
(`Elementwise`, named `softsign` in the registry and the IR) whose eager kernel evaluates it
on the backend arrays and whose lowering reads it into loop IR, so it runs eagerly, in the
reference interpreter and compiled (LLVM, C, CUDA C), fusing with its neighbours. The
function form broadcasts its inputs like the built-in elementwise ops.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Optional

from .elementwise import Elementwise
from .registry import OPS, broadcast_shapes
from .shape import broadcast_to


class CustomElementwise(Elementwise, abstract=True):
    """Base of the op classes `elementwise_op` makes."""

    formula: Callable
    nargs: int
    vjp: Optional[Callable] = None

    def element(self, *xs):
        return self.formula(*xs)

    def infer(self, *args):
        if any(a.shape != args[0].shape for a in args):
            raise self.error(f"shapes {', '.join(str(a.shape) for a in args)} differ "
                             "(the function form broadcasts them)")
        return args[0].shape, args[0].dtype

    def gradient(self, out_grad, node):
        if self.vjp is None:
            raise self.error(f"no gradient is defined: add one with @{self.name}.defvjp")
        return self.vjp(out_grad, *node.inputs)


class ElementwiseFunction:
    """The function form of a custom elementwise op: call it on tensors (they broadcast);
    `op` is its op class; `defvjp` sets its vector-Jacobian product."""

    def __init__(self, op: type, fn: Callable):
        self.op = op
        self.nargs = op.nargs
        functools.update_wrapper(self, fn)

    def __call__(self, *tensors):
        op = self.op()
        if len(tensors) != self.nargs:
            raise op.error(f"takes {self.nargs} tensor{'s' if self.nargs != 1 else ''}, got {len(tensors)}")
        shape = broadcast_shapes(op, *(t.shape for t in tensors))
        return op(*(t if t.shape == shape else broadcast_to(t, shape) for t in tensors))

    def defvjp(self, vjp: Callable) -> Callable:
        """Decorator: `vjp(out_grad, *inputs)` gives the inputs' gradients (a tuple for
        several inputs), written with needle ops on Tensors."""
        self.op.vjp = staticmethod(vjp)
        return vjp


def elementwise_op(name: str) -> Callable[[Callable], ElementwiseFunction]:
    """Decorator: the elementwise op `name` whose output element is `fn(*xs)`, a formula in
    the scalar vocabulary over its inputs' elements (see the module docstring)."""
    if not name.isidentifier():
        raise ValueError(f"elementwise_op: {name!r} is not an identifier (it names the op in the IR)")
    existing = OPS.get(name)
    if existing is not None and not issubclass(existing, CustomElementwise):
        raise ValueError(f"elementwise_op: {name!r} is a built-in op")

    def define(fn: Callable) -> ElementwiseFunction:
        params = inspect.signature(fn).parameters.values()
        if any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.default is not p.empty
               for p in params):
            raise TypeError(f"elementwise_op {name!r}: the formula takes plain positional inputs")
        op = type(name, (CustomElementwise,), {
            "formula": staticmethod(fn), "nargs": len(params), "__doc__": fn.__doc__,
            "__module__": fn.__module__, "__qualname__": name})
        return ElementwiseFunction(op, fn)

    return define


__all__ = ["elementwise_op", "ElementwiseFunction", "CustomElementwise"]
