"""The CUDA program's records: kernel launches (their arguments: `codegen.program.Loc`) and
the `CudaProgram` that `program.build_program` returns (its group reports:
`codegen.program.GroupReport`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .gpu_ir import GpuKernel

ALIGN = 256


class CudaCodegenError(NotImplementedError):
    """A group of the graph cannot be emitted as CUDA (the message names it)."""


@dataclass
class Launch:
    kernel: GpuKernel
    args: tuple          # one Loc per kernel parameter
    group: int
    note: str = ""


@dataclass
class CudaProgram:
    name: str
    inputs: list                 # shapes
    outputs: list                # shapes
    launches: list
    consts: dict                 # symbol -> np.ndarray (float32)
    arena_bytes: int
    plan_arena_bytes: int
    scratch_bytes: int
    groups: list = field(default_factory=list)
    #: graph value -> Loc of its buffer (inputs, arena, outputs); group id -> values it writes
    homes: dict = field(default_factory=dict)
    writes: dict = field(default_factory=dict)

    def source(self) -> str:
        from .render import render_program
        return render_program(self)

    @property
    def symbol(self) -> str:
        from .render import graph_symbol
        return graph_symbol(self.name)

    def summary(self) -> dict:
        hows: dict = {}
        for g in self.groups:
            hows[g.how] = hows.get(g.how, 0) + 1
        return {"launches": len(self.launches), "groups": hows, "arena_bytes": self.arena_bytes}


def align(n: int, a: int = ALIGN) -> int:
    """n rounded up to a multiple of a."""
    return (n + a - 1) // a * a
