"""Views across kernel boundaries: expanded group subgraphs, tuple rewrites, the view walker.

The fusion plan leaves index maps (Reshape, Permute, BroadcastTo, GetItem, Flip, tuple
ops...) in "view" groups that own no memory: their consumers recompute them as index
arithmetic. So a kernel is generated from its group's nodes *plus* the view nodes between
the group and the buffers it really reads (`expand`): the leaves of that expanded subgraph
are graph inputs, constants and values that have a buffer (arena, inputs, outputs).

`rewrite_tuples` removes tuple values that `lower` cannot see through:
`TupleGetItem(Split(x))` becomes a `GetItem` + `Reshape` of x, `TupleGetItem(MakeTensorTuple)`
the element itself, `UnDilate` a strided `GetItem`, `Dilate` an `UnSlice`.

`Walker` evaluates any chain of views and data-movement ops over the leaves at a symbolic
index, as a loop-IR value, with lower's evaluator: each view's `index_map`, lower's maps
that pick between pieces or zeros (`lower.PIECEWISE`: Dilate, UnSlice, Concat, Stack, tuple
elements of Split/MakeTensorTuple), `Gather` (a load whose row index is read from the indices
tensor) and, for GEMM epilogues, each elementwise op's `element` formula. Positions that a
view fills with zeros become a `Select` on an index condition (never a load out of bounds).
GEMM/conv operands and the kernels that materialise ops `lower` cannot handle are built
with it.
"""
from __future__ import annotations

from ...ir.graph import Graph, Node, make_attrs
from ...ir.subgraph import cut, is_literal
from ...ops import scalar as S
from ...ops.registry import OPS, node_axes
from ...ops.scalar import Arg
from ..loop_ir import SCALAR, FConst, Load, linearize, simplify
from ..lower import PIECEWISE, TUPLE_PARTS, element, view_index
from .gpu_ir import IFloat



class NotWalkable(Exception):
    """The walker met a computed value (`node`) that is not a leaf."""

    def __init__(self, node_id: int):
        super().__init__(f"%{node_id} is computed")
        self.node_id = node_id


def _simplify(e, ranges):
    try:
        return simplify(e, ranges)
    except Exception:  # noqa: BLE001  (simplification is an optimisation only)
        return e


# ---- expansion ----------------------------------------------------------------------------
def expand(graph: Graph, node_ids, outputs, has_buffer, name: str):
    """(subgraph, leaves): the nodes `node_ids` plus every view node between them and the
    values they read that own memory (`has_buffer(v)`), graph inputs or consts. The
    subgraph's `input` nodes are the leaves (graph order), scalar consts stay `const` nodes
    (lowered as literals), and it returns `outputs`."""
    include = set(node_ids)
    leaves = set()
    stack = [i for n in node_ids for i in graph.node(n).inputs]
    while stack:
        u = stack.pop()
        if u in include or u in leaves:
            continue
        n = graph.node(u)
        if n.op in ("input", "const") or has_buffer(u):
            leaves.add(u)
        else:
            include.add(u)
            stack.extend(n.inputs)
    pos = {n.id: k for k, n in enumerate(graph.nodes)}
    leaf_list = sorted(leaves, key=pos.get)
    inputs = [v for v in leaf_list if not is_literal(graph.node(v))]
    ids = leaf_list + [n.id for n in graph.nodes if n.id in include]
    return cut(graph, ids, inputs, outputs, name), inputs


# ---- rewrites -----------------------------------------------------------------------------
def _slices_one(shape, axis, i):
    return tuple((i, i + 1, 1) if k == axis else (0, d, 1) for k, d in enumerate(shape))


def _tuple_element(n: Node, by_id: dict, fresh):
    src = by_id[n.inputs[0]]
    k = n.attr("index")
    if src.op not in _ELEMENT:
        return None
    return _ELEMENT[src.op](n, src, k, by_id, fresh)


def _make_tuple_element(n, src, k, by_id, fresh):
    return src.inputs[k % len(src.inputs)]


def _split_element(n, src, k, by_id, fresh):
    x = by_id[src.inputs[0]]
    axis = src.attr("axis") % len(x.type.shape)
    k %= x.type.shape[axis]
    part_shape = tuple(1 if a == axis else d for a, d in enumerate(x.type.shape))
    part = Node(fresh(), "GetItem", (x.id,), make_attrs({"slices": _slices_one(x.type.shape, axis, k)}),
                type(x.type)(part_shape, x.type.dtype, x.type.device), n.loc)
    return [part, Node(n.id, "Reshape", (part.id,), make_attrs({"shape": n.type.shape}), n.type, n.loc)]


def _undilate_as_slice(n: Node, by_id: dict, fresh):
    x = by_id[n.inputs[0]]
    axes = node_axes(n, len(x.type.shape))
    step = n.attr("dilation") + 1
    sl = tuple((0, d, step) if a in axes else (0, d, 1) for a, d in enumerate(x.type.shape))
    return [Node(n.id, "GetItem", n.inputs, make_attrs({"slices": sl}), n.type, n.loc)]


def _dilate_as_unslice(n: Node, by_id: dict, fresh):
    axes = node_axes(n, len(n.type.shape))
    step = n.attr("dilation") + 1
    if step == 1:
        return n.inputs[0]
    sl = tuple((0, d, step) if a in axes else (0, d, 1) for a, d in enumerate(n.type.shape))
    return [Node(n.id, "UnSlice", n.inputs, make_attrs({"slices": sl, "shape": n.type.shape}), n.type, n.loc)]


#: op -> its rewrite (n, nodes by id, fresh id) -> an id it aliases, replacement nodes, or None
_REWRITES = {"TupleGetItem": _tuple_element, "UnDilate": _undilate_as_slice, "Dilate": _dilate_as_unslice}
#: tuple-valued op -> (n, the tuple node, element k, nodes by id, fresh id) -> as above
_ELEMENT = {"MakeTensorTuple": _make_tuple_element, "Split": _split_element}


def rewrite_tuples(sub: Graph) -> Graph:
    """Tuple elements and strided views as ops `lower` knows (see the module docstring)."""
    alias: dict = {}
    nodes: list = []
    by_id: dict = {}
    next_id = [sub.next_id()]

    def fresh() -> int:
        next_id[0] += 1
        return next_id[0] - 1

    for n in sub.nodes:
        n = Node(n.id, n.op, tuple(alias.get(i, i) for i in n.inputs), n.attrs, n.type, n.loc)
        out = _REWRITES[n.op](n, by_id, fresh) if n.op in _REWRITES else None
        if isinstance(out, int):
            alias[n.id] = out
            continue
        for m in out or [n]:
            nodes.append(m)
            by_id[m.id] = m
    outputs = tuple(alias.get(o, o) for o in sub.outputs)
    used = set(outputs) | {i for n in nodes for i in n.inputs}
    nodes = [n for n in nodes if n.id in used or n.op in ("input",)]
    return Graph(sub.name, tuple(nodes), outputs)


# ---- the walker ---------------------------------------------------------------------------
class Walker:
    """Value of a move-op chain at a symbolic index (see the module docstring).

    `leaf(node, idx)` gives the value of an `input` node of `graph`; `ranges` maps index
    variables to their extents (for simplifying div/mod)."""

    def __init__(self, graph: Graph, leaf, ranges=None, stop=None, elementwise: bool = False):
        self.g = graph
        self.leaf = leaf
        self.ranges = dict(ranges or {})
        self.stop = stop or (lambda nid: False)
        self.elementwise = elementwise   # also evaluate elementwise ops (GEMM epilogues)
        self.memo: dict = {}

    def simp(self, idx):
        return tuple(_simplify(e, self.ranges) for e in idx)

    def shape(self, nid):
        return self.g.node(nid).type.shape

    def value(self, nid, idx):
        key = (nid, tuple(idx))
        hit = self.memo.get(key)
        if hit is None:
            hit = self.memo[key] = self._value(nid, tuple(idx))
        return hit

    def _value(self, nid, idx):
        n = self.g.node(nid)
        if n.op == "input" or self.stop(nid):
            return self.leaf(n, idx)
        if n.op == "const":
            v = n.attr("value")
            if isinstance(v, (int, float)):
                return FConst(float(v))
            return self.leaf(n, idx)
        if OPS.get(n.op) is not None and OPS[n.op].index_map is not None:
            return self.value(n.inputs[0], view_index(n, idx, self.shape(n.inputs[0]), self.simp))
        if n.op in PIECES:
            return PIECES[n.op](self, n, idx)
        expr = element(n)
        if isinstance(expr, Arg):  # an identity (Detach): a move
            return self.value(n.inputs[expr.index], idx)
        if self.elementwise and expr is not None:
            return S.evaluate(expr, [self.value(i, idx) for i in n.inputs], SCALAR)
        raise NotWalkable(nid)

    #: the name lower's piecewise maps read values by
    val = value

    def parts(self, nid):
        """[(index -> value, shape)] of a tuple value."""
        n = self.g.node(nid)
        if n.op not in TUPLE_PARTS:
            raise NotWalkable(nid)
        return TUPLE_PARTS[n.op](self, n)


def _gather(w: Walker, n, idx):
    """A load whose row index is read from the indices tensor."""
    a, ind = n.inputs
    k = len(w.shape(ind))
    row = IFloat(w.value(ind, idx[:k]), bound=w.shape(a)[0])
    return w.value(a, (row,) + idx[k:])


#: op -> its value at an index: lower's maps that pick between pieces or zeros, and Gather
PIECES = {**PIECEWISE, "Gather": _gather}


def leaf_loader(names: dict, consts: dict | None = None):
    """A `Walker.leaf` reading input node `n` from buffer `names[n.id]` (row-major)."""
    def leaf(node, idx):
        return Load(names[node.id], linearize(idx, node.type.shape))
    return leaf


__all__ = ["expand", "rewrite_tuples", "Walker", "NotWalkable", "leaf_loader"]
