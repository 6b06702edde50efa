"""Lowering a kernel subgraph (elementwise / broadcast / injective views + at most one
reduction) to a `LoopKernel`.

Views become index arithmetic: each node's value is built for a symbolic multi-index of
its own shape, and views rewrite that index for their input (broadcast -> 0, permute ->
permuted, slice -> start + step*i, reshape -> re-linearised). Elementwise ops become
scalar expressions. A reduction puts its kept axes in outer loops and its reduced axes in
inner loops around an accumulator.
"""
from __future__ import annotations

from math import prod

from ..ir.graph import Graph, Node
from ..ops.registry import OPS, normalize_axes, op_from_node
from .loop_ir import (AccInit, AccRef, AccUpdate, Binary, Buffer, Cmp, FConst, For, IConst, IVar,
                      Load, LoopKernel, Select, Store, Unary, coefficient, iadd, imul, linearize,
                      map_loads, unravel, walk_exprs)

REDUCTIONS = {"Summation": "sum", "Max": "max"}
VIEWS = ("Reshape", "BroadcastTo", "Permute", "Transpose", "GetItem")


class LoweringError(NotImplementedError):
    pass


def _axes(node: Node, ndim: int):
    op = op_from_node(node.op, node.attr_dict)
    ax = normalize_axes(op, node.attr("axes"), ndim)
    return tuple(range(ndim)) if ax is None else ax


class _Lowerer:
    def __init__(self, graph: Graph):
        self.g = graph
        self.memo: dict = {}
        self.bufs = {n.id: f"in{k}" for k, n in enumerate(graph.inputs)}
        self.red = None  # (node, kept-index tuple) of the kernel's reduction

    def shape(self, nid):
        t = self.g.node(nid).type
        if isinstance(t, tuple):
            raise LoweringError(f"tuple-typed value %{nid} in a kernel")
        if t.dtype != "float32":
            raise LoweringError(f"%{nid} has dtype {t.dtype}; kernels handle float32 only")
        return t.shape

    def val(self, nid: int, idx: tuple):
        key = (nid, idx)
        if key not in self.memo:
            self.memo[key] = self._val(self.g.node(nid), idx)
        return self.memo[key]

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
            if self.red is None or self.red[0] is not n:
                raise LoweringError("more than one reduction in a kernel")
            if idx != self.red[1]:
                raise LoweringError(f"reduction %{n.id} is read at an index other than its loop's")
            return AccRef(f"acc{n.id}")
        if op in VIEWS:
            return self.val(ins[0], self._view_index(n, idx))
        a = [self.val(i, idx) for i in ins]
        s = n.attr("scalar")
        if op == "EWiseAdd":
            return Binary("add", a[0], a[1])
        if op == "EWiseMul":
            return Binary("mul", a[0], a[1])
        if op == "EWiseDiv":
            return Binary("div", a[0], a[1])
        if op == "EWisePow":
            return Binary("pow", a[0], a[1])
        if op == "AddScalar":
            return Binary("add", a[0], FConst(float(s)))
        if op == "MulScalar":
            return Binary("mul", a[0], FConst(float(s)))
        if op == "DivScalar":
            return Binary("div", a[0], FConst(float(s)))
        if op == "PowerScalar":
            return _power(a[0], s)
        if op == "Negate":
            return Unary("neg", a[0])
        if op in ("Log", "Exp", "Tanh"):
            return Unary(op.lower(), a[0])
        if op == "Detach":
            return a[0]
        if op == "ReLU":
            return Select(Cmp("le", a[0], FConst(0.0)), FConst(0.0), a[0])
        if op == "Sigmoid":
            t = Unary("tanh", Binary("mul", a[0], FConst(0.5)))
            return Binary("mul", Binary("add", t, FConst(1.0)), FConst(0.5))
        if op == "Compare":
            b = FConst(float(s)) if len(a) == 1 else a[1]
            return Select(Cmp(n.attr("cmp"), a[0], b), FConst(1.0), FConst(0.0))
        if op == "Where":
            return Select(Cmp("ne", a[0], FConst(0.0)), a[1], a[2])
        raise LoweringError(f"op {op} (%{n.id}) cannot be lowered into a loop kernel")

    def _view_index(self, n: Node, idx):
        in_shape = self.shape(n.inputs[0])
        out_shape = n.type.shape
        if n.op == "BroadcastTo":
            lead = len(out_shape) - len(in_shape)
            return tuple(IConst(0) if d == 1 else idx[lead + k] for k, d in enumerate(in_shape))
        if n.op in ("Permute", "Transpose"):
            perm = op_from_node(n.op, n.attr_dict)
            perm = perm._perm(len(in_shape)) if n.op == "Transpose" else perm.axes
            out = [None] * len(in_shape)
            for k, ax in enumerate(perm):
                out[ax] = idx[k]
            return tuple(out)
        if n.op == "GetItem":
            return tuple(iadd(IConst(st), imul(i, IConst(step)))
                         for i, (st, _, step) in zip(idx, n.attr("slices")))
        # Reshape: size-1 axes carry no index; equal remaining shapes map one to one
        kept = [(i, d) for i, d in zip(idx, out_shape) if d != 1]
        in_kept = [d for d in in_shape if d != 1]
        if [d for _, d in kept] == in_kept:
            it = iter(i for i, _ in kept)
            return tuple(IConst(0) if d == 1 else next(it) for d in in_shape)
        return tuple(unravel(linearize(idx, out_shape), in_shape))


def _power(x, p):
    p = float(p)
    if p == 0.5:
        return Unary("sqrt", x)
    if p == -0.5:
        return Binary("div", FConst(1.0), Unary("sqrt", x))
    if p == int(p) and abs(p) <= 64:
        n = int(abs(p))
        out, base = None, x
        while n:  # binary exponentiation: integer powers as multiplies
            if n & 1:
                out = base if out is None else Binary("mul", out, base)
            n >>= 1
            if n:
                base = Binary("mul", base, base)
        out = FConst(1.0) if out is None else out
        return Binary("div", FConst(1.0), out) if p < 0 else out
    return Binary("pow", x, FConst(p))


def _loads(exprs):
    seen = set()
    for e in exprs:
        for x in walk_exprs(e, seen):
            if isinstance(x, Load):
                yield x


def lower(graph: Graph, name: str = "kernel") -> LoopKernel:
    """The loop nest of a kernel subgraph; its outputs are `graph.outputs` in order."""
    lw = _Lowerer(graph)
    params = [Buffer(lw.bufs[n.id], prod(lw.shape(n.id)), "in", n.type.shape) for n in graph.inputs]
    outs = [(f"out{k}", o, lw.shape(o)) for k, o in enumerate(graph.outputs)]
    params += [Buffer(b, prod(s), "out", s) for b, o, s in outs]
    reds = [n for n in graph.nodes if n.op in REDUCTIONS and _axes(n, len(lw.shape(n.inputs[0])))]
    if len(reds) > 1:
        raise LoweringError(f"{len(reds)} reductions in one kernel (at most one)")
    if reds:
        body = _lower_reduce(lw, reds[0], outs)
    else:
        body = _lower_elementwise(lw, outs)
    return LoopKernel(name, tuple(params), tuple(body))


def _var_index(shape, prefix):
    return tuple(IConst(0) if d == 1 else IVar(f"{prefix}{k}") for k, d in enumerate(shape))


def _nest(shape, prefix, inner, outer_parallel=True):
    """Loops over the non-unit axes of `shape` around the statements `inner`."""
    axes = [k for k, d in enumerate(shape) if d != 1]
    body = tuple(inner)
    for pos, k in enumerate(reversed(axes)):
        kind = "vector" if pos == 0 else "serial"
        if pos == len(axes) - 1 and pos > 0 and outer_parallel:
            kind = "parallel"
        body = (For(f"{prefix}{k}", shape[k], kind, body),)
    return body


def _lower_elementwise(lw: _Lowerer, outs):
    shapes = {s for _, _, s in outs}
    if len(shapes) > 1:
        raise LoweringError(f"elementwise kernel outputs of different shapes {sorted(shapes)}")
    if not outs:
        return []
    shape = outs[0][2]
    idx = _var_index(shape, "i")
    values = [lw.val(o, idx) for _, o, _ in outs]
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
    if coef is None or len(axes) <= 1:
        stores = [Store(b, linearize(idx, shape), v) for (b, _, _), v in zip(outs, values)]
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


def _lower_reduce(lw: _Lowerer, red: Node, outs):
    src = red.inputs[0]
    full = lw.shape(src)
    raxes = _axes(red, len(full))
    kept = [k for k in range(len(full)) if k not in raxes]
    rshape = red.type.shape
    full_idx = _var_index(full, "i")
    kept_idx = tuple(full_idx[k] for k in kept)
    lw.red = (red, kept_idx)
    acc, op = f"acc{red.id}", REDUCTIONS[red.op]
    value = lw.val(src, full_idx)
    first, second, after = [], [], []
    for b, o, s in outs:
        if s == rshape:
            after.append(Store(b, linearize(kept_idx, rshape), lw.val(o, kept_idx)))
        elif s == full:
            v = lw.val(o, full_idx)
            (second if _uses_acc(v) else first).append(Store(b, linearize(full_idx, full), v))
        else:
            raise LoweringError(f"output of shape {s} in a reduction kernel over {full} -> {rshape}")
    rdims = tuple(d if k in raxes else 1 for k, d in enumerate(full))
    inner = [AccInit(acc, op)]
    inner += _nest(rdims, "i", [AccUpdate(acc, op, value)] + first, outer_parallel=False)
    if second:
        inner += _nest(rdims, "i", second, outer_parallel=False)
    inner += after
    kdims = tuple(d if k in kept else 1 for k, d in enumerate(full))
    axes = [k for k in kept if full[k] != 1]
    body = tuple(inner)
    for pos, k in enumerate(reversed(axes)):
        body = (For(f"i{k}", full[k], "parallel" if pos == len(axes) - 1 else "serial", body),)
    del kdims
    return list(body)


__all__ = ["lower", "LoweringError", "REDUCTIONS", "VIEWS", "OPS"]
