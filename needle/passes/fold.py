"""Constant folding: a registry op whose inputs are all `const` nodes becomes a `const`.

The op is evaluated with its own eager kernel (`op.compute`) on the configured array backend
(numpy arrays under NEEDLE_BACKEND=np; NDArrays on the `cpu_numpy` device under nd), so a
folded value is what eager mode would compute. Results larger than `MAX_FOLD_ELEMENTS` stay
ops (no huge literals in the IR); so do tuple values, ops without inputs, ops marked
`pure = False`, and, under the NDArray backend (float32 only), non-float values. A kernel
that raises leaves the node alone (it will fail, with its source line, when it runs); the
report lists such nodes under "skipped".
"""
from __future__ import annotations

from math import prod
from typing import Any, Optional

import numpy as np

from ..ir.graph import Node, TensorType, make_attrs
from .manager import Pass, PassResult
from .rewrite import is_pure, replace_node, rewrite
from .. import backend_selection
from ..ops import OPS
from ..ops.registry import op_from_node

#: the largest constant (in elements) folding may create
MAX_FOLD_ELEMENTS = 1024


def const_array(node: Node) -> np.ndarray:
    """A `const` node's value as a numpy array of its type."""
    value = np.array(node.attr("value"), dtype=node.type.dtype)
    if value.ndim == 0:  # a scalar value fills the shape
        return np.full(node.type.shape, value)
    return value.reshape(node.type.shape)  # a size-0 literal is `()` whatever its shape


def const_value(arr: np.ndarray, dtype: str) -> Any:
    """The IR literal of an array: nested tuples of Python numbers, or one scalar when every
    element is the same (a scalar `value` fills the const's whole shape)."""
    arr = np.asarray(arr, dtype=dtype)
    flat = arr.reshape(-1)
    if flat.tobytes() == flat[:1].tobytes() * flat.size:  # bitwise uniform, or empty
        return flat[0].item() if flat.size else arr.dtype.type(0).item()
    return _tupleify(arr.tolist())


def uniform_value(node: Node) -> Any:
    """The scalar of a const node whose every element is equal (else None)."""
    if node.op != "const" or not isinstance(node.type, TensorType):
        return None
    value = node.attr("value")
    if not isinstance(value, tuple):
        return value
    arr = const_array(node)
    return const_value(arr, node.type.dtype) if arr.size == 1 else None


def _tupleify(value):
    if isinstance(value, list):
        return tuple(_tupleify(v) for v in value)
    return value


def make_const(node: Node, arr: np.ndarray) -> Node:
    """`node` (same id, type and location) turned into a const holding `arr`."""
    return replace_node(node, op="const", inputs=(),
                        attrs=make_attrs({"value": const_value(arr, node.type.dtype)}))


def evaluate(node: Node, inputs: list[np.ndarray]) -> np.ndarray:
    """Run a registry node's eager kernel on numpy inputs; a numpy result."""
    array_api = backend_selection.array_api
    op = op_from_node(node.op, node.attr_dict)
    device = getattr(backend_selection, "cpu_numpy", None)
    device = device() if device is not None else None
    arrays = [array_api.array(x, device=device) if device is not None else array_api.array(x)
              for x in inputs]
    out = op.compute(*arrays)
    out = out.numpy() if hasattr(out, "numpy") else out
    return np.asarray(out)


def _foldable(node: Node, get) -> bool:
    if node.op in ("input", "const", "grad") or not node.inputs or not is_pure(node.op):
        return False
    if not isinstance(node.type, TensorType):
        return False
    ins = [get(i) for i in node.inputs]
    if prod(node.type.shape) > MAX_FOLD_ELEMENTS and not _cheap_uniform(node, ins):
        return False
    if not all(n.op == "const" and isinstance(n.type, TensorType) for n in ins):
        return False

    if backend_selection.BACKEND != "np":
        if any(np.dtype(t.dtype).kind != "f" for t in [node.type] + [n.type for n in ins]):
            return False
    return True


def _one_element(node: Node) -> Node:
    """The node computing a single element of itself (BroadcastTo to all-ones)."""
    if _kind(node.op) == "broadcast":
        return replace_node(node, attrs=make_attrs({"shape": (1,) * len(node.type.shape)}))
    return node


def _cheap_uniform(node: Node, ins: list[Node]) -> bool:
    """A large result known to be uniform without computing it: an elementwise op of
    scalar-fill consts (folded on one element), or a broadcast of one."""
    if not all(n.op == "const" and not isinstance(n.attr("value"), tuple) for n in ins):
        return False
    return _kind(node.op) in ("broadcast", "elementwise")


def _kind(op: str) -> Optional[str]:
    return getattr(OPS.get(op), "kind", None)


class ConstantFolding(Pass):
    name = "fold"

    def run(self, graph, ctx):
        skipped: list[str] = []

        def rule(node, get):
            if not _foldable(node, get):
                return None
            ins = [get(i) for i in node.inputs]
            try:
                if prod(node.type.shape) > MAX_FOLD_ELEMENTS:  # uniform: evaluate one element
                    one = evaluate(_one_element(node), [np.array(n.attr("value"), dtype=n.type.dtype)
                                                        .reshape((1,) * len(n.type.shape)) for n in ins])
                    return make_const(node, one.reshape(-1)[:1])
                out = evaluate(node, [const_array(n) for n in ins])
            except Exception as e:  # leave it to fail at run time, with its source line
                skipped.append(f"%{node.id} = {node.op}: {type(e).__name__}: {e}")
                return None
            if tuple(out.shape) != tuple(node.type.shape):
                raise self.error(f"the kernel gave shape {tuple(out.shape)}, but the node's type "
                                 f"is {node.type}", node)
            return make_const(node, out)

        new, folded = rewrite(graph, rule, self.name)
        report = {"folded": folded}
        if skipped:
            report["skipped"] = skipped
        return PassResult(new, folded > 0, report)
