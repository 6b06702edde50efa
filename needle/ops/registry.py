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
* lowering facts, which codegen, the profiler and the passes derive everything from:
  `element(*xs)`        elementwise: the output element as a `scalar.Expr` over the inputs'
                        elements (`scalar` is taken: it is ScalarOp's attribute);
  `identity`, `combine` reduce: the starting value and the scalar-vocabulary function
                        ("add", "maximum", ...) that folds an element in;
  `index_map(idx, in_shape, out_shape)`  view: the input index an output index reads
                        (written with + - * // % on index values: ints or codegen's);
  `moves_data`          the value at an index is an input's value at some index (views and
                        the index maps that pick between pieces or zeros);
  `aliases_input`       the output may share its input's memory (Reshape, Detach);
  `cost(out_shape, in_shapes)`  (flops, bytes) for the profiler.

Composite ops (`composite = True`: relu, sigmoid, logsumexp, logsoftmax, ...) are
functions of primitives that the compiler expands before autodiff.
"""
from __future__ import annotations

from math import prod
from typing import Any, Callable, ClassVar, NamedTuple, Optional

from .. import backend_selection, value_types
from ..backend_selection import array_api
from ..errors import OpError
from ..ir.op_table import OPS, op_from_node  # noqa: F401  (filled here, read by the IR)


Shape = tuple[int, ...]


class Op:
    """Operator definition; instances carry the op's static attributes (axes, scalars)."""

    kind: ClassVar[str] = "opaque"
    differentiable: ClassVar[bool] = True
    composite: ClassVar[bool] = False
    #: elementwise: (self, *xs: scalar.Expr) -> scalar.Expr
    element: ClassVar[Optional[Callable]] = None
    #: view: (self, idx, in_shape, out_shape) -> the input's index
    index_map: ClassVar[Optional[Callable]] = None
    #: reduce: starting value and combine function (a scalar-vocabulary name)
    identity: ClassVar[Optional[float]] = None
    combine: ClassVar[Optional[str]] = None
    moves_data: ClassVar[bool] = False
    #: the output may share its input's memory (a reshape, an identity)
    aliases_input: ClassVar[bool] = False
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

    def cost(self, out_shape: Shape, in_shapes: list) -> "Cost":
        """Estimated (flops, bytes) of one application: one flop per output element for
        arithmetic elementwise ops (and Gather), per element read for reductions, none for
        pure index maps and the rest; bytes are every input and output once, float32."""
        out = prod(out_shape)
        ins = [prod(s) for s in in_shapes]
        if self.kind == "reduce":
            flops = max([out] + ins)
        elif self.kind == "elementwise" or (self.kind in ("broadcast", "injective") and not self.moves_data):
            flops = out
        else:
            flops = 0
        return Cost(flops, 4 * (out + sum(ins)))

    def error(self, message: str, location: Optional[str] = None) -> OpError:
        """An OpError naming this op and the user's source line."""
        return OpError(self.name, message, location)


class Cost(NamedTuple):
    flops: int
    bytes: int


class TensorOp(Op, abstract=True):
    """An op whose output is a Tensor."""

    def __call__(self, *args):
        return value_types.Tensor.make_from_op(self, args)


class TensorTupleOp(Op, abstract=True):
    """An op whose output is a TensorTuple."""

    kind = "tuple"

    def __call__(self, *args):
        return value_types.TensorTuple.make_from_op(self, args)


def constant(shape: Shape, value: float, dtype, device, requires_grad: bool = False):
    """A constant Tensor filled with `value` (a graph const inside a trace)."""
    array = array_api.full(tuple(shape), value, dtype=dtype, device=device)
    return value_types.Tensor.make_const(array, requires_grad=requires_grad)


def zeros_like(t):
    """A constant Tensor of zeros with `t`'s shape, dtype and device (VJPs of inputs that
    get no gradient)."""
    return constant(t.shape, 0.0, t.dtype, t.device)


def _is_device(value) -> bool:
    return hasattr(value, "enabled") and callable(getattr(value, "enabled"))


def op_names(has) -> frozenset:
    """Names of the registered ops whose class satisfies `has(cls)`: every list of ops outside
    `needle/ops` is derived from the ops' facts this way (e.g. `op_names(is_view)`)."""
    return frozenset(name for name, cls in OPS.items() if has(cls))


def is_view(cls) -> bool:
    """A pure index map: no arithmetic, one input index per output index (Reshape, Permute,
    BroadcastTo, GetItem, Flip, UnDilate...)."""
    return cls.index_map is not None and cls.kind in ("broadcast", "injective")


def is_reduction(cls) -> bool:
    """A reduction codegen lowers to an accumulator (it declares identity and combine)."""
    return cls.kind == "reduce" and cls.combine is not None


def moves_data(cls) -> bool:
    """Views and the index maps that pick between pieces or zeros (Dilate, UnSlice, Concat,
    Stack): their groups do no arithmetic."""
    return cls.moves_data


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
