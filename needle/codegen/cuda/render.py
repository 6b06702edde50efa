"""CUDA C rendering of GPU kernels (`gpu_ir.GpuKernel`) and of whole compiled graphs.

`render_kernel(kernel)` prints one `extern "C" __global__` function; `render_program(program)`
prints a complete translation unit: the helper prelude, the graph's non-scalar constants as
`__device__` arrays, every distinct kernel once, and the host entry

    extern "C" int needle_graph_<name>(void** inputs, void** outputs, char* arena,
                                       cudaStream_t stream);

that launches every kernel in schedule order on `stream`, with buffer pointers at their
memory-plan offsets in `arena` (graph inputs and outputs are the caller's pointers), and
returns `cudaGetLastError()`; `needle_graph_<name>_profiled(..., float* ms)` runs the same
launches with a CUDA event after each and writes each launch's milliseconds to `ms`
(`NEEDLE_PROFILE=1`). `needle_graph_<name>_arena_bytes()` gives the arena size the
caller must allocate (the memory plan's arena plus scratch for values internal to a group).

The kernel text comes from `CudaRenderer`, the C-like renderers' common part
(`needle.codegen.c_like`: the op table, literals, index and value expressions with common
sub-expressions bound to `const float` temporaries, loops, stores, accumulators) plus the GPU
IR's extensions. A `Select` guarded by an index condition becomes an if/else, so its untaken
arm (a possibly out-of-bounds load) is never evaluated.
"""
from __future__ import annotations

import dataclasses

from ..c_like import CLike, op_table
from ..loop_ir import For, IBin, Load, Select
from .gpu_ir import CONDITIONS, GpuKernel, IFloat, Rand, SLoad, TileRef, Var, index_vars, walk_stmts

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

#: the loop IR's ops as CUDA C (libdevice's functions; the NaN-propagating max of a `max`
#: accumulator is the helper `ndl_max_nan`)
CUDA_OPS = op_table(
    unary={"exp": "expf({})", "log": "logf({})", "tanh": "tanhf({})", "sqrt": "sqrtf({})", "sin": "sinf({})",
           "cos": "cosf({})"},
    binary={"pow": "powf({}, {})"},
    accumulate={"max": "{acc} = ndl_max_nan({acc}, {v})"},
)

_COORD = {"tx": "threadIdx.x", "ty": "threadIdx.y", "bx": "blockIdx.x", "by": "blockIdx.y",
          "bz": "blockIdx.z"}


def index_type(kernel: GpuKernel) -> str:
    """`int` when every buffer, the grid and all constants fit 32 bits, else `long long`."""
    big = max([p.size for p in kernel.params] + [kernel.blocks * kernel.threads, 0])
    for s in walk_stmts(kernel.body):
        if isinstance(s, For):
            big = max(big, s.extent * kernel.threads)
    return "int" if big < INT_MAX // 4 else "long long"


def _index_values(e) -> tuple:
    """The float values an index expression reads (through `IFloat`)."""
    if isinstance(e, IFloat):
        return (e.value,)
    if isinstance(e, (IBin,) + CONDITIONS):
        return _index_values(e.a) + _index_values(e.b)
    return ()


def _lazy(e) -> bool:
    """A select on an index condition: only its taken arm is evaluated."""
    return isinstance(e, Select) and isinstance(e.cond, CONDITIONS)


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


class CudaRenderer(CLike):
    """The C-like renderer with the GPU IR's extensions: a select on an index condition is
    an if/else into a temporary (its untaken arm, a possibly out-of-bounds load, never
    runs), a load read twice is bound to one register, and the GPU statements."""

    OPS = CUDA_OPS
    INF, NAN = "NDL_INF", "NDL_NAN"
    REPEAT = CLike.REPEAT + (Var, TileRef)
    CONDITIONS = CLike.CONDITIONS + CONDITIONS

    def operands(self, e) -> tuple:
        if _lazy(e):
            return ()  # its arms are printed inside their branches
        if isinstance(e, (Load, SLoad)):
            return _index_values(e.index)
        if isinstance(e, Rand):
            return (e.counter, e.base) + _index_values(e.index)
        return super().operands(e)

    # ---- index expressions
    def index_IAnd(self, e, ind):
        return f"({self.index(e.a, ind)} && {self.index(e.b, ind)})"

    def index_IOr(self, e, ind):
        return f"({self.index(e.a, ind)} || {self.index(e.b, ind)})"

    def index_IFloat(self, e, ind):
        v, t = self.expr(e.value, ind), self.itype
        if e.bound:
            return f"(({v}) >= 0.0f && ({v}) < {float(e.bound)!r}f ? ({t})({v}) : ({t})0)"
        return f"(({t})({v}))"

    # ---- value expressions
    def node_SLoad(self, e, ops, ind):
        return f"{e.array}[{self.index(e.index, ind)}]"

    def node_Var(self, e, ops, ind):
        return e.name

    def node_TileRef(self, e, ops, ind):
        return f"{e.name}[{e.row}][{e.col}]"

    def node_Rand(self, e, ops, ind):
        return f"ndl_uniform({ops[0]}, {ops[1]}, {e.stream}ULL, (unsigned long long)({self.index(e.index, ind)}))"

    def node_Select(self, e, ops, ind):
        if not _lazy(e):
            return super().node_Select(e, ops, ind)
        name = self.temp()
        self.lines.append(f"{ind}float {name};")
        self.lines.append(f"{ind}if {_paren(self.index(e.cond, ind))} {{")
        self.lines.append(f"{ind}  {name} = {self.expr(e.a, ind + '  ')};")
        self.lines.append(f"{ind}}} else {{")
        self.lines.append(f"{ind}  {name} = {self.expr(e.b, ind + '  ')};")
        self.lines.append(f"{ind}}}")
        return name

    # ---- statements
    def stmt_SStore(self, s, ind):
        value = self.expr(s.value, ind)
        self.lines.append(f"{ind}{s.array}[{self.index(s.index, ind)}] = {value};")

    def stmt_AtomicAdd(self, s, ind):
        value = self.expr(s.value, ind)
        self.lines.append(f"{ind}atomicAdd(&{s.buf}[{self.index(s.index, ind)}], {value});")

    def stmt_Decl(self, s, ind):
        self.lines.append(f"{ind}float {s.var} = {self.expr(s.value, ind)};")

    def stmt_Assign(self, s, ind):
        self.lines.append(f"{ind}{s.var} = {self.expr(s.value, ind)};")

    def stmt_IDecl(self, s, ind):
        self.lines.append(f"{ind}const {self.itype} {s.var} = {self.index(s.value, ind)};")

    def stmt_If(self, s, ind):
        self.lines.append(f"{ind}if {_paren(self.index(s.cond, ind))} {{")
        self.body(s.body, ind + "  ")
        if s.orelse:
            self.lines.append(f"{ind}}} else {{")
            self.body(s.orelse, ind + "  ")
        self.lines.append(f"{ind}}}")

    def stmt_Barrier(self, s, ind):
        self.lines.append(f"{ind}__syncthreads();")

    def stmt_Shfl(self, s, ind):
        fn = "__shfl_down_sync" if s.mode == "down" else "__shfl_sync"
        self.lines.append(f"{ind}{s.dst} = {fn}(0xffffffffu, {s.src}, {s.offset});")

    def stmt_TileDecl(self, s, ind):
        self.lines += [f"{ind}float {s.name}[{s.rows}][{s.cols}];",
                       f"{ind}#pragma unroll",
                       f"{ind}for (int mi = 0; mi < {s.rows}; ++mi) {{",
                       f"{ind}  #pragma unroll",
                       f"{ind}  for (int nj = 0; nj < {s.cols}; ++nj) {s.name}[mi][nj] = 0.0f;",
                       f"{ind}}}"]

    def stmt_MicroGemm(self, s, ind):
        a, b = self.index(s.a_index, ind), self.index(s.b_index, ind)
        self.lines += [f"{ind}#pragma unroll",
                       f"{ind}for (int kk = 0; kk < {s.depth}; ++kk) {{",
                       f"{ind}  float a_r[{s.rows}], b_r[{s.cols}];",
                       f"{ind}  #pragma unroll",
                       f"{ind}  for (int mi = 0; mi < {s.rows}; ++mi) a_r[mi] = {s.a_array}[{a}];",
                       f"{ind}  #pragma unroll",
                       f"{ind}  for (int nj = 0; nj < {s.cols}; ++nj) b_r[nj] = {s.b_array}[{b}];",
                       f"{ind}  #pragma unroll",
                       f"{ind}  for (int mi = 0; mi < {s.rows}; ++mi) {{",
                       f"{ind}    #pragma unroll",
                       f"{ind}    for (int nj = 0; nj < {s.cols}; ++nj) "
                       f"{s.acc}[mi][nj] = fmaf(a_r[mi], b_r[nj], {s.acc}[mi][nj]);",
                       f"{ind}  }}",
                       f"{ind}}}"]


#: a float as a CUDA C literal (NDL_INF / NDL_NAN for the specials, negatives in parentheses)
float_literal = CudaRenderer.float_literal


def render_kernel(kernel: GpuKernel, consts: dict | None = None) -> str:
    """One kernel as CUDA C: `extern "C" __global__ void <name>(float* ...)`."""
    r = CudaRenderer(index_type(kernel))
    params = []
    for p in kernel.params:
        qual = "const float*" if p.role == "in" else "float*"
        params.append(f"{qual}{' __restrict__' if p.restrict else ''} {p.name}")
    head = [f"// {line}" for line in kernel.note.splitlines()]
    head.append(f'extern "C" __global__ void __launch_bounds__({kernel.threads}) '
                f"{kernel.name}({', '.join(params)}) {{")
    used = index_vars(*kernel.body)
    for var, coord in _COORD.items():
        if var in used:
            r.lines.append(f"  const {r.itype} {var} = ({r.itype}){coord};")
    for sh in kernel.shared:
        r.lines.append(f"  __shared__ float {sh.name}[{max(sh.size, 1)}];")
    r.body(kernel.body, "  ")
    return "\n".join(head + r.lines + ["}"]) + "\n"


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
    # every launch in order; with `ev` (NEEDLE_PROFILE), an event recorded after each one
    out.append(f"static int {sym}_launch(void** inputs, void** outputs, char* arena, cudaStream_t stream, "
               "cudaEvent_t* ev) {")
    out.append("  (void)inputs; (void)outputs; (void)arena;")
    out.append("  if (ev) cudaEventRecord(ev[0], stream);")
    for i, (ln, kname) in enumerate(zip(program.launches, launch_names)):
        k = ln.kernel
        args = ", ".join(_arg(loc, p) for loc, p in zip(ln.args, k.params))
        grid = "dim3({}, {}, {})".format(*k.grid)
        block = "dim3({}, {}, {})".format(*k.block)
        if ln.note:
            out.append(f"  // {ln.note}")
        out.append(f"  {kname}<<<{grid}, {block}, 0, stream>>>({args});")
        out.append(f"  if (ev) cudaEventRecord(ev[{i + 1}], stream);")
    out.append("  return (int)cudaGetLastError();")
    out.append("}")
    out.append("")
    out.append(f'extern "C" int {sym}(void** inputs, void** outputs, char* arena, cudaStream_t stream) {{')
    out.append(f"  return {sym}_launch(inputs, outputs, arena, stream, NULL);")
    out.append("}")
    out.append("")
    n = len(program.launches)
    out.append("// the same launches timed: ms[i] = milliseconds of launch i (waits for the GPU)")
    out.append(f'extern "C" int {sym}_profiled(void** inputs, void** outputs, char* arena, cudaStream_t stream, '
               "float* ms) {")
    out.append(f"  static cudaEvent_t ev[{n + 1}];")
    out.append("  static int made = 0;")
    out.append("  cudaError_t err;")
    out.append(f"  for (; made < {n + 1}; made++)")
    out.append("    if ((err = cudaEventCreate(&ev[made])) != cudaSuccess) return (int)err;")
    out.append(f"  int rc = {sym}_launch(inputs, outputs, arena, stream, ev);")
    out.append("  if (rc) return rc;")
    out.append(f"  if ((err = cudaEventSynchronize(ev[{n}])) != cudaSuccess) return (int)err;")
    out.append(f"  for (int i = 0; i < {n}; i++) cudaEventElapsedTime(&ms[i], ev[i], ev[i + 1]);")
    out.append("  return (int)cudaGetLastError();")
    out.append("}")
    return "\n".join(out) + "\n"


__all__ = ["render_kernel", "render_program", "graph_symbol", "HELPERS", "float_literal", "index_type"]
