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
index, as a loop-IR value: the ops `lower` handles plus `Flip`, `UnSlice`, `Dilate`,
`UnDilate`, `Concat`, `Stack`, `Split`/`TupleGetItem`/`MakeTensorTuple` and `Gather` (a load
whose row index is read from the indices tensor). Positions that a view fills with zeros
become a `Select` on an index condition (never a load out of bounds). GEMM/conv operands and
the kernels that materialise ops `lower` cannot handle are built with it.
"""
from __future__ import annotations

from ...ir.graph import Graph, Node, make_attrs
from ...ops.registry import node_axes, op_from_node
from ..loop_ir import Binary, Cmp, FConst, IConst, Load, Select, Unary, iadd, idiv, imod, imul, linearize, unravel
from .gpu_ir import IAnd, ICmp, IFloat

#: ops that only move data (their value at an index is another value at another index)
MOVE_OPS = frozenset({"Reshape", "Permute", "Transpose", "BroadcastTo", "GetItem", "Flip", "Dilate", "UnDilate",
                      "UnSlice", "Concat", "Stack", "Split", "TupleGetItem", "MakeTensorTuple", "Detach",
                      "Gather", "ToDevice"})


class NotWalkable(Exception):
    """The walker met a computed value (`node`) that is not a leaf."""

    def __init__(self, node_id: int):
        super().__init__(f"%{node_id} is computed")
        self.node_id = node_id


def _simplify(e, ranges):
    try:
        from ..lower import simplify
    except ImportError:  # pragma: no cover
        return e
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
    new_id: dict = {}
    nodes: list = []
    inputs = []
    for v in leaf_list:
        n = graph.node(v)
        new_id[v] = len(nodes)
        if n.op == "const" and isinstance(n.attr("value"), (int, float)):
            nodes.append(Node(len(nodes), "const", (), n.attrs, n.type, n.loc))
        else:
            nodes.append(Node(len(nodes), "input", (), (("name", f"in{len(inputs)}"), ("role", "arg")),
                              n.type, n.loc))
            inputs.append(v)
    for n in graph.nodes:
        if n.id in include:
            new_id[n.id] = len(nodes)
            nodes.append(Node(len(nodes), n.op, tuple(new_id[i] for i in n.inputs), n.attrs, n.type, n.loc))
    sub = Graph(name, tuple(nodes), tuple(new_id[o] for o in outputs))
    return sub, inputs


# ---- rewrites -----------------------------------------------------------------------------
def _slices_one(shape, axis, i):
    return tuple((i, i + 1, 1) if k == axis else (0, d, 1) for k, d in enumerate(shape))


def rewrite_tuples(sub: Graph) -> Graph:
    """Tuple elements and strided views as ops `lower` knows (see the module docstring)."""
    alias: dict = {}
    nodes: list = []
    by_id: dict = {}
    next_id = sub.next_id()

    def add(node):
        nodes.append(node)
        by_id[node.id] = node
        return node.id

    for n in sub.nodes:
        ins = tuple(alias.get(i, i) for i in n.inputs)
        n = Node(n.id, n.op, ins, n.attrs, n.type, n.loc)
        if n.op == "TupleGetItem":
            src = by_id[ins[0]]
            k = n.attr("index")
            if src.op == "MakeTensorTuple":
                alias[n.id] = src.inputs[k % len(src.inputs)]
                continue
            if src.op == "Split":
                x = by_id[src.inputs[0]]
                axis = src.attr("axis") % len(x.type.shape)
                k %= x.type.shape[axis]
                part_shape = tuple(1 if a == axis else d for a, d in enumerate(x.type.shape))
                gid = add(Node(next_id, "GetItem", (x.id,), make_attrs({"slices": _slices_one(x.type.shape, axis, k)}),
                               type(x.type)(part_shape, x.type.dtype, x.type.device), n.loc))
                next_id += 1
                add(Node(n.id, "Reshape", (gid,), make_attrs({"shape": n.type.shape}), n.type, n.loc))
                continue
        elif n.op == "UnDilate":
            x = by_id[ins[0]]
            axes = node_axes(n, len(x.type.shape))
            step = n.attr("dilation") + 1
            sl = tuple((0, d, step) if a in axes else (0, d, 1) for a, d in enumerate(x.type.shape))
            add(Node(n.id, "GetItem", ins, make_attrs({"slices": sl}), n.type, n.loc))
            continue
        elif n.op == "Dilate":
            x = by_id[ins[0]]
            axes = node_axes(n, len(x.type.shape))
            step = n.attr("dilation") + 1
            if step == 1:
                alias[n.id] = ins[0]
                continue
            sl = tuple((0, d, step) if a in axes else (0, d, 1) for a, d in enumerate(n.type.shape))
            add(Node(n.id, "UnSlice", ins, make_attrs({"slices": sl, "shape": n.type.shape}), n.type, n.loc))
            continue
        add(n)
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
        op = n.op
        if op in ("Detach", "ToDevice"):
            return self.value(n.inputs[0], idx)
        if op == "Reshape":
            in_shape = self.shape(n.inputs[0])
            kept = [(i, d) for i, d in zip(idx, n.type.shape) if d != 1]
            if [d for _, d in kept] == [d for d in in_shape if d != 1]:
                it = iter(i for i, _ in kept)
                return self.value(n.inputs[0], tuple(IConst(0) if d == 1 else next(it) for d in in_shape))
            return self.value(n.inputs[0], self.simp(unravel(linearize(idx, n.type.shape), in_shape)))
        if op == "BroadcastTo":
            in_shape = self.shape(n.inputs[0])
            lead = len(n.type.shape) - len(in_shape)
            return self.value(n.inputs[0], tuple(IConst(0) if d == 1 else idx[lead + k]
                                                 for k, d in enumerate(in_shape)))
        if op in ("Permute", "Transpose"):
            in_shape = self.shape(n.inputs[0])
            perm = op_from_node(op, n.attr_dict)
            perm = perm._perm(len(in_shape)) if op == "Transpose" else perm.axes
            out = [None] * len(in_shape)
            for k, ax in enumerate(perm):
                out[ax] = idx[k]
            return self.value(n.inputs[0], tuple(out))
        if op == "GetItem":
            return self.value(n.inputs[0], tuple(iadd(IConst(st), imul(i, IConst(step)))
                                                 for i, (st, _, step) in zip(idx, n.attr("slices"))))
        if op == "Flip":
            shape = n.type.shape
            axes = node_axes(n, len(shape))
            return self.value(n.inputs[0], tuple(iadd(IConst(d - 1), imul(i, IConst(-1))) if a in axes else i
                                                 for a, (i, d) in enumerate(zip(idx, shape))))
        if op == "UnDilate":
            shape = self.shape(n.inputs[0])
            axes = node_axes(n, len(shape))
            step = n.attr("dilation") + 1
            return self.value(n.inputs[0], tuple(imul(i, IConst(step)) if a in axes else i for a, i in enumerate(idx)))
        if op == "Dilate":
            shape = n.type.shape
            axes = node_axes(n, len(shape))
            step = n.attr("dilation") + 1
            return self._sliced(n.inputs[0], idx, [((0, d, step) if a in axes else (0, d, 1))
                                                   for a, d in enumerate(shape)], shape)
        if op == "UnSlice":
            return self._sliced(n.inputs[0], idx, n.attr("slices"), n.type.shape)
        if op == "Concat":
            axis = n.attr("axis") % len(n.type.shape)
            parts = self.parts(n.inputs[0])
            starts, at = [], 0
            for _, shape in parts:
                starts.append(at)
                at += shape[axis]
            out = None
            for (fn, shape), st in reversed(list(zip(parts, starts))):
                sub = tuple(iadd(i, IConst(-st)) if a == axis else i for a, i in enumerate(idx))
                val = fn(self.simp(sub))
                out = val if out is None else Select(ICmp("lt", idx[axis], IConst(st + shape[axis])), val, out)
            return out
        if op == "Stack":
            axis = n.attr("axis") % len(n.type.shape)
            parts = self.parts(n.inputs[0])
            rest = idx[:axis] + idx[axis + 1:]
            out = None
            for j in reversed(range(len(parts))):
                val = parts[j][0](rest)
                out = val if out is None else Select(ICmp("eq", idx[axis], IConst(j)), val, out)
            return out
        if op == "TupleGetItem":
            parts = self.parts(n.inputs[0])
            return parts[n.attr("index") % len(parts)][0](idx)
        if op == "Gather":
            a, ind = n.inputs
            k = len(self.shape(ind))
            row = IFloat(self.value(ind, idx[:k]), bound=self.shape(a)[0])
            return self.value(a, (row,) + idx[k:])
        if self.elementwise:
            v = self._elementwise(n, idx)
            if v is not None:
                return v
        raise NotWalkable(nid)

    def _elementwise(self, n, idx):
        """Elementwise ops as lower writes them (None for any other op)."""
        op = n.op
        binary = {"EWiseAdd": "add", "EWiseMul": "mul", "EWiseDiv": "div", "EWisePow": "pow"}
        scalar = {"AddScalar": "add", "MulScalar": "mul", "DivScalar": "div"}
        if op not in binary and op not in scalar and op not in (
                "PowerScalar", "Negate", "Log", "Exp", "Tanh", "ReLU", "Sigmoid", "Compare", "Where"):
            return None
        a = [self.value(i, idx) for i in n.inputs]
        s = n.attr("scalar")
        if op in binary:
            return Binary(binary[op], a[0], a[1])
        if op in scalar:
            return Binary(scalar[op], a[0], FConst(float(s)))
        if op == "PowerScalar":
            from ..lower import _power
            return _power(a[0], s)
        if op == "Negate":
            return Unary("neg", a[0])
        if op in ("Log", "Exp", "Tanh"):
            return Unary(op.lower(), a[0])
        if op == "ReLU":
            return Select(Cmp("le", a[0], FConst(0.0)), FConst(0.0), a[0])
        if op == "Sigmoid":
            t = Unary("tanh", Binary("mul", a[0], FConst(0.5)))
            return Binary("mul", Binary("add", t, FConst(1.0)), FConst(0.5))
        if op == "Compare":
            b = FConst(float(s)) if len(a) == 1 else a[1]
            return Select(Cmp(n.attr("cmp"), a[0], b), FConst(1.0), FConst(0.0))
        return Select(Cmp("ne", a[0], FConst(0.0)), a[1], a[2])   # Where

    def _sliced(self, src, idx, slices, shape):
        """Zero outside the slices, else src at (i - start) / step."""
        cond = None
        src_idx = []
        for i, (st, stop, step), d in zip(idx, slices, shape):
            if (st, stop, step) == (0, d, 1):
                src_idx.append(i)
                continue
            c = IAnd(ICmp("ge", i, IConst(st)), ICmp("lt", i, IConst(stop)))
            off = iadd(i, IConst(-st))
            if step != 1:
                c = IAnd(c, ICmp("eq", imod(off, step), IConst(0)))
                off = idiv(off, step)
            cond = c if cond is None else IAnd(cond, c)
            src_idx.append(off)
        val = self.value(src, tuple(src_idx))
        return val if cond is None else Select(cond, val, FConst(0.0))

    def parts(self, nid):
        """[(index -> value, shape)] of a tuple value."""
        n = self.g.node(nid)
        if n.op == "MakeTensorTuple":
            return [((lambda idx, i=i: self.value(i, idx)), self.shape(i)) for i in n.inputs]
        if n.op == "Split":
            x = n.inputs[0]
            shape = self.shape(x)
            axis = n.attr("axis") % len(shape)
            part_shape = shape[:axis] + shape[axis + 1:]
            return [((lambda idx, j=j: self.value(x, tuple(idx[:axis]) + (IConst(j),) + tuple(idx[axis:]))), part_shape)
                    for j in range(shape[axis])]
        raise NotWalkable(nid)


def leaf_loader(names: dict, consts: dict | None = None):
    """A `Walker.leaf` reading input node `n` from buffer `names[n.id]` (row-major)."""
    def leaf(node, idx):
        return Load(names[node.id], linearize(idx, node.type.shape))
    return leaf


__all__ = ["expand", "rewrite_tuples", "Walker", "NotWalkable", "MOVE_OPS", "leaf_loader"]
