"""Lowering a kernel subgraph (elementwise / broadcast / injective views + at most one
reduction) to a `LoopKernel`.

Views become index arithmetic: each node's value is built for a symbolic multi-index of
its own shape, and views rewrite that index for their input (broadcast -> 0, permute ->
permuted, slice -> start + step*i, reshape -> re-linearised). Elementwise ops become
scalar expressions. A reduction puts its kept axes in outer loops and its reduced axes in
inner loops around an accumulator.

Everything about an op comes from its class (`needle.ops.registry`): an elementwise op's
`element` formula is read through loop IR's table of the scalar vocabulary (`element_value`),
a view's `index_map` rewrites the index (`view_index`), a reduction's `combine` picks the
accumulator. Only the index maps that pick between pieces (Dilate, UnSlice, Stack, Concat,
tuple elements) are written here, in the op-keyed table `PIECEWISE`.
"""
from __future__ import annotations

from math import prod
from typing import Optional

from .. import ops as _ops  # noqa: F401  (every op registered before the lists below are derived)
from ..ir.graph import Graph, Node
from ..ops import scalar as S
from ..ops.registry import OPS, is_reduction, is_view, node_axes, op_from_node, op_names, reduced_axes
from .loop_ir import (ACC_COMBINE, ACC_IDENTITY, ACCUMULATORS, SCALAR, AccInit, AccRef, AccUpdate, Buffer, FConst,
                      For, ICmp, IConst, IVar, Load, LoopKernel, Select, Store, Unary, coefficient, iadd, idiv,
                      imod, imul, index_map, linearize, map_loads, rewrite, simplify, unravel, walk_exprs)
from .schedule import ScheduleError, parallelize, strip_mine
from .schedule import default_schedule

#: reductions lowered to an accumulator, views lowered as index maps (from the ops' facts)
REDUCTIONS = op_names(is_reduction)
VIEWS = op_names(is_view)
#: views an output may be of the kernel's domain (`_domain_index` inverts them)
_VIEW_CHAIN = op_names(lambda cls: is_view(cls) and cls.inverse_index_map is not None)


# ---- the evaluator: op facts -> loop IR ----------------------------------------------------
def element(node: Node) -> Optional[S.Expr]:
    """The scalar formula of an elementwise node (None when its op has none)."""
    cls = OPS.get(node.op)
    if cls is None or cls.element is None:
        return None
    return S.formula(cls.from_attrs(node.attr_dict).element, len(node.inputs))


def element_value(node: Node, operands: list):
    """Loop IR of elementwise `node` over its operands' values (None when it has no formula)."""
    expr = element(node)
    return None if expr is None else S.evaluate(expr, operands, SCALAR)


def view_index(node: Node, idx: tuple, in_shape, simp, inverse: bool = False) -> tuple:
    """The input index view `node` reads for output index `idx` (with `inverse`, the output
    index an input index is read at), simplified by `simp` when the map divided."""
    op = op_from_node(node.op, node.attr_dict)
    fn = op.inverse_index_map if inverse else op.index_map
    out, divided = index_map(lambda ix: fn(ix, tuple(in_shape), node.type.shape), idx)
    return simp(out) if divided else out


def accumulator(node: Node) -> tuple[str, float]:
    """(loop IR accumulator op, sign of the values it folds) of a reduction node."""
    return ACCUMULATORS[OPS[node.op].combine]


class LoweringError(NotImplementedError):
    pass


class _Lowerer:
    def __init__(self, graph: Graph, column_blocks: bool = True):
        self.g = graph
        self.column_blocks = column_blocks
        self.memo: dict = {}
        self.bufs = {n.id: f"in{k}" for k, n in enumerate(graph.inputs)}
        self.reds: dict = {}  # reduction node id -> kept-index tuple (its loop's)
        self.ranges: dict = {}  # loop variable -> extent (for index simplification)

    def simp(self, idx):
        return tuple(simplify(e, self.ranges) for e in idx)

    def shape(self, nid):
        t = self.g.node(nid).type
        if isinstance(t, tuple):
            raise LoweringError(f"tuple-typed value %{nid} in a kernel")
        if t.dtype != "float32":
            raise LoweringError(f"%{nid} has dtype {t.dtype}; kernels handle float32 only")
        return t.shape

    def val(self, nid: int, idx: tuple):
        """Value of node `nid` at multi-index `idx`. A value with no elements is never read
        (its loops run no iteration, or a select discards it), so it is a constant."""
        key = (nid, idx)
        if key not in self.memo:
            for m in self._unvalued(nid, idx):  # operands first: a chain of any length
                n = self.g.node(m)
                self.memo[(m, idx)] = FConst(0.0) if prod(n.type.shape) == 0 else self._val(n, idx)
        return self.memo[key]

    def _unvalued(self, nid: int, idx: tuple) -> list:
        """`nid` and the nodes it reads at the same index (elementwise operands, transitively)
        that have no value at `idx` yet, operands first, so that `_val` finds its operands'
        values without recursing."""
        order, seen, stack = [], set(), [(nid, False)]
        while stack:
            m, expanded = stack.pop()
            if expanded:
                order.append(m)
            elif m not in seen and (m, idx) not in self.memo:
                seen.add(m)
                stack.append((m, True))
                n = self.g.node(m)
                if n.op not in _INDEX_MAPS:
                    stack += ((i, False) for i in reversed(n.inputs))
        return order

    def _val(self, n: Node, idx):
        ins = n.inputs
        op = n.op
        if op == "input":
            return Load(self.bufs[n.id], linearize(idx, n.type.shape))
        if op == "const":
            v = n.attr("value")
            if not isinstance(v, (int, float)):
                raise LoweringError("non-scalar const in a kernel (pass it as an input)")
            return FConst(float(v))
        if op in REDUCTIONS:
            if not reduced_axes(n, len(self.shape(ins[0]))):  # one element folded: itself
                return self.val(ins[0], idx)
            if n.id not in self.reds:
                raise LoweringError(f"reduction %{n.id} is not one of the kernel's")
            if self.simp(idx) != self.reds[n.id]:
                raise LoweringError(f"reduction %{n.id} is read at an index other than its loop's")
            acc = AccRef(f"acc{n.id}")
            return acc if accumulator(n)[1] > 0 else Unary("neg", acc)
        if op in VIEWS:
            return self.val(ins[0], view_index(n, idx, self.shape(ins[0]), self.simp))
        if op in PIECEWISE:
            return PIECEWISE[op](self, n, idx)
        value = element_value(n, [self.val(i, idx) for i in ins])
        if value is None:
            raise LoweringError(f"op {op} (%{n.id}) cannot be lowered into a loop kernel")
        return value

    def parts(self, nid: int) -> list:
        """[(index -> value, shape)] of the elements of tuple value `nid`."""
        src = self.g.node(nid)
        if src.op not in TUPLE_PARTS:
            raise LoweringError(f"elements of {src.op} (%{nid}) cannot be lowered")
        return TUPLE_PARTS[src.op](self, src)


# ---- index maps that pick between pieces or zeros (index comparisons and selects) ----------
# Indices of the branches not taken are kept in bounds (they are still loaded); pieces with
# no elements are never selected.
def _dilate(lw: _Lowerer, n: Node, idx):
    """Zeros between the input's elements along `axes`."""
    axes = node_axes(n, len(idx))
    k = int(n.attr("dilation")) + 1
    conds = [ICmp("eq", imod(idx[a], k), IConst(0)) for a in axes]
    v = lw.val(n.inputs[0], lw.simp(tuple(idiv(i, k) if a in axes else i for a, i in enumerate(idx))))
    return _guard(conds, v)


def _unslice(lw: _Lowerer, n: Node, idx):
    """Zeros outside the input's slices."""
    in_shape = lw.shape(n.inputs[0])
    if prod(in_shape) == 0:
        return FConst(0.0)
    conds, src = [], []
    for i, (start, _, step), d in zip(idx, n.attr("slices"), in_shape):
        t = iadd(i, IConst(-start))
        conds += [ICmp("ge", t, IConst(0)), ICmp("lt", t, IConst(d * step))]
        if step != 1:
            conds.append(ICmp("eq", imod(t, step), IConst(0)))
        src.append(_wrap(idiv(t, step), d))
    return _guard(conds, lw.val(n.inputs[0], lw.simp(tuple(src))))


def _tuple_get_item(lw: _Lowerer, n: Node, idx):
    return lw.parts(n.inputs[0])[int(n.attr("index"))][0](idx)


def _select_tree(i, values: list, starts: list):
    """values[k] where starts[k] <= i < starts[k + 1], as a balanced tree of selects on i
    (depth log2 of the pieces: a stack of 1,500 split pieces made a chain of 1,500 selects,
    deeper than the recursive walkers over expressions can go)."""
    if len(values) == 1:
        return values[0]
    mid = len(values) // 2
    return Select(ICmp("lt", i, IConst(starts[mid])), _select_tree(i, values[:mid], starts[:mid]),
                  _select_tree(i, values[mid:], starts[mid:]))


def _stack(lw: _Lowerer, n: Node, idx):
    """A select between the pieces on the new axis."""
    ax = int(n.attr("axis")) % len(idx)
    rest = idx[:ax] + idx[ax + 1:]
    pieces = lw.parts(n.inputs[0])
    return _select_tree(idx[ax], [piece(rest) for piece, _ in pieces], list(range(len(pieces))))


def _concat(lw: _Lowerer, n: Node, idx):
    """A select between the pieces by the range of the axis index."""
    ax = int(n.attr("axis")) % len(idx)
    values, starts, start = [], [], 0
    for piece, shape in lw.parts(n.inputs[0]):
        d = shape[ax]
        if d:
            local = _wrap(iadd(idx[ax], IConst(-start)), d)
            values.append(piece(lw.simp(idx[:ax] + (local,) + idx[ax + 1:])))
            starts.append(start)
        start += d
    return _select_tree(idx[ax], values, starts)


def _make_tuple_parts(lw: _Lowerer, src: Node) -> list:
    return [((lambda idx, i=i: lw.val(i, idx)), lw.shape(i)) for i in src.inputs]


def _split_parts(lw: _Lowerer, src: Node) -> list:
    x = src.inputs[0]
    shape = lw.shape(x)
    ax = int(src.attr("axis")) % len(shape)
    return [((lambda idx, j=j: lw.val(x, idx[:ax] + (IConst(j),) + idx[ax:])), shape[:ax] + shape[ax + 1:])
            for j in range(shape[ax])]


#: op -> its value at an index, for the index maps that pick between pieces or zeros
PIECEWISE = {"Dilate": _dilate, "UnSlice": _unslice, "TupleGetItem": _tuple_get_item, "Stack": _stack,
             "Concat": _concat}
#: tuple-valued op -> its elements, as [(index -> value, shape)]
TUPLE_PARTS = {"MakeTensorTuple": _make_tuple_parts, "Split": _split_parts}
#: ops whose value at an index is not their operands' values at that index
_INDEX_MAPS = frozenset(("input", "const", *REDUCTIONS, *VIEWS, *PIECEWISE))


def _guard(conds, v):
    """v where every index condition holds, else 0."""
    for c in reversed(conds):
        v = Select(c, v, FConst(0.0))
    return v


def _wrap(i, d: int):
    """i mod d in [0, d) for any sign of i: an in-bounds index where a select discards it."""
    if isinstance(i, IConst):
        return IConst(i.value % d)
    return imod(iadd(imod(i, d), IConst(d)), d)


def _loads(exprs):
    seen = set()
    for e in exprs:
        for x in walk_exprs(e, seen):
            if isinstance(x, Load):
                yield x


def lower(graph: Graph, name: str = "kernel", column_blocks: bool = True) -> LoopKernel:
    """The loop nest of a kernel subgraph; its outputs are `graph.outputs` in order.
    `column_blocks=False` leaves a large column reduction's nests whole (the GPU binds them
    to its own grid) instead of one parallel loop over blocks of columns (`_column_blocks`,
    for CPU threads)."""
    lw = _Lowerer(graph, column_blocks)
    params = [Buffer(lw.bufs[n.id], prod(lw.shape(n.id)), "in", n.type.shape) for n in graph.inputs]
    outs = [(f"out{k}", o, lw.shape(o)) for k, o in enumerate(graph.outputs)]
    params += [Buffer(b, prod(s), "out", s) for b, o, s in outs]
    outs = [out for out in outs if prod(out[2])]  # nothing to store in an empty output
    reds = [n for n in graph.nodes if n.op in REDUCTIONS and reduced_axes(n, len(lw.shape(n.inputs[0])))]
    body = _lower_reduce(lw, reds, outs) if reds and outs else _lower_elementwise(lw, outs)
    return LoopKernel(name, tuple(params), tuple(body))


def _var_index(shape, prefix):
    return tuple(IConst(0) if d == 1 else IVar(f"{prefix}{k}") for k, d in enumerate(shape))


def _nest(shape, prefix, inner, outer_parallel=True):
    """Loops over the non-unit axes of `shape` around the statements `inner`: built serial,
    then scheduled by `schedule.default_schedule` (the innermost loop `vector`, the outermost
    of a nest at least two deep `parallel` when `outer_parallel` and its iterations are
    independent)."""
    axes = [k for k, d in enumerate(shape) if d != 1]
    body = tuple(inner)
    for k in reversed(axes):
        body = (For(f"{prefix}{k}", shape[k], "serial", body),)
    return default_schedule(LoopKernel("nest", (), body), parallel=outer_parallel).body


def _lower_elementwise(lw: _Lowerer, outs):
    """One loop nest over the first output's shape (the domain). An output of the same size in
    another shape (`return e, transpose(e)`) is stored at its own index of the same element,
    mapped from the domain's through its view chain (`_domain_index`)."""
    if not outs:
        return []
    if len({prod(s) for _, _, s in outs}) > 1:
        raise LoweringError(f"elementwise kernel outputs of different sizes {sorted({s for _, _, s in outs})}")
    shape = outs[0][2]
    idx = _var_index(shape, "i")
    lw.ranges = {f"i{k}": d for k, d in enumerate(shape) if d != 1}
    oidx = [idx if s == shape else _domain_index(lw, o, s, idx, shape) for _, o, s in outs]
    values = [lw.val(o, oi) for (_, o, _), oi in zip(outs, oidx)]
    # merge adjacent axes that every access walks contiguously into one loop
    axes = [k for k, d in enumerate(shape) if d != 1]
    loads = list(_loads(values))
    coef = {}
    for ld in loads:
        cs = [coefficient(ld.index, f"i{k}") for k in axes]
        if any(c is None for c in cs):
            coef = None
            break
        coef[ld] = cs
    if any(isinstance(x, ICmp) for v in values for x in walk_exprs(v)):
        coef = None  # index conditions name the i-variables: keep the nest unmerged
    if coef is None or len(axes) <= 1 or any(s != shape for _, _, s in outs):
        stores = [Store(b, linearize(oi, s), v) for (b, _, s), oi, v in zip(outs, oidx, values)]
        return list(_nest(shape, "i", stores))
    groups = [[0]]
    for p in range(1, len(axes)):
        d = shape[axes[p]]
        if all(cs[p - 1] == cs[p] * d for cs in coef.values()):
            groups[-1].append(p)
        else:
            groups.append([p])
    dims = [prod(shape[axes[p]] for p in g) for g in groups]
    zero = {f"i{k}": 0 for k in axes}

    def relink(ld):
        off = _eval(ld.index, zero)
        e = IConst(off)
        for gi, g in enumerate(groups):
            e = iadd(e, imul(IVar(f"j{gi}"), IConst(coef[ld][g[-1]])))
        return Load(ld.buf, e)

    memo: dict = {}
    jidx = tuple(IVar(f"j{g}") for g in range(len(groups)))
    stores = [Store(b, linearize(jidx, dims), map_loads(v, relink, memo))
              for (b, _, _), v in zip(outs, values)]
    return list(_nest(tuple(dims), "j", stores))


def _eval(e, env):
    if isinstance(e, IVar):
        return env[e.name]
    if isinstance(e, IConst):
        return e.value
    a, b = _eval(e.a, env), _eval(e.b, env)
    return {"add": a + b, "mul": a * b, "div": a // b if b else 0, "mod": a % b if b else 0}[e.op]


def _uses_acc(e):
    return any(isinstance(x, AccRef) for x in walk_exprs(e))


def _domain_index(lw: _Lowerer, o: int, shape, dom_idx, dom_shape):
    """An index into `shape` (the shape of output `o`, of the same size as `dom_shape`) as a
    bijective function of `dom_idx`: the inverse of the view chain (Reshape/Permute/
    Transpose through elementwise nodes of o's shape) from o down to a node of `dom_shape`
    if there is one, else the row-major reshape (same linear order)."""
    def chain():
        # depth-first from o (operands in order, each node expanded once); the path back up
        # from the node of dom_shape found is the chain of views, from the domain up
        seen: set = set()
        parent: dict = {}
        stack = [(o, None)]
        while stack:
            nid, up = stack.pop()
            n = lw.g.node(nid)
            if n.type.shape == tuple(dom_shape) and (nid in seen or n.op not in _VIEW_CHAIN):
                steps = []  # (a transpose of a square domain has its shape but is a view of it)
                while up is not None:
                    if lw.g.node(up).op in _VIEW_CHAIN:
                        steps.append(lw.g.node(up))
                    up = parent[up]
                return steps
            if nid in seen or n.op in ("input", "const") or n.op in REDUCTIONS:
                continue
            seen.add(nid)
            parent[nid] = up
            if n.op in _VIEW_CHAIN:
                if prod(lw.shape(n.inputs[0])) == prod(dom_shape):
                    stack.append((n.inputs[0], nid))
            elif n.op not in VIEWS:
                stack += [(i, nid) for i in reversed(n.inputs) if lw.shape(i) == n.type.shape]
        return None

    idx = tuple(dom_idx)
    cur = tuple(dom_shape)
    steps = chain()
    for n in steps or []:  # from the domain up to o: invert each view
        idx = view_index(n, idx, cur, lw.simp, inverse=True)
        cur = n.type.shape
    if cur != tuple(shape):
        idx = lw.simp(unravel(linearize(idx, cur), shape))
    return idx


def _lower_reduce(lw: _Lowerer, reds: list, outs):
    """One reduction, or a row chain of them (the same axes of one input shape, the
    innermost among them: softmax's max and sum): for each kept point, each reduction's
    pass in graph order (a later one may read an earlier one's result), then a pass for
    the full-domain outputs that read a result, then the kept-domain outputs."""
    red = reds[0]
    full = lw.shape(red.inputs[0])
    raxes = reduced_axes(red, len(full))
    if any(lw.shape(r.inputs[0]) != full or reduced_axes(r, len(full)) != raxes for r in reds[1:]):
        raise LoweringError("reductions of different shapes or axes in one kernel")
    kept = [k for k in range(len(full)) if k not in raxes]
    rshape = red.type.shape
    full_idx = _var_index(full, "i")
    kept_idx = tuple(full_idx[k] for k in kept)
    lw.ranges = {f"i{k}": d for k, d in enumerate(full) if d != 1}
    lw.reds = {r.id: lw.simp(kept_idx) for r in reds}
    values = [lw.val(r.inputs[0], full_idx) for r in reds]
    first, second, after = [], [], []
    for b, o, s in outs:
        if s == rshape or (prod(s) == prod(rshape) and prod(s) != prod(full)):
            # the kept domain (or a reshape of it): stored at the kept index
            oidx = _domain_index(lw, o, s, kept_idx, rshape)
            after.append(Store(b, linearize(oidx, s), lw.val(o, oidx)))
        elif prod(s) == prod(full):
            # the full domain, or a view of it: stored at the element the loop visits
            oidx = _domain_index(lw, o, s, full_idx, full)
            v = lw.val(o, oidx)
            (second if _uses_acc(v) else first).append(Store(b, linearize(oidx, s), v))
        else:
            raise LoweringError(f"output of shape {s} in a reduction kernel over {full} -> {rshape}")
    rdims = tuple(d if k in raxes else 1 for k, d in enumerate(full))
    last = first if len(reds) == 1 else []  # stores of the last reduction's pass
    _reuse_reduced_value(values[-1], full, full_idx, last, second)
    if len(reds) == 1:
        columns = _lower_columns(lw, red, full, raxes, rshape, kept_idx, values[0], outs, first, second, after)
        if columns is not None:
            return columns
    elif max(k for k, d in enumerate(full) if d != 1) not in raxes:
        raise LoweringError("a chain of reductions over outer axes (columns) in one kernel")
    inner = []
    for k, (r, value) in enumerate(zip(reds, values)):
        acc, op = f"acc{r.id}", accumulator(r)[0]
        extra = (first if k == 0 else []) + (last if k == len(reds) - 1 and k else [])
        inner += [AccInit(acc, op)]
        inner += _nest(rdims, "i", [AccUpdate(acc, op, _signed(r, value))] + extra, outer_parallel=False)
    if second:  # epilogue over the full domain that reads the reduced values: a last pass
        inner += _nest(rdims, "i", second, outer_parallel=False)
    inner += after
    axes = [k for k in kept if full[k] != 1]
    body = tuple(inner)
    for pos, k in enumerate(reversed(axes)):
        body = (For(f"i{k}", full[k], "parallel" if pos == len(axes) - 1 else "serial", body),)
    return list(body)


def _signed(red: Node, value):
    """The value reduction `red` folds into its accumulator (negated for a minimum)."""
    return value if accumulator(red)[1] > 0 else Unary("neg", value)


def _reuse_reduced_value(value, full, full_idx, first, second) -> None:
    """When a second-pass output (stored at the full index) recomputes the reduction's input
    (softmax: exp(x - max) / sum), store that input into the output in the first pass and
    read it back in the second, instead of computing it twice (exp is the costly part)."""
    if isinstance(value, (Load, FConst, AccRef)):
        return
    for k, st in enumerate(second):
        if st.index != linearize(full_idx, full) or not any(x is value for x in walk_exprs(st.value)):
            continue
        back = Load(st.buf, st.index)
        first.append(Store(st.buf, st.index, value))
        second[k] = Store(st.buf, st.index, rewrite(st.value, lambda x: back if x is value else None))
        return


def _lower_columns(lw, red, full, raxes, rshape, kept_idx, value, outs, first, second, after):
    """A reduction over outer axes of rows that the innermost axis keeps (column sums, e.g.
    BatchNorm statistics or bias gradients): accumulate whole rows into a kept-domain output
    buffer, so every access is contiguous along the innermost axis and vectorises, instead of
    one strided accumulator per column. Then the second pass (full-domain outputs reading the
    reduced value) and the kept-domain outputs, the accumulator's own buffer written last.
    None when the innermost axis is reduced or no output has the kept shape."""
    last = max((k for k, d in enumerate(full) if d != 1), default=None)
    if last is None or last in raxes or all(full[k] == 1 for k in raxes):
        return None
    def squeeze(shape):
        return tuple(d for d in shape if d != 1)

    # an output laid out as the kept domain (its shape, or with unit axes added) and stored
    # at the kept element's own linear index (not, say, a transpose of a square kept domain)
    lin = linearize(kept_idx, rshape)
    stored_at = {st.buf: st.index for st in after}
    same = [(b, o) for b, o, s in outs if squeeze(s) == squeeze(rshape) and stored_at.get(b) == lin]
    buf = next((b for b, o in same if o == red.id), None) or next((b for b, o in same), None)
    if buf is None:
        return None
    acc, op = f"acc{red.id}", accumulator(red)[0]
    cur = Load(buf, linearize(kept_idx, rshape))
    memo: dict = {}

    def sub(st):
        return Store(st.buf, st.index, _replace_acc(st.value, acc, cur, memo))

    update = ACC_COMBINE[op](cur, _signed(red, value))
    kdims = tuple(1 if k in raxes else d for k, d in enumerate(full))
    body = list(_nest(kdims, "i", [Store(buf, cur.index, FConst(ACC_IDENTITY[op]))], outer_parallel=False))
    body += _nest(full, "i", [Store(buf, cur.index, update)] + first, outer_parallel=False)
    if second:
        body += _nest(full, "i", [sub(st) for st in second], outer_parallel=False)
    tail = sorted((st for st in map(sub, after) if not (st.buf == buf and st.value == cur)),
                  key=lambda st: st.buf == buf)
    body += _nest(kdims, "i", tail, outer_parallel=False)
    return _column_blocks(body, full, last) if lw.column_blocks else body


#: elements a column reduction must cover before its columns are split across threads
COLUMN_BLOCKS_MIN = 1 << 16


def _column_blocks(body, full, last):
    """A column reduction's nests as one parallel loop over blocks of whole columns (each
    block runs every nest over its own columns: `strip_mine`), so threads share the work.
    Blocks are a multiple of the vector width that divides the column count, with at least
    eight of them; `body` is returned unchanged when the reduction is small or no such
    width exists."""
    n = full[last]
    width = next((w for w in range(8 * (n // 64), 0, -8) if n % w == 0), None)  # n // w >= 8
    if width is None or prod(full) < COLUMN_BLOCKS_MIN:
        return body
    try:
        kernel = strip_mine(LoopKernel("columns", (), tuple(body)), f"i{last}", width, "cb")
        return list(parallelize(kernel, "cb").body)
    except ScheduleError:
        return body


def _replace_acc(e, acc: str, repl, memo: dict):
    """A copy of value expression e with AccRef(acc) replaced by `repl`."""
    return rewrite(e, lambda x: repl if isinstance(x, AccRef) and x.acc == acc else None, memo)


__all__ = ["lower", "simplify", "LoweringError", "REDUCTIONS", "VIEWS", "PIECEWISE", "element", "element_value", "view_index",
           "accumulator"]
