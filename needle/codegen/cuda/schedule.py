"""GPU schedules: bind a `LoopKernel` (from `needle.codegen.lower`) to a CUDA grid.

The kernel's outermost perfect loop nest is its *outer* iteration space; the statements
inside it run once per outer point. Three schedules:

* **pointwise** (no accumulator, or a reduction over at most `SERIAL_MAX` elements): one
  thread per outer point. The outer loops are flattened into one linear index
  `gid = bx * B + tx` (guarded `gid < total` for the partial last block) and decoded back
  with div/mod, the innermost loop fastest, so neighbouring threads touch neighbouring
  elements (coalesced). Inner loops run serially in the thread.
* **row reduction** (the reduced elements are contiguous, or no outer loops): one block per
  outer point. Each reduction loop nest is flattened and strided over the block's threads
  (`r = k * B + tx`, guarded), each thread accumulating a partial; before the first
  statement that reads the accumulator the block reduces it: `__shfl_down_sync` within each
  warp, the warps' partials through shared memory, reduced by warp 0 and broadcast back
  through shared memory, so every thread holds the total (a second pass over the reduced
  elements, e.g. `e / sum(e)`, then runs on all threads). Statements outside loops (the
  reduced-shape stores) run on thread 0.
* **column reduction** (the innermost outer loop is the contiguous one): blocks of 32 x 8
  threads, `tx` across 32 consecutive outer points, `ty` over the reduced elements; few long
  columns take two launches over slices of the rows (columns.py, which holds both).

The loop nests' decoding, serial running and spreading over lanes are in nests.py.
"""
from __future__ import annotations

from math import prod

from ..loop_ir import (ACC_COMBINE, ACC_IDENTITY, AccInit, AccRef, AccUpdate, Binary, Cmp, coefficient, FConst, For,
                       iadd, ICmp, IConst, idiv, imod, imul, IVar, ivars, Load, LoopKernel, operands, Select, Store,
                       Unary, walk_exprs)
from .columns import column_reduce, split_column_reduce
from .gpu_ir import (Assign, Barrier, Decl, GParam, GpuKernel, IDecl, If, Shared, Shfl, SLoad, SStore, Var,
                     walk_stmts)
from .nests import decode, distribute, has_acc, perfect_nest, serial

#: reductions over at most this many elements run serially, one thread per output
SERIAL_MAX = 32
MAX_BLOCK = 256


class ScheduleError(NotImplementedError):
    pass


def _params(lk: LoopKernel, restrict=True) -> tuple:
    return tuple(GParam(p.name, p.size, "in" if p.role == "in" else "out",
                        restrict if isinstance(restrict, bool) else restrict.get(p.name, True))
                 for p in lk.params)


def _block_size(n: int) -> int:
    b = 32
    while b < n and b < MAX_BLOCK:
        b *= 2
    return b


def bind(lk: LoopKernel, name: str | None = None, restrict=True, schedule: str | None = None) -> GpuKernel:
    """The GPU kernel of a loop kernel; `schedule` forces pointwise/row/column."""
    return bind_kernels(lk, name, restrict, schedule, split=False)[0]


def bind_kernels(lk: LoopKernel, name: str | None = None, restrict=True, schedule: str | None = None,
                 split: bool = True) -> list:
    """`bind`, except that with `split` a column reduction of few long columns may become two
    launches (`columns.split_column_reduce`: partials per slice of rows, then the rest)."""
    name = name or lk.name
    loops, inner = perfect_nest(lk.body)
    params = _params(lk, restrict)
    if not has_acc(inner):
        return [pointwise(name, params, loops, inner)]
    rmax = max([prod(lp.extent for lp in perfect_nest((s,))[0]) for s in inner if isinstance(s, For)] + [1])
    choice = schedule or _choose(loops, inner, rmax)
    nested = [s for s in walk_stmts(inner) if isinstance(s, AccInit) and s not in inner]
    if nested:  # accumulators inside inner loops: each thread runs the statements as they are
        choice = "pointwise"
    if choice == "pointwise":
        return [pointwise(name, params, loops, inner, note=f"reduction of {rmax} per thread")]
    if choice == "column" and loops:
        parts = split_column_reduce(name, params, loops, inner, rmax) if split and schedule is None else None
        return parts or [column_reduce(name, params, loops, inner, rmax)]
    return [row_reduce(name, params, loops, inner, rmax)]


def bind_all(lk: LoopKernel, name: str | None = None, restrict=True, schedule: str | None = None) -> list:
    """The GPU kernels (launched in order) of a loop kernel. A body that is a sequence of
    loop nests communicating through memory (lower's column sums: zero the kept-shape
    output, accumulate every row into it, then passes that read it) becomes one launch
    per nest, a launch boundary being the global barrier between them. A nest whose store
    accumulates into the element it reads (`buf[I] = buf[I] + v`, or the NaN-propagating
    max) is a reduction over the loops that I does not name: it is rebuilt as an
    accumulator over those loops, inside loops over I's, and bound like any reduction."""
    name = name or lk.name
    body = tuple(lk.body)
    if len(body) <= 1 or any(isinstance(s, AccInit) for s in body):
        return bind_kernels(lk, name, restrict, schedule)
    merged = _merge_column_phases(lk)
    if merged is not None:
        return bind_kernels(merged, name, restrict, schedule)
    out = []
    for k, s in enumerate(body):
        if not _stores((s,)):
            continue  # a nest that stores nothing (lower may leave an empty tail)
        part = LoopKernel(f"{name}_p{k}", lk.params, (s,))
        if not has_acc((s,)):
            part = _carried_to_accumulator(part) or part
            if not has_acc(part.body) and not _parallel_safe(part):
                out.append(_single_thread(part, f"{name}_p{k}", restrict))
                continue
        out += bind_kernels(part, f"{name}_p{k}", restrict, schedule if has_acc(part.body) else None)
    return out


def _stores(stmts):
    return [x for x in walk_stmts(stmts) if isinstance(x, Store)]


def _reads(e, buf):
    return [x for x in walk_exprs(e) if isinstance(x, Load) and x.buf == buf]


def _parallel_safe(lk: LoopKernel) -> bool:
    """Whether every iteration of the outer nest writes its own elements: each store's
    index names every outer loop variable, and a buffer the nest stores is loaded only at
    the index it is stored at."""
    loops, inner = perfect_nest(lk.body)
    names = {lp.var for lp in loops}
    stores = _stores(inner)
    written = {st.buf: st.index for st in stores}
    for st in stores:
        if not names <= ivars(st.index):
            return False
    for x in walk_stmts(inner):
        vals = [x.value] if isinstance(x, (Store, AccUpdate)) else []
        for v in vals:
            for ld in walk_exprs(v):
                if isinstance(ld, Load) and ld.buf in written and ld.index != written[ld.buf]:
                    return False
    return True


def _accumulation(v, cur) -> tuple:
    """(op, x) when value v folds x into `cur` with an accumulate op (`ACC_COMBINE[op]`, its
    operands either way round), else (None, None)."""
    near = operands(v) + tuple(o for c in operands(v) for o in operands(c))
    for x in near:
        for op, combine in ACC_COMBINE.items():
            if x != cur and v in (combine(cur, x), combine(x, cur)):
                return op, x
    return None, None


def _carried_to_accumulator(lk: LoopKernel):
    """A nest `buf[I] = buf[I] (+|max) v` rebuilt as a reduction with an accumulator
    (see bind_all), or None when the nest is not of that form."""
    loops, inner = perfect_nest(lk.body)
    if not loops or any(not isinstance(x, Store) for x in inner):
        return None
    carried = [st for st in inner if any(ld.index == st.index for ld in _reads(st.value, st.buf))]
    if len(carried) != 1:
        return None
    st = carried[0]
    cur = Load(st.buf, st.index)
    op, value = _accumulation(st.value, cur)
    if op is None or _reads(value, st.buf):
        return None
    others = [x for x in inner if x is not st]
    if any(_reads(x.value, st.buf) for x in others):
        return None
    kept_names = ivars(st.index)
    kept = [lp for lp in loops if lp.var in kept_names]
    red = [lp for lp in loops if lp.var not in kept_names]
    if not red:
        return None
    acc = "cacc"
    body: tuple = (AccUpdate(acc, op, value),) + tuple(others)
    for lp in reversed(red):
        body = (For(lp.var, lp.extent, "serial", body),)
    body = (AccInit(acc, op),) + body + (Store(st.buf, st.index, ACC_COMBINE[op](cur, AccRef(acc))),)
    for lp in reversed(kept):
        body = (For(lp.var, lp.extent, "serial", body),)
    return LoopKernel(lk.name, lk.params, body)


def _replace_load(e, target: Load, repl, memo: dict):
    """A copy of value expression e with loads equal to `target` replaced by `repl`."""
    if id(e) in memo:
        return memo[id(e)]
    if isinstance(e, Load):
        out = repl if e == target else e
    elif isinstance(e, Unary):
        out = Unary(e.op, _replace_load(e.a, target, repl, memo))
    elif isinstance(e, (Binary, Cmp)):
        out = type(e)(e.op, _replace_load(e.a, target, repl, memo), _replace_load(e.b, target, repl, memo))
    elif isinstance(e, Select):
        cond = e.cond if not isinstance(e.cond, Cmp) else _replace_load(e.cond, target, repl, memo)
        out = Select(cond, _replace_load(e.a, target, repl, memo), _replace_load(e.b, target, repl, memo))
    else:
        out = e
    memo[id(e)] = out
    return out


def _merge_column_phases(lk: LoopKernel):
    """lower's column sums (zero buf over the kept loops; add every element into buf; passes
    over the full domain and the kept domain that read buf) as one reduction kernel: kept
    loops around an accumulator, the reduced loops, the passes reading the accumulator, buf
    stored once. None unless the body has exactly that form."""
    body = tuple(lk.body)
    if len(body) < 2:
        return None
    conv = _carried_to_accumulator(LoopKernel(lk.name, lk.params, (body[1],)))
    if conv is None:
        return None
    kept, inner = perfect_nest(conv.body)
    final = inner[-1]                       # Store(buf, I, combine(buf[I], acc))
    acc_init = inner[0]
    reduce_nest = inner[1:-1]
    buf, index = final.buf, final.index
    cur = Load(buf, index)
    loops0, inner0 = perfect_nest((body[0],))
    if (len(inner0) != 1 or not isinstance(inner0[0], Store) or inner0[0].buf != buf or inner0[0].index != index
            or not isinstance(inner0[0].value, FConst)
            or inner0[0].value.value != ACC_IDENTITY[acc_init.op]
            or [(lp.var, lp.extent) for lp in loops0] != [(lp.var, lp.extent) for lp in kept]):
        return None
    kept_vars = {lp.var for lp in kept}
    red_loops = perfect_nest(reduce_nest)[0] if reduce_nest else []
    red = {lp.var: lp for lp in red_loops}
    acc = AccRef(acc_init.acc)
    passes, tail = [], []
    for s in body[2:]:
        loops, stmts = perfect_nest((s,))
        if any(not isinstance(x, Store) for x in stmts):
            return None
        names = {lp.var for lp in loops}
        memo: dict = {}
        fixed = []
        for st in stmts:
            value = _replace_load(st.value, cur, acc, memo)
            if _reads(value, buf) or (st.buf == buf and st.index != index):
                return None
            fixed.append(Store(st.buf, st.index, value))
        if names == kept_vars and [(lp.var, lp.extent) for lp in loops] == [(lp.var, lp.extent) for lp in kept]:
            tail += fixed
        elif kept_vars <= names and all(lp.var in kept_vars or (lp.var in red and red[lp.var].extent == lp.extent)
                                        for lp in loops):
            nest: tuple = tuple(fixed)
            for lp in reversed([lp for lp in loops if lp.var not in kept_vars]):
                nest = (For(lp.var, lp.extent, "serial", nest),)
            passes += list(nest)
        else:
            return None
        for st in fixed:
            if not ivars(st.index) <= names:
                return None
    out: tuple = (acc_init,) + tuple(reduce_nest) + tuple(passes) + (Store(buf, index, acc),) + tuple(tail)
    for lp in reversed(kept):
        out = (For(lp.var, lp.extent, "serial", out),)
    return LoopKernel(lk.name, lk.params, out)


def _single_thread(lk: LoopKernel, name, restrict) -> GpuKernel:
    return GpuKernel(name, _params(lk, restrict), (1, 1, 1), (32, 1, 1),
                     (If(ICmp("eq", IVar("tx"), IConst(0)), serial(lk.body)),),
                     note="serial: the nest's iterations depend on each other")


def _choose(loops, inner, rmax) -> str:
    if rmax <= SERIAL_MAX:
        return "pointwise"
    if not loops or loops[-1].extent < 16:
        return "row"
    kv = loops[-1].var
    rvars = set()
    for s in inner:
        if isinstance(s, For):
            nest, _ = perfect_nest((s,))
            rvars.add(nest[-1].var)
    col = row = 0
    for s in walk_stmts(inner):
        if isinstance(s, AccUpdate):
            for e in walk_exprs(s.value):
                if isinstance(e, Load):
                    if coefficient(e.index, kv) == 1:
                        col += 1
                    if any(coefficient(e.index, v) == 1 for v in rvars):
                        row += 1
    return "column" if col > row else "row"


def pointwise(name, params, loops, inner, note="") -> GpuKernel:
    total = prod(lp.extent for lp in loops)
    B = _block_size(total)
    grid = (max(1, -(-total // B)), 1, 1)
    body = []
    if loops:
        body.append(IDecl("gid", iadd(imul(IVar("bx"), IConst(B)), IVar("tx"))))
        guarded = decode(IVar("gid"), loops) + list(serial(inner))
        body.append(If(ICmp("lt", IVar("gid"), IConst(total)), tuple(guarded)))
    else:
        body.append(If(ICmp("eq", IVar("tx"), IConst(0)), serial(inner)))
    return GpuKernel(name, params, grid, (B, 1, 1), tuple(body),
                     note=f"pointwise: {total} threads in blocks of {B}" + (f"; {note}" if note else ""))


def warp_reduce(acc, op, tmp, width=32) -> list:
    out = []
    off = width // 2
    while off >= 1:
        out += [Shfl(tmp, acc, off, "down"), AccUpdate(acc, op, Var(tmp))]
        off //= 2
    return out


def block_reduce(acc, op, B, shared: list) -> list:
    """Statements leaving the block-wide reduction of `acc` in every thread's `acc`
    (1-D blocks of B threads, B a power of two >= 32)."""
    tmp = f"{acc}_o"
    out = [Decl(tmp, FConst(0.0))]
    out += warp_reduce(acc, op, tmp)
    if B == 32:
        out.append(Shfl(acc, acc, 0, "idx"))
        return out
    nw = B // 32
    sm = f"{acc}_s"
    shared.append(Shared(sm, nw + 1))
    tx = IVar("tx")
    out.append(If(ICmp("eq", imod(tx, 32), IConst(0)), (SStore(sm, idiv(tx, 32), Var(acc)),)))
    out.append(Barrier())
    stage = [Assign(acc, Select(ICmp("lt", tx, IConst(nw)), SLoad(sm, tx), FConst(ACC_IDENTITY[op])))]
    stage += warp_reduce(acc, op, tmp, nw)
    stage.append(If(ICmp("eq", tx, IConst(0)), (SStore(sm, IConst(nw), Var(acc)),)))
    out.append(If(ICmp("lt", tx, IConst(32)), tuple(stage)))
    out.append(Barrier())
    out.append(Assign(acc, SLoad(sm, IConst(nw))))
    return out


def row_reduce(name, params, loops, inner, rmax) -> GpuKernel:
    total = prod(lp.extent for lp in loops)
    B = _block_size(rmax)
    shared: list = []
    body = decode(IVar("bx"), loops) if loops else []
    body += distribute(inner, "tx", B, None, lambda a, op: block_reduce(a, op, B, shared), {})
    return GpuKernel(name, params, (max(total, 1), 1, 1), (B, 1, 1), tuple(body), tuple(shared),
                     note=f"row reduction: {total} blocks of {B} threads, {rmax} elements per block")


__all__ = ["bind", "bind_all", "pointwise", "row_reduce", "block_reduce", "decode", "perfect_nest", "serial",
           "ScheduleError"]
