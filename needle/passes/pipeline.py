"""The pass pipeline, declared once: which passes `@needle.compile` runs on each executor, in
what order. `needle-ir` (its `--after` stage names), the verifier's invariants per stage, the
CUDA program builder and the tests all read it from here.

    decompose → autodiff → decompose_rest → simplify          GRAPH_PASSES: every executor
      → recompute → bucket → fusion → schedule → memory_plan  KERNEL_PASSES: native, kernels, cuda

* `decompose` expands composite ops, keeping those with a custom VJP while `grad` requests
  remain; `autodiff` (which requires that) expands each request; `decompose_rest` expands
  what autodiff left; `simplify` folds, merges and prunes. The disk graph cache stores the
  graph passes' snapshots, so a warm start runs only the kernel passes.
* `recompute` rewrites the graph for fusion; `bucket` groups gradient all-reduces into
  buckets that the schedule, the memory plan and the native executor overlap with the
  backward pass (needle/passes/bucket.py); `fusion`, `schedule` and `memory_plan` are
  analyses (`ANALYSES`): the graph is unchanged, each returns a typed result that the next
  takes as an argument, and the executor receives the three as one `KernelPlan`.
* `interp` runs the graph passes only; `cuda` plans memory at the GPU's 256-byte alignment.
* After each pass the verifier checks the invariants the passes so far ensure
  (`invariants_after`): `decomposed` after decompose, `no_grad` after autodiff (whose VJPs
  may emit composites again: it breaks `decomposed`), `primitive` after decompose_rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from ..ir.graph import Graph
from . import autodiff, bucket, decompose, recompute, simplify  # noqa: F401  (they register their passes)
from .fusion import FusionPlan
from .manager import PASSES, Pass, PassContext, PassManager
from .memory_plan import GPU_ALIGNMENT, MemoryPlan, MemoryPlanPass
from .schedule import Schedule

__all__ = ["GRAPH_PASSES", "KERNEL_PASSES", "ANALYSES", "EXECUTORS", "STAGES", "KernelPlan",
           "pass_names", "invariants_after", "pipeline", "default_pipeline", "run", "plan_kernels",
           "expand_grad_requests"]

#: graph rewrites every executor runs
GRAPH_PASSES = ("decompose", "autodiff", "decompose_rest", "simplify")
#: what the kernel executors run next: a rewrite for fusion, then the analyses
KERNEL_PASSES = ("recompute", "bucket", "fusion", "schedule", "memory_plan")
#: the passes that leave the graph unchanged and return a typed result, in `KernelPlan` order
ANALYSES = ("fusion", "schedule", "memory_plan")
#: `NEEDLE_EXECUTOR` values (needle.compile.executor_kind)
EXECUTORS = ("native", "kernels", "interp", "cuda")
#: the stages of a compiled graph (`.ir(stage)`, `needle-ir --after`): as traced, then each pass
STAGES = ("input", *GRAPH_PASSES, *KERNEL_PASSES)

_CUDA_MEMORY_PLAN = MemoryPlanPass(alignment=GPU_ALIGNMENT)


@dataclass(frozen=True)
class KernelPlan:
    """The analyses' results for one graph: what a kernel executor is built from."""

    fusion: FusionPlan
    schedule: Schedule
    memory: MemoryPlan


def pass_names(executor: str) -> tuple[str, ...]:
    """The names of `executor`'s passes, in order."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; executors are {', '.join(EXECUTORS)}")
    return GRAPH_PASSES if executor == "interp" else GRAPH_PASSES + KERNEL_PASSES


def invariants_after(name: str) -> frozenset:
    """The verifier invariants that hold after pass `name` of the pipeline ('input': none)."""
    holds: set = set()
    for n in STAGES[1:STAGES.index(name) + 1]:
        PASSES[n].update_invariants(holds)
    return frozenset(holds)


def _pass(name: str, executor: str) -> Pass:
    return _CUDA_MEMORY_PLAN if (executor, name) == ("cuda", "memory_plan") else PASSES[name]


def pipeline(executor: str, names: Optional[Iterable[str]] = None) -> PassManager:
    """A PassManager over `executor`'s passes in order (only those in `names`, when given)."""
    order = pass_names(executor)
    wanted = order if names is None else tuple(names)
    unknown = [n for n in wanted if n not in order]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not in the {executor} pipeline ({', '.join(order)})")
    return PassManager([_pass(n, executor) for n in order if n in wanted])


def default_pipeline() -> PassManager:
    """The default executor's (native) pipeline."""
    return pipeline("native")


def run(graph: Graph, executor: str, ctx: Optional[PassContext] = None,
        names: Optional[Iterable[str]] = None) -> tuple[Graph, Optional[KernelPlan]]:
    """Run `executor`'s passes (those in `names`, when given) on `graph`: the graph they give,
    and its `KernelPlan`, or None when the analyses did not all run (`interp`, or a
    `NEEDLE_PASS_LIMIT` that cut them off)."""
    ctx = PassContext() if ctx is None else ctx
    out = pipeline(executor, names).run(graph, ctx)
    if not all(name in ctx.analyses for name in ANALYSES):
        return out, None
    return out, KernelPlan(*(ctx.analyses[name] for name in ANALYSES))


def plan_kernels(graph: Graph, executor: str = "native") -> KernelPlan:
    """`executor`'s analyses of `graph` as it is (no rewrite, no dump, no pass limit)."""
    return run(graph, executor, PassContext(verify=False, dump_dir="", pass_limit=len(ANALYSES)), ANALYSES)[1]


def expand_grad_requests(graph: Graph, executor: str, ctx: PassContext) -> Graph:
    """`graph`, which `ctx`'s run left, with its `grad` requests expanded by the skipped
    passes up to autodiff (after `NEEDLE_PASS_LIMIT` cut the pipeline short: no executor
    runs a grad request)."""
    if not any(n.op == "grad" for n in graph.nodes):
        return graph
    names = [n for n in GRAPH_PASSES[:GRAPH_PASSES.index("autodiff") + 1] if n in ctx.skipped]
    return pipeline(executor, names).run(graph, PassContext(dump_dir="", pass_limit=len(names)))
