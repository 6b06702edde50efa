"""The C-like renderers' common part: `CLike` prints loop IR as C-family text.

Two targets subclass it and supply only their differences: `c_render.CRenderer` (loop IR ->
C, for dumps and as the kernel cache key) and `cuda.render.CudaRenderer` (GPU kernels ->
CUDA C: the GPU statements and nodes, the index type, lazy selects, the helpers' names).

What they share:

* `OPS`, the per-op table keyed like `loop_ir.VOCABULARY` (kind -> op name -> a format
  string over the operands' texts; an accumulate op's over `{acc}` and `{v}`). The
  operators are common (`C_OPERATORS`); a target adds its function spellings (`op_table`);
* index expressions, integer and float literals (negative ones in parentheses, so no
  operator ever meets a `-` sign), comparisons and selects;
* value expressions with common sub-expressions bound to temporaries: a sub-expression a
  statement's value uses more than once, or that is nested `MAX_NESTING` deep, is declared
  `const float tN = ...;` before the statement (N counts through the kernel), so the text
  grows with the expression DAG, not with its unfolding into a tree (which doubles at every
  level of `y = y * y + y`). Conditions are never bound; the nodes in `REPEAT` (constants,
  accumulator reads, and whatever a target adds) are printed again at each use;
* the statement walk for the loop IR's statements (For, Store, AccInit, AccUpdate).

Statement class `X` is printed by the method `stmt_X`, value node `X` by `node_X` and index
node `X` by `index_X`, so a target extends the IR by adding methods.
"""
from __future__ import annotations

from collections import Counter

from .loop_ir import ACC_IDENTITY, VOCABULARY, AccRef, Cmp, FConst, ICmp, IConst, IVar, operands, postorder

#: the operators every C-like target spells alike
C_OPERATORS = {
    "unary": {"neg": "(-{})"},
    "binary": {"add": "({} + {})", "sub": "({} - {})", "mul": "({} * {})", "div": "({} / {})"},
    # C's != is unordered (true for NaN) and the others ordered, as the vocabulary says
    "compare": {"eq": "({} == {})", "ne": "({} != {})", "gt": "({} > {})", "ge": "({} >= {})",
                "lt": "({} < {})", "le": "({} <= {})"},
    "index": {"add": "({} + {})", "mul": "({} * {})", "div": "({} / {})", "mod": "({} % {})"},
    "accumulate": {"sum": "{acc} += {v}"},
}


def op_table(**own: dict) -> dict:
    """A target's op table: `C_OPERATORS` with its own spellings (kind=dict) added."""
    return {kind: {**C_OPERATORS.get(kind, {}), **own.get(kind, {})} for kind in VOCABULARY}


class CLike:
    """Prints loop IR statements into `self.lines` (see the module docstring)."""

    OPS: dict = C_OPERATORS
    #: the spellings of +infinity and NaN
    INF, NAN = "INFINITY", "NAN"
    #: value nodes printed again at each use, never bound to a temporary
    REPEAT: tuple = (FConst, AccRef)
    #: boolean nodes: printed inline, never bound to a float temporary
    CONDITIONS: tuple = (Cmp, ICmp)
    #: a sub-expression nested this deep is bound to a temporary
    MAX_NESTING = 16

    def __init__(self, itype: str = "int64_t"):
        self.itype = itype
        self.lines: list = []
        self.ntemp = 0
        #: id -> text of the sub-expressions printed so far by the enclosing expressions
        #: (an index-guarded select's arms see their statement's temporaries)
        self.visible: list = []

    # ---- literals and names ---------------------------------------------------------------
    @classmethod
    def float_literal(cls, v: float) -> str:
        v = float(v)
        if v != v:
            return cls.NAN
        if v in (float("inf"), float("-inf")):
            return cls.INF if v > 0 else f"(-{cls.INF})"
        text = repr(v) + "f"
        return f"({text})" if text.startswith("-") else text

    @staticmethod
    def int_literal(v: int) -> str:
        return str(v) if v >= 0 else f"({v})"

    def temp(self) -> str:
        self.ntemp += 1
        return f"t{self.ntemp - 1}"

    # ---- index expressions ----------------------------------------------------------------
    def index(self, e, ind: str = "") -> str:
        """Index expression e as text (`ind`: where a value inside it may declare temporaries)."""
        if isinstance(e, IVar):
            return e.name
        if isinstance(e, IConst):
            return self.int_literal(e.value)
        fn = getattr(self, "index_" + type(e).__name__, None)
        if fn is None:
            raise TypeError(f"{type(self).__name__}: unknown index expression {e!r}")
        return fn(e, ind)

    def index_IBin(self, e, ind):
        return self.OPS["index"][e.op].format(self.index(e.a, ind), self.index(e.b, ind))

    def index_ICmp(self, e, ind):
        return self.OPS["compare"][e.op].format(self.index(e.a, ind), self.index(e.b, ind))

    # ---- value expressions ----------------------------------------------------------------
    def operands(self, e) -> tuple:
        """The value operands of node e that are printed before it (and may be shared)."""
        return operands(e)

    def _known(self, e):
        for seen in reversed(self.visible):
            if id(e) in seen:
                return seen[id(e)]
        return None

    def _postorder(self, e):
        """The sub-expressions of e not printed yet, each once, operands first."""
        return postorder(e, operands_of=self.operands, keep=lambda x: x is e or self._known(x) is None)

    def expr(self, e, ind: str) -> str:
        """Value expression e as text; temporaries for shared or deep sub-expressions are
        declared at indent `ind` first (see the module docstring)."""
        known = self._known(e)
        if known is not None:
            return known
        text: dict = {}
        depth: dict = {}
        self.visible.append(text)
        try:
            order = list(self._postorder(e))
            uses = Counter(id(o) for x in order for o in self.operands(x))
            for x in order:
                ops = self.operands(x)
                t = self.node(x, [self._known(o) for o in ops], ind)
                d = 1 + max((depth.get(id(o), 0) for o in ops), default=0)
                if (x is not e and not isinstance(x, self.REPEAT + self.CONDITIONS) and not t.isidentifier()
                        and (uses[id(x)] > 1 or d >= self.MAX_NESTING)):
                    name = self.temp()
                    self.lines.append(f"{ind}const float {name} = {t};")
                    t, d = name, 0
                text[id(x)], depth[id(x)] = t, d
        finally:
            self.visible.pop()
        return text[id(e)]

    def node(self, e, ops: list, ind: str) -> str:
        """The text of value node e over its operands' texts."""
        fn = getattr(self, "node_" + type(e).__name__, None)
        if fn is None:
            raise TypeError(f"{type(self).__name__}: unknown value expression {e!r}")
        return fn(e, ops, ind)

    def node_FConst(self, e, ops, ind):
        return self.float_literal(e.value)

    def node_Load(self, e, ops, ind):
        return f"{e.buf}[{self.index(e.index, ind)}]"

    def node_AccRef(self, e, ops, ind):
        return e.acc

    def node_Unary(self, e, ops, ind):
        return self.OPS["unary"][e.op].format(*ops)

    def node_Binary(self, e, ops, ind):
        return self.OPS["binary"][e.op].format(*ops)

    def node_Cmp(self, e, ops, ind):
        return self.OPS["compare"][e.op].format(*ops)

    def node_ICmp(self, e, ops, ind):
        return self.index(e, ind)

    def node_Select(self, e, ops, ind):
        return f"({ops[0]} ? {ops[1]} : {ops[2]})"

    # ---- statements -----------------------------------------------------------------------
    def stmt(self, s, ind: str) -> None:
        fn = getattr(self, "stmt_" + type(s).__name__, None)
        if fn is None:
            raise TypeError(f"{type(self).__name__}: unknown statement {s!r}")
        fn(s, ind)

    def body(self, stmts, ind: str) -> None:
        for s in stmts:
            self.stmt(s, ind)

    def stmt_For(self, s, ind):
        if s.kind == "unrolled":
            self.lines.append(f"{ind}#pragma unroll")
        v = s.var
        self.lines.append(f"{ind}for ({self.itype} {v} = 0; {v} < {s.extent}; {v}++) {{  // {s.kind}")
        self.body(s.body, ind + "  ")
        self.lines.append(ind + "}")

    def stmt_Store(self, s, ind):
        value = self.expr(s.value, ind)
        self.lines.append(f"{ind}{s.buf}[{self.index(s.index, ind)}] = {value};")

    def stmt_AccInit(self, s, ind):
        self.lines.append(f"{ind}float {s.acc} = {self.float_literal(ACC_IDENTITY[s.op])};")

    def stmt_AccUpdate(self, s, ind):
        value = self.expr(s.value, ind)
        self.lines.append(ind + self.OPS["accumulate"][s.op].format(acc=s.acc, v=value) + ";")
