"""Tracing: ops called on traced tensors append IR nodes instead of computing.

While a `GraphBuilder` is active, `Value.make_from_op` hands every op with a traced input
to `trace_op`, which runs the op's `infer` (so shape errors name the op and the user's
line, as in eager mode), appends a node, and returns a traced Tensor: a Value with no data,
whose `op`/`inputs` still form the usual autograd graph (the autodiff pass relies on it).

Tensors that existed before the trace began (parameters, closed-over tensors) become
`input` nodes when first used; tensors created during the trace (constants) become `const`
nodes. Reading a traced value in Python raises `TraceError` naming the user's line.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import types
from typing import Any, Iterator, Optional

import numpy as np

from .. import value_types
from ..errors import NeedleError, user_frame
from ..ir.graph import Graph, Node, SourceLoc, TensorType, make_attrs
from ..ir.op_table import OPS

class _Local(threading.local):
    builder: Optional["GraphBuilder"] = None   # a class default: no AttributeError per lookup


_local = _Local()


class _TracerModule(types.ModuleType):
    """This module, with `ACTIVE` (the builder of the trace in progress in the calling thread,
    or None) per thread: a trace in one thread never captures another thread's eager ops."""

    @property
    def ACTIVE(self) -> Optional["GraphBuilder"]:
        return _local.builder


def active() -> Optional["GraphBuilder"]:
    """The builder of the calling thread's trace in progress, or None."""
    return _local.builder

#: largest constant folded into the IR as a literal; larger ones are captured inputs
MAX_LITERAL = 1024


class TraceError(NeedleError, RuntimeError):
    """A traced value was read in Python, or a trace could not capture something."""

    def __init__(self, message: str):
        loc = user_frame()
        where = f" (at {loc[0]}:{loc[1]})" if loc else ""
        super().__init__(message + where)


class TraceRef:
    """Marks a Value as traced: its builder, node id and static type."""

    __slots__ = ("builder", "node_id", "type")

    def __init__(self, builder: "GraphBuilder", node_id: int, type_):
        self.builder = builder
        self.node_id = node_id
        self.type = type_


def _loc() -> Optional[SourceLoc]:
    frame = user_frame()
    return SourceLoc(frame[0], frame[1]) if frame else None


def _device_name(device) -> str:
    return str(device)[:-2] if str(device).endswith("()") else str(device)


def _dtype_name(dtype) -> str:
    return str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype


class GraphBuilder:
    """Accumulates nodes during a trace and remembers how inputs bind to Python objects."""

    def __init__(self, name: str, birth: int):
        self.name = name
        self.birth = birth  # Values born before this are external (become inputs)
        self.nodes: list[Node] = []
        self.lifted: dict[int, tuple[Any, Any]] = {}  # id(external) -> (external, traced proxy)
        self.inputs: list[tuple[int, Any, str]] = []  # (node id, bound object, role)
        self.grad_targets: list[tuple[Any, Any]] = []  # (external tensor, traced gradient)
        self.slots: dict[int, tuple[Any, Any]] = {}   # id(tensor) -> (holder, key) it was read from
        self.data_updates: dict[int, tuple[Any, Any]] = {}  # id(external) -> (tensor, new value)
        self.hyper_updates: dict[tuple[int, str], tuple[Any, str, Any]] = {}
        self.hypers: dict[tuple[int, str], Any] = {}  # (id(obj), attr) -> traced scalar input
        self.rng_streams = 0  # random ops traced so far (each gets its own stream)
        self.loc_override: Optional[SourceLoc] = None  # set by passes that re-trace nodes
        # (node id, error message): scalar nodes counting bad values (e.g. ids out of range);
        # the compiled function raises ValueError(message) after a step where one is non-zero
        self.checks: list[tuple[int, str]] = []

    # ---- nodes ------------------------------------------------------------------------
    def add(self, op: str, inputs=(), attrs=None, type_=None, loc=None) -> int:
        node_id = len(self.nodes)
        if loc is None:
            loc = self.loc_override if self.loc_override is not None else _loc()
        self.nodes.append(Node(node_id, op, tuple(inputs), make_attrs(attrs or {}), type_, loc))
        return node_id

    def traced(self, cls, node_id: int, type_, op=None, inputs=(), requires_grad=False):
        """A traced Value of class `cls` standing for node `node_id`."""
        value = cls.__new__(cls)
        value._init(op, list(inputs), requires_grad=requires_grad)
        value._trace = TraceRef(self, node_id, type_)
        return value

    def add_input(self, name: str, role: str, type_: TensorType, bound: Any = None) -> int:
        node_id = len(self.nodes)
        self.nodes.append(Node(node_id, "input", (), make_attrs({"name": name, "role": role}), type_, None))
        self.inputs.append((node_id, bound, role))
        return node_id

    # ---- lifting real tensors into the graph ------------------------------------------------
    def lift(self, value):
        """The traced stand-in for a real (untraced) Value used by a traced op."""
        key = id(value)
        if key in self.lifted:
            return self.lifted[key][1]
        data = value.realize_cached_data()
        type_ = tensor_type_of(data)
        if getattr(value, "_birth", 0) < self.birth:
            slot = self.slots.get(key)
            # not an argument of the function: a Parameter, or other state read at each call
            role = "param" if type(value).__name__ == "Parameter" else "state"
            binding = ("slot",) + slot[:2] if slot is not None else ("tensor", value)
            name = slot[2] if slot is not None else f"t{len(self.inputs)}"
            node_id = self.add_input(self._unique(name), role, type_, binding)
        else:
            node_id = self._const(data, type_)
        proxy = self.traced(value_types.Tensor, node_id, type_, requires_grad=value.requires_grad)
        self.lifted[key] = (value, proxy)
        return proxy

    def _unique(self, name: str) -> str:
        taken = {n.attr("name") for n in self.nodes if n.op == "input"}
        if name not in taken:
            return name
        i = 1
        while f"{name}#{i}" in taken:
            i += 1
        return f"{name}#{i}"

    def assign_data(self, target, value) -> None:
        """`target.data = value` inside the trace: later reads of target see value; an
        external target's new data is a graph output written back after each call."""
        if not is_traced(value):
            value = self.lift(value)
        if target._trace is None or target._trace.builder is not self:
            if getattr(target, "_birth", 0) >= self.birth:
                target._trace = value._trace  # a tensor made during the trace: just rebind
                return
            self.lift(target)  # earlier graph reads keep the old value
        value = OPS["Detach"]()(value)  # .data carries no history
        target._trace = value._trace
        if getattr(target, "_birth", 0) < self.birth:
            self.data_updates[id(target)] = (target, value)

    def hyper_input(self, obj, attr: str):
        """A scalar graph input read from `obj.attr` (a Python number) at every call."""
        key = (id(obj), attr)
        if key not in self.hypers:
            type_ = TensorType((), "float32", "cpu")
            node_id = self.add_input(self._unique(f"{type(obj).__name__}.{attr}"), "hyper", type_,
                                     ("hyper", obj, attr))
            self.hypers[key] = self.traced(value_types.Tensor, node_id, type_)
        return self.hypers[key]

    def set_hyper(self, obj, attr: str, value) -> None:
        """Write traced scalar `value` back to `obj.attr` (as a Python number) after each call."""
        self.hyper_updates[(id(obj), attr)] = (obj, attr, value)
        self.hypers[(id(obj), attr)] = value

    def _const(self, data, type_) -> int:
        arr = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
        flat = arr.reshape(-1)
        if flat.tobytes() == flat[:1].tobytes() * flat.size:  # bitwise uniform (not 0.0, -0.0), or empty
            value = float(flat[0]) if flat.size else 0.0  # a scalar fills the shape
        elif arr.size <= MAX_LITERAL:
            value = _nested(arr.astype(np.float64).tolist())
        else:
            return self.add_input(f"c{len(self.inputs)}", "const", type_, arr.copy())
        return self.add("const", (), {"value": value}, type_)

    def graph(self, outputs) -> Graph:
        return Graph(self.name, tuple(self.nodes), tuple(outputs))


def _nested(x):
    return tuple(_nested(v) for v in x) if isinstance(x, list) else float(x)


def tensor_type_of(data) -> TensorType:
    """The IR type of a backend array."""
    device = getattr(data, "device", "cpu")
    return TensorType(tuple(int(d) for d in data.shape), _dtype_name(data.dtype),
                      "cpu" if isinstance(device, str) else _device_name(device))


def is_traced(value) -> bool:
    return getattr(value, "_trace", None) is not None


def trace_op(cls, op, inputs):
    """Append a node for `op` applied to `inputs` (some traced) and return its traced Value."""
    builder = active()
    inputs = [x if is_traced(x) else builder.lift(x) for x in inputs]
    result = op.infer(*inputs)
    type_ = _result_type(op, inputs, result)
    node_id = builder.add(op.name, [x._trace.node_id for x in inputs], op.ir_attrs(), type_)
    probe = cls.__new__(cls)
    probe._init(op, inputs)
    probe._trace = TraceRef(builder, node_id, type_)
    return probe


def _result_type(op, inputs, result) -> Any:
    shape, dtype = result
    device = _first_device(inputs)
    if op.kind == "tuple" and type(op).__name__ in ("MakeTensorTuple", "Split"):
        return tuple(TensorType(tuple(s), _dtype_name(d), device) for s, d in shape)
    return TensorType(tuple(int(d) for d in shape), _dtype_name(dtype), device)


def _first_device(inputs) -> str:
    for x in inputs:
        t = x._trace.type
        t = t[0] if isinstance(t, tuple) and t else t
        if isinstance(t, TensorType):
            return t.device
    return "cpu"


@contextlib.contextmanager
def tracing(builder: GraphBuilder) -> Iterator[GraphBuilder]:
    """Make `builder` the active trace for the duration of the block."""
    previous, _local.builder = active(), builder
    try:
        yield builder
    finally:
        _local.builder = previous


def hyper(obj, attr: str):
    """`obj.attr` as a traced scalar input inside a trace, else the Python value itself."""
    builder = active()
    return builder.hyper_input(obj, attr) if builder is not None else getattr(obj, attr)


def increment(obj, attr: str) -> None:
    """`obj.attr += 1`, eagerly or, inside a trace, as graph state written back after each call."""
    builder = active()
    if builder is None:
        setattr(obj, attr, getattr(obj, attr) + 1)
    else:
        builder.set_hyper(obj, attr, builder.hyper_input(obj, attr) + 1.0)


def read_error(what: str) -> TraceError:
    return TraceError(
        f"cannot read the value of a traced tensor ({what}) inside a compiled function: its "
        "data does not exist until the graph runs. Return it from the function and read it "
        "outside, or use needle ops (e.g. ndl.where instead of `if`) so the graph captures it")


sys.modules[__name__].__class__ = _TracerModule
