"""Schedule transforms on the loop IR: vectorise, parallelise, split, reorder, tile.

Each transform is a pure function `LoopKernel -> LoopKernel` (the IR is frozen dataclasses;
the input kernel is never changed) that raises `ScheduleError` on a request it cannot honour
(an unknown loop, a loop that is not innermost, iterations that are not independent, ...).

Loops are named by their variable. Lowering reuses a name for sibling loops over the same
axis (the two passes of a softmax, the nests of a column reduction), so a transform applies
to *every* loop of that name; it refuses when one loop of that name is nested in another.

* `vectorize(k, v)` marks loop `v` `vector` (it must be innermost: no loop in its body);
* `parallelize(k, v)` marks loop `v` `parallel` when its iterations are independent;
* `split(k, v, f)`: `for v < E` -> `for vo < E//f: for vi < f: body[v := vo*f + vi]`, plus a
  tail loop `for vt < E%f: body[v := (E//f)*f + vt]` when f does not divide E;
* `reorder(k, a, b)` interchanges the perfectly nested loops a (outer) and b (inner);
* `tile(k, a, b, fa, fb)` splits both and orders them a_o, b_o, a_i, b_i;
* `strip_mine(k, v, f)`: every loop over v (E, a multiple of f) runs f iterations, all of
  them inside one new top-level loop `for vb < E//f` (v := vb*f + v): a kernel that walks an
  axis in several nests (a column reduction) becomes one loop over blocks of that axis;
* `default_schedule(k)` gives every loop the kind lowering gives it (innermost loops
  `vector`, the kernel's single top-level loop `parallel`, the rest `serial`).

The legality checks are simple and conservative (they refuse what they cannot prove):
`parallelize` refuses a loop that updates an accumulator initialised outside it, that writes
a buffer at an index that is not affine in the loop variables, or whose writes may collide
across iterations (the index must separate iterations: the loop variable's coefficient
exceeds the span of the inner loops' terms below it), or that reads a buffer it writes at
another index than it writes it. `vectorize` refuses a loop that initialises an accumulator,
reads an accumulator it updates, or reads a buffer it writes other than lane by lane at the
index it writes it. `reorder` and `tile` change the order of iterations and assume, as is
true of everything lowering produces, that the loops' iterations may run in any order.
"""
from __future__ import annotations

from .loop_ir import (AccInit, AccRef, AccUpdate, For, IBin, ICmp, IConst, IVar, Load, LoopKernel, Store,
                      coefficient, iadd, idiv, imod, imul, rewrite, walk_exprs)

__all__ = ["ScheduleError", "vectorize", "parallelize", "split", "reorder", "tile", "strip_mine",
           "default_schedule"]


class ScheduleError(ValueError):
    """A schedule transform that cannot be applied to this kernel."""


# ---- traversal ----------------------------------------------------------------------------
def _loops(stmts):
    """Every For in `stmts`, outer loops before the loops they contain."""
    for s in stmts:
        if isinstance(s, For):
            yield s
            yield from _loops(s.body)


def _statements(stmts):
    """Every statement in `stmts`, recursively (loops included)."""
    for s in stmts:
        yield s
        if isinstance(s, For):
            yield from _statements(s.body)


def _bound(kernel: LoopKernel) -> set:
    return {f.var for f in _loops(kernel.body)}


def _find(kernel: LoopKernel, var: str, what: str) -> list:
    """The loops named `var` (at least one; none nested in another of the same name)."""
    if not isinstance(var, str):
        raise ScheduleError(f"{what}: a loop is named by its variable (a str), got {var!r}")
    found = [f for f in _loops(kernel.body) if f.var == var]
    if not found:
        names = ", ".join(sorted(_bound(kernel))) or "none"
        raise ScheduleError(f"{what}: kernel {kernel.name!r} has no loop {var!r} (loops: {names})")
    for f in found:
        if any(g.var == var for g in _loops(f.body)):
            raise ScheduleError(f"{what}: loop {var!r} contains another loop named {var!r}")
    return found


def _replace(stmts, var: str, fn) -> tuple:
    """`stmts` with each loop named `var` replaced by the statements fn(loop) (a tuple)."""
    out = []
    changed = False
    for s in stmts:
        if isinstance(s, For):
            if s.var == var:
                out.extend(fn(s))
                changed = True
                continue
            body = _replace(s.body, var, fn)
            if body is not s.body:
                s = For(s.var, s.extent, s.kind, body)
                changed = True
        out.append(s)
    return tuple(out) if changed else stmts


def _with_kind(kernel: LoopKernel, var: str, kind: str) -> LoopKernel:
    body = _replace(kernel.body, var, lambda f: (For(f.var, f.extent, kind, f.body),))
    return LoopKernel(kernel.name, kernel.params, body)


def _new_names(kernel: LoopKernel, what: str, *names) -> None:
    bound = _bound(kernel)
    for n in names:
        if not isinstance(n, str) or not n.isidentifier():
            raise ScheduleError(f"{what}: loop name {n!r} is not an identifier")
        if n in bound:
            raise ScheduleError(f"{what}: the kernel already has a loop named {n!r}")
    if len(set(names)) != len(names):
        raise ScheduleError(f"{what}: new loop names {names} are not distinct")


# ---- substitution of a loop variable ------------------------------------------------------
class _Subst:
    """Statements with loop variable `var` replaced by the index expression `repl` in every
    index (Load and Store indices, ICmp operands). Unchanged sub-trees are kept as they are,
    shared sub-expressions stay shared."""

    def __init__(self, var: str, repl):
        self.var, self.repl = var, repl
        self.memo: dict = {}

    def idx(self, e):
        if isinstance(e, IVar):
            return self.repl if e.name == self.var else e
        if isinstance(e, IConst):
            return e
        hit = self.memo.get(id(e))
        if hit is not None:
            return hit[1]
        a, b = self.idx(e.a), self.idx(e.b)
        if a is e.a and b is e.b:
            out = e
        elif e.op == "add":
            out = iadd(a, b)
        elif e.op == "mul":
            out = imul(a, b)
        elif e.op == "div" and isinstance(b, IConst) and b.value > 0:
            out = idiv(a, b.value)
        elif e.op == "mod" and isinstance(b, IConst) and b.value > 0:
            out = imod(a, b.value)
        else:
            out = IBin(e.op, a, b)
        self.memo[id(e)] = (e, out)
        return out

    def val(self, e):
        return rewrite(e, self._leaf, self.memo)

    def _leaf(self, e):
        """A Load or ICmp with the substituted index (None for other expressions)."""
        if isinstance(e, Load):
            i = self.idx(e.index)
            return e if i is e.index else Load(e.buf, i)
        if isinstance(e, ICmp):
            a, b = self.idx(e.a), self.idx(e.b)
            return e if a is e.a and b is e.b else ICmp(e.op, a, b)
        return None

    def stmts(self, body) -> tuple:
        return tuple(self.stmt(s) for s in body)

    def stmt(self, s):
        if isinstance(s, Store):
            return Store(s.buf, self.idx(s.index), self.val(s.value))
        if isinstance(s, AccUpdate):
            return AccUpdate(s.acc, s.op, self.val(s.value))
        if isinstance(s, For):
            return For(s.var, s.extent, s.kind, self.stmts(s.body))
        return s


# ---- legality -----------------------------------------------------------------------------
def _accesses(stmts):
    """(stores, loads, acc_inits, acc_updates, acc_refs) of statements (recursively):
    stores and loads as (buf, index) pairs."""
    stores, loads, inits, updates, refs = [], [], set(), set(), set()
    seen: set = set()
    for s in _statements(stmts):
        if isinstance(s, AccInit):
            inits.add(s.acc)
            continue
        if isinstance(s, Store):
            stores.append((s.buf, s.index))
        elif isinstance(s, AccUpdate):
            updates.add(s.acc)
        else:
            continue
        for x in walk_exprs(s.value, seen):
            if isinstance(x, Load):
                loads.append((x.buf, x.index))
            elif isinstance(x, AccRef):
                refs.add(x.acc)
    return stores, loads, inits, updates, refs


def _shared_buffer_problem(stores, loads):
    """A reason why loads of a buffer the loop writes may see another iteration's writes,
    or None: every access to a written buffer must use one and the same index."""
    written = {}
    for buf, index in stores:
        if written.setdefault(buf, index) != index:
            return f"writes {buf} at two different indices"
    for buf, index in loads:
        if buf in written and index != written[buf]:
            return f"reads {buf} at another index than it writes it"
    return None


def _collision(buf: str, index, loop: For, inner: dict):
    """None when distinct iterations of `loop` provably never write the same element
    buf[index] (whatever the loops inside it do), else why not: `index` must be affine in the
    loop variables and, with its terms ordered by |coefficient|, the loop's term and every
    larger one must exceed the whole span of the terms below them."""
    if loop.extent <= 1:
        return None
    terms = []
    for var, extent in [(loop.var, loop.extent)] + list(inner.items()):
        c = coefficient(index, var)
        if c is None:
            return f"it writes {buf} at an index that is not affine in the loop variables ({var!r})"
        if c != 0 and extent > 1:
            terms.append((abs(c), var == loop.var, extent))
    collide = f"its writes to {buf} may collide across iterations"
    if not any(is_loop for _, is_loop, _ in terms):
        return collide  # every iteration writes the same elements
    terms.sort()
    span, reached = 0, False
    for c, is_loop, extent in terms:
        reached = reached or is_loop
        if reached and c <= span:
            return collide
        span += c * (extent - 1)
    return None


def _parallel_problem(loop: For):
    """Why the iterations of `loop` may not be independent, or None."""
    stores, loads, inits, updates, _ = _accesses(loop.body)
    outside = sorted(updates - inits)
    if outside:
        return f"it updates accumulator {outside[0]} initialised outside it"
    problem = _shared_buffer_problem(stores, loads)
    if problem:
        return f"it {problem}"
    inner: dict = {}
    for f in _loops(loop.body):
        inner[f.var] = max(inner.get(f.var, 0), f.extent)
    for buf, index in dict(stores).items():
        problem = _collision(buf, index, loop, inner)
        if problem:
            return problem
    return None


def _vector_problem(loop: For):
    """Why `loop` cannot run as vector lanes, or None."""
    inner = next((s for s in loop.body if isinstance(s, For)), None)
    if inner is not None:
        return f"it is not innermost (its body has loop {inner.var!r})"
    stores, loads, inits, updates, refs = _accesses(loop.body)
    if inits:
        return f"it initialises accumulator {sorted(inits)[0]}"
    if updates & refs:
        return f"it reads accumulator {sorted(updates & refs)[0]} that it updates"
    problem = _shared_buffer_problem(stores, loads)
    if problem:
        return f"it {problem}"
    loaded = {buf for buf, _ in loads}
    for buf, index in stores:
        if buf in loaded and not coefficient(index, loop.var):
            return f"it reads and writes {buf} at an index that does not step with {loop.var!r}"
    return None


# ---- transforms ---------------------------------------------------------------------------
def vectorize(kernel: LoopKernel, var: str) -> LoopKernel:
    """Loop `var` (innermost) marked `vector`: rendered on 8-wide vectors plus a scalar tail."""
    for f in _find(kernel, var, "vectorize"):
        problem = _vector_problem(f)
        if problem:
            raise ScheduleError(f"vectorize: cannot vectorise loop {var!r}: {problem}")
    return _with_kind(kernel, var, "vector")


def parallelize(kernel: LoopKernel, var: str) -> LoopKernel:
    """Loop `var` marked `parallel` (its iterations must be independent). Only the kernel's
    single top-level loop is actually split across threads (`name_range`); a nested parallel
    loop is rendered serially."""
    for f in _find(kernel, var, "parallelize"):
        problem = _parallel_problem(f)
        if problem:
            raise ScheduleError(f"parallelize: iterations of loop {var!r} are not independent: {problem}")
    return _with_kind(kernel, var, "parallel")


def _check_factor(what: str, factor) -> int:
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ScheduleError(f"{what}: the split factor must be an int >= 1, got {factor!r}")
    return factor


def _split_loop(f: For, factor: int, outer: str, inner: str, tail: str) -> tuple:
    """The statements replacing loop f split by `factor` (loops of extent 0 are left out)."""
    n, rem = divmod(f.extent, factor)
    out = []
    if n > 0 or f.extent == 0:
        body = _Subst(f.var, iadd(imul(IVar(outer), IConst(factor)), IVar(inner))).stmts(f.body)
        inner_kind = "vector" if f.kind == "vector" else "serial"
        outer_kind = "parallel" if f.kind == "parallel" else "serial"
        out.append(For(outer, n, outer_kind, (For(inner, factor, inner_kind, body),)))
    if rem:
        body = _Subst(f.var, iadd(IConst(n * factor), IVar(tail))).stmts(f.body)
        # the tail is the whole loop when the factor exceeds the extent: it keeps the kind
        kind = f.kind if n == 0 else ("vector" if f.kind == "vector" else "serial")
        out.append(For(tail, rem, kind, body))
    return tuple(out)


def split(kernel: LoopKernel, var: str, factor: int, outer: str = None, inner: str = None,
          tail: str = None) -> LoopKernel:
    """Loop `var` of extent E split into `outer` (E // factor) and `inner` (factor) loops
    (default names var+"o", var+"i"), plus a `tail` loop (var+"t") over the last E % factor
    iterations when factor does not divide E; loops of extent 0 are left out. `inner` stays
    `vector` if `var` was, `outer` is `parallel` if `var` was, else they are serial."""
    _check_factor("split", factor)
    _find(kernel, var, "split")
    outer, inner, tail = outer or var + "o", inner or var + "i", tail or var + "t"
    _new_names(kernel, "split", outer, inner, tail)
    body = _replace(kernel.body, var, lambda f: _split_loop(f, factor, outer, inner, tail))
    return LoopKernel(kernel.name, kernel.params, body)


def _perfect_inner(f: For, inner_var: str, what: str) -> For:
    if len(f.body) == 1 and isinstance(f.body[0], For) and f.body[0].var == inner_var:
        return f.body[0]
    inside = ", ".join(type(s).__name__ + (f" {s.var!r}" if isinstance(s, For) else "") for s in f.body)
    raise ScheduleError(f"{what}: loops {f.var!r} and {inner_var!r} are not perfectly nested "
                        f"(the body of {f.var!r} is: {inside or 'empty'})")


def _interchange(o: For, i: For) -> For:
    """for i { for o { i.body } } with the kinds of the loops kept, except that the loop
    moving outwards is no longer innermost and cannot stay `vector` (it becomes serial)."""
    return For(i.var, i.extent, "serial" if i.kind == "vector" else i.kind,
               (For(o.var, o.extent, o.kind, i.body),))


def reorder(kernel: LoopKernel, outer_var: str, inner_var: str) -> LoopKernel:
    """Interchange loop `outer_var` and loop `inner_var`, its only statement. Each loop keeps
    its kind, except that a `vector` loop moved outwards becomes serial (vectorise again)."""
    if outer_var == inner_var:
        raise ScheduleError(f"reorder: the two loops are the same loop {outer_var!r}")
    _find(kernel, inner_var, "reorder")
    for f in _find(kernel, outer_var, "reorder"):
        _perfect_inner(f, inner_var, "reorder")
    body = _replace(kernel.body, outer_var, lambda f: (_interchange(f, f.body[0]),))
    return LoopKernel(kernel.name, kernel.params, body)


def tile(kernel: LoopKernel, var_a: str, var_b: str, fa: int, fb: int) -> LoopKernel:
    """Loops a (outer) and b (its only statement) tiled fa x fb: `for ao: for bo: for ai:
    for bi`, with a_i = a+"i" etc. Where fb does not divide b's extent the tail `for ai: for
    bt` follows `bo` inside `ao`; where fa does not divide a's, the tail `for at: for b` (b
    not split) follows `ao`. Kinds as `split` gives them (b's vector kind goes to bi, a's
    parallel kind to ao)."""
    if var_a == var_b:
        raise ScheduleError(f"tile: the two loops are the same loop {var_a!r}")
    _check_factor("tile", fa)
    _check_factor("tile", fb)
    _find(kernel, var_b, "tile")
    for f in _find(kernel, var_a, "tile"):
        _perfect_inner(f, var_b, "tile")
    ao, ai, at, bo, bi, bt = (v + s for v in (var_a, var_b) for s in "oit")
    _new_names(kernel, "tile", ao, ai, at, bo, bi, bt)

    def tile_one(fa_loop: For) -> tuple:
        out = []
        for part in _split_loop(fa_loop, fa, ao, ai, at):
            if part.var == ao:  # ao { ai { b } } -> ao { bo { ai { bi } }, ai { bt } }
                ai_loop = part.body[0]
                pieces = []
                for p in _split_loop(ai_loop.body[0], fb, bo, bi, bt):
                    if p.var == bo:  # bo { ai { bi } }
                        pieces.append(For(bo, p.extent, p.kind,
                                          (For(ai, ai_loop.extent, ai_loop.kind, p.body),)))
                    else:  # ai { bt }
                        pieces.append(For(ai, ai_loop.extent, ai_loop.kind, (p,)))
                part = For(part.var, part.extent, part.kind, tuple(pieces))
            out.append(part)
        return tuple(out)

    body = _replace(kernel.body, var_a, tile_one)
    return LoopKernel(kernel.name, kernel.params, body)


def strip_mine(kernel: LoopKernel, var: str, factor: int, outer: str = None) -> LoopKernel:
    """Every loop over `var` (of one extent E, a multiple of `factor`) runs `factor`
    iterations, inside one new serial top-level loop `outer` (default var+"b") over the
    E // factor blocks, with var := outer * factor + var. Every statement must be inside a
    loop over `var` (none may run once per block by accident). `parallelize(k, outer)` then
    checks that the blocks are independent."""
    _check_factor("strip_mine", factor)
    extents = {f.extent for f in _find(kernel, var, "strip_mine")}
    if len(extents) != 1 or next(iter(extents)) % factor:
        raise ScheduleError(f"strip_mine: loops {var!r} have extents {sorted(extents)}: "
                            f"they must share one that {factor} divides")
    outer = outer or var + "b"
    _new_names(kernel, "strip_mine", outer)

    def check(stmts, inside):
        for st in stmts:
            if isinstance(st, For):
                check(st.body, inside or st.var == var)
            elif not inside:
                raise ScheduleError(f"strip_mine: a statement outside every loop {var!r} "
                                    f"would run once per block")
    check(kernel.body, False)
    body = _replace(kernel.body, var, lambda f: (For(f.var, factor, f.kind, f.body),))
    body = _Subst(var, iadd(imul(IVar(outer), IConst(factor)), IVar(var))).stmts(body)
    return LoopKernel(kernel.name, kernel.params, (For(outer, next(iter(extents)) // factor, "serial", body),))


def default_schedule(kernel: LoopKernel, parallel: bool = True) -> LoopKernel:
    """The kinds lowering gives loops, whatever they were: every innermost loop (no loop in
    its body) of extent > 1 `vector` where `vectorize` allows it; the kernel's outermost loop
    `parallel` when it is the only top-level statement, has loops inside it and `parallelize`
    allows it (that loop is the one the native executor splits across threads), and only if
    `parallel`; every other loop serial."""
    def kinds(stmts):
        out = []
        for s in stmts:
            if isinstance(s, For):
                if any(isinstance(x, For) for x in s.body):
                    s = For(s.var, s.extent, "serial", kinds(s.body))
                else:
                    vec = s.extent != 1 and _vector_problem(s) is None
                    s = For(s.var, s.extent, "vector" if vec else "serial", s.body)
            out.append(s)
        return tuple(out)

    body = kinds(kernel.body)
    if parallel and len(body) == 1 and isinstance(body[0], For):
        top = body[0]
        if any(isinstance(x, For) for x in top.body) and _parallel_problem(top) is None:
            body = (For(top.var, top.extent, "parallel", top.body),)
    return LoopKernel(kernel.name, kernel.params, body)
