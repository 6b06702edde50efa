"""The recompute pass: a cheap broadcast value read by several consumers is recomputed in
each of them instead of being stored once and read back.

A value is *cheap* when it is an elementwise or view node whose cone of elementwise/view
producers is at most `MAX_CONE` nodes and reads only values much smaller than itself (at
most 1/`MIN_RATIO` of its size), such as a one-hot mask built from labels and an arange, a
causal mask, or a bias broadcast to a batch. Storing such a value costs a full write and a
full read per consumer; recomputing it costs a few arithmetic operations on cached data.

Every cheap value with several users (and not returned by the graph) gets one copy per
extra user, the copies reading the same inputs; the pass visits nodes from the last to the
first, so a copy's own cheap inputs are copied in turn. Fusion then merges each copy into
its consumer's kernel.
"""
from __future__ import annotations

from math import prod

from ..ir.graph import Graph, Node, topological_order
from .fusion import node_class
from .manager import Pass, PassResult, register_pass
from .rewrite import replace_node

__all__ = ["recompute_cheap", "MAX_CONE", "MIN_RATIO"]

#: most elementwise/view nodes in the cone of a value recomputed per consumer
MAX_CONE = 8
#: a cheap value is at least this many times larger than every value its cone reads
MIN_RATIO = 8

_LIGHT = ("elementwise", "view")


def _light(node: Node) -> bool:
    return node.op not in ("input", "const") and not node.is_tuple and node_class(node) in _LIGHT


def _cheap(graph: Graph, node: Node) -> bool:
    """Elementwise/view cone of at most MAX_CONE nodes that reads only small values."""
    if not _light(node):
        return False
    size = prod(node.type.shape)
    cone, todo = set(), [node.id]
    while todo:
        n = graph.node(todo.pop())
        if n.id in cone:
            continue
        if not _light(n):  # a leaf the cone reads
            if n.is_tuple or prod(n.type.shape) * MIN_RATIO > size:
                return False
            continue
        cone.add(n.id)
        if len(cone) > MAX_CONE:
            return False
        todo.extend(n.inputs)
    return True


def recompute_cheap(graph: Graph) -> tuple[Graph, int]:
    """The graph with every cheap multi-user value copied per extra user; the copy count."""
    users = {n: list(dict.fromkeys(us)) for n, us in graph.users().items()}  # distinct readers
    returned = set(graph.outputs)
    inputs = {n.id: list(n.inputs) for n in graph.nodes}
    nodes = {n.id: n for n in graph.nodes}
    key = {n.id: (pos, 0) for pos, n in enumerate(graph.nodes)}  # order hint: copies go before their user
    next_id = graph.next_id()
    copies = 0
    for node in reversed(graph.nodes):
        if node.id in returned or len(users[node.id]) < 2 or not _cheap(graph, node):
            continue
        for user in users[node.id][1:]:
            copy = replace_node(node, id=next_id)
            next_id += 1
            copies += 1
            nodes[copy.id] = copy
            inputs[copy.id] = list(node.inputs)
            key[copy.id] = (key[user][0], key[user][1] - 1)
            inputs[user] = [copy.id if i == node.id else i for i in inputs[user]]
            for i in node.inputs:
                users[i].append(copy.id)
        users[node.id] = users[node.id][:1]
    if not copies:
        return graph, 0
    readers: dict[int, set] = {n: set() for n in nodes}
    for n, ins in inputs.items():
        for i in ins:
            readers[i].add(n)
    order = topological_order(nodes, readers, lambda n: (key[n], n))
    return graph.replace(nodes=[replace_node(nodes[n], inputs=tuple(inputs[n])) for n in order]), copies


class Recompute(Pass):
    name = "recompute"

    def run(self, graph, ctx):
        out, copies = recompute_cheap(graph)
        return PassResult(out, copies > 0, {"copies": copies})


register_pass(Recompute())
