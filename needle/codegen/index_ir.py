"""The loop IR's index expressions: integer trees over loop variables (`IVar`, `IConst`,
`IBin` with the index ops add, mul, div (truncating) and mod), their constructors that fold
constants (`iadd`, `imul`, `idiv`, `imod`), row-major (un)linearisation, `Ix` (index maps
written with Python arithmetic), affine coefficients, value ranges over the loops, and the
simplifier that folds div/mod by constants over the loop ranges.

Part of the loop IR (`loop_ir` re-exports every name); it depends on nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union


# ---- index expressions --------------------------------------------------------------------
@dataclass(frozen=True)
class IVar:
    name: str


@dataclass(frozen=True)
class IConst:
    value: int


@dataclass(frozen=True)
class IBin:
    op: str  # add, mul, div (floor division), mod
    a: "IExpr"
    b: "IExpr"


IExpr = Union[IVar, IConst, IBin]


def iadd(a: IExpr, b: IExpr) -> IExpr:
    if isinstance(a, IConst) and isinstance(b, IConst):
        return IConst(a.value + b.value)
    if isinstance(a, IConst) and a.value == 0:
        return b
    if isinstance(b, IConst) and b.value == 0:
        return a
    return IBin("add", a, b)


def imul(a: IExpr, b: IExpr) -> IExpr:
    if isinstance(a, IConst) and isinstance(b, IConst):
        return IConst(a.value * b.value)
    for x, y in ((a, b), (b, a)):
        if isinstance(x, IConst):
            if x.value == 0:
                return IConst(0)
            if x.value == 1:
                return y
    return IBin("mul", a, b)


def idiv(a: IExpr, b: int) -> IExpr:
    if b == 1:
        return a
    if isinstance(a, IConst):
        return IConst(a.value // b)
    return IBin("div", a, IConst(b))


def imod(a: IExpr, b: int) -> IExpr:
    if b == 1:
        return IConst(0)
    if isinstance(a, IConst):
        return IConst(a.value % b)
    return IBin("mod", a, IConst(b))


def linearize(idx, shape) -> IExpr:
    """Row-major linear index of a multi-index into `shape`."""
    out: IExpr = IConst(0)
    stride = 1
    for i, d in reversed(list(zip(idx, shape))):
        out = iadd(out, imul(i, IConst(stride)))
        stride *= d
    return out


def unravel(lin: IExpr, shape) -> list:
    """Row-major multi-index of a linear index into `shape`."""
    out = []
    stride = 1
    for d in reversed(shape):
        out.append(IConst(0) if d == 1 else imod(idiv(lin, stride), d))
        stride *= d
    return out[::-1]


class Ix:
    """An index expression with Python arithmetic (+ - * // %), so that ops' index maps,
    written for ints, build loop IR; `divmod` records whether any // or % was taken (a
    list shared by every Ix derived from the same inputs)."""

    __slots__ = ("e", "divmod")

    def __init__(self, e: IExpr, divmod: list):
        self.e, self.divmod = e, divmod

    def _of(self, o) -> IExpr:
        return o.e if isinstance(o, Ix) else IConst(int(o))

    def __add__(self, o): return Ix(iadd(self.e, self._of(o)), self.divmod)
    def __radd__(self, o): return Ix(iadd(self._of(o), self.e), self.divmod)
    def __mul__(self, o): return Ix(imul(self.e, self._of(o)), self.divmod)
    def __rmul__(self, o): return Ix(imul(self._of(o), self.e), self.divmod)
    def __sub__(self, o): return Ix(iadd(self.e, imul(self._of(o), IConst(-1))), self.divmod)
    def __rsub__(self, o): return Ix(iadd(self._of(o), imul(self.e, IConst(-1))), self.divmod)

    def __floordiv__(self, d: int):
        self.divmod.append(True)
        return Ix(idiv(self.e, d), self.divmod)

    def __mod__(self, d: int):
        self.divmod.append(True)
        return Ix(imod(self.e, d), self.divmod)


def index_map(fn, idx) -> tuple[tuple, bool]:
    """(`fn(idx)` as index expressions, whether it divided): `fn` maps a tuple of index
    values to another, written with Python arithmetic."""
    divmod: list = []
    out = fn(tuple(Ix(i, divmod) for i in idx))
    return tuple(x.e if isinstance(x, Ix) else IConst(int(x)) for x in out), bool(divmod)


def coefficient(e: IExpr, var: str):
    """d(e)/d(var) when e is affine in var (an int), else None."""
    if isinstance(e, IVar):
        return 1 if e.name == var else 0
    if isinstance(e, IConst):
        return 0
    ca, cb = coefficient(e.a, var), coefficient(e.b, var)
    if e.op == "add":
        return None if ca is None or cb is None else ca + cb
    if e.op == "mul":
        if isinstance(e.b, IConst) and ca is not None:
            return ca * e.b.value
        if isinstance(e.a, IConst) and cb is not None:
            return cb * e.a.value
        return 0 if ca == 0 and cb == 0 else None
    return 0 if ca == 0 and cb == 0 else None  # div/mod: affine only when var is absent


def index_range(e: IExpr, ranges: dict, memo=None) -> Optional[tuple[int, int]]:
    """(lo, hi) bounds of index expression e with each loop variable v in [0, ranges[v] - 1],
    or None when unknown (a variable not in `ranges`, a division by a non-constant); div and
    mod by a positive constant truncate toward zero, as the renderers' sdiv and srem do."""
    memo = {} if memo is None else memo
    if e in memo:
        return memo[e]
    r = None
    if isinstance(e, IConst):
        r = (e.value, e.value)
    elif isinstance(e, IVar):
        r = (0, ranges[e.name] - 1) if e.name in ranges else None
    else:
        a, b = index_range(e.a, ranges, memo), index_range(e.b, ranges, memo)
        if a is not None and b is not None:
            if e.op == "add":
                r = (a[0] + b[0], a[1] + b[1])
            elif e.op == "mul":
                ps = [x * y for x in a for y in b]
                r = (min(ps), max(ps))
            elif e.op in ("div", "mod") and b[0] == b[1] and b[0] > 0:
                c = b[0]
                if e.op == "div":  # monotonic: truncate both bounds
                    r = tuple(-(-x // c) if x < 0 else x // c for x in a)
                elif a[0] >= 0:
                    r = (a[0], a[1]) if a[1] < c else (0, c - 1)
                else:  # the sign of a, magnitude below c
                    r = (max(a[0], 1 - c), min(max(a[1], 0), c - 1))
    memo[e] = r
    return r


# ---- index simplification over the loop ranges ------------------------------------------
def _affine(e, ranges, memo):
    """`e` as ({atom: coefficient}, constant) with atoms IVar or non-affine sub-expressions."""
    if isinstance(e, IConst):
        return {}, e.value
    if isinstance(e, IBin) and e.op == "add":
        ta, ca = _affine(e.a, ranges, memo)
        tb, cb = _affine(e.b, ranges, memo)
        t = dict(ta)
        for k, v in tb.items():
            t[k] = t.get(k, 0) + v
        return _recombine({k: v for k, v in t.items() if v}), ca + cb
    if isinstance(e, IBin) and e.op == "mul" and (isinstance(e.a, IConst) or isinstance(e.b, IConst)):
        c, x = (e.a.value, e.b) if isinstance(e.a, IConst) else (e.b.value, e.a)
        t, k = _affine(x, ranges, memo)
        return {a: v * c for a, v in t.items() if v * c}, k * c
    return {e: 1}, 0


def _recombine(terms):
    """(x div c)*(m*c) + (x mod c)*m -> x*m, repeatedly."""
    changed = True
    while changed:
        changed = False
        for t, v in list(terms.items()):
            if isinstance(t, IBin) and t.op == "mod" and isinstance(t.b, IConst):
                dv = IBin("div", t.a, t.b)
                if terms.get(dv) == v * t.b.value:
                    del terms[t], terms[dv]
                    sub, _ = _affine(t.a, {}, {}) if isinstance(t.a, IBin) else ({t.a: 1}, 0)
                    if _ != 0:
                        sub = {t.a: 1}
                    for a, w in sub.items():
                        terms[a] = terms.get(a, 0) + w * v
                    terms = {a: w for a, w in terms.items() if w}
                    changed = True
                    break
    return terms


def _build(terms, const):
    out = IConst(0)
    for atom, c in terms.items():
        out = iadd(out, imul(atom, IConst(c)))
    return iadd(out, IConst(const))


def simplify(e, ranges, memo=None):
    """Index expression `e` with div/mod by constants folded where the loop ranges allow:
    (c*q + r) div c = q and (c*q + r) mod c = r when 0 <= r < c; otherwise the multiples of
    c are taken out of the division when the rest is non-negative."""
    memo = {} if memo is None else memo
    if not isinstance(e, IBin):
        return e
    a, b = simplify(e.a, ranges, memo), simplify(e.b, ranges, memo)
    if e.op in ("add", "mul"):
        x = iadd(a, b) if e.op == "add" else imul(a, b)
        if isinstance(x, IBin) and (e.op == "add" or isinstance(a, IConst) or isinstance(b, IConst)):
            x = _build(*_affine(x, ranges, memo))
        return x
    if not (isinstance(b, IConst) and b.value > 0):
        return IBin(e.op, a, b)
    c = b.value
    if c == 1:
        return a if e.op == "div" else IConst(0)
    terms, k = _affine(a, ranges, memo)
    if any((index_range(t, ranges, memo) or (-1, 0))[0] < 0 for t in terms):
        return IBin(e.op, a, b)
    for d in _divisors_desc(c):  # e = d*q + r with 0 <= r < d: e div c = q div (c/d)
        q = {t: v // d for t, v in terms.items() if v % d == 0}
        r = {t: v for t, v in terms.items() if v % d != 0}
        rest = _build(r, k % d)
        rr = index_range(rest, ranges, memo)
        if rr is None or rr[0] < 0 or rr[1] >= d:
            continue
        qe = _build(q, k // d)
        if d == c:
            return qe if e.op == "div" else rest
        qr = index_range(qe, ranges, memo)
        if qr is not None and qr[0] >= 0 and qr[1] < c // d:  # q < c/d: e div c = 0
            return IConst(0) if e.op == "div" else _build(*_affine(iadd(imul(qe, IConst(d)), rest),
                                                                   ranges, memo))
        if e.op == "div":
            return IBin("div", qe, IConst(c // d))
        return _build(*_affine(iadd(imul(IBin("mod", qe, IConst(c // d)), IConst(d)), rest),
                               ranges, memo))
    # (c*q + r) div c = q + r div c and (c*q + r) mod c = r mod c for r >= 0: the multiples
    # of c leave the division (i1 + 1600*i0) div 400 = 4*i0 + i1 div 400
    q = {t: v // c for t, v in terms.items() if v % c == 0}
    rest = _build({t: v for t, v in terms.items() if v % c != 0}, k % c)
    rr = index_range(rest, ranges, memo)
    if (q or k // c) and rr is not None and rr[0] >= 0:
        if e.op == "mod":
            return IBin("mod", rest, b)
        return _build(*_affine(iadd(_build(q, k // c), IBin("div", rest, b)), ranges, memo))
    return IBin(e.op, a, b)


def _divisors_desc(c):
    small = [d for d in range(2, int(c ** 0.5) + 1) if c % d == 0]
    return sorted(set(small + [c // d for d in small] + [c]), reverse=True)


def ivars(e: IExpr) -> set:
    if isinstance(e, IVar):
        return {e.name}
    if isinstance(e, IConst):
        return set()
    return ivars(e.a) | ivars(e.b)
