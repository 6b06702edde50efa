"""GPU kernel IR: the loop IR (`needle.codegen.loop_ir`) extended with what a CUDA kernel needs.

A `GpuKernel` is what the CUDA C renderer (`render.py`) prints and what the tests' GPU
emulator (`tests/gpu_emulator`) runs. Its body is loop IR -- the expressions (`Load`,
`Binary`, `Select`, ..., index trees of `IVar`/`IConst`/`IBin`, `ICmp`), the statements
`For` (serial, or `unrolled`), `Store`, `AccInit`/`AccUpdate` and the op vocabulary,
reductions' accumulators included -- plus these extensions, which add no ops:

* thread coordinates: the index variables `tx`, `ty` (threadIdx.x/y) and `bx`, `by`, `bz`
  (blockIdx.x/y/z), defined in every kernel;
* `IDecl(var, index)`: an integer local (`const int var = ...`);
* `IAnd` / `IOr`: conditions over `ICmp`s (bounds guards), usable as `If` conditions and as
  the condition of a `Select` (whose untaken arm is then never evaluated, so a guarded load
  may point out of bounds);
* `IFloat(value)`: an index computed from a float value (`(int)value`, a gather's row);
* `If(cond, body, orelse)`;
* `Decl(var, value)` / `Assign(var, value)` / `Var(var)`: float locals (registers);
* `SStore(array, index, value)` / `SLoad(array, index)`: `__shared__` float arrays;
* `Barrier()`: `__syncthreads()` (every thread of the block must reach it);
* `Shfl(dst, src, offset, mode)`: `dst = __shfl_down_sync(FULL, src, offset)` (mode "down") or
  `__shfl_sync(FULL, src, offset)` (mode "idx", offset = source lane); all 32 lanes of the
  warp must execute it;
* `AtomicAdd(buf, index, value)`: `atomicAdd(&buf[index], value)`;
* `Rand(counter, base, stream, index)`: the compiled RNG's uniform float (RandomUniform);
* `TileDecl` / `TileRef` / `MicroGemm`: a thread's register tile and a GEMM's inner product.

Reductions across threads combine partials with `AccUpdate` of the accumulator's own op
(`loop_ir.ACC_COMBINE`), so there is one reduction vocabulary. Every node is a frozen
dataclass, so equal kernels compare and hash equal (the translation unit emits one
definition per distinct kernel).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..loop_ir import For, ICmp, IVar, iter_nodes

__all__ = ["GpuKernel", "GParam", "IDecl", "IAnd", "IOr", "IFloat", "If", "Decl", "Assign", "Var", "SStore",
           "SLoad", "Barrier", "Shfl", "AtomicAdd", "Rand", "Shared", "TileDecl", "TileRef", "MicroGemm",
           "THREAD_VARS", "CONDITIONS", "walk_stmts", "index_vars",
           "ICmp"]  # ICmp: the loop IR's, the guards' comparison (re-exported for split.py)

#: thread/block coordinates every kernel defines
THREAD_VARS = ("tx", "ty", "bx", "by", "bz")


# ---- index-side extensions ----------------------------------------------------------------
@dataclass(frozen=True)
class IFloat:
    """An integer index read from a float value (truncated toward zero). With a `bound`, a
    value outside [0, bound) or NaN reads index 0 instead, so a bad id never leaves its table
    (the compiled step's id check reports it)."""
    value: object
    bound: int = 0


@dataclass(frozen=True)
class IAnd:
    a: object
    b: object


@dataclass(frozen=True)
class IOr:
    a: object
    b: object


#: index conditions: as a `Select`'s condition, they make it lazy (only the taken arm runs)
CONDITIONS = (ICmp, IAnd, IOr)


# ---- float-side extensions ----------------------------------------------------------------
@dataclass(frozen=True)
class Var:
    name: str


@dataclass(frozen=True)
class SLoad:
    array: str
    index: object


@dataclass(frozen=True)
class Rand:
    """Uniform [0, 1) float of the compiled RNG (needle.ops.random): splitmix64 of the
    element index keyed by (base seed, counter, stream)."""
    counter: object
    base: object
    stream: int
    index: object


# ---- statements ---------------------------------------------------------------------------
@dataclass(frozen=True)
class IDecl:
    var: str
    value: object


@dataclass(frozen=True)
class If:
    cond: object
    body: tuple
    orelse: tuple = ()


@dataclass(frozen=True)
class Decl:
    var: str
    value: object


@dataclass(frozen=True)
class Assign:
    var: str
    value: object


@dataclass(frozen=True)
class SStore:
    array: str
    index: object
    value: object


@dataclass(frozen=True)
class Barrier:
    pass


@dataclass(frozen=True)
class Shfl:
    dst: str
    src: str
    offset: int
    mode: str = "down"  # down | idx


@dataclass(frozen=True)
class AtomicAdd:
    buf: str
    index: object
    value: object


# ---- kernels ------------------------------------------------------------------------------
@dataclass(frozen=True)
class GParam:
    """A float buffer argument: `role` in (in, out, inout); `restrict` when no other
    argument of the launch overlaps it."""
    name: str
    size: int
    role: str
    restrict: bool = True


@dataclass(frozen=True)
class Shared:
    name: str
    size: int


@dataclass(frozen=True)
class GpuKernel:
    name: str
    params: tuple           # GParam
    grid: tuple             # (x, y, z) blocks
    block: tuple            # (x, y, z) threads
    body: tuple
    shared: tuple = ()      # Shared arrays
    #: free-form note rendered as a comment (the schedule that produced the kernel)
    note: str = field(default="", compare=True)

    @property
    def threads(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]

    @property
    def blocks(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def param(self, name: str) -> Optional[GParam]:
        for p in self.params:
            if p.name == name:
                return p
        return None


def walk_stmts(body):
    """Every statement of a body, nested ones included (pre-order)."""
    for s in body:
        yield s
        if isinstance(s, If):
            yield from walk_stmts(s.body)
            yield from walk_stmts(s.orelse)
        elif isinstance(s, For):
            yield from walk_stmts(s.body)


def index_vars(*roots) -> set:
    """The index variable names read anywhere in `roots` (expressions or statements)."""
    return {x.name for x in iter_nodes(*roots) if isinstance(x, IVar)}


# ---- register tiles (GEMM) ----------------------------------------------------------------
@dataclass(frozen=True)
class TileDecl:
    """`float name[rows][cols]` of zeros: a thread's register tile of accumulators."""
    name: str
    rows: int
    cols: int


@dataclass(frozen=True)
class TileRef:
    """Element (row, col) of a register tile (a value expression)."""
    name: str
    row: int
    col: int


@dataclass(frozen=True)
class MicroGemm:
    """The inner product of a tiled GEMM, fully unrolled:

        for kk < depth: for mi < rows: for nj < cols:
            acc[mi][nj] += a_array[a_index] * b_array[b_index]

    `a_index` reads the variables `kk` and `mi`, `b_index` reads `kk` and `nj` (plus the
    thread's own index variables); both arrays are shared memory."""
    acc: str
    a_array: str
    a_index: object
    b_array: str
    b_index: object
    depth: int
    rows: int
    cols: int

