"""Loop IR: the loop nests that kernels are lowered to, between the graph IR and machine code.

A `LoopKernel` has float32 buffer parameters (inputs first, then outputs) and a body of
statements. Index expressions (`IExpr`) are integer trees over loop variables; value
expressions (`FExpr`) are float32 scalar trees whose leaves are `Load`s, constants and
accumulator reads. Every node is a frozen dataclass: equal text means an equal kernel.

Statements:
* `For(var, extent, kind, body)` -- `kind` is serial, parallel or vector (the innermost,
  contiguous loop; renderers emit it with vector registers plus a scalar tail);
* `Store(buf, index, value)`;
* `AccInit(acc, op)` / `AccUpdate(acc, op, value)` -- a reduction accumulator (`sum` or
  `max`) set to its identity and combined with a value; `AccRef(acc)` reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

LOOP_KINDS = ("serial", "parallel", "vector")
ACC_OPS = ("sum", "max")
UNARY_OPS = ("neg", "exp", "log", "tanh", "sqrt", "sin", "cos")
BINARY_OPS = ("add", "sub", "mul", "div", "pow")
CMP_OPS = ("eq", "ne", "gt", "ge", "lt", "le")


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


# ---- value expressions --------------------------------------------------------------------
@dataclass(frozen=True)
class FConst:
    value: float


@dataclass(frozen=True)
class Load:
    buf: str
    index: IExpr


@dataclass(frozen=True)
class Unary:
    op: str
    a: "FExpr"


@dataclass(frozen=True)
class Binary:
    op: str
    a: "FExpr"
    b: "FExpr"


@dataclass(frozen=True)
class Cmp:
    """a <op> b as a boolean (ordered, except `ne` which is true for NaN like numpy)."""
    op: str
    a: "FExpr"
    b: "FExpr"


@dataclass(frozen=True)
class ICmp:
    """a <op> b on index expressions (e.g. "is this output element inside the slice")."""
    op: str
    a: "IExpr"
    b: "IExpr"


@dataclass(frozen=True)
class Select:
    cond: Union[Cmp, ICmp]
    a: "FExpr"
    b: "FExpr"


@dataclass(frozen=True)
class AccRef:
    acc: str


FExpr = Union[FConst, Load, Unary, Binary, Select, AccRef]


# ---- the scalar vocabulary (needle.ops.scalar) in loop IR ---------------------------------
def _select_cmp(op):
    return lambda a, b: Select(Cmp(op, a, b), FConst(1.0), FConst(0.0))


def _condition(c):
    """`c != 0` as a condition (a comparison's own condition when c is one)."""
    if isinstance(c, Select) and isinstance(c.cond, Cmp) and (c.a, c.b) == (FConst(1.0), FConst(0.0)):
        return c.cond
    return Cmp("ne", c, FConst(0.0))


def _nan_or(a, b, pick: str):
    """a if a is NaN or `a <pick> b`, else b (numpy's NaN-propagating maximum/minimum)."""
    return Select(Cmp("ne", a, a), a, Select(Cmp(pick, a, b), a, b))


def power(x: FExpr, p) -> FExpr:
    """x ** p: an integer exponent as multiplies (binary exponentiation, a negative one as a
    reciprocal), 0.5 as sqrt, -0.5 as 1/sqrt with pow's values at -0.0 and -inf, any other
    constant or a computed exponent as `pow`."""
    if not isinstance(p, (int, float)):
        return Binary("pow", x, p)
    p = float(p)
    if p == 0.5:
        return Unary("sqrt", x)
    if p == -0.5:  # pow's values where 1 / sqrt(x) differs: +inf at -0.0 (-0.0 + 0.0 is +0.0), 0 at -inf
        inv = Binary("div", FConst(1.0), Unary("sqrt", Binary("add", x, FConst(0.0))))
        return Select(Cmp("eq", x, FConst(float("-inf"))), FConst(0.0), inv)
    if p == int(p) and abs(p) <= 64:
        n = int(abs(p))
        out, base = None, x
        while n:
            if n & 1:
                out = base if out is None else Binary("mul", out, base)
            n >>= 1
            if n:
                base = Binary("mul", base, base)
        out = FConst(1.0) if out is None else out
        return Binary("div", FConst(1.0), out) if p < 0 else out
    return Binary("pow", x, FConst(p))


#: each scalar-vocabulary function as loop IR (the renderers' own tables map Unary/Binary on)
SCALAR = {
    "const": lambda v: FConst(float(v)),
    **{op: (lambda op: lambda a, b: Binary(op, a, b))(op) for op in ("add", "sub", "mul", "div")},
    "pow": lambda a, b: power(a, b.value if isinstance(b, FConst) else b),
    **{op: (lambda op: lambda a: Unary(op, a))(op) for op in UNARY_OPS},
    **{op: _select_cmp(op) for op in CMP_OPS},
    "abs": lambda a: Select(Cmp("le", a, FConst(0.0)), Binary("sub", FConst(0.0), a), a),
    "maximum": lambda a, b: _nan_or(a, b, "gt"),
    "minimum": lambda a, b: _nan_or(a, b, "lt"),
    "where": lambda c, a, b: Select(_condition(c), a, b),
}

#: a reduction's combine (a scalar-vocabulary function) -> (accumulator op, sign): the
#: accumulators are `sum` and NaN-propagating `max`; a minimum is -max(-x)
ACCUMULATORS = {"add": ("sum", 1.0), "maximum": ("max", 1.0), "minimum": ("max", -1.0)}
#: an accumulator's starting value
ACC_IDENTITY = {"sum": 0.0, "max": float("-inf")}
#: an accumulator's value with one more value folded in, as loop IR
ACC_COMBINE = {"sum": lambda acc, v: Binary("add", acc, v), "max": lambda acc, v: SCALAR["maximum"](v, acc)}



# ---- statements ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Store:
    buf: str
    index: IExpr
    value: FExpr


@dataclass(frozen=True)
class AccInit:
    acc: str
    op: str


@dataclass(frozen=True)
class AccUpdate:
    acc: str
    op: str
    value: FExpr


@dataclass(frozen=True)
class For:
    var: str
    extent: int
    kind: str
    body: tuple

    def __post_init__(self):
        if self.kind not in LOOP_KINDS:
            raise ValueError(f"For: unknown loop kind {self.kind!r}")


Stmt = Union[For, Store, AccInit, AccUpdate]


@dataclass(frozen=True)
class Buffer:
    name: str
    size: int  # elements
    role: str  # "in" or "out"
    shape: tuple = ()


@dataclass(frozen=True)
class LoopKernel:
    name: str
    params: tuple  # Buffer, inputs then outputs
    body: tuple

    @property
    def inputs(self):
        return tuple(p for p in self.params if p.role == "in")

    @property
    def outputs(self):
        return tuple(p for p in self.params if p.role == "out")


def operands(e) -> tuple:
    """The value operands of expression e (an ICmp compares index expressions: none)."""
    if isinstance(e, Unary):
        return (e.a,)
    if isinstance(e, (Binary, Cmp)):
        return (e.a, e.b)
    if isinstance(e, Select):
        return (e.cond, e.a, e.b)
    return ()


def with_operands(e, ops: tuple):
    """Expression e (Unary, Binary, Cmp or Select) over new operands."""
    if isinstance(e, Unary):
        return Unary(e.op, *ops)
    if isinstance(e, (Binary, Cmp)):
        return type(e)(e.op, *ops)
    return Select(*ops)


def walk_exprs(e, seen=None):
    """Every sub-expression of a value expression, each once (by identity)."""
    seen = set() if seen is None else seen
    stack = [e]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        stack += operands(x)


def postorder(e, done=()):
    """The sub-expressions of value expression e whose id is not in `done`, each once,
    operands first (left to right): the order in which a recursive walk would finish them,
    without recursion, so expressions of any depth are walked."""
    seen: set = set()
    stack = [(e, False)]
    while stack:
        x, expanded = stack.pop()
        if expanded:
            yield x
        elif id(x) not in seen and id(x) not in done:
            seen.add(id(x))
            stack.append((x, True))
            stack += ((o, False) for o in reversed(operands(x)))


def rewrite(e, fn, memo=None):
    """A copy of value expression e in which every sub-expression x becomes fn(x) where that
    is not None, else x over its rewritten operands (x itself when none changed). Shared
    sub-expressions stay shared; `memo` (id -> (x, copy)) may be shared between calls."""
    memo = {} if memo is None else memo
    for x in postorder(e, memo):
        new = fn(x)
        if new is None:
            ops = operands(x)
            new_ops = tuple(memo[id(o)][1] for o in ops)
            new = x if all(a is b for a, b in zip(ops, new_ops)) else with_operands(x, new_ops)
        memo[id(x)] = (x, new)
    return memo[id(e)][1]


def map_loads(e, fn, memo=None):
    """A copy of `e` with every Load replaced by fn(load)."""
    return rewrite(e, lambda x: fn(x) if isinstance(x, Load) else None, memo)


def out_of_bounds(kernel: LoopKernel) -> Optional[str]:
    """How an access of `kernel` may leave its buffer (a load or store whose index, over
    the loops around it, may fall outside [0, size)), or None when none can. Loads in a
    select's discarded branch count: both branches are evaluated."""
    size = {p.name: p.size for p in kernel.params}

    def visit(stmts, ranges: dict) -> Optional[str]:
        memo: dict = {}
        for s in stmts:
            if isinstance(s, For):
                problem = visit(s.body, {**ranges, s.var: s.extent}) if s.extent > 0 else None
                if problem:
                    return problem
                continue
            if not isinstance(s, (Store, AccUpdate)):
                continue
            accesses = [("store to", s.buf, s.index)] if isinstance(s, Store) else []
            accesses += [("load of", x.buf, x.index) for x in walk_exprs(s.value) if isinstance(x, Load)]
            for what, buf, index in accesses:
                r = index_range(index, ranges, memo)
                if r is None or r[0] < 0 or r[1] >= size[buf]:
                    where = "an unbounded index" if r is None else f"index {r[0]}..{r[1]}"
                    return f"kernel {kernel.name}: {what} {buf} at {where}, outside its {size[buf]} elements"
        return None

    return visit(kernel.body, {})
