"""Cutting a standalone graph out of a bigger one (a fused group, a kernel's cone)."""
from __future__ import annotations

from typing import Collection, Sequence

from .graph import Graph, Node


def is_literal(node: Node) -> bool:
    """A scalar const: cut-out graphs keep it as a const (lowered as a literal)."""
    return node.op == "const" and isinstance(node.attr("value"), (int, float))


def cut(graph: Graph, ids: Sequence[int], inputs: Collection[int], outputs: Sequence[int], name: str) -> Graph:
    """The nodes `ids` of `graph`, in this order (each after the nodes it reads), as graph
    `name` returning `outputs`: each id in `inputs` becomes an `input` node named in0, in1..
    in that order, with its type and source location; the others are copied, their inputs
    renumbered."""
    inputs = set(inputs)
    new_id: dict[int, int] = {}
    nodes: list[Node] = []
    n_in = 0
    for v in ids:
        n = graph.node(v)
        new_id[v] = k = len(nodes)
        if v in inputs:
            nodes.append(Node(k, "input", (), (("name", f"in{n_in}"), ("role", "arg")), n.type, n.loc))
            n_in += 1
        else:
            nodes.append(Node(k, n.op, tuple(new_id[i] for i in n.inputs), n.attrs, n.type, n.loc))
    return Graph(name, tuple(nodes), tuple(new_id[o] for o in outputs))
