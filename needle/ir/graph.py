"""The graph IR: an immutable SSA graph of nodes with types and user source locations.

A `Graph` is an ordered tuple of `Node`s in topological order (inputs before users). Each
node produces one value named `%<id>`; `op` is a registry op name (`needle.ops.OPS`) or
one of the graph-level ops below. Passes never mutate a graph: they return a new one.

Graph-level ops:
* ``input``  a graph argument; attrs ``name`` (str) and ``role`` (one of ROLES).
* ``const``  a literal array; attrs ``value`` (nested tuples of numbers, or a scalar).
* ``grad``   a request to the autodiff pass: d(inputs[0]) / d(inputs[1:]) seeded with ones;
             its type is a tuple of the wrt inputs' types. Removed by `autodiff`.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

from .printer import print_graph
from .types import _DTYPE_SHORT, DTYPE_LONG, SourceLoc, TensorType, ValueType  # noqa: F401  (part of the graph's API)

#: roles of graph inputs: function arguments, parameters, optimizer/module state,
#: hyper-parameters read at every call (learning rate), and constants captured at trace time
ROLES = ("arg", "param", "state", "hyper", "const")

#: ops that exist only in the IR (not in the op registry)
GRAPH_OPS = ("input", "const", "grad")


@dataclass(frozen=True)
class Node:
    """One SSA value: `%id = op(%inputs...) {attrs} : type  # loc`."""

    id: int
    op: str
    inputs: tuple[int, ...] = ()
    attrs: tuple[tuple[str, Any], ...] = ()
    type: ValueType = TensorType(())
    loc: Optional[SourceLoc] = None

    def attr(self, name: str, default: Any = None) -> Any:
        for key, value in self.attrs:
            if key == name:
                return value
        return default

    @property
    def attr_dict(self) -> dict[str, Any]:
        return dict(self.attrs)

    @property
    def is_tuple(self) -> bool:
        return isinstance(self.type, tuple)


def make_attrs(attrs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Attributes as a sorted tuple of (name, hashable value) pairs."""
    return tuple(sorted((k, _freeze(v)) for k, v in attrs.items()))


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_freeze(v) for v in value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalar
        return value.item()
    return value


@dataclass(frozen=True)
class Graph:
    """An immutable SSA graph: nodes in topological order and the ids it returns."""

    name: str
    nodes: tuple[Node, ...]
    outputs: tuple[int, ...]
    _index: dict = field(default=None, compare=False, repr=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "_index", {n.id: n for n in self.nodes})

    def node(self, node_id: int) -> Node:
        return self._index[node_id]

    def __contains__(self, node_id: int) -> bool:
        return node_id in self._index

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def inputs(self) -> tuple[Node, ...]:
        """The graph's `input` nodes, in order."""
        return tuple(n for n in self.nodes if n.op == "input")

    def users(self) -> dict[int, list[int]]:
        """node id -> ids of the nodes that read it."""
        out: dict[int, list[int]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.id)
        return out

    def next_id(self) -> int:
        return max((n.id for n in self.nodes), default=-1) + 1

    def replace(self, nodes=None, outputs=None, name=None) -> "Graph":
        """A new graph with some fields replaced."""
        return Graph(self.name if name is None else name,
                     tuple(self.nodes if nodes is None else nodes),
                     tuple(self.outputs if outputs is None else outputs))

    def __str__(self) -> str:
        """The graph in the IR text format (`needle.ir.printer.print_graph`)."""
        return print_graph(self)


def topological_order(items: Iterable, successors: Mapping, priority: Callable) -> list:
    """Kahn's algorithm: `items` (hashable) ordered so that each comes after every item that
    lists it in `successors[item]` (each successor once), taking among the ready items the
    least `priority(item)` first (ties: the order of `items`). The result is shorter than
    `items` when they form a cycle."""
    items = list(items)
    rank = {x: k for k, x in enumerate(items)}
    pending = dict.fromkeys(items, 0)
    for x in items:
        for succ in successors[x]:
            pending[succ] += 1
    ready = [(priority(x), rank[x]) for x in items if pending[x] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        x = items[heapq.heappop(ready)[1]]
        order.append(x)
        for succ in successors[x]:
            pending[succ] -= 1
            if pending[succ] == 0:
                heapq.heappush(ready, (priority(succ), rank[succ]))
    return order
