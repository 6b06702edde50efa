"""One exporter per needle primitive op: `EXPORTERS[op](emitter, node)` adds the ONNX nodes
that compute `node` from its inputs' ONNX tensors and returns the output's name (names, for
a tuple value). Composite ops never reach them: the export runs `decompose` first.

Layouts: needle's `Conv` is NHWC with weights (KH, KW, C_in, C_out), ONNX's is NCHW with
(C_out, C_in, KH, KW): the exporter transposes around it. Comparisons give 1.0/0.0 in the
input's dtype and indices are floats in needle, so ONNX's bool and int64 results are cast.
"""
from __future__ import annotations

from typing import Callable

from onnx import TensorProto

from ..ir.graph import Node
from .export_emit import ONNX_DTYPES, Emitter, ValueName

Exporter = Callable[[Emitter, Node], ValueName]

#: needle op name -> its exporter
EXPORTERS: dict[str, Exporter] = {}

INT64_MAX = 2 ** 63 - 1


def exporter(*ops: str) -> Callable[[Exporter], Exporter]:
    def register(fn: Exporter) -> Exporter:
        for op in ops:
            EXPORTERS[op] = fn
        return fn
    return register


def _register_simple(table: dict) -> None:
    """Ops that are one ONNX op of the same inputs."""
    for op, onnx_op in table.items():
        EXPORTERS[op] = lambda e, n, onnx_op=onnx_op: e.add(onnx_op, e.inputs(n))


_register_simple({"EWiseAdd": "Add", "EWiseMul": "Mul", "EWiseDiv": "Div", "EWisePow": "Pow",
                  "Minimum": "Min", "MatMul": "MatMul", "Negate": "Neg", "Exp": "Exp", "Log": "Log",
                  "Tanh": "Tanh", "Sqrt": "Sqrt", "Sin": "Sin", "Cos": "Cos", "Abs": "Abs", "Erf": "Erf",
                  "ToDevice": "Identity"})

_SCALAR_OPS = {"AddScalar": "Add", "MulScalar": "Mul", "DivScalar": "Div", "PowerScalar": "Pow"}


@exporter(*_SCALAR_OPS)
def _scalar_op(e: Emitter, n: Node) -> str:
    scalar = e.const(e.static(n, "scalar"), n.type.dtype)
    return e.add(_SCALAR_OPS[n.op], [e.values[n.inputs[0]], scalar])


_COMPARE = {"eq": "Equal", "gt": "Greater", "ge": "GreaterOrEqual", "lt": "Less", "le": "LessOrEqual"}


@exporter("Compare")
def _compare(e: Emitter, n: Node) -> str:
    a = e.values[n.inputs[0]]
    b = e.values[n.inputs[1]] if len(n.inputs) > 1 else e.const(e.static(n, "scalar"), n.type.dtype)
    cmp = n.attr("cmp")
    out = e.add("Not", [e.add("Equal", [a, b])]) if cmp == "ne" else e.add(_COMPARE[cmp], [a, b])
    return e.add("Cast", [out], to=ONNX_DTYPES[n.type.dtype])


@exporter("Where")
def _where(e: Emitter, n: Node) -> str:
    cond, a, b = e.inputs(n)
    return e.add("Where", [e.add("Cast", [cond], to=TensorProto.BOOL), a, b])


_REDUCE = {"Summation": "ReduceSum", "Max": "ReduceMax", "Min": "ReduceMin"}


@exporter(*_REDUCE)
def _reduce(e: Emitter, n: Node) -> str:
    x = e.values[n.inputs[0]]
    ndim = len(e.graph.node(n.inputs[0]).type.shape)
    axes = e.static(n, "axes")
    axes = list(range(ndim)) if axes is None else [a % ndim for a in ((axes,) if isinstance(axes, int) else axes)]
    if not axes:
        return e.add("Identity", [x])
    op = _REDUCE[n.op]
    if op == "ReduceSum" or e.opset >= 18:  # axes became an input (ReduceSum at 13, the others at 18)
        return e.add(op, [x, e.ints(axes)], keepdims=0)
    return e.add(op, [x], axes=axes, keepdims=0)


@exporter("Argmax")
def _argmax(e: Emitter, n: Node) -> str:
    x = e.values[n.inputs[0]]
    axis = e.static(n, "axis")
    if axis is None:
        x, axis = e.add("Reshape", [x, e.ints([-1])]), 0
    return e.add("Cast", [e.add("ArgMax", [x], axis=axis, keepdims=0)], to=ONNX_DTYPES[n.type.dtype])


@exporter("Reshape")
def _reshape(e: Emitter, n: Node) -> str:
    target = e.shape(n, "shape")
    if 0 in n.attr("shape"):  # a size-0 axis, not ONNX's "copy this axis of the input"
        return e.add("Reshape", [e.values[n.inputs[0]], target], allowzero=1)
    return e.add("Reshape", [e.values[n.inputs[0]], target])


@exporter("BroadcastTo")
def _broadcast_to(e: Emitter, n: Node) -> str:
    return e.add("Expand", [e.values[n.inputs[0]], e.shape(n, "shape")])


@exporter("Permute", "Transpose")
def _permute(e: Emitter, n: Node) -> str:
    ndim = len(n.type.shape)
    axes = e.static(n, "axes")
    if n.op == "Transpose":  # swaps two axes, the last two by default
        i, j = (ndim - 2, ndim - 1) if axes is None else (axes[0] % ndim, axes[1] % ndim)
        perm = list(range(ndim))
        perm[i], perm[j] = perm[j], perm[i]
    else:
        perm = [a % ndim for a in axes]
    return e.add("Transpose", [e.values[n.inputs[0]]], perm=perm)


@exporter("GetItem")
def _get_item(e: Emitter, n: Node) -> str:
    slices = e.static(n, "slices")
    starts, stops, steps = zip(*slices)
    return e.add("Slice", [e.values[n.inputs[0]], e.ints(starts), e.ints(stops),
                           e.ints(range(len(slices))), e.ints(steps)])


@exporter("Flip")
def _flip(e: Emitter, n: Node) -> str:
    ndim = len(n.type.shape)
    axes = [a % ndim for a in e.static(n, "axes")]
    return e.add("Slice", [e.values[n.inputs[0]], e.ints([-1] * len(axes)),
                           e.ints([-INT64_MAX] * len(axes)), e.ints(axes), e.ints([-1] * len(axes))])


@exporter("MakeTensorTuple")
def _make_tuple(e: Emitter, n: Node) -> tuple:
    return tuple(e.inputs(n))


@exporter("TupleGetItem")
def _tuple_get_item(e: Emitter, n: Node) -> str:
    return e.values[n.inputs[0]][e.static(n, "index")]


@exporter("Concat")
def _concat(e: Emitter, n: Node) -> str:
    axis = e.static(n, "axis") % len(n.type.shape)
    return e.add("Concat", list(e.values[n.inputs[0]]), axis=axis)


@exporter("Stack")
def _stack(e: Emitter, n: Node) -> str:
    axis = e.static(n, "axis") % len(n.type.shape)
    parts = [e.add("Unsqueeze", [x, e.ints([axis])]) for x in e.values[n.inputs[0]]]
    return e.add("Concat", parts, axis=axis)


@exporter("Split")
def _split(e: Emitter, n: Node) -> tuple:
    count = len(n.type)
    if count == 0:
        return ()
    axis = e.static(n, "axis") % (len(n.type[0].shape) + 1)
    parts = e.add("Split", [e.values[n.inputs[0]], e.ints([1] * count)], n_out=count, axis=axis)
    parts = [parts] if count == 1 else parts
    return tuple(e.add("Squeeze", [p, e.ints([axis])]) for p in parts)


@exporter("Gather")
def _gather(e: Emitter, n: Node) -> str:
    table, ids = e.inputs(n)
    return e.add("Gather", [table, e.add("Cast", [ids], to=TensorProto.INT64)], axis=0)


@exporter("Conv")
def _conv(e: Emitter, n: Node) -> str:
    x, w = e.inputs(n)
    kh, kw = e.graph.node(n.inputs[1]).type.shape[:2]
    p, s = e.static(n, "padding"), e.static(n, "stride")
    y = e.add("Conv", [e.add("Transpose", [x], perm=[0, 3, 1, 2]), e.add("Transpose", [w], perm=[3, 2, 0, 1])],
              kernel_shape=[kh, kw], pads=[p, p, p, p], strides=[s, s])
    return e.add("Transpose", [y], perm=[0, 2, 3, 1])
