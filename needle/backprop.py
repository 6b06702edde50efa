"""Reverse-mode automatic differentiation over the graph of Values: the eager tape that
`Tensor.backward()` runs, and the autodiff pass runs on traced values."""
from __future__ import annotations

from typing import TYPE_CHECKING, List

from . import ops
from .ops.registry import constant
from .ops.tuple_ops import part_types

if TYPE_CHECKING:
    from .autograd import Tensor, TensorTuple, Value


def compute_gradient_of_variables(output_tensor: Tensor, out_grad: Tensor, before_vjp=None) -> None:
    """Take the gradient of `output_tensor` w.r.t. every node of its graph (stored in `.grad`).

    Adjoints flowing into a TensorTuple through TupleGetItem are collected per index and
    assembled into one tuple, so indexing all T parts of a split costs O(T), not O(T^2).
    `before_vjp(node)`, when given, runs before each node's VJP (the autodiff pass uses it
    to give the emitted nodes the source location of the node they differentiate).
    """
    node_to_output_grads_list: dict = {output_tensor: [out_grad]}
    tuple_parts: dict = {}
    for node in reversed(find_topo_sort([output_tensor])):
        grads = node_to_output_grads_list.pop(node, None)
        parts = tuple_parts.pop(node, None)
        if parts is not None:
            grads = (grads or []) + [_assemble_tuple_grad(node, parts)]
        if grads is None:
            continue
        node.grad = sum_node_list(grads)
        if node.op is None:
            continue
        if isinstance(node.op, ops.TupleGetItem):
            source = node.inputs[0]
            if source.requires_grad:
                index = node.op.index % len(source)
                tuple_parts.setdefault(source, {}).setdefault(index, []).append(node.grad)
            continue
        if before_vjp is not None:
            before_vjp(node)
        for inp, grad in zip(node.inputs, node.op.gradient_as_tuple(node.grad, node)):
            if inp.requires_grad:
                node_to_output_grads_list.setdefault(inp, []).append(grad)


def _assemble_tuple_grad(node: TensorTuple, parts: dict) -> TensorTuple:
    """The adjoint of a TensorTuple from its per-index adjoints (zeros where none)."""
    items = []
    for i, (shape, dtype) in enumerate(part_types(node)):
        if i in parts:
            items.append(sum_node_list(parts[i]))
        else:
            items.append(constant(shape, 0.0, dtype, parts[next(iter(parts))][0].device))
    return ops.make_tuple(*items)


def find_topo_sort(node_list: List[Value]) -> List[Value]:
    """Post-order DFS from each node in order, inputs left to right, each node once."""
    visited: set = set()
    topo_order: List[Value] = []
    for root in node_list:
        if id(root) in visited:
            continue
        visited.add(id(root))
        stack = [(root, iter(root.inputs))]
        while stack:
            node, children = stack[-1]
            for child in children:
                if id(child) not in visited:
                    visited.add(id(child))
                    stack.append((child, iter(child.inputs)))
                    break
            else:
                stack.pop()
                topo_order.append(node)
    return topo_order


def sum_node_list(node_list: List[Value]) -> Value:
    """Sum of the partial adjoints (left to right)."""
    total = node_list[0]
    for node in node_list[1:]:
        total = total + node
    return total
