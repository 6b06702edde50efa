"""CUDA C rendering of GPU kernels (`gpu_ir.GpuKernel`) and of whole compiled graphs.

`render_kernel(kernel)` prints one `extern "C" __global__` function; `render_program(program)`
prints a complete translation unit: the helper prelude, the graph's non-scalar constants as
`__device__` arrays, every distinct kernel once, and the host entry

    extern "C" int needle_graph_<name>(void** inputs, void** outputs, char* arena,
                                       cudaStream_t stream);

that launches every kernel in schedule order on `stream`, with buffer pointers at their
memory-plan offsets in `arena` (graph inputs and outputs are the caller's pointers), and
returns `cudaGetLastError()`. `needle_graph_<name>_arena_bytes()` gives the arena size the
caller must allocate (the memory plan's arena plus scratch for values internal to a group).

Value expressions are printed with common sub-expressions bound to `const float` temporaries
(the loop IR shares sub-trees, which printed inline would repeat). A `Select` guarded by an
index condition becomes an if/else, so its untaken arm (a possibly out-of-bounds load) is
never evaluated.
"""
from __future__ import annotations

import dataclasses

from ..loop_ir import AccInit, AccRef, AccUpdate, Binary, Cmp, FConst, IBin, IConst, IVar, Load, Select, Store, Unary
from .gpu_ir import (ACC_IDENTITY, AtomicAdd, Assign, Barrier, Decl, GpuKernel, IAnd, ICmp, IDecl, IFloat, If,
                     IOr, Loop, MicroGemm, Rand, SLoad, SStore, Shfl, TileDecl, TileRef, Var, walk_stmts)

INT_MAX = 2 ** 31 - 1

HELPERS = r"""
#if !defined(__CUDACC__)
#include <cmath>
#define __host__
#define __device__
#define __forceinline__ inline
#endif
#define NDL_INF __int_as_float(0x7f800000)
#define NDL_NAN __int_as_float(0x7fffffff)

// max that propagates NaN (numpy's maximum), for max reductions
__host__ __device__ __forceinline__ float ndl_max_nan(float a, float b) {
  return (a != a || a > b) ? a : b;
}

// the compiled RNG (needle/ops/random.py): splitmix64 of (element index + key)
__host__ __device__ __forceinline__ unsigned long long ndl_splitmix64(unsigned long long x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

__host__ __device__ __forceinline__ float ndl_uniform(float counter, float base, unsigned long long stream,
                                                      unsigned long long index) {
  unsigned long long c = (unsigned long long)llrintf(counter);
  unsigned long long b = (unsigned long long)llrintf(base);
  unsigned long long seed = ndl_splitmix64(b) + c * 0x9E3779B97F4A7C15ULL;
  unsigned long long key = ndl_splitmix64(seed + stream);
  unsigned long long bits = ndl_splitmix64(index + key);
  return (float)(bits >> 40) / 16777216.0f;
}
"""

_IOP = {"add": "+", "mul": "*", "div": "/", "mod": "%"}
_FOP = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_COP = {"eq": "==", "ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
#: loop IR's unary value ops as CUDA C
_UNARY = {"neg": "(-{})", "exp": "expf({})", "log": "logf({})", "tanh": "tanhf({})", "sqrt": "sqrtf({})",
          "sin": "sinf({})", "cos": "cosf({})"}


def float_literal(v: float) -> str:
    v = float(v)
    if v != v:
        return "NDL_NAN"
    if v in (float("inf"), float("-inf")):
        return "NDL_INF" if v > 0 else "(-NDL_INF)"
    text = repr(v)
    if "e" not in text and "." not in text:
        text += ".0"
    return f"{text}f" if not text.startswith("-") else f"({text}f)"


def index_type(kernel: GpuKernel) -> str:
    """`int` when every buffer, the grid and all constants fit 32 bits, else `long long`."""
    big = max([p.size for p in kernel.params] + [kernel.blocks * kernel.threads, 0])
    for s in walk_stmts(kernel.body):
        if isinstance(s, Loop):
            big = max(big, s.extent * kernel.threads)
    return "int" if big < INT_MAX // 4 else "long long"


class _Emitter:
    """Prints statements of one kernel, binding shared float sub-expressions to temps."""

    def __init__(self, itype: str):
        self.itype = itype
        self.lines: list = []
        self.ntemp = 0

    # -- index expressions
    def index(self, e, ind, scope) -> str:
        if isinstance(e, IVar):
            return e.name
        if isinstance(e, IConst):
            return str(e.value) if e.value >= 0 else f"({e.value})"
        if isinstance(e, IBin):
            return f"({self.index(e.a, ind, scope)} {_IOP[e.op]} {self.index(e.b, ind, scope)})"
        if isinstance(e, ICmp):
            return f"({self.index(e.a, ind, scope)} {_COP[e.op]} {self.index(e.b, ind, scope)})"
        if isinstance(e, IAnd):
            return f"({self.index(e.a, ind, scope)} && {self.index(e.b, ind, scope)})"
        if isinstance(e, IOr):
            return f"({self.index(e.a, ind, scope)} || {self.index(e.b, ind, scope)})"
        if isinstance(e, IFloat):
            v = self.value(e.value, ind, scope)
            if e.bound:
                return f"(({v}) >= 0.0f && ({v}) < {float(e.bound)!r}f ? ({self.itype})({v}) : ({self.itype})0)"
            return f"(({self.itype})({v}))"
        raise TypeError(f"unknown index expression {e!r}")

    # -- value expressions with CSE
    def value(self, e, ind, scope) -> str:
        """`e` as C text; shared sub-trees (by identity, counted in scope["counts"]) are
        bound to temporaries emitted before the current statement."""
        key = id(e)
        for memo in reversed(scope["memo"]):
            if key in memo:
                return memo[key]
        text = self._value(e, ind, scope)
        trivial = isinstance(e, (FConst, AccRef, Var, TileRef))
        if not trivial and scope["counts"].get(key, 0) > 1:
            name = f"t{self.ntemp}"
            self.ntemp += 1
            self.lines.append(f"{ind}const float {name} = {text};")
            scope["memo"][-1][key] = name
            return name
        return text

    def _value(self, e, ind, scope) -> str:
        if isinstance(e, FConst):
            return float_literal(e.value)
        if isinstance(e, Load):
            return f"{e.buf}[{self.index(e.index, ind, scope)}]"
        if isinstance(e, SLoad):
            return f"{e.array}[{self.index(e.index, ind, scope)}]"
        if isinstance(e, (AccRef,)):
            return e.acc
        if isinstance(e, Var):
            return e.name
        if isinstance(e, TileRef):
            return f"{e.name}[{e.row}][{e.col}]"
        if isinstance(e, Unary):
            a = self.value(e.a, ind, scope)
            return _UNARY[e.op].format(a)
        if isinstance(e, Binary):
            a, b = self.value(e.a, ind, scope), self.value(e.b, ind, scope)
            if e.op == "pow":
                return f"powf({a}, {b})"
            if e.op == "max_nan":
                return f"ndl_max_nan({a}, {b})"
            return f"({a} {_FOP[e.op]} {b})"
        if isinstance(e, Cmp):
            return f"({self.value(e.a, ind, scope)} {_COP[e.op]} {self.value(e.b, ind, scope)})"
        if isinstance(e, Select):
            if isinstance(e.cond, (ICmp, IAnd, IOr)):  # lazy: an if/else into a temporary
                name = f"t{self.ntemp}"
                self.ntemp += 1
                cond = self.index(e.cond, ind, scope)
                self.lines.append(f"{ind}float {name};")
                self.lines.append(f"{ind}if {_paren(cond)} {{")
                scope["memo"].append({})
                a = self.value(e.a, ind + "  ", scope)
                scope["memo"].pop()
                self.lines.append(f"{ind}  {name} = {a};")
                self.lines.append(f"{ind}}} else {{")
                scope["memo"].append({})
                b = self.value(e.b, ind + "  ", scope)
                scope["memo"].pop()
                self.lines.append(f"{ind}  {name} = {b};")
                self.lines.append(f"{ind}}}")
                return name
            c = self.value(e.cond, ind, scope)
            return f"({c} ? {self.value(e.a, ind, scope)} : {self.value(e.b, ind, scope)})"
        if isinstance(e, Rand):
            c, b = self.value(e.counter, ind, scope), self.value(e.base, ind, scope)
            return (f"ndl_uniform({c}, {b}, {e.stream}ULL, "
                    f"(unsigned long long)({self.index(e.index, ind, scope)}))")
        raise TypeError(f"unknown value expression {e!r}")

    def scope_for(self, *exprs) -> dict:
        counts: dict = {}
        stack = list(exprs)
        while stack:
            x = stack.pop()
            k = id(x)
            counts[k] = counts.get(k, 0) + 1
            if counts[k] > 1:
                continue
            stack.extend(_children(x))
        return {"counts": counts, "memo": [{}]}

    # -- statements
    def stmt(self, s, ind):
        out = self.lines
        if isinstance(s, Store):
            sc = self.scope_for(s.value)
            v = self.value(s.value, ind, sc)
            out.append(f"{ind}{s.buf}[{self.index(s.index, ind, sc)}] = {v};")
        elif isinstance(s, SStore):
            sc = self.scope_for(s.value)
            v = self.value(s.value, ind, sc)
            out.append(f"{ind}{s.array}[{self.index(s.index, ind, sc)}] = {v};")
        elif isinstance(s, AtomicAdd):
            sc = self.scope_for(s.value)
            v = self.value(s.value, ind, sc)
            out.append(f"{ind}atomicAdd(&{s.buf}[{self.index(s.index, ind, sc)}], {v});")
        elif isinstance(s, AccInit):
            out.append(f"{ind}float {s.acc} = {float_literal(ACC_IDENTITY[s.op])};")
        elif isinstance(s, AccUpdate):
            sc = self.scope_for(s.value)
            v = self.value(s.value, ind, sc)
            out.append(f"{ind}{s.acc} += {v};" if s.op == "sum" else f"{ind}{s.acc} = ndl_max_nan({s.acc}, {v});")
        elif isinstance(s, Decl):
            sc = self.scope_for(s.value)
            out.append(f"{ind}float {s.var} = {self.value(s.value, ind, sc)};")
        elif isinstance(s, Assign):
            sc = self.scope_for(s.value)
            out.append(f"{ind}{s.var} = {self.value(s.value, ind, sc)};")
        elif isinstance(s, IDecl):
            sc = self.scope_for()
            out.append(f"{ind}const {self.itype} {s.var} = {self.index(s.value, ind, sc)};")
        elif isinstance(s, Loop):
            if s.unroll:
                out.append(f"{ind}#pragma unroll")
            out.append(f"{ind}for ({self.itype} {s.var} = 0; {s.var} < {s.extent}; ++{s.var}) {{")
            for x in s.body:
                self.stmt(x, ind + "  ")
            out.append(f"{ind}}}")
        elif isinstance(s, If):
            sc = self.scope_for()
            out.append(f"{ind}if {_paren(self.index(s.cond, ind, sc))} {{")
            for x in s.body:
                self.stmt(x, ind + "  ")
            if s.orelse:
                out.append(f"{ind}}} else {{")
                for x in s.orelse:
                    self.stmt(x, ind + "  ")
            out.append(f"{ind}}}")
        elif isinstance(s, Barrier):
            out.append(f"{ind}__syncthreads();")
        elif isinstance(s, TileDecl):
            out.append(f"{ind}float {s.name}[{s.rows}][{s.cols}];")
            out.append(f"{ind}#pragma unroll")
            out.append(f"{ind}for (int mi = 0; mi < {s.rows}; ++mi) {{")
            out.append(f"{ind}  #pragma unroll")
            out.append(f"{ind}  for (int nj = 0; nj < {s.cols}; ++nj) {s.name}[mi][nj] = 0.0f;")
            out.append(f"{ind}}}")
        elif isinstance(s, MicroGemm):
            sc = self.scope_for()
            out.append(f"{ind}#pragma unroll")
            out.append(f"{ind}for (int kk = 0; kk < {s.depth}; ++kk) {{")
            out.append(f"{ind}  float a_r[{s.rows}], b_r[{s.cols}];")
            out.append(f"{ind}  #pragma unroll")
            out.append(f"{ind}  for (int mi = 0; mi < {s.rows}; ++mi) a_r[mi] = {s.a_array}[{self.index(s.a_index, ind, sc)}];")
            out.append(f"{ind}  #pragma unroll")
            out.append(f"{ind}  for (int nj = 0; nj < {s.cols}; ++nj) b_r[nj] = {s.b_array}[{self.index(s.b_index, ind, sc)}];")
            out.append(f"{ind}  #pragma unroll")
            out.append(f"{ind}  for (int mi = 0; mi < {s.rows}; ++mi) {{")
            out.append(f"{ind}    #pragma unroll")
            out.append(f"{ind}    for (int nj = 0; nj < {s.cols}; ++nj) {s.acc}[mi][nj] = fmaf(a_r[mi], b_r[nj], {s.acc}[mi][nj]);")
            out.append(f"{ind}  }}")
            out.append(f"{ind}}}")
        elif isinstance(s, Shfl):
            fn = "__shfl_down_sync" if s.mode == "down" else "__shfl_sync"
            out.append(f"{ind}{s.dst} = {fn}(0xffffffffu, {s.src}, {s.offset});")
        else:
            raise TypeError(f"unknown statement {s!r}")


def _paren(text: str) -> str:
    return text if text.startswith("(") and _balanced(text[1:-1]) else f"({text})"


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            return False
    return depth == 0


def _children(e):
    if isinstance(e, Unary):
        return (e.a,)
    if isinstance(e, (Binary, Cmp)):
        return (e.a, e.b)
    if isinstance(e, Select):
        # arms of an index-guarded select are scoped: do not count them with the outside
        return (e.cond, e.a, e.b) if not isinstance(e.cond, (ICmp, IAnd, IOr)) else ()
    if isinstance(e, Load):
        return _index_values(e.index)
    if isinstance(e, Rand):
        return (e.counter, e.base)
    return ()


def _index_values(e):
    if isinstance(e, IFloat):
        return (e.value,)
    if isinstance(e, (IBin, ICmp, IAnd, IOr)):
        return _index_values(e.a) + _index_values(e.b)
    return ()


def _uses(body, name) -> bool:
    """Whether any index expression of the body reads the variable `name`."""

    def idx(e):
        if isinstance(e, IVar):
            return e.name == name
        if isinstance(e, (IBin, ICmp, IAnd, IOr)):
            return idx(e.a) or idx(e.b)
        if isinstance(e, IFloat):
            return val(e.value)
        return False

    def val(e):
        stack, seen = [e], set()
        while stack:
            x = stack.pop()
            if id(x) in seen:
                continue
            seen.add(id(x))
            if isinstance(x, (Load, SLoad)) and idx(x.index):
                return True
            if isinstance(x, Rand) and idx(x.index):
                return True
            if isinstance(x, Select) and isinstance(x.cond, (ICmp, IAnd, IOr)):
                if idx(x.cond):
                    return True
                stack.extend((x.a, x.b))
                continue
            stack.extend(_children(x))
        return False

    for s in walk_stmts(body):
        if isinstance(s, (Store, SStore, AtomicAdd)) and (idx(s.index) or val(s.value)):
            return True
        if isinstance(s, (AccUpdate, Decl, Assign)) and val(s.value):
            return True
        if isinstance(s, (IDecl,)) and idx(s.value):
            return True
        if isinstance(s, MicroGemm) and (idx(s.a_index) or idx(s.b_index)):
            return True
        if isinstance(s, If) and idx(s.cond):
            return True
    return False


_COORD = {"tx": "threadIdx.x", "ty": "threadIdx.y", "bx": "blockIdx.x", "by": "blockIdx.y",
          "bz": "blockIdx.z"}


def render_kernel(kernel: GpuKernel, consts: dict | None = None) -> str:
    """One kernel as CUDA C: `extern "C" __global__ void <name>(float* ...)`."""
    itype = index_type(kernel)
    params = []
    for p in kernel.params:
        qual = "const float*" if p.role == "in" else "float*"
        params.append(f"{qual}{' __restrict__' if p.restrict else ''} {p.name}")
    head = []
    if kernel.note:
        for line in kernel.note.splitlines():
            head.append(f"// {line}")
    head.append(f'extern "C" __global__ void __launch_bounds__({kernel.threads}) '
                f"{kernel.name}({', '.join(params)}) {{")
    em = _Emitter(itype)
    for var, coord in _COORD.items():
        if _uses(kernel.body, var):
            em.lines.append(f"  const {itype} {var} = ({itype}){coord};")
    for sh in kernel.shared:
        em.lines.append(f"  __shared__ float {sh.name}[{max(sh.size, 1)}];")
    for s in kernel.body:
        em.stmt(s, "  ")
    return "\n".join(head + em.lines + ["}"]) + "\n"


def _c_name(name: str) -> str:
    out = "".join(ch if ch.isalnum() else "_" for ch in name)
    return out if out and not out[0].isdigit() else "_" + out


def graph_symbol(name: str) -> str:
    """The host entry's C name for a graph called `name`."""
    return f"needle_graph_{_c_name(name)}"


def _arg(loc, param) -> str:
    qual = "const float*" if param.role == "in" else "float*"
    if loc.space == "arena":
        return f"({qual})(arena + {loc.offset})"
    if loc.space == "in":
        base = f"(char*)inputs[{loc.index}]"
    elif loc.space == "out":
        base = f"(char*)outputs[{loc.index}]"
    else:
        raise ValueError(f"unknown location {loc!r}")
    return f"({qual})({base} + {loc.offset})" if loc.offset else f"({qual})({base})"


def render_program(program) -> str:
    """The complete translation unit of a `CudaProgram` (see the module docstring)."""
    sym = graph_symbol(program.name)
    out = [f"// needle: CUDA translation unit for graph @{program.name}",
           f"// {len(program.launches)} launches, {len(program.inputs)} inputs, {len(program.outputs)} outputs, "
           f"arena {program.arena_bytes} bytes (memory plan {program.plan_arena_bytes} + scratch "
           f"{program.scratch_bytes})",
           "#include <cuda_runtime.h>",
           "#include <stddef.h>",
           HELPERS]
    for name, arr in program.consts.items():
        flat = ", ".join(float_literal(float(v)) for v in arr.reshape(-1))
        out.append(f"static __device__ const float {name}[{max(arr.size, 1)}] = {{{flat}}};")
    if program.consts:
        out.append("")
    names: dict = {}
    launch_names = []
    for ln in program.launches:
        key = dataclasses.replace(ln.kernel, name="", note="")
        if key not in names:
            names[key] = ln.kernel.name
            out.append(render_kernel(ln.kernel))
        launch_names.append(names[key])
    out.append(f'extern "C" size_t {sym}_arena_bytes(void) {{ return {program.arena_bytes}; }}')
    out.append(f'extern "C" int {sym}_num_launches(void) {{ return {len(program.launches)}; }}')
    out.append(f'extern "C" int {sym}_synchronize(void) {{ return (int)cudaDeviceSynchronize(); }}')
    out.append(f'extern "C" const char* {sym}_error_string(int code) '
               f'{{ return cudaGetErrorString((cudaError_t)code); }}')
    out.append("")
    out.append(f'extern "C" int {sym}(void** inputs, void** outputs, char* arena, cudaStream_t stream) {{')
    out.append("  (void)inputs; (void)outputs; (void)arena;")
    for ln, kname in zip(program.launches, launch_names):
        k = ln.kernel
        args = ", ".join(_arg(loc, p) for loc, p in zip(ln.args, k.params))
        grid = "dim3({}, {}, {})".format(*k.grid)
        block = "dim3({}, {}, {})".format(*k.block)
        if ln.note:
            out.append(f"  // {ln.note}")
        out.append(f"  {kname}<<<{grid}, {block}, 0, stream>>>({args});")
    out.append("  return (int)cudaGetLastError();")
    out.append("}")
    return "\n".join(out) + "\n"


__all__ = ["render_kernel", "render_program", "graph_symbol", "HELPERS", "float_literal", "index_type"]
