"""Per-kernel profiling of the kernel executor (`NEEDLE_PROFILE=1`).

When `NEEDLE_PROFILE=1` is set at the time an executor is built, it times every step and
counts calls and seconds per step: the native executor's program times each of its steps
(an LLVM kernel, a GEMM with its fused epilogue, a conv, a callback...) in C++ with a
steady clock, leaving out each step's first call once there are more (it first touches the
arena: cold, up to several times the steady time); the kernel executor times each fused group with `time.perf_counter`. Each step also carries static estimates from the
node types: bytes moved (its input and output arrays, 4 bytes per element) and FLOPs, the
sum of each node's op `cost` (MatMul 2*M*N*K per batch, Conv output size * KH*KW*Cin*2,
one FLOP per element for every elementwise/reduce node).

At interpreter exit the profiled executors print one table each to stderr; the same table
is `CompiledFunction.profile()`. The roofline fraction is max(GFLOP/s / peak GFLOP/s,
GB/s / peak GB/s); the peaks default to the reference machine of `shared/WORKLOADS.md`
(387 GFLOP/s best SGEMM, 59 GB/s copy bandwidth) and are overridden by
`NEEDLE_PEAK_GFLOPS` / `NEEDLE_PEAK_GBS`.
"""
from __future__ import annotations

import atexit
import math
import os
import sys
from typing import Optional

from ..ops.registry import OPS, op_from_node

#: the reference machine's limits (shared/WORKLOADS.md): best large SGEMM, copy bandwidth
REFERENCE_GFLOPS = 387.0
REFERENCE_GBS = 59.0


def enabled() -> bool:
    """`NEEDLE_PROFILE` is set to something other than '', '0', 'false' or 'no'."""
    return os.environ.get("NEEDLE_PROFILE", "").strip().lower() not in ("", "0", "false", "no", "off")


def peaks() -> tuple[float, float, bool]:
    """(GFLOP/s, GB/s, whether both are the reference machine's defaults)."""
    gflops = os.environ.get("NEEDLE_PEAK_GFLOPS")
    gbs = os.environ.get("NEEDLE_PEAK_GBS")
    return (float(gflops) if gflops else REFERENCE_GFLOPS, float(gbs) if gbs else REFERENCE_GBS,
            not gflops and not gbs)


def _types(t) -> tuple:
    return t if isinstance(t, tuple) else (t,)


def _size(t) -> int:
    return sum(math.prod(x.shape) for x in _types(t))


def node_flops(node, graph) -> int:
    """Estimated FLOPs of one node: its op's `cost` (see the module docstring)."""
    cls = OPS.get(node.op)
    if cls is None:  # input, const
        return 0
    op = op_from_node(node.op, node.attr_dict)
    return op.cost(_shape(node.type), [_shape(graph.node(i).type) for i in node.inputs]).flops


def _shape(t) -> tuple:
    """A value's shape (a tuple value's elements counted as one flat shape)."""
    return t.shape if not isinstance(t, tuple) else (_size(t),)


class StepProfile:
    """Counters and static estimates of one executor step."""

    __slots__ = ("label", "flops", "bytes", "calls", "seconds")

    def __init__(self, label: str, flops: int, nbytes: int):
        self.label = label
        self.flops = flops
        self.bytes = nbytes
        self.calls = 0
        self.seconds = 0.0


def step_profile(group, subgraph, kernel, epilogue: bool = False, where: Optional[str] = None,
                 head: Optional[str] = None) -> StepProfile:
    """The label and estimates of a step (its group, the group's subgraph, its kernel or None;
    `epilogue`: the elementwise tail split off a GEMM/conv group, labelled `k<id>.epi`;
    `where` overrides how it runs: llvm, interp, blas, native...; `head` replaces the label's
    `k<id> [kind/where]` start, e.g. a CUDA launch's kernel name and schedule)."""
    work = [n for n in subgraph.nodes if n.op != "input"]
    ops: list[str] = []
    for n in work:
        if n.op not in ops:
            ops.append(n.op)
    shown = ",".join(ops[:4]) + (f",+{len(ops) - 4}" if len(ops) > 4 else "")
    where = where or ("llvm" if kernel is not None else "interp")
    loc = next((n.loc for n in work if n.loc is not None), None)
    if head is None:
        head = f"k{group.id}{'.epi' if epilogue else ''} [{group.kind}/{where}]"
    label = f"{head} {shown}"
    if loc is not None:
        label += f" @ {os.path.basename(loc.file)}:{loc.line}"
    flops = sum(node_flops(n, subgraph) for n in work)
    nbytes = 4 * (sum(_size(subgraph.node(i).type) for i in range(len(group.inputs)))
                  + sum(_size(subgraph.node(o).type) for o in subgraph.outputs))
    return StepProfile(label, flops, nbytes)


#: (title, executor) of every executor built with profiling on, in build order
_REGISTRY: list = []
_atexit_registered = False


def register(executor, title: str) -> None:
    """Profile `executor` (it has `.profile`, a list of StepProfile); printed at exit."""
    global _atexit_registered
    _REGISTRY.append((title, executor))
    if not _atexit_registered:
        atexit.register(_print_all)
        _atexit_registered = True


def profiled() -> list:
    """(title, executor) pairs registered so far."""
    return list(_REGISTRY)


def format_table(steps: list, title: str) -> str:
    """The per-kernel table: calls, mean µs, % of step, GFLOP/s, GB/s, roofline; by total time."""
    peak_gflops, peak_gbs, reference = peaks()
    source = ("reference machine's peaks, shared/WORKLOADS.md; set NEEDLE_PEAK_GFLOPS/NEEDLE_PEAK_GBS"
              if reference else "peaks from NEEDLE_PEAK_GFLOPS/NEEDLE_PEAK_GBS")
    total = sum(s.seconds for s in steps)
    calls = max((s.calls for s in steps), default=0)
    lines = [f"needle profile: {title}: {len(steps)} kernels, {calls} calls, "
             f"{1e6 * total / max(calls, 1):.1f} µs per call",
             f"  roofline vs {peak_gflops:g} GFLOP/s, {peak_gbs:g} GB/s ({source})",
             f"  {'calls':>6} {'mean µs':>10} {'% step':>7} {'GFLOP/s':>9} {'GB/s':>8} {'roofline':>8}  kernel"]
    for s in sorted(steps, key=lambda s: -s.seconds):
        mean = s.seconds / s.calls if s.calls else 0.0
        gflops = s.flops / mean / 1e9 if mean > 0 else 0.0
        gbs = s.bytes / mean / 1e9 if mean > 0 else 0.0
        share = 100.0 * s.seconds / total if total > 0 else 0.0
        roof = max(gflops / peak_gflops, gbs / peak_gbs)
        lines.append(f"  {s.calls:>6} {1e6 * mean:>10.1f} {share:>6.1f}% {gflops:>9.2f} {gbs:>8.2f} "
                     f"{roof:>8.3f}  {s.label}")
    return "\n".join(lines)


def _print_all(stream=None) -> None:
    stream = stream or sys.stderr
    for title, executor in _REGISTRY:
        if any(s.calls for s in executor.profile):
            print(format_table(executor.profile, title), file=stream)
    stream.flush()


def report(executor, title: Optional[str] = None) -> str:
    """The table of one profiled executor."""
    return format_table(executor.profile, title or executor.graph.name)
