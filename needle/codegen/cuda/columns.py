"""Column reductions on the GPU: reductions whose kept (outer) axis is the contiguous one,
e.g. BatchNorm statistics over the rows of (N*H*W, C) or a bias gradient over a batch.

* `column_reduce`: one launch. Blocks of 32 x TY threads; `tx` walks 32 consecutive outer
  points (coalesced), `ty` strides over the reduced elements; partials are combined across
  `ty` by a shared-memory tree with a barrier per level, so every thread holds the total and
  the passes that read it (BatchNorm's normalisation over every row) run on all lanes. TY is
  8, or 16 / 32 when the grid would be small and the columns long (`column_lanes`). Threads
  past the end of the outer loop (a partial block) keep identity partials and still reach
  every barrier.
* `split_column_reduce`: two launches for few long columns (a handful of blocks would leave
  the GPU idle): the rows are cut into P slices, one block per (slice, 32 columns). The
  first launch (`<name>_part`) runs the reduction nest over its slice (and the stores inside
  that nest) and writes one partial per column to the scratch parameter `part`; the second
  combines the P partials of its columns in one fixed order (the same bits in every block
  and every run), runs the passes over its slice, and block 0 of each column chunk the
  statements after them (the kept-shape stores). Used when the kernel has one accumulator,
  reduced before anything reads it, and no pass or kept-shape store reads what another
  block writes in the same launch.
"""
from __future__ import annotations

from math import prod

from ..loop_ir import AccInit, AccRef, AccUpdate, For, iadd, ICmp, IConst, idiv, imod, imul, IVar, Load, Store
from .gpu_ir import Assign, Barrier, GParam, GpuKernel, IAnd, IDecl, If, Shared, SLoad, SStore, Var, walk_stmts
from .nests import acc_reads, acc_updates, decode, distribute, loads, perfect_nest, serial, stores

COLUMN_TX, COLUMN_TY = 32, 8
#: a column reduction whose grid has fewer threads than this (few, long columns: BatchNorm
#: statistics, bias gradients) gets up to COLUMN_TY_MAX lanes per column, each keeping at
#: least COLUMN_MIN_PER_LANE of the reduced elements
COLUMN_FEW_THREADS, COLUMN_TY_MAX, COLUMN_MIN_PER_LANE = 32768, 32, 16
#: split_column_reduce: used below SPLIT_BLOCKS // 2 blocks, aiming at about SPLIT_BLOCKS,
#: each slice at least SPLIT_MIN_ROWS rows
SPLIT_BLOCKS, SPLIT_MIN_ROWS = 256, 64


def column_lanes(blocks: int, rmax: int) -> int:
    """Threads per column (`ty` lanes) of a column reduction of `blocks` blocks reducing
    `rmax` elements per column: COLUMN_TY, doubled while the grid is small and the columns
    long (see COLUMN_FEW_THREADS)."""
    ty = COLUMN_TY
    while (ty < COLUMN_TY_MAX and blocks * COLUMN_TX * ty < COLUMN_FEW_THREADS
           and rmax >= 2 * ty * COLUMN_MIN_PER_LANE):
        ty *= 2
    return ty


def _column_decls(loops, block):
    """(IDecls of the outer loop variables from the column block index `block`, the
    condition that this thread's column exists, the number of column blocks)."""
    last, rest = loops[-1], loops[:-1]
    chunks = -(-last.extent // COLUMN_TX)
    body = [IDecl("chunk", imod(block, chunks))]
    if rest:
        body.append(IDecl("orow", idiv(block, chunks)))
        body += decode(IVar("orow"), rest)
    body.append(IDecl(last.var, iadd(imul(IVar("chunk"), IConst(COLUMN_TX)), IVar("tx"))))
    return body, ICmp("lt", IVar(last.var), IConst(last.extent)), prod(lp.extent for lp in rest) * chunks


def _tree(acc, op, ty_lanes, shared: list) -> list:
    """Statements combining `acc` across the `ty` lanes (a shared-memory tree, a barrier per
    level), leaving the total in every thread of the column."""
    sm = f"{acc}_s"
    shared.append(Shared(sm, COLUMN_TX * ty_lanes))
    tx, ty = IVar("tx"), IVar("ty")
    out = [SStore(sm, iadd(imul(ty, IConst(COLUMN_TX)), tx), Var(acc)), Barrier()]
    s = ty_lanes // 2
    while s >= 1:
        out.append(If(ICmp("lt", ty, IConst(s)), (
            AccUpdate(acc, op, SLoad(sm, iadd(imul(iadd(ty, IConst(s)), IConst(COLUMN_TX)), tx))),
            SStore(sm, iadd(imul(ty, IConst(COLUMN_TX)), tx), Var(acc)))))
        out.append(Barrier())
        s //= 2
    out.append(Assign(acc, SLoad(sm, tx)))
    return out


def column_reduce(name, params, loops, inner, rmax: int = 0) -> GpuKernel:
    """One launch (see the module docstring)."""
    body, valid, total = _column_decls(loops, IVar("bx"))
    TY = column_lanes(total, rmax)
    shared: list = []
    body += distribute(inner, "ty", TY, valid, lambda a, op: _tree(a, op, TY, shared), {})
    return GpuKernel(name, params, (total, 1, 1), (COLUMN_TX, TY, 1), tuple(body), tuple(shared),
                     note=f"column reduction: {total} blocks of {COLUMN_TX}x{TY} threads")


def _phases(inner):
    """(accumulator, op, reduction nests, passes, kept-shape statements) of a column kernel
    that split_column_reduce can take, else None."""
    if not inner or not isinstance(inner[0], AccInit):
        return None
    if sum(1 for x in walk_stmts(inner) if isinstance(x, AccInit)) != 1:
        return None
    acc, op = inner[0].acc, inner[0].op
    k = 1
    while k < len(inner) and acc_updates(inner[k]):
        if not isinstance(inner[k], For) or acc in acc_reads(inner[k]):
            return None
        k += 1
    reduce, rest = list(inner[1:k]), list(inner[k:])
    if not reduce or any(acc_updates(s) for s in rest):
        return None
    passes = [s for s in rest if isinstance(s, For)]
    kept = [s for s in rest if not isinstance(s, For)]
    if rest != passes + kept:  # a pass after a kept-shape store
        return None
    if loads(passes) & stores(passes) or loads(kept) & stores(passes + kept + reduce):
        return None
    return acc, op, reduce, passes, kept


def _slice(s, n, p, slices, lanes, guard) -> For:
    """Nest `s` over its flattened iterations restricted to slice `p` of `slices`, strided over
    the `ty` lanes."""
    nest, body = perfect_nest((s,))
    R = prod(lp.extent for lp in nest)
    CH = -(-R // slices)
    rv, kv = f"r{n}", f"k{n}"
    local = iadd(imul(IVar(kv), IConst(lanes)), IVar("ty"))
    cond = IAnd(guard, IAnd(ICmp("lt", local, IConst(CH)), ICmp("lt", IVar(rv), IConst(R))))
    work = (IDecl(rv, iadd(imul(p, IConst(CH)), local)), If(cond, tuple(decode(IVar(rv), nest)) + serial(body)))
    return For(kv, -(-CH // lanes), "serial", work)


def split_column_reduce(name, params, loops, inner, rmax: int):
    """[partials launch, finishing launch] (see the module docstring), or None when the
    reduction is not few long columns or its statements do not allow it."""
    _, _, total = _column_decls(loops, IVar("bx"))
    slices = min(-(-SPLIT_BLOCKS // total), rmax // SPLIT_MIN_ROWS)
    if total >= SPLIT_BLOCKS // 2 or slices < 2:
        return None
    phases = _phases(inner)
    if phases is None:
        return None
    acc, op, reduce, passes, kept = phases
    TY = COLUMN_TY
    p, cb = IVar("p"), IVar("cb")
    head = [IDecl("cb", imod(IVar("bx"), total)), IDecl("p", idiv(IVar("bx"), total))]
    decls, valid, _ = _column_decls(loops, cb)
    cell = iadd(imul(iadd(imul(p, IConst(total)), cb), IConst(COLUMN_TX)), IVar("tx"))
    part = GParam("part", slices * total * COLUMN_TX, "out")

    shared_a: list = []
    body = head + decls + [inner[0]]
    body += [_slice(s, n, p, slices, TY, valid) for n, s in enumerate(reduce)]
    body += _tree(acc, op, TY, shared_a)
    body.append(If(ICmp("eq", IVar("ty"), IConst(0)), (Store("part", cell, AccRef(acc)),)))
    first = GpuKernel(f"{name}_part", params + (part,), (total * slices, 1, 1), (COLUMN_TX, TY, 1), tuple(body),
                      tuple(shared_a), note=f"column reduction, partials of {slices} row slices: "
                                            f"{total * slices} blocks of {COLUMN_TX}x{TY} threads")

    shared_b: list = []
    q, kq = IVar("q"), IVar("kq")
    other = iadd(imul(iadd(imul(q, IConst(total)), cb), IConst(COLUMN_TX)), IVar("tx"))
    gather = For("kq", -(-slices // TY), "serial", (
        IDecl("q", iadd(imul(kq, IConst(TY)), IVar("ty"))),
        If(ICmp("lt", q, IConst(slices)), (AccUpdate(acc, op, Load("part", other)),))))
    body = head + decls + [inner[0], gather] + _tree(acc, op, TY, shared_b)
    body += [_slice(s, n, p, slices, TY, valid) for n, s in enumerate(passes, len(reduce))]
    lane0 = IAnd(valid, IAnd(ICmp("eq", IVar("ty"), IConst(0)), ICmp("eq", p, IConst(0))))
    body += [If(lane0, serial((s,))) for s in kept]
    reads = GParam("part", slices * total * COLUMN_TX, "in")
    second = GpuKernel(name, params + (reads,), (total * slices, 1, 1), (COLUMN_TX, TY, 1), tuple(body),
                       tuple(shared_b), note=f"column reduction, {slices} row slices combined: "
                                             f"{total * slices} blocks of {COLUMN_TX}x{TY} threads")
    return [first, second]


__all__ = ["column_reduce", "split_column_reduce", "column_lanes", "COLUMN_TX", "COLUMN_TY"]
