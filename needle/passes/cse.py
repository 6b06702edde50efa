"""Common-subexpression elimination: merge nodes with the same op, inputs, attrs and type.

The first node of a set of equal nodes stays (with its source location); users of the others
read it instead. `input` nodes are never merged, nor ops marked `pure = False` (RNG).
Attributes compare by their literal text, so `0.0` and `-0.0` (or `1` and `1.0`) differ.
"""
from __future__ import annotations

from .manager import Pass, PassResult
from .rewrite import is_pure, rewrite


class CommonSubexpressionElimination(Pass):
    name = "cse"

    def run(self, graph, ctx):
        seen: dict = {}

        def rule(node, get):
            if not is_pure(node.op):
                return None
            key = (node.op, node.inputs, repr(node.attrs), node.type)
            first = seen.setdefault(key, node.id)
            return None if first == node.id else first

        new, merged = rewrite(graph, rule, self.name)
        return PassResult(new, merged > 0, {"merged": merged})
