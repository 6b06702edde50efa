"""The CPU program's records: slots, one typed record per step of backends/cpu/program.cc,
and the `CpuProgram` that `program.build_cpu_program` returns.

A step reads and writes *slots*: 0..n_in-1 are the graph inputs, n_in..n_in+n_out-1 the
graph outputs (addresses given per call), the others static buffers (`Slot`: an arena or
scratch offset, a const's array, a buffer of its own) that the runtime allocates. Each step
record maps to one `Program.add_<kind>` call (`runtime/native.py`); kernels are loop IR that
the runtime JIT-compiles.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ...ir.graph import Graph
from ..loop_ir import LoopKernel


@dataclass(frozen=True)
class Slot:
    """A static slot's memory: `arena`/`scratch` (byte `offset`), `const` (the array of
    const node `value`), `buffer` (an array of its own, made for value `value`)."""
    space: str
    offset: int = 0
    value: int = -1

    @property
    def place(self) -> tuple:
        """What two slots share memory by (scratch slots of one buffer may differ in size)."""
        return (self.space, self.offset) if self.space in ("arena", "scratch") else (self.space, self.value)


@dataclass(frozen=True)
class KernelStep:
    """An LLVM kernel over `slots` (inputs then outputs, `sizes` floats each), its top-level
    loop of `extent` iterations split across threads in chunks of at least `min_chunk`
    iterations, multiples of `align`."""
    name: str
    loop: LoopKernel
    slots: tuple
    sizes: tuple
    extent: int
    min_chunk: int
    align: int


@dataclass(frozen=True)
class Epilogue:
    """A GEMM's or conv's elementwise epilogue, run on each block of rows (a conv's: output
    pixels) after the step wrote them."""
    loop: LoopKernel
    slots: tuple
    sizes: tuple
    extent: int


@dataclass(frozen=True)
class GemmStep:
    """slots (a, b, c); params [batch, m, n, k, trans_a, trans_b, lda, ldb, 0, 0, m*n,
    accumulate] (accumulate 1: C += the product, a part of a product split along K);
    `offsets`: per product the element offsets of a and b (broadcast batch axes, or where a
    part's operands start)."""
    slots: tuple
    params: tuple
    offsets: tuple
    epilogue: Optional[Epilogue] = None

    @property
    def accumulate(self) -> bool:
        """C += the product (not the first part of a product split along K)."""
        return bool(self.params[11])


@dataclass(frozen=True)
class ConvStep:
    """kind 0 Conv, 1 ConvBackwardData, 2 ConvBackwardFilter; slots (a, b, out, scratch);
    params [n, h, w, ci, kh, kw, co, stride, padding]; a Conv's `epilogue` runs by blocks of
    output pixels."""
    kind: int
    slots: tuple
    params: tuple
    epilogue: Optional[Epilogue] = None


@dataclass(frozen=True)
class RandomStep:
    """slots (counter, base, out): `size` uniform floats of RNG `stream`."""
    slots: tuple
    size: int
    stream: int


@dataclass(frozen=True)
class GatherStep:
    """slots (a, indices, out): rows of `row_size` floats of a (of `n_rows`) at the indices."""
    slots: tuple
    n_indices: int
    n_rows: int
    row_size: int


@dataclass(frozen=True)
class IndexAddStep:
    """slots (values, indices, out): out (n_rows rows of row_size) zeroed, each value row
    added at its index."""
    slots: tuple
    n_indices: int
    n_rows: int
    row_size: int


@dataclass(frozen=True)
class CopyStep:
    """slots (src, dst): `rows` rows of n floats, compact in src, `dst_ld` floats apart in dst
    (a piece of a join along an inner axis); one row: n contiguous floats."""
    slots: tuple
    n: int
    rows: int = 1
    dst_ld: int = 0


@dataclass(frozen=True)
class HostStep:
    """An opaque op that computes straight into host memory (`op.host_compute(outs, ins)` on
    float32 numpy views of its slots: inputs, then its output), e.g. a collective's MPI call."""
    op: Any
    slots: tuple
    shapes: tuple
    name: str


@dataclass(frozen=True)
class CollectiveStartStep:
    """Start `op`'s non-blocking in-place collective over `slots` (`sizes` floats each):
    `op.start(views)` returns what `op.finish` completes at the `CollectiveWaitStep` of the
    same `handle`."""
    op: Any
    slots: tuple
    sizes: tuple
    handle: int
    name: str


@dataclass(frozen=True)
class CollectiveWaitStep:
    """Complete the collective started under `handle`."""
    handle: int
    name: str


@dataclass(frozen=True)
class CallbackStep:
    """`subgraph` run on the reference interpreter over slots (its inputs, then outputs)."""
    subgraph: Graph
    slots: tuple
    sizes: tuple
    name: str


@dataclass(frozen=True)
class StepSource:
    """What a step computes, for the profiler's label and estimates: a group over the graph
    (views inlined), its subgraph, how it runs (llvm, blas, interp...), its label, and the
    share of the group's work it does (a part of a product split along K: its terms)."""
    group: Any
    subgraph: Graph
    where: str
    label: str
    share: float = 1.0


@dataclass
class CpuProgram:
    """A graph as CPU program steps over slots (see the module docstring)."""
    graph: Graph
    n_slots: int
    slots: dict              # static slot -> Slot
    slot_sizes: dict         # static slot -> floats its memory holds
    steps: list
    arena_bytes: int
    scratch_bytes: int
    stats: dict
    #: (name, subgraph) of each callback step
    callbacks: list = field(default_factory=list)
    reports: list = field(default_factory=list)
    #: a StepSource per step when built for profiling, else None
    sources: Optional[list] = None
