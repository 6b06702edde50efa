"""Loop IR -> readable C text (for dumps, and the canonical text kernels are cached by).

The C is faithful to the loop IR: one `for` per `For` (its kind as a comment), buffers as
`float *restrict` parameters, accumulators as local floats, and helper names for the
transcendentals the LLVM renderer inlines as polynomials (`exp_poly`, `tanh_poly`, ...).
"""
from __future__ import annotations

from .loop_ir import (AccInit, AccRef, AccUpdate, Binary, Cmp, FConst, For, IBin, ICmp, IConst, IVar,
                      Load, LoopKernel, Select, Store, Unary)

_IOP = {"add": "+", "mul": "*", "div": "/", "mod": "%"}
_FOP = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
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


def c_expr(e) -> str:
    if isinstance(e, FConst):
        return _float(e.value)
    if isinstance(e, Load):
        return f"{e.buf}[{c_index(e.index)}]"
    if isinstance(e, AccRef):
        return e.acc
    if isinstance(e, Unary):
        return f"(-{c_expr(e.a)})" if e.op == "neg" else f"{e.op}_poly({c_expr(e.a)})"
    if isinstance(e, Binary):
        if e.op == "pow":
            return f"pow_poly({c_expr(e.a)}, {c_expr(e.b)})"
        return f"({c_expr(e.a)} {_FOP[e.op]} {c_expr(e.b)})"
    if isinstance(e, Cmp):
        return f"({c_expr(e.a)} {_COP[e.op]} {c_expr(e.b)})"
    if isinstance(e, ICmp):
        return f"({c_index(e.a)} {_COP[e.op]} {c_index(e.b)})"
    if isinstance(e, Select):
        return f"({c_expr(e.cond)} ? {c_expr(e.a)} : {c_expr(e.b)})"
    raise TypeError(f"unknown expression {e!r}")


def _stmt(s, ind: str, out: list):
    if isinstance(s, For):
        out.append(f"{ind}for (int64_t {s.var} = 0; {s.var} < {s.extent}; {s.var}++) {{  // {s.kind}")
        for x in s.body:
            _stmt(x, ind + "  ", out)
        out.append(ind + "}")
    elif isinstance(s, Store):
        out.append(f"{ind}{s.buf}[{c_index(s.index)}] = {c_expr(s.value)};")
    elif isinstance(s, AccInit):
        out.append(f"{ind}float {s.acc} = {'0.0f' if s.op == 'sum' else '-INFINITY'};")
    elif isinstance(s, AccUpdate):
        if s.op == "sum":
            out.append(f"{ind}{s.acc} += {c_expr(s.value)};")
        else:
            out.append(f"{ind}{s.acc} = max_nan({s.acc}, {c_expr(s.value)});")
    else:
        raise TypeError(f"unknown statement {s!r}")


def render_c(kernel: LoopKernel) -> str:
    """The kernel as C source text."""
    params = []
    for p in kernel.params:
        const = "const " if p.role == "in" else ""
        shape = "x".join(map(str, p.shape)) or "scalar"
        params.append(f"{const}float *restrict {p.name} /* {p.size}: {shape} */")
    out = [f"void {kernel.name}({', '.join(params)}) {{"]
    for s in kernel.body:
        _stmt(s, "  ", out)
    out.append("}")
    return "\n".join(out) + "\n"
