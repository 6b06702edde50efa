"""Loop IR: the loop nests that kernels are lowered to, between the graph IR and machine code.

A `LoopKernel` has float32 buffer parameters (inputs first, then outputs) and a body of
statements. Index expressions (`IExpr`, in `index_ir.py`, re-exported here) are integer
trees over loop variables; value expressions (`FExpr`) are float32 scalar trees whose
leaves are `Load`s, constants and accumulator reads. Every node is a frozen dataclass:
equal text means an equal kernel.

Statements:
* `For(var, extent, kind, body)` -- `kind` is serial, parallel, vector (the innermost,
  contiguous loop; renderers emit it with vector registers plus a scalar tail) or unrolled;
* `Store(buf, index, value)`;
* `AccInit(acc, op)` / `AccUpdate(acc, op, value)` -- a reduction accumulator (`sum` or
  `max`) set to its identity and combined with a value; `AccRef(acc)` reads it.

The ops these nodes carry are one table, `VOCABULARY` (kind -> op name -> `Op`): the unary,
binary, compare, index and accumulate ops. Every renderer (LLVM, C, CUDA C, and the tests'
GPU emulator) spells each op of it in a table of its own keyed the same way, and a test
checks that each table covers exactly this vocabulary (`vocabulary_gaps`). The GPU IR
(`cuda/gpu_ir.py`) extends this IR with grid bindings, shared memory, barriers and warp
shuffles; it adds no ops.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Callable, Optional, Union

# the index expressions are their own module, part of this IR (re-exported)
from .index_ir import (IBin, IConst, IExpr, IVar, Ix, coefficient, iadd, idiv, imod, imul,  # noqa: F401
                       index_map, index_range, ivars, linearize, simplify, unravel)

#: serial; parallel (the outermost loop: its iterations may run on several threads); vector
#: (the innermost, contiguous loop); unrolled (serial, fully unrolled where the target can:
#: the GPU's staging loops)
LOOP_KINDS = ("serial", "parallel", "vector", "unrolled")


# ---- the op vocabulary ----------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    """One op of the loop IR. `kind` says which nodes carry it: unary (`Unary`), binary
    (`Binary`), compare (`Cmp` on values, `ICmp` on indices), index (`IBin`), accumulate
    (`AccInit`/`AccUpdate`); `arity` counts its operands (an accumulate op's are the
    accumulator and the value folded in). An accumulate op also has its `identity` (the
    starting value) and `combine(acc, v)`, the accumulator with v folded in as loop IR."""
    kind: str
    name: str
    meaning: str
    identity: Optional[float] = None
    combine: Optional[Callable] = field(default=None, compare=False)

    @property
    def arity(self) -> int:
        return KINDS[self.kind]


#: kind -> number of operands
KINDS = {"unary": 1, "binary": 2, "compare": 2, "index": 2, "accumulate": 2}


def _vocabulary(*ops: Op) -> dict:
    out: dict = {kind: {} for kind in KINDS}
    for op in ops:
        if op.name in out[op.kind]:
            raise ValueError(f"loop IR: {op.kind} op {op.name!r} defined twice")
        out[op.kind][op.name] = op
    return out


#: kind -> op name -> Op: everything a renderer must spell
VOCABULARY = _vocabulary(
    Op("unary", "neg", "-a"),
    Op("unary", "exp", "e ** a (inf -> inf, -inf -> 0)"),
    Op("unary", "log", "natural log (0 -> -inf, below 0 -> NaN)"),
    Op("unary", "tanh", "hyperbolic tangent (+-inf -> +-1)"),
    Op("unary", "sqrt", "square root (below 0 -> NaN)"),
    Op("unary", "sin", "sine (+-inf -> NaN)"),
    Op("unary", "cos", "cosine (+-inf -> NaN)"),
    Op("binary", "add", "a + b"),
    Op("binary", "sub", "a - b"),
    Op("binary", "mul", "a * b"),
    Op("binary", "div", "a / b (IEEE: x / 0 is +-inf or NaN)"),
    Op("binary", "pow", "a ** b with C's powf rules"),
    Op("compare", "eq", "a == b (false when either is NaN)"),
    Op("compare", "ne", "a != b (true when either is NaN, like numpy)"),
    Op("compare", "gt", "a > b (ordered)"),
    Op("compare", "ge", "a >= b (ordered)"),
    Op("compare", "lt", "a < b (ordered)"),
    Op("compare", "le", "a <= b (ordered)"),
    Op("index", "add", "a + b"),
    Op("index", "mul", "a * b"),
    Op("index", "div", "a / b truncated toward zero (C's /)"),
    Op("index", "mod", "remainder with the sign of a (C's %)"),
    Op("accumulate", "sum", "acc + v", 0.0, lambda acc, v: Binary("add", acc, v)),
    Op("accumulate", "max", "NaN-propagating maximum of acc and v", float("-inf"),
       lambda acc, v: SCALAR["maximum"](v, acc)),
)

UNARY_OPS = tuple(VOCABULARY["unary"])
BINARY_OPS = tuple(VOCABULARY["binary"])
CMP_OPS = tuple(VOCABULARY["compare"])
INDEX_OPS = tuple(VOCABULARY["index"])
ACC_OPS = tuple(VOCABULARY["accumulate"])
#: an accumulator's starting value
ACC_IDENTITY = {name: op.identity for name, op in VOCABULARY["accumulate"].items()}
#: an accumulator's value with one more value folded in, as loop IR: ACC_COMBINE[op](acc, v)
ACC_COMBINE = {name: op.combine for name, op in VOCABULARY["accumulate"].items()}


def vocabulary_gaps(table: dict, target: str = "renderer") -> list:
    """What keeps a target's op table ({kind: {op name: spelling}}) from covering exactly
    the vocabulary: one line per missing or unknown kind or op; [] when it covers it."""
    out = []
    for kind in sorted(set(KINDS) | set(table)):
        have, want = set(table.get(kind, ())), set(VOCABULARY.get(kind, ()))
        if kind not in KINDS:
            out.append(f"{target}: unknown op kind {kind!r}")
            continue
        out += [f"{target}: no spelling of {kind} op {op!r}" for op in sorted(want - have)]
        out += [f"{target}: {kind} op {op!r} is not in the loop IR's vocabulary" for op in sorted(have - want)]
    return out


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


def postorder(e, done=(), operands_of=operands, keep=None):
    """The sub-expressions of value expression e whose id is not in `done` (or, given `keep`,
    for which keep(x) holds), each once, operands first (left to right, `operands_of`): the
    order in which a recursive walk would finish them, without recursion, so expressions of
    any depth are walked."""
    keep = keep or (lambda x: id(x) not in done)
    seen: set = set()
    stack = [(e, False)]
    while stack:
        x, expanded = stack.pop()
        if expanded:
            yield x
        elif id(x) not in seen and keep(x):
            seen.add(id(x))
            stack.append((x, True))
            stack += ((o, False) for o in reversed(operands_of(x)))


def children(x) -> tuple:
    """The IR nodes directly inside node x: its fields that are nodes, or tuples of nodes
    (a statement's body). Generic, so it covers the GPU IR's extensions as well."""
    out: list = []
    for f in fields(x):
        v = getattr(x, f.name)
        if is_dataclass(v):
            out.append(v)
        elif isinstance(v, tuple):
            out += [y for y in v if is_dataclass(y)]
    return tuple(out)


def iter_nodes(*roots):
    """Every node reachable from `roots` (statements, expressions, kernels), each once by
    identity, parents before children."""
    seen: set = set()
    stack = list(reversed(roots))
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        stack += reversed(children(x))


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
