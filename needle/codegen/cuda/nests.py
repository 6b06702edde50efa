"""Loop nests as GPU statements, shared by the schedules (schedule.py, columns.py): a linear
index decoded into loop variables, the outermost perfect nest, a nest run serially by one
thread, and one outer point's statements spread over a block's lanes (`distribute`), with
the accumulators they read and update."""
from __future__ import annotations

from math import prod

from ..loop_ir import (AccInit, AccRef, AccUpdate, For, iadd, ICmp, IConst, idiv, imod, imul, IVar, Load, Store,
                       walk_exprs)
from .gpu_ir import Barrier, Decl, IAnd, IDecl, If, Var, walk_stmts


def decode(lin, loops) -> list:
    """IDecls of each loop's variable from a linear index over the loops' extents (the
    last loop fastest)."""
    out = []
    stride = 1
    strides = []
    for lp in reversed(loops):
        strides.append(stride)
        stride *= lp.extent
    strides.reverse()
    for k, (lp, st) in enumerate(zip(loops, strides)):
        e = idiv(lin, st)
        if k > 0:
            e = imod(e, lp.extent)
        out.append(IDecl(lp.var, e))
    return out


def perfect_nest(body):
    """(loops, inner body) of the outermost perfect nest of `body`."""
    loops = []
    while len(body) == 1 and isinstance(body[0], For):
        loops.append(body[0])
        body = body[0].body
    return loops, tuple(body)


def serial(stmts) -> tuple:
    """Loop-IR statements as per-thread GPU statements (loops run serially). A run of
    several stores computes every value before storing any: an output may share memory
    with an input (the memory plan's in-place reuse), so a store must not precede a load
    of the same element by a later store's expression."""
    out = []
    run: list = []

    def flush():
        if len(run) > 1:
            base = sum(1 for x in out if isinstance(x, Decl))
            names = [f"v{base + k}" for k in range(len(run))]
            out.extend(Decl(n, st.value) for n, st in zip(names, run))
            out.extend(Store(st.buf, st.index, Var(n)) for n, st in zip(names, run))
        else:
            out.extend(run)
        run.clear()

    for s in stmts:
        if isinstance(s, Store):
            written = {st.buf for st in run}
            if any(isinstance(e, Load) and e.buf in written for e in walk_exprs(s.value)):
                flush()  # this store reads what the run stored: it comes after those stores
            run.append(s)
            continue
        flush()
        if isinstance(s, For):
            out.append(For(s.var, s.extent, "serial", serial(s.body)))
        else:
            out.append(s)
    flush()
    return tuple(out)


def has_acc(stmts) -> bool:
    return any(isinstance(s, AccInit) for s in walk_stmts(stmts))


def _values(stmts):
    """Every expression the statements compute (stores' and accumulator updates' values)."""
    for x in walk_stmts(stmts):
        if isinstance(x, (Store, AccUpdate)):
            yield from walk_exprs(x.value)


def acc_reads(s) -> set:
    return {e.acc for e in _values((s,)) if isinstance(e, AccRef)}


def acc_updates(s) -> set:
    return {x.acc for x in walk_stmts((s,)) if isinstance(x, AccUpdate)}


def loads(stmts) -> set:
    """The buffers the statements read."""
    return {e.buf for e in _values(stmts) if isinstance(e, Load)}


def stores(stmts) -> set:
    """The buffers the statements write."""
    return {x.buf for x in walk_stmts(stmts) if isinstance(x, Store)}


def distribute(inner, lane: str, nlanes: int, guard, reduce_fn, accs_out: dict) -> list:
    """The statements of one outer point spread over `nlanes` threads (`lane` their index):
    loop nests strided over the lanes, other statements on lane 0; accumulators reduced
    across lanes (reduce_fn) before their first read."""
    out = []
    accs: dict = {}
    pending: set = set()
    stored: set = set()
    lv = IVar(lane)
    for n, s in enumerate(inner):
        if isinstance(s, AccInit):
            accs[s.acc] = s.op
            out.append(s)
            continue
        for a in sorted(acc_reads(s) & pending):
            out += reduce_fn(a, accs[a])
            pending.discard(a)
        if loads((s,)) & stored:  # global values written by other threads of the block
            out.append(Barrier())
            stored.clear()
        if isinstance(s, For):
            nest, body = perfect_nest((s,))
            R = prod(lp.extent for lp in nest)
            rv = f"r{n}"
            cond = ICmp("lt", IVar(rv), IConst(R))
            if guard is not None:
                cond = IAnd(guard, cond)
            work = (If(cond, tuple(decode(IVar(rv), nest)) + serial(body)),)
            if R <= nlanes:
                out += [IDecl(rv, lv), *work]
            else:
                kv = f"k{n}"
                lane_r = IDecl(rv, iadd(imul(IVar(kv), IConst(nlanes)), lv))
                out.append(For(kv, -(-R // nlanes), "serial", (lane_r,) + work))
        else:
            cond = ICmp("eq", lv, IConst(0))
            if guard is not None:
                cond = IAnd(guard, cond)
            out.append(If(cond, serial((s,))))
        pending |= acc_updates(s)
        stored |= stores((s,))
    accs_out.update(accs)
    return out


__all__ = ["decode", "perfect_nest", "serial", "has_acc", "acc_reads", "acc_updates", "loads", "stores", "distribute"]
