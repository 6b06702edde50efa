"""The target-neutral program builder: a compiled graph's fusion groups walked in schedule order.

Both program builders specialise `ProgramBuilder`: the CPU's (`codegen/cpu/program.py`: typed
steps of backends/cpu/program.cc, run by `runtime/native.py`) and the CUDA's
(`codegen/cuda/program.py`: kernel launches, run by `runtime/cuda_executor.py`). What they
share is written here once:

* **homes**: where each value with a buffer lives (`Loc`): graph input k, the arena offset
  of the memory plan, or graph output k (a returned value that is not an input, a const, a
  view or returned earlier is written by its kernel straight into the caller's array);
* **the walk**: groups in schedule order; a view group makes no step (its consumers read it
  as index arithmetic); an extern group (MatMul, Conv...), an opaque group and a fused
  (elementwise/reduce) group each go to the target's method (`extern`, `opaque`, `fused`,
  each returning the report's (how, detail));
* **output copies**: returned values no step wrote in place (inputs, consts, views, values
  returned twice) are copied into their output at the end (`copy_output`);
* **reports**: one `GroupReport` per group, with the number of steps it made.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Graph
from ..passes.schedule import plan_groups


@dataclass(frozen=True)
class Loc:
    """Where a buffer lives: `arena` (byte `offset`), `in`/`out` (graph input/output `index`,
    byte `offset` within it), `const` (a constant, `index` = its value id)."""
    space: str
    index: int = 0
    offset: int = 0


@dataclass
class GroupReport:
    """How one fusion group became program steps (`id` -1: the output copies)."""
    id: int
    kind: str
    how: str             # CUDA: lowered | split | gemm | conv | rng | index_add | copy | view | output
    steps: int           # steps (CUDA: launches) it made
    detail: str = ""


class ProgramBuilder:
    """The walk over the groups of a kernel plan (see the module docstring). A target
    implements `fused`, `extern`, `opaque`, `copy_output`, `n_steps` and `begin_group`."""

    def __init__(self, graph: Graph, fusion_plan, schedule, memory_plan):
        self.graph = graph
        self.schedule = schedule
        self.memory = memory_plan
        self.groups = {g.id: g for g in plan_groups(fusion_plan)}
        self.group_of = {v: g for g in self.groups.values() for v in g.node_ids}
        self.view_groups = {gid for gid, g in self.groups.items() if self.is_view_group(g)}
        self.homes = self._homes()
        #: (value, output position) of the returned values no step writes in place
        self.late_outputs = [(v, k) for k, v in enumerate(graph.outputs) if self.homes.get(v) != Loc("out", k)]
        self.reports: list[GroupReport] = []
        self.gid = -1          # the group being built (-1: the output copies)

    def is_view_group(self, group) -> bool:
        """A group that makes no step: its consumers recompute it."""
        return group.kind == "view"

    def is_view(self, v: int) -> bool:
        """Value v is made by a view group."""
        g = self.group_of.get(v)
        return g is not None and g.id in self.view_groups

    def _homes(self) -> dict:
        graph = self.graph
        homes = {n.id: Loc("in", k) for k, n in enumerate(graph.inputs)}
        for v, off in self.memory.offsets.items():
            if v not in homes and not isinstance(graph.node(v).type, tuple):
                homes[v] = Loc("arena", 0, off)
        for k, v in enumerate(graph.outputs):
            if v not in homes and graph.node(v).op != "const" and not self.is_view(v):
                homes[v] = Loc("out", k)
        return homes

    def build(self) -> None:
        """Every group's steps in schedule order, then the output copies."""
        for gid in self.schedule.order:
            g = self.groups[gid]
            self.gid = gid
            self.begin_group()
            if gid in self.view_groups:
                self.reports.append(GroupReport(gid, g.kind, "view", 0, "recomputed by its consumers"))
                continue
            before = self.n_steps()
            how, detail = self.build_group(g)
            self.reports.append(GroupReport(gid, g.kind, how, self.n_steps() - before, detail))
        self.gid = -1
        self.begin_group()
        before = self.n_steps()
        for v, k in self.late_outputs:
            self.copy_output(v, k)
        if self.n_steps() > before:
            self.reports.append(GroupReport(-1, "output", "copy", self.n_steps() - before,
                                            "graph outputs no kernel writes in place"))

    def build_group(self, g) -> tuple[str, str]:
        """The steps of one working group: (how, detail) for its report."""
        if g.kind == "extern":
            return self.extern(g)
        if g.kind == "opaque":
            return self.opaque(g)
        return self.fused(g)

    # ---- what a target implements ---------------------------------------------------------
    def begin_group(self) -> None:
        """Called before each group's steps (and before the output copies)."""
        raise NotImplementedError

    def n_steps(self) -> int:
        raise NotImplementedError

    def fused(self, g) -> tuple[str, str]:
        raise NotImplementedError

    def extern(self, g) -> tuple[str, str]:
        raise NotImplementedError

    def opaque(self, g) -> tuple[str, str]:
        raise NotImplementedError

    def copy_output(self, v: int, k: int) -> None:
        """Write value v into graph output k."""
        raise NotImplementedError
