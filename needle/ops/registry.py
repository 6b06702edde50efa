"""The op registry: every op is declared once, as a subclass of `Op`.

An op class is the single definition that eager execution, autograd and (later) the
compiler all read:

* `infer(*inputs)`      output shape and dtype from the inputs' (validates; errors name the op);
* `compute(*arrays)`    the eager kernel, written against the array API that numpy and
                        `backend_ndarray` share;
* `gradient(g, node)`   the vector-Jacobian product, written with needle ops, so it computes
                        in eager `backward()` and emits nodes when differentiating a graph;
* `kind`                fusion kind: elementwise, broadcast, injective, reduce, extern,
                        tuple, or opaque;
* `lowering`            the op's scalar expression or extern call, filled in by codegen.

Composite ops (`composite = True`: relu, sigmoid, logsumexp, logsoftmax, ...) are
functions of primitives that the compiler expands before autodiff.
"""
from __future__ import annotations

from typing import Any, ClassVar, Optional

from ..errors import OpError

#: every op class by name
OPS: dict[str, type["Op"]] = {}

Shape = tuple[int, ...]

# Bound by needle.autograd once Tensor/TensorTuple exist (breaks the import cycle).
Tensor: Any = None
TensorTuple: Any = None


class Op:
    """Operator definition; instances carry the op's static attributes (axes, scalars)."""

    kind: ClassVar[str] = "opaque"
    differentiable: ClassVar[bool] = True
    composite: ClassVar[bool] = False
    lowering: ClassVar[Any] = None
    #: True when the op defines its own `infer` (eager mode then validates inputs with it)
    validates: ClassVar[bool] = False

    def __init_subclass__(cls, abstract: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.validates = cls.infer is not Op.infer
        if not abstract:
            OPS[cls.__name__] = cls

    @property
    def name(self) -> str:
        return type(self).__name__

    def __call__(self, *args):
        raise NotImplementedError()

    def attrs(self) -> dict[str, Any]:
        """The op's static attributes (part of its identity in the IR)."""
        return dict(vars(self))

    def ir_attrs(self) -> dict[str, Any]:
        """Attributes as IR literals (devices become their names)."""
        return {k: (str(v)[:-2] if _is_device(v) else v) for k, v in self.attrs().items()}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "Op":
        """Rebuild an op instance from its IR attributes (inverse of `ir_attrs`)."""
        op = cls.__new__(cls)
        for key, value in attrs.items():
            if key == "device" and isinstance(value, str):
                from .. import backend_selection

                value = getattr(backend_selection, value)()
            setattr(op, key, value)
        return op

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.attrs().items())
        return f"{self.name}({args})"

    def infer(self, *args) -> tuple[Shape, Any]:
        """Output (shape, dtype) from the input values; raise OpError on bad input."""
        return args[0].shape, args[0].dtype

    def compute(self, *args):
        """Eager kernel on the backend's arrays."""
        raise NotImplementedError()

    def gradient(self, out_grad, node):
        """Partial adjoints of the inputs, as needle Values (a Value or a tuple)."""
        raise NotImplementedError()

    def gradient_as_tuple(self, out_grad, node) -> tuple:
        output = self.gradient(out_grad, node)
        if isinstance(output, tuple):
            return output
        if isinstance(output, list):
            return tuple(output)
        return (output,)

    def error(self, message: str, location: Optional[str] = None) -> OpError:
        """An OpError naming this op and the user's source line."""
        return OpError(self.name, message, location)


class TensorOp(Op, abstract=True):
    """An op whose output is a Tensor."""

    def __call__(self, *args):
        return Tensor.make_from_op(self, args)


class TensorTupleOp(Op, abstract=True):
    """An op whose output is a TensorTuple."""

    kind = "tuple"

    def __call__(self, *args):
        return TensorTuple.make_from_op(self, args)


def _is_device(value) -> bool:
    return hasattr(value, "enabled") and callable(getattr(value, "enabled"))


def op_from_node(name: str, attrs: dict[str, Any]) -> Op:
    """The registry op named `name` with the given IR attributes."""
    if name not in OPS:
        raise KeyError(f"unknown op {name!r}; registered ops: {', '.join(sorted(OPS))}")
    return OPS[name].from_attrs(attrs)


def normalize_axes(op: Op, axes, ndim: int) -> Optional[tuple[int, ...]]:
    """Axes as a sorted tuple of non-negative ints (None stays None); bad axes raise OpError."""
    if axes is None:
        return None
    if isinstance(axes, int):
        axes = (axes,)
    out = []
    for ax in axes:
        if not isinstance(ax, (int,)) or not -ndim <= ax < max(ndim, 1):
            raise op.error(f"axis {ax} is out of range for an input with {ndim} dimensions")
        out.append(ax % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise op.error(f"repeated axis in {tuple(axes)}")
    return tuple(sorted(out))


def node_axes(node, ndim: int) -> Optional[tuple[int, ...]]:
    """The `axes` attribute of an IR node, normalised as its op normalises it (None stays None)."""
    return normalize_axes(op_from_node(node.op, node.attr_dict), node.attr("axes"), ndim)


def reduced_axes(node, ndim: int) -> tuple[int, ...]:
    """The axes a reduction node reduces (all of them when its `axes` is None)."""
    axes = node_axes(node, ndim)
    return tuple(range(ndim)) if axes is None else axes


def broadcast_shapes(op: Op, *shapes: Shape) -> Shape:
    """numpy broadcasting of shapes; incompatible shapes raise OpError naming all of them."""
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(ndim):
        dims = {s[i - ndim + len(s)] for s in shapes if i - ndim + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise op.error("cannot broadcast shapes " + " and ".join(map(str, shapes)))
        out.append(dims.pop() if dims else 1)
    return tuple(out)
