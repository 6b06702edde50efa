"""The memory_plan analysis: every planned buffer at an offset in one arena.

Input: the fusion plan and the schedule (the fusion and schedule analyses). Output: the graph
unchanged, and a `MemoryPlan` (its `summary()` is the pass report). The pass's settings are
its constructor's arguments (`MemoryPlanPass(alignment=..., strategy=..., outputs_in_arena=...)`),
as `plan_memory`'s.

What is planned: every value in `schedule.live` (a kernel's output that another kernel reads
or the graph returns), but views. Graph inputs and consts live outside the arena. So do the
values the graph returns, by default: the executor hands them to the caller or writes them
back into donated parameter/state buffers (ARCHITECTURE decision 5), so they are listed in
`plan.outputs` (value -> bytes) and the arena holds intermediates only;
`outputs_in_arena=True` places them in the arena too (live to the end). Sizes are
`prod(shape) * itemsize` (numpy dtype); a tuple-typed value made by a working kernel is one
buffer holding its elements back to back, each element at an aligned offset
(`plan.tuple_elements[v] = [(offset, size), ...]`).

Placement, in this order:

1. **Views allocate nothing.** The outputs of a group that does no work (the fusion plan's
   `"view"` groups: index maps and tuple ops, which their consumers recompute as index
   arithmetic; with no fusion plan, a lone `Reshape`, `Detach` or tuple op) own no bytes:
   `plan.aliases[view] = (base buffers it reads...)` (empty when it reads only graph inputs
   or consts), and those bases stay alive until the view's last use. Views have no offset.
2. **In-place reuse** is preferred over best-fit: an output of a working elementwise kernel
   (not a reduce/extern/opaque/view group; all its outputs of one shape) takes exactly the
   slot of an input buffer of the same shape and byte size whose last use is that kernel,
   when every node of the kernel that depends on that input is an elementwise op of its
   shape (element i is read only while element i is written) and an ancestor of that output
   (so the output's store depends on every read of the input: a kernel with several outputs
   stores them one after another) (`plan.inplace[out] = in`).
   Each dying buffer is taken once; chains (a -> b -> c) share one slot, whose live interval
   is the union of theirs. A view is never taken in place (it may be a permutation).
   A gradient bucket's all-reduce (a `bucket` attribute, set by the bucket pass) takes the
   slot of the gradient it reduces the same way when the gradient dies there (the native
   executor reduces in place), unless that slot already belongs to a bucket.
2b. **Buckets are blocks**: the slots of a bucket's results are laid out back to back, in
   schedule order, as one block live while any of them is, so one all-reduce covers the
   bucket with no packing copy (`plan.buckets[b] = (offset, bytes)` of the block).
3. **Greedy best-fit** over the slots: largest first (ties: earlier start, then graph order),
   each at the smallest gap (ties: lowest offset) between already placed slots whose live
   intervals intersect its own, or above all of them when no gap fits
   (`strategy="first_fit"` takes the lowest gap that fits instead).
   Offsets are multiples of 64 bytes (256 when a buffer lives on a device named `cuda*`;
   `alignment` overrides; the cuda pipeline plans at 256).

`arena_bytes` is the arena's size (rounded up to the alignment); `unplanned_bytes` the sum of
the arena buffers' sizes, each in its own allocation (views excluded: they allocate nothing
either way; returned values too unless `outputs_in_arena`). `check_plan(schedule, plan)` is an independent checker of a plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any, Optional

import numpy as np

from ..ir.graph import Graph, TensorType
from ..ops.registry import op_names
from .bucket import bucket_members
from .manager import Analysis, register_pass
from .schedule import Schedule, _op_kind, plan_groups

__all__ = ["MemoryPlan", "MemoryPlanPass", "plan_memory", "check_plan", "PlanError",
           "nbytes", "VIEW_OPS", "CPU_ALIGNMENT", "GPU_ALIGNMENT"]

CPU_ALIGNMENT = 64
GPU_ALIGNMENT = 256
#: single-node kernels that alias their input instead of copying it (Reshape, Detach)
VIEW_OPS = op_names(lambda c: c.aliases_input)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def nbytes(t: Any, alignment: int = 1) -> int:
    """Bytes of a value of type `t` (a tuple: its elements back to back, each aligned)."""
    if isinstance(t, tuple):
        return sum(_align(nbytes(e), alignment) for e in t)
    return int(prod(t.shape)) * np.dtype(t.dtype).itemsize


@dataclass
class MemoryPlan:
    """Where each planned buffer lives in the arena (see the module docstring)."""

    offsets: dict          # buffer value id -> byte offset (not views)
    sizes: dict            # buffer value id -> bytes (not views)
    arena_bytes: int
    unplanned_bytes: int
    alignment: int = CPU_ALIGNMENT
    inplace: dict = field(default_factory=dict)         # output -> the dying input whose slot it took
    aliases: dict = field(default_factory=dict)         # view -> (buffers it reads...); no bytes
    tuple_elements: dict = field(default_factory=dict)  # tuple value -> [(offset, size), ...]
    outputs: dict = field(default_factory=dict)         # returned value -> bytes, outside the arena
    buckets: dict = field(default_factory=dict)         # gradient bucket -> (offset, bytes) of its block

    @property
    def ratio(self) -> float:
        return self.arena_bytes / self.unplanned_bytes if self.unplanned_bytes else 1.0

    def summary(self) -> dict:
        return {"arena_bytes": self.arena_bytes, "unplanned_bytes": self.unplanned_bytes,
                "ratio": round(self.ratio, 4), "buffers": len(self.sizes),
                "inplace": len(self.inplace), "views": len(self.aliases),
                "output_bytes": sum(self.outputs.values()), "alignment": self.alignment,
                "buckets": len(self.buckets)}


class PlanError(AssertionError):
    """A memory plan breaks an invariant (raised by `check_plan`)."""


def _alignment(graph: Graph, values) -> int:
    def on_gpu(t):
        if isinstance(t, tuple):
            return any(on_gpu(e) for e in t)
        return str(t.device).startswith("cuda")
    return GPU_ALIGNMENT if any(on_gpu(graph.node(v).type) for v in values) else CPU_ALIGNMENT


def _shape(t):
    return t.shape if isinstance(t, TensorType) else None


def plan_memory(graph: Graph, schedule: Schedule, fusion_plan: Any, alignment: Optional[int] = None,
                strategy: str = "best_fit", outputs_in_arena: bool = False) -> MemoryPlan:
    """Plan the arena for `graph` under `schedule` (of `fusion_plan`'s groups)."""
    groups = {g.id: g for g in plan_groups(fusion_plan)}
    live = schedule.live
    align = alignment or _alignment(graph, live)
    type_of = {v: graph.node(v).type for v in live}

    # 1. views own no bytes: they read their bases' buffers, which stay alive for them
    aliases: dict[int, tuple[int, ...]] = {}
    for gid in schedule.order:
        g = groups[gid]
        if not _is_view_group(graph, g):
            continue
        bases: list[int] = []
        for i in _group_inputs(graph, g):
            for b in (aliases[i] if i in aliases else ((i,) if i in live else ())):
                if b not in bases:
                    bases.append(b)
        for v in schedule.writes.get(gid, []):
            aliases[v] = tuple(bases)
    returned = set(graph.outputs)
    outside = {} if outputs_in_arena else \
        {v: nbytes(type_of[v], align) for v in live if v in returned and v not in aliases}
    roots = [v for v in live if v not in aliases and v not in outside]
    interval = {v: list(live[v]) for v in roots}
    for view, bases in aliases.items():
        for b in bases:
            if b in interval:
                interval[b][1] = max(interval[b][1], live[view][1])
    sizes = {v: nbytes(type_of[v], align) for v in roots}

    # 2. in-place: an elementwise kernel's output takes the slot of a same-size input dying
    # there; so does a gradient bucket's all-reduce result (the reduction runs in place)
    slot_of = {v: v for v in roots}               # buffer -> slot id (the chain's first buffer)
    slot_interval = {v: list(interval[v]) for v in roots}
    taken: set[int] = set()
    inplace: dict[int, int] = {}
    blocks: dict[int, list] = {}                  # bucket -> its members' slots, in schedule order
    bucket_of_slot: dict[int, int] = {}
    members = bucket_members(graph)
    bucket_of = {v: b for b, vs in members.items() for v in vs}

    def may_take(o: int, v: int, k: int) -> bool:
        return v in sizes and v not in taken and interval[v][1] == k and sizes[v] == sizes[o] \
            and _shape(type_of[v]) == _shape(type_of[o])

    def take(o: int, v: int) -> None:
        taken.add(v)
        inplace[o] = v
        slot = slot_of[o] = slot_of[v]
        slot_interval[slot][1] = max(slot_interval[slot][1], interval[o][1])

    for k, gid in enumerate(schedule.order):
        g = groups[gid]
        writes = schedule.writes.get(gid, [])
        outs = [o for o in writes if o in sizes]
        bucket = bucket_of.get(g.node_ids[0], -1) if len(g.node_ids) == 1 else -1
        if bucket >= 0 and outs:
            o, v = outs[0], graph.node(outs[0]).inputs[0]
            if may_take(o, v, k) and slot_of[v] not in bucket_of_slot:
                take(o, v)
            bucket_of_slot[slot_of[o]] = bucket
            blocks.setdefault(bucket, []).append(slot_of[o])
            continue
        if not outs or g.kind in ("view", "reduce", "extern", "opaque", "tuple"):
            continue
        shapes = {_shape(type_of[o]) for o in writes}
        if len(shapes) != 1 or None in shapes:
            continue
        for o in outs:
            for v in schedule.reads.get(gid, []):
                if may_take(o, v, k) and _pointwise_use(graph, g, v, o):
                    take(o, v)
                    break

    # 2b. a bucket's slots back to back in one block, live while any of them is
    in_block, block_size = {}, {}
    for members in blocks.values():
        first, rel = members[0], 0
        for s in members:
            in_block[s] = (first, rel)
            rel += _align(sizes[s], align)
        block_size[first] = rel
        slot_interval[first] = [min(slot_interval[s][0] for s in members), max(slot_interval[s][1] for s in members)]

    # 3. best-fit over slots (a bucket's block as one), largest first
    order = {v: i for i, v in enumerate(roots)}
    slots = [s for s in roots if slot_of[s] == s and in_block.get(s, (s,))[0] == s]
    slots.sort(key=lambda s: (-block_size.get(s, sizes[s]), slot_interval[s][0], order[s]))
    placed: list[tuple[int, int, int, int]] = []   # (offset, end address, start, end)
    slot_offset: dict[int, int] = {}
    for s in slots:
        size = _align(block_size.get(s, sizes[s]), align)
        start, end = slot_interval[s]
        busy = sorted((o, e) for o, e, a, b in placed if a <= end and start <= b)
        slot_offset[s] = _fit(busy, size, strategy)
        if size:
            placed.append((slot_offset[s], slot_offset[s] + size, start, end))
    for s, (first, rel) in in_block.items():
        slot_offset[s] = slot_offset[first] + rel
    offsets = {v: slot_offset[slot_of[v]] for v in roots}
    buckets = {b: (slot_offset[m[0]], block_size[m[0]]) for b, m in blocks.items()}
    arena = _align(max((o + sizes[v] for v, o in offsets.items() if v in sizes), default=0), align)
    tuples = {}
    for v in roots:
        if isinstance(type_of[v], tuple):
            at, elems = offsets[v], []
            for e in type_of[v]:
                elems.append((at, nbytes(e)))
                at += _align(nbytes(e), align)
            tuples[v] = elems
    return MemoryPlan(offsets, sizes, arena, sum(sizes.values()), align, inplace, aliases, tuples,
                      outside, buckets)



def _fit(busy: list, size: int, strategy: str) -> int:
    """The offset for `size` bytes among busy (offset, end) ranges sorted by offset."""
    if size == 0:
        return 0
    best = None
    top = 0
    for o, e in busy:
        gap = o - top
        if gap >= size:
            if strategy == "first_fit":
                return top
            if best is None or gap < best[0]:
                best = (gap, top)
        top = max(top, e)
    return best[1] if best is not None else top


def _group_inputs(graph: Graph, g) -> list[int]:
    members = set(g.node_ids)
    return list(dict.fromkeys(i for n in g.node_ids for i in graph.node(n).inputs if i not in members))


def _is_view_group(graph: Graph, g) -> bool:
    """A group that does no work: the fusion plan's "view" groups (index maps and tuple ops,
    recomputed by their consumers); under the one-node-per-kernel fallback, a lone
    Reshape/Detach or tuple op."""
    if g.kind == "view":
        return True
    if len(g.node_ids) == 1:
        node = graph.node(g.node_ids[0])
        return node.op in VIEW_OPS or _op_kind(node.op) == "tuple"
    return False


def _pointwise_use(graph: Graph, g, v: int, out: int) -> bool:
    """`out` may overwrite `v` element by element: every node of the group that depends on
    `v` is an elementwise op of `v`'s shape (element i of `v` is read only while element i
    is written) and feeds `out` (the kernel's store of out[i] depends on every read of
    v[i], so no read of v[i] can follow it, whatever order the kernel stores its outputs in)."""
    shape = _shape(graph.node(v).type)
    members = set(g.node_ids)
    feeds_out, stack = set(), [out]
    while stack:
        n = stack.pop()
        if n in members and n not in feeds_out:
            feeds_out.add(n)
            stack += graph.node(n).inputs
    reach = {v}
    for nid in g.node_ids:
        node = graph.node(nid)
        if any(i in reach for i in node.inputs):
            if _op_kind(node.op) != "elementwise" or _shape(node.type) != shape or nid not in feeds_out:
                return False
            reach.add(nid)
    return len(reach) > 1


# ---- the independent checker --------------------------------------------------------------
def check_plan(schedule: Schedule, plan: MemoryPlan, graph: Optional[Graph] = None) -> None:
    """Raise PlanError unless the plan is sound for the schedule.

    Written apart from the placement code, from the definitions only: every planned value
    has a buffer, is a returned value outside the arena, or is a view whose bases cover
    every buffer its group reads; offsets are aligned and non-negative; every buffer fits in
    the arena; two buffers whose live intervals (their own and their views', inclusive)
    intersect never share an address, unless the second took the first's slot in place: same
    offset and size, the first's last use is the kernel producing the second, and that
    kernel reads it. With `graph`, sizes must hold the values' types.
    """
    sizes, offsets = plan.sizes, plan.offsets
    for v in schedule.live:
        if v not in sizes and v not in plan.aliases and v not in plan.outputs:
            raise PlanError(f"%{v} is live but has no buffer in the plan")
    for v in plan.outputs:
        if v in sizes or schedule.live.get(v, (0, -1))[1] != schedule.end:
            raise PlanError(f"%{v} is placed outside the arena but is not a returned value")
    span: dict[int, list[int]] = {}
    for v, size in sizes.items():
        if v not in schedule.live:
            raise PlanError(f"%{v} has a buffer but is not a planned value of the schedule")
        span[v] = list(schedule.live[v])
        off = offsets.get(v)
        if off is None:
            raise PlanError(f"%{v} has no offset")
        if off < 0 or off % plan.alignment:
            raise PlanError(f"%{v} at offset {off} is not {plan.alignment}-byte aligned")
        if off + size > plan.arena_bytes:
            raise PlanError(f"%{v} [{off}, {off + size}) exceeds the arena of {plan.arena_bytes} bytes")
        if graph is not None and size < nbytes(graph.node(v).type):
            raise PlanError(f"%{v} has {size} bytes, its type needs {nbytes(graph.node(v).type)}")
    for view, bases in plan.aliases.items():
        if view in sizes:
            raise PlanError(f"view %{view} owns a buffer")
        for r in schedule.reads.get(schedule.producer.get(view), ()):   # what its group reads
            for need in plan.aliases.get(r, (r,)):
                if need not in bases:
                    raise PlanError(f"view %{view} reads %{need}, which is not among its bases {bases}")
        for base in bases:
            if base in plan.outputs:
                continue
            if base not in sizes:
                raise PlanError(f"view %{view} reads %{base}, which owns no buffer")
            span[base][1] = max(span[base][1], schedule.live[view][1])
            span[base][0] = min(span[base][0], schedule.live[view][0])
    if plan.unplanned_bytes != sum(sizes.values()):
        raise PlanError(f"unplanned_bytes {plan.unplanned_bytes} != the sum of the sizes {sum(sizes.values())}")

    def allowed(a, b):  # b took a's slot in place
        if plan.inplace.get(b) != a:
            return False
        if offsets[a] != offsets[b] or sizes[a] != sizes[b]:
            return False
        start_b = span[b][0]
        if span[a][1] != start_b:
            return False
        return a in schedule.reads.get(schedule.producer.get(b), ())

    members = bucket_members(graph) if graph is not None else {}
    for b, (off, size) in plan.buckets.items():
        for v in members.get(b, ()):
            if v in sizes and not off <= offsets[v] <= off + size - sizes[v]:
                raise PlanError(f"%{v} of bucket {b} at [{offsets[v]}, {offsets[v] + sizes[v]}) is "
                                f"outside the bucket's block [{off}, {off + size})")

    items = sorted((offsets[v], offsets[v] + s, v) for v, s in sizes.items() if s > 0)
    for i, (lo, hi, a) in enumerate(items):   # sweep by address: only address-overlapping pairs
        for lo2, hi2, b in items[i + 1:]:
            if lo2 >= hi:
                break
            (s1, e1), (s2, e2) = span[a], span[b]
            if s1 <= e2 and s2 <= e1 and not (allowed(a, b) or allowed(b, a)):
                raise PlanError(f"%{a} [{lo}, {hi}) live {tuple(span[a])} and %{b} [{lo2}, {hi2}) "
                                f"live {tuple(span[b])} overlap in time and address")


class MemoryPlanPass(Analysis):
    """Plans the arena (see the module docstring); the graph is unchanged."""

    name = "memory_plan"
    requires = ("fusion", "schedule")

    def __init__(self, alignment: Optional[int] = None, strategy: str = "best_fit",
                 outputs_in_arena: bool = False):
        self.alignment = alignment
        self.strategy = strategy
        self.outputs_in_arena = outputs_in_arena

    def analyze(self, graph: Graph, fusion_plan: Any, schedule: Schedule) -> MemoryPlan:
        return plan_memory(graph, schedule, fusion_plan, self.alignment, self.strategy, self.outputs_in_arena)

    def summary(self, plan: MemoryPlan) -> dict:
        return plan.summary()


register_pass(MemoryPlanPass())
