"""A helper for local rewrites: replace nodes by other values or by new nodes, in one sweep.

`rewrite(graph, rule)` visits the nodes in order. Each node is first given the inputs its
producers were rewritten to, then `rule(node, get)` decides (`get(id)` returns an already
visited node of the new graph):

* `None`        keep the node;
* an `int`      replace the node by that existing value everywhere (users and outputs); the
                node itself is dropped (its own inputs may become dead: DCE removes them);
* a `Node`      replace it by this node, which must keep the same id (it is offered to the
                rule again, so rewrites chain).

Replacements must keep the node's type; a rule that breaks that raises a PassError.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Union

from ..ir.graph import Graph, Node
from .manager import PassError
from ..ops import OPS

Rule = Callable[[Node, Callable[[int], Node]], Union[None, int, Node]]

#: how many times a node may be rewritten into a new node in one sweep
MAX_CHAIN = 16


def rewrite(graph: Graph, rule: Rule, pass_name: str) -> tuple[Graph, int]:
    """The rewritten graph and the number of rewrites made."""
    subst: dict[int, int] = {}
    index: dict[int, Node] = {}
    nodes: list[Node] = []
    count = 0
    for node in graph.nodes:
        if any(i in subst for i in node.inputs):
            node = dataclasses.replace(node, inputs=tuple(subst.get(i, i) for i in node.inputs))
        result: Union[None, int, Node] = node
        for _ in range(MAX_CHAIN):
            out = rule(node, index.__getitem__)
            if out is None:
                break
            count += 1
            if isinstance(out, Node):
                _check(pass_name, node, out.type, out.id == node.id, "a node with another id")
                node = out
                continue
            target = index[out]
            _check(pass_name, node, target.type, True, "")
            subst[node.id] = out
            result = None
            break
        if result is not None:
            index[node.id] = node
            nodes.append(node)
    outputs = tuple(subst.get(o, o) for o in graph.outputs)
    if not count:
        return graph, 0
    return graph.replace(nodes=nodes, outputs=outputs), count


def _check(pass_name: str, node: Node, new_type, same_id: bool, what: str) -> None:
    if not same_id:
        raise PassError(pass_name, f"internal error: rewrite produced {what}", node)
    if new_type != node.type:
        raise PassError(pass_name, f"internal error: rewrite changes the type {node.type} "
                                   f"to {new_type}", node)


def replace_node(node: Node, **fields) -> Node:
    return dataclasses.replace(node, **fields)


def is_pure(op: str) -> Optional[bool]:
    """False for ops that must not be merged or evaluated at compile time (RNG, effects).

    Registry ops opt out by setting the class attribute `pure = False`.
    """
    if op == "input":
        return False

    cls = OPS.get(op)
    return True if cls is None else getattr(cls, "pure", True)
