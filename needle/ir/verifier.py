"""The IR verifier: structural SSA checks, op checks, type consistency and stage invariants.

`verify(graph, invariants=())` returns None or raises `IRVerifyError` naming the node
(`%id = Op`), its user source location and the problem.

Checks, for every graph:
* SSA: each id is defined once, before any use; every output is defined;
* every op is a registry op (`needle.ops.OPS`) or a graph op (`input`, `const`, `grad`);
* `input` nodes have no inputs, a str `name` (unique in the graph) and a `role` in ROLES;
* `const` nodes have no inputs and a `value` whose nested shape is the type's shape
  (a scalar value fills any shape);
* `grad` nodes have a loss and at least one wrt input (then the seed, when `seeded`), and
  their type is the tuple of the wrt inputs' types;
* registry ops: the op is rebuilt from its attributes and its shape inference is re-run on
  stand-ins of the input types; inferred shape and dtype (and, for tuple-valued ops, the
  tuple's length) must match the node's type; the output device is the inputs' device
  (ToDevice: its `device` attribute).

Invariants a pipeline promises after some pass (`INVARIANTS`; which pass ensures which is
declared in `needle.passes.pipeline`), checked when named in `invariants`
(`check_invariants(graph, invariants)` checks only those):
* ``decomposed``: a composite op remains only if it keeps its own (custom) VJP;
* ``no_grad``: no `grad` node remains;
* ``primitive``: no composite op remains.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from ..errors import OpError
from .graph import GRAPH_OPS, ROLES, Graph, Node, TensorType
from .op_table import OPS, op_from_node
from .printer import format_type

__all__ = ["IRVerifyError", "verify", "check_invariants", "INVARIANTS"]

#: invariant -> what it says about the graph
INVARIANTS = {
    "decomposed": "a composite op remains only if it keeps its own (custom) VJP",
    "no_grad": "no grad node remains",
    "primitive": "no composite op remains",
}


class IRVerifyError(ValueError):
    """The graph breaks an IR invariant; `.node_id`, `.op`, `.loc` say where (None if global)."""

    def __init__(self, message: str, node: Optional[Node] = None, graph: Optional[Graph] = None):
        self.node_id = node.id if node is not None else None
        self.op = node.op if node is not None else None
        self.loc = node.loc if node is not None else None
        self.problem = message
        where = f"graph @{graph.name}: " if graph is not None else ""
        if node is not None:
            where += f"%{node.id} = {node.op}"
            where += f" (at {node.loc})" if node.loc is not None else ""
            where += ": "
        super().__init__(where + message)


def verify(graph: Graph, invariants: Iterable[str] = ()) -> None:
    """Check the graph's structure and types, and the named `invariants`; raise IRVerifyError."""
    invariants = _known(invariants)
    types: dict[int, Any] = {}
    input_names: dict[str, int] = {}
    for node in graph.nodes:
        def fail(message, node=node):
            return IRVerifyError(message, node, graph)

        if not isinstance(node.id, int) or node.id < 0:
            raise fail(f"node id {node.id!r} is not a non-negative int")
        if node.id in types:
            raise fail(f"%{node.id} is defined twice")
        for i in node.inputs:
            if i not in types:
                if i in graph:
                    raise fail(f"input %{i} is used before its definition")
                raise fail(f"input %{i} is never defined")
        _check_type_shape(node.type, fail)
        if node.op in GRAPH_OPS:
            _check_graph_op(node, types, input_names, fail)
        elif node.op in OPS:
            _check_registry_op(node, [types[i] for i in node.inputs], fail)
        else:
            raise fail(f"unknown op {node.op!r} (not in the op registry, nor one of {', '.join(GRAPH_OPS)})")
        types[node.id] = node.type

    for out in graph.outputs:
        if out not in types:
            raise IRVerifyError(f"output %{out} is never defined", None, graph)

    check_invariants(graph, invariants)


def check_invariants(graph: Graph, invariants: Iterable[str]) -> None:
    """Check only the named `INVARIANTS` (one walk over the nodes); raise IRVerifyError."""
    invariants = _known(invariants)
    if not invariants:
        return
    for node in graph.nodes:
        if node.op == "grad" and "no_grad" in invariants:
            raise IRVerifyError("a grad node remains (the autodiff pass must replace every grad node)",
                                node, graph)
        cls = OPS.get(node.op)
        if cls is None or not getattr(cls, "composite", False):
            continue
        if "primitive" in invariants:
            raise IRVerifyError(f"composite op {node.op} remains (decompose must expand it)", node, graph)
        if "decomposed" in invariants and not getattr(cls, "custom_vjp", False):
            raise IRVerifyError(f"composite op {node.op} remains and has no custom VJP (decompose must "
                                "expand it before autodiff)", node, graph)


def _known(invariants: Iterable[str]) -> frozenset:
    invariants = frozenset((invariants,) if isinstance(invariants, str) else invariants)
    unknown = invariants - INVARIANTS.keys()
    if unknown:
        raise ValueError(f"verify: unknown invariant(s) {', '.join(sorted(unknown))}; "
                         f"invariants are {', '.join(INVARIANTS)}")
    return invariants


def _check_type_shape(t, fail):
    if isinstance(t, tuple):
        for x in t:
            _check_type_shape(x, fail)
        return
    if not isinstance(t, TensorType):
        raise fail(f"type {t!r} is not a TensorType or a tuple of them")
    if not isinstance(t.shape, tuple) or any(not isinstance(d, int) or d < 0 for d in t.shape):
        raise fail(f"shape {t.shape!r} is not a tuple of non-negative ints")


# ---- graph ops ---------------------------------------------------------------------------
def _check_graph_op(node: Node, types, input_names, fail):
    if node.op == "input":
        if node.inputs:
            raise fail("an input node takes no inputs")
        name, role = node.attr("name"), node.attr("role")
        if not isinstance(name, str):
            raise fail(f"input needs a str attribute 'name', got {name!r}")
        if role not in ROLES:
            raise fail(f"input {name!r} has role {role!r}; roles are {', '.join(ROLES)}")
        if name in input_names:
            raise fail(f"input name {name!r} is already used by %{input_names[name]}")
        input_names[name] = node.id
        if not isinstance(node.type, TensorType):
            raise fail(f"an input must have a tensor type, got {format_type(node.type)}")
    elif node.op == "const":
        if node.inputs:
            raise fail("a const node takes no inputs")
        if "value" not in node.attr_dict:
            raise fail("const needs a 'value' attribute")
        if not isinstance(node.type, TensorType):
            raise fail(f"a const must have a tensor type, got {format_type(node.type)}")
        shape = _literal_shape(node.attr("value"), fail)
        empty = 0 in node.type.shape and node.attr("value") == ()
        if shape != () and shape != node.type.shape and not empty:
            raise fail(f"value has shape {shape} but the node is typed {format_type(node.type)}")
    else:  # grad
        if len(node.inputs) < 2:
            raise fail("grad needs the loss and at least one input to differentiate with respect to")
        if any(isinstance(types[i], tuple) for i in node.inputs):
            raise fail("grad inputs must be tensors, not tuples")
        wrt = node.inputs[1:-1] if node.attr("seeded", False) else node.inputs[1:]  # last: the seed
        expected = tuple(types[i] for i in wrt)
        if node.type != expected:
            raise fail(f"grad is typed {format_type(node.type)} but the types of its wrt inputs "
                       f"are {format_type(expected)}")


def _literal_shape(value, fail) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        shapes = {_literal_shape(v, fail) for v in value}
        if len(shapes) > 1:
            raise fail("const value is ragged (nested tuples of different shapes)")
        return (len(value),) + (shapes.pop() if shapes else ())
    if isinstance(value, (bool, int, float)):
        return ()
    raise fail(f"const value element {value!r} is not a number")


# ---- registry ops: re-run shape inference on stand-ins -----------------------------------
class _Stand:
    """A stand-in for a tensor value: what an op's `infer` reads (`shape`, `dtype`)."""

    def __init__(self, t: TensorType):
        self.shape, self.dtype, self.device = tuple(t.shape), t.dtype, t.device
        self.ndim = len(self.shape)

    def __repr__(self):
        return f"<{format_type(TensorType(self.shape, self.dtype, self.device))}>"


class _StandTuple:
    """A stand-in for a tuple value; `realize_cached_data()` gives the items' stand-ins."""

    def __init__(self, t: tuple):
        self.items = tuple(_stand(x) for x in t)

    def realize_cached_data(self):
        return self.items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def __iter__(self):
        return iter(self.items)


def _stand(t):
    return _StandTuple(t) if isinstance(t, tuple) else _Stand(t)


def _check_registry_op(node: Node, in_types: list, fail):
    args = [_stand(t) for t in in_types]
    tensors = [a for a in args if isinstance(a, _Stand)]
    if node.op == "ToDevice":  # rebuilding it would create a device; its shape is its input's
        if len(args) != 1 or not isinstance(args[0], _Stand):
            raise fail("ToDevice takes one tensor input")
        result = (args[0].shape, args[0].dtype)
    else:
        try:
            op = op_from_node(node.op, node.attr_dict)
            result = op.infer(*args)
        except OpError as e:
            raise fail(f"shape inference failed: {e.detail}") from None
        except AttributeError as e:
            raise fail(_attribute_error_text(node, e, in_types)) from None
        except TypeError as e:
            raise fail(f"cannot infer the type from inputs {_types_text(in_types)} and attributes "
                       f"{dict(node.attrs)}: {type(e).__name__}: {e}") from None
        except (ValueError, IndexError, KeyError, ZeroDivisionError) as e:
            raise fail(f"shape inference failed on inputs {_types_text(in_types)}: {e}") from None

    shape, dtype = result
    if dtype is None and isinstance(shape, tuple) and all(isinstance(x, tuple) and len(x) == 2
                                                          for x in shape):
        _compare_tuple(node, shape, in_types, fail)
        return
    if isinstance(node.type, tuple):
        raise fail(f"{node.op} gives a tensor of shape {tuple(shape)} but the node has tuple type "
                   f"{format_type(node.type)}")
    shape = tuple(shape)
    if shape != node.type.shape:
        raise fail(f"{node.op} on inputs {_types_text(in_types)} gives shape {shape} but the node "
                   f"is typed {format_type(node.type)} (shape {node.type.shape})")
    if isinstance(dtype, str) and dtype != node.type.dtype:
        raise fail(f"{node.op} gives dtype {dtype} but the node is typed {format_type(node.type)}")
    _check_device(node, node.type, tensors, fail)


def _attribute_error_text(node, e: AttributeError, in_types) -> str:
    obj = getattr(e, "obj", None)
    kinds = ", ".join(f"%{i}: {format_type(t)}" for i, t in zip(node.inputs, in_types))
    if isinstance(obj, _StandTuple):
        return f"{node.op} reads a tensor but got a tuple input ({kinds})"
    if isinstance(obj, _Stand):
        return f"{node.op} reads a tuple but got a tensor input ({kinds})"
    if obj is not None and type(obj).__name__ == node.op:
        return f"{node.op} is missing its attribute {getattr(e, 'name', '?')!r} (has {dict(node.attrs)})"
    return f"cannot infer the type from inputs ({kinds}) and attributes {dict(node.attrs)}: {e}"


def _compare_tuple(node, items, in_types, fail):
    if not isinstance(node.type, tuple):
        raise fail(f"{node.op} gives a tuple of {len(items)} tensors but the node is typed "
                   f"{format_type(node.type)}")
    if len(items) != len(node.type):
        raise fail(f"{node.op} on inputs {_types_text(in_types)} gives a tuple of {len(items)} but "
                   f"the node's tuple type has {len(node.type)}")
    for k, ((shape, dtype), t) in enumerate(zip(items, node.type)):
        if not isinstance(t, TensorType) or tuple(shape) != t.shape or (
                isinstance(dtype, str) and dtype != t.dtype):
            raise fail(f"{node.op} item {k} has shape {tuple(shape)} and dtype {dtype} but the node "
                       f"types it {format_type(t)}")


def _check_device(node, out_type, tensors, fail):
    if node.op == "ToDevice":
        device = node.attr("device")
        if isinstance(device, str) and device != out_type.device:
            raise fail(f"ToDevice to {device!r} but the node is typed {format_type(out_type)}")
        return
    devices = {a.device for a in tensors}
    if len(devices) == 1 and out_type.device not in devices:
        raise fail(f"inputs are on device {devices.pop()} but the node is typed {format_type(out_type)}")


def _types_text(types) -> str:
    return "(" + ", ".join(format_type(t) for t in types) + ")"
