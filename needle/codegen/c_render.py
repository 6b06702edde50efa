"""Loop IR -> readable C text (for dumps, and the canonical text kernels are cached by).

The C is faithful to the loop IR: one `for` per `For` (its kind as a comment), buffers as
`float *restrict` parameters, accumulators as local floats, and helper names for the
transcendentals the LLVM renderer inlines as polynomials (`exp_poly`, `sin_poly`, ...).
Everything but those spellings is the C-like renderers' common part (`c_like.CLike`).
"""
from __future__ import annotations

from .c_like import CLike, op_table
from .loop_ir import Load, LoopKernel

#: the loop IR's ops as C: the transcendentals the LLVM renderer inlines as polynomials are
#: named `<op>_poly`, the NaN-propagating max of a `max` accumulator `max_nan`
C_OPS = op_table(
    unary={"exp": "exp_poly({})", "log": "log_poly({})", "tanh": "tanh_poly({})", "sqrt": "sqrt_poly({})",
           "sin": "sin_poly({})", "cos": "cos_poly({})"},
    binary={"pow": "pow_poly({}, {})"},
    accumulate={"max": "{acc} = max_nan({acc}, {v})"},
)


class CRenderer(CLike):
    OPS = C_OPS
    #: a load is repeated at each use (the C reads like the loop IR; LLVM shares the value)
    REPEAT = CLike.REPEAT + (Load,)


def c_index(e) -> str:
    """An index expression as C."""
    return CRenderer().index(e)


def render_c(kernel: LoopKernel) -> str:
    """The kernel as C source text."""
    params = []
    for p in kernel.params:
        const = "const " if p.role == "in" else ""
        shape = "x".join(map(str, p.shape)) or "scalar"
        params.append(f"{const}float *restrict {p.name} /* {p.size}: {shape} */")
    r = CRenderer()
    r.lines.append(f"void {kernel.name}({', '.join(params)}) {{")
    r.body(kernel.body, "  ")
    r.lines.append("}")
    return "\n".join(r.lines) + "\n"
