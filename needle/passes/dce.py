"""Dead-code elimination: drop nodes that no graph output depends on.

`input` nodes always stay: they are the function's signature.
"""
from __future__ import annotations

from ..ir.graph import Graph
from .manager import Pass, PassResult


def live_ids(graph: Graph) -> set[int]:
    """Ids of the nodes the outputs depend on, plus every `input` node."""
    live = set(graph.outputs) | {n.id for n in graph.nodes if n.op == "input"}
    for node in reversed(graph.nodes):
        if node.id in live:
            live.update(node.inputs)
    return live


class DeadCodeElimination(Pass):
    name = "dce"

    def run(self, graph, ctx):
        live = live_ids(graph)
        nodes = [n for n in graph.nodes if n.id in live]
        removed = len(graph.nodes) - len(nodes)
        if not removed:
            return PassResult(graph, False, {"removed": 0})
        return PassResult(graph.replace(nodes=nodes), True, {"removed": removed})
