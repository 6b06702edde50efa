"""The schedule analysis: kernel order and buffer liveness over the fusion plan.

Input: the fusion analysis's plan (`FusionPlan(groups, why_not)` of
`FusedGroup(id, node_ids, inputs, outputs, kind, anchor)`), or any plan of that shape, such
as `singleton_plan(graph)` (every node but `input`/`const` its own group).

Output: the graph unchanged, and a `Schedule(order, live, ...)`:

* `order`: group ids in kernel order, a topological order of the groups, stable: ties go to
  the group whose first node comes first in the graph. Gradient buckets (a `bucket`
  attribute, set by the bucket pass) are scheduled for overlap: a group holding a bucket
  member runs as soon as it is ready, and a group reading a member's result comes after
  every member of that bucket (the native executor waits for the bucket's all-reduce there)
  and after every other ready group, the readers of earlier buckets first;
* `live[v] = (start, end)` for every *planned* value `v` (a value produced by a kernel and
  read by another kernel or returned): `start` is the index (in `order`) of the kernel that
  produces it, `end` the index of the last kernel that reads it, both inclusive. A value
  returned by the graph lives to `len(order)` (one past the last kernel: the caller reads it).
  A value nobody reads lives `(start, start)`. Graph inputs and consts are not planned: they
  live outside the arena.

Only primitives' data model is read from the plan: `group.id`, `group.node_ids`,
`group.outputs`, `group.kind`; which values escape a group is recomputed from the graph (a
value read by a node of another group, or returned), so a plan need not list them exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..ir.graph import Graph, topological_order
from .bucket import bucket_members
from .manager import Analysis, register_pass
from ..ops import OPS

__all__ = ["Schedule", "SingletonGroup", "SingletonPlan", "singleton_plan", "plan_groups",
           "build_schedule", "SchedulePass", "UNPLANNED_OPS"]

#: graph ops whose values live outside the arena (bound by the executor / literals)
UNPLANNED_OPS = ("input", "const")


@dataclass(frozen=True)
class SingletonGroup:
    """A one-node kernel (the fallback when no fusion plan exists); fields as FusedGroup."""

    id: int
    node_ids: tuple[int, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    kind: str
    anchor: int


@dataclass(frozen=True)
class SingletonPlan:
    groups: tuple[SingletonGroup, ...]
    why_not: tuple = ()


def _op_kind(op: str) -> str:
    cls = OPS.get(op)
    return getattr(cls, "kind", "opaque") if cls is not None else "opaque"


def singleton_plan(graph: Graph) -> SingletonPlan:
    """Every node but `input`/`const` is its own group (group id = node id)."""
    groups = []
    for n in graph.nodes:
        if n.op in UNPLANNED_OPS:
            continue
        groups.append(SingletonGroup(n.id, (n.id,), tuple(dict.fromkeys(n.inputs)), (n.id,),
                                     _op_kind(n.op), n.id))
    return SingletonPlan(tuple(groups))


def plan_groups(plan: Any) -> list:
    """The groups of a fusion plan as a list (plans may hold a list or a dict by id)."""
    groups = plan.groups
    return list(groups.values()) if isinstance(groups, dict) else list(groups)


@dataclass
class Schedule:
    """Kernel order and liveness (see the module docstring)."""

    order: list
    live: dict
    #: group id -> its index in `order`
    index: dict = field(default_factory=dict)
    #: planned value id -> id of the group producing it
    producer: dict = field(default_factory=dict)
    #: group id -> the planned values it reads (in first-use order)
    reads: dict = field(default_factory=dict)
    #: group id -> the planned values it produces (graph order)
    writes: dict = field(default_factory=dict)
    #: the end index of values the graph returns (== number of kernels)
    end: int = 0


class ScheduleError(ValueError):
    def __init__(self, message: str, node=None):
        super().__init__(message)
        self.node = node


def build_schedule(graph: Graph, plan: Any) -> Schedule:
    """Order the plan's groups and compute the liveness of every planned value."""
    groups = plan_groups(plan)
    position = {n.id: i for i, n in enumerate(graph.nodes)}
    group_of: dict[int, Any] = {}
    for g in groups:
        for nid in g.node_ids:
            if nid not in graph:
                raise ScheduleError(f"group {g.id} names %{nid}, which is not in the graph")
            if nid in group_of:
                raise ScheduleError(f"%{nid} is in groups {group_of[nid]} and {g.id}", graph.node(nid))
            group_of[nid] = g.id
    for n in graph.nodes:
        if n.op not in UNPLANNED_OPS and n.id not in group_of:
            raise ScheduleError(f"%{n.id} = {n.op} is in no group of the fusion plan", n)
    by_id = {g.id: g for g in groups}
    first = {g.id: min((position[i] for i in g.node_ids), default=-1) for g in groups}

    # dependencies between groups, and the planned values each group reads
    deps: dict[Any, set] = {g.id: set() for g in groups}
    reads: dict[Any, list] = {g.id: [] for g in groups}
    escapes: set[int] = set(graph.outputs)
    for n in graph.nodes:
        gid = group_of.get(n.id)
        if gid is None:
            continue
        for i in n.inputs:
            src = group_of.get(i)
            if src is None or src == gid:
                continue
            deps[gid].add(src)
            escapes.add(i)
            if i not in reads[gid]:
                reads[gid].append(i)
    for g in groups:  # outputs the plan declares are buffers even if nobody reads them
        escapes.update(o for o in g.outputs if o in group_of)

    _order_buckets(graph, groups, group_of, deps, first)

    # groups in dependency order, ties broken by the position of each group's first node
    users: dict[Any, list] = {g.id: [] for g in groups}
    for gid, d in deps.items():
        for src in d:
            users[src].append(gid)
    order = topological_order(by_id, users, first.__getitem__)
    if len(order) != len(groups):
        placed = set(order)
        stuck = [gid for gid in by_id if gid not in placed]
        raise ScheduleError(f"the fusion plan's groups form a cycle (groups {stuck[:8]})",
                            graph.node(by_id[stuck[0]].node_ids[0]))

    index = {gid: k for k, gid in enumerate(order)}
    end = len(order)
    outputs = set(graph.outputs)
    live: dict[int, tuple[int, int]] = {}
    producer: dict[int, Any] = {}
    writes: dict[Any, list] = {gid: [] for gid in order}
    for n in graph.nodes:
        if n.id in escapes and n.id in group_of:
            gid = group_of[n.id]
            live[n.id] = (index[gid], end if n.id in outputs else index[gid])
            producer[n.id] = gid
            writes[gid].append(n.id)
    for gid in order:
        for v in reads[gid]:
            start, last = live[v]
            if last != end:
                live[v] = (start, max(last, index[gid]))
    return Schedule(order, live, index, producer, reads, writes, end)


def _order_buckets(graph: Graph, groups: list, group_of: dict, deps: dict, first: dict) -> None:
    """Gradient buckets: member groups first among the ready groups; each reader of a
    member's result after all of its bucket's members, and last among the ready groups,
    earlier buckets' readers first (the optimizer's updates of the first buckets run while the
    last bucket's all-reduce is in flight)."""
    members = bucket_members(graph)
    if not members:
        return
    bucket_groups = {b: {group_of[v] for v in vs if v in group_of} for b, vs in members.items()}
    bucket_of = {v: b for b, vs in members.items() for v in vs}
    for groups_of_bucket in bucket_groups.values():
        for gid in groups_of_bucket:
            first[gid] = -1
    last_bucket_read: dict[Any, int] = {}
    for n in graph.nodes:
        gid = group_of.get(n.id)
        for i in n.inputs:
            b = bucket_of.get(i, -1)
            if b >= 0 and gid is not None and gid not in bucket_groups[b]:
                deps[gid] |= bucket_groups[b]
                last_bucket_read[gid] = max(last_bucket_read.get(gid, -1), b)
    late = len(graph.nodes)   # above every graph position: readers after all other ready groups
    for gid, b in last_bucket_read.items():
        first[gid] = late * (b + 1) + first[gid]


class SchedulePass(Analysis):
    """Orders the fusion plan's kernels and computes liveness; the graph is unchanged."""

    name = "schedule"
    requires = ("fusion",)

    def analyze(self, graph: Graph, plan: Any) -> Schedule:
        try:
            return build_schedule(graph, plan)
        except ScheduleError as e:
            raise self.error(str(e), e.node) from e

    def summary(self, sched: Schedule) -> dict:
        longest = max((e - s for s, e in sched.live.values()), default=0)
        return {"kernels": len(sched.order), "buffers": len(sched.live), "longest_live": longest}


register_pass(SchedulePass())
