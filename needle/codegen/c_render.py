"""Loop IR -> readable C text (for dumps, and the canonical text kernels are cached by).

The C is faithful to the loop IR: one `for` per `For` (its kind as a comment), buffers as
`float *restrict` parameters, accumulators as local floats, and helper names for the
transcendentals the LLVM renderer inlines as polynomials (`exp_poly`, `tanh_poly`, ...).
"""
from __future__ import annotations

from collections import Counter

from .loop_ir import (AccInit, AccRef, AccUpdate, Binary, Cmp, FConst, For, ICmp, IConst, IVar, Load,
                      LoopKernel, Select, Store, Unary, operands, postorder, walk_exprs)

_IOP = {"add": "+", "mul": "*", "div": "/", "mod": "%"}
#: loop IR's unary and binary value ops as C (the transcendentals the LLVM renderer inlines as
#: polynomials are named `<op>_poly`)
_UNARY = {"neg": "(-{})", "exp": "exp_poly({})", "log": "log_poly({})", "tanh": "tanh_poly({})",
          "sqrt": "sqrt_poly({})", "sin": "sinf({})", "cos": "cosf({})"}
_BINARY = {"add": "({} + {})", "sub": "({} - {})", "mul": "({} * {})", "div": "({} / {})", "pow": "pow_poly({}, {})"}
_COP = {"eq": "==", "ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def c_index(e) -> str:
    if isinstance(e, IVar):
        return e.name
    if isinstance(e, IConst):
        return str(e.value)
    return f"({c_index(e.a)} {_IOP[e.op]} {c_index(e.b)})"


def _float(v: float) -> str:
    if v != v:
        return "NAN"
    if v in (float("inf"), float("-inf")):
        return "INFINITY" if v > 0 else "-INFINITY"
    return repr(float(v)) + "f"


#: a sub-expression nested this deep is named by a temporary
MAX_NESTING = 16


def _c_node(e, ops: list) -> str:
    """The C text of expression e over its operands' texts."""
    if isinstance(e, FConst):
        return _float(e.value)
    if isinstance(e, Load):
        return f"{e.buf}[{c_index(e.index)}]"
    if isinstance(e, AccRef):
        return e.acc
    if isinstance(e, Unary):
        return _UNARY[e.op].format(*ops)
    if isinstance(e, Binary):
        return _BINARY[e.op].format(*ops)
    if isinstance(e, Cmp):
        return f"({ops[0]} {_COP[e.op]} {ops[1]})"
    if isinstance(e, ICmp):
        return f"({c_index(e.a)} {_COP[e.op]} {c_index(e.b)})"
    if isinstance(e, Select):
        return f"({ops[0]} ? {ops[1]} : {ops[2]})"
    raise TypeError(f"unknown expression {e!r}")


class _Writer:
    """The kernel's lines. A float sub-expression that a statement's value uses more than
    once, or that is nested MAX_NESTING deep, becomes a temporary `float tN = ...;` declared
    before the statement (N counts through the kernel), so that the text grows linearly
    with the expression DAG (written as a tree, a value that reuses its operand doubles at
    every level) and every line stays readable."""

    def __init__(self):
        self.lines: list = []
        self.temps = 0

    def expr(self, e, ind: str) -> str:
        uses = Counter(id(o) for x in walk_exprs(e) for o in operands(x))
        text: dict = {}
        depth: dict = {}
        for x in postorder(e):
            ops = operands(x)
            t = _c_node(x, [text[id(o)] for o in ops])
            d = 1 + max((depth[id(o)] for o in ops), default=0)
            if ops and x is not e and not isinstance(x, Cmp) and (uses[id(x)] > 1 or d >= MAX_NESTING):
                self.lines.append(f"{ind}float t{self.temps} = {t};")
                t, d = f"t{self.temps}", 0
                self.temps += 1
            text[id(x)], depth[id(x)] = t, d
        return text[id(e)]

    def stmt(self, s, ind: str) -> None:
        out = self.lines
        if isinstance(s, For):
            out.append(f"{ind}for (int64_t {s.var} = 0; {s.var} < {s.extent}; {s.var}++) {{  // {s.kind}")
            for x in s.body:
                self.stmt(x, ind + "  ")
            out.append(ind + "}")
        elif isinstance(s, Store):
            value = self.expr(s.value, ind)
            out.append(f"{ind}{s.buf}[{c_index(s.index)}] = {value};")
        elif isinstance(s, AccInit):
            out.append(f"{ind}float {s.acc} = {'0.0f' if s.op == 'sum' else '-INFINITY'};")
        elif isinstance(s, AccUpdate):
            value = self.expr(s.value, ind)
            if s.op == "sum":
                out.append(f"{ind}{s.acc} += {value};")
            else:
                out.append(f"{ind}{s.acc} = max_nan({s.acc}, {value});")
        else:
            raise TypeError(f"unknown statement {s!r}")


def render_c(kernel: LoopKernel) -> str:
    """The kernel as C source text."""
    params = []
    for p in kernel.params:
        const = "const " if p.role == "in" else ""
        shape = "x".join(map(str, p.shape)) or "scalar"
        params.append(f"{const}float *restrict {p.name} /* {p.size}: {shape} */")
    w = _Writer()
    w.lines.append(f"void {kernel.name}({', '.join(params)}) {{")
    for s in kernel.body:
        w.stmt(s, "  ")
    w.lines.append("}")
    return "\n".join(w.lines) + "\n"
