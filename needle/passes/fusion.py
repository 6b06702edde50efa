"""The fusion analysis: groups primitives into `FusedGroup` kernels and explains every refusal.

The graph is unchanged; the result is a `FusionPlan` (the schedule and memory plan take it,
and so do the executors); the pass report is `{"kernels", "fused_ops"}`.

Rules (docs/passes.md, "fusion"):

* `input`/`const` nodes belong to no group (they are group inputs).
* Elementwise, broadcast and injective ops (views) fuse freely, producer into consumer.
  `Gather` fuses like an injective op (a data-dependent index map); a group holding one is
  "elementwise", not "view", because it reads indices at run time.
* A reduction absorbs its elementwise producers (prologue) and takes elementwise consumers as
  an epilogue only when they read the reduced result (directly or through the epilogue).
  Reductions share a group only as a row chain: the same axes of one input shape, the
  innermost axis among them (softmax's max and sum, layernorm's mean and variance run one
  after another over each row in one kernel).
* `MatMul`/`Conv` (extern) take an elementwise epilogue, never a prologue.
* Tuple ops and opaque ops stay alone; tuple ops (aliases/slices) are "view" groups.
* A transpose/reshape chain read only by MatMul/Conv stays a "view" group (a strided GEMM
  operand), even over computed values.
* A cheap view chain of graph inputs read by several groups is not merged into any of them:
  it stays a "view" group that each consumer recomputes as index arithmetic.
* Domains: the outputs of an elementwise group all have the size of its domain (the largest
  elementwise shape in it); a reduce group's outputs have its anchor's input or output size;
  an extern group's outputs have the GEMM's output size. Elementwise nodes inside a group
  may be smaller than the domain (broadcast into it, recomputed), never larger.
* No merge may create a cycle between groups (reachability check before each merge).
* A group holds at most `MAX_GROUP_NODES` nodes: a longer chain (thousands of elementwise
  ops) becomes several kernels, so compile time (this pass's merges and the kernel's
  LLVM code) grows linearly with the graph.

Merging runs in sweeps over the edges producer -> consumer in graph order: (0) reductions
absorb the elementwise producers only they read (their private prologue, so a value that
feeds one reduction is computed inside it, not stored by a sibling kernel), (1) elementwise
and view groups among themselves, (2) externs take elementwise consumers (a GEMM's output is
stored anyway: its epilogue's result costs nothing more), (3) reductions absorb elementwise
producers, (4) reductions take elementwise consumers, (5) every rule on every edge until
nothing changes. Last, row reductions reading the same value join one row chain.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from math import prod
from typing import Optional

from ..ir.graph import Graph, Node, topological_order
from ..ir.subgraph import cut
from ..ops.registry import OPS, is_view, moves_data, op_names, reduced_axes
from .manager import Analysis, register_pass

__all__ = ["FusedGroup", "FusionPlan", "FusionPass", "plan_fusion", "format_plan", "format_why_not", "node_class",
           "VIEW_OPS"]

#: graph ops outside every group
_FREE = ("input", "const")

#: the most nodes one group (kernel) holds (the course models' largest hold about 60)
MAX_GROUP_NODES = 256

#: ops that only move data (views, and the maps that pick between pieces or zeros): their
#: groups do no work unless they hold other ops
VIEW_OPS = op_names(moves_data)
#: bijective views (Reshape, Permute, Transpose): a GEMM reads them as strided operands
_BIJECTIVE_VIEWS = op_names(lambda c: is_view(c) and c.inverse_index_map is not None)


def node_class(node: Node) -> str:
    """Fusion class of a node: view, elementwise, reduce, extern, tuple or opaque."""
    cls = OPS.get(node.op)
    kind = getattr(cls, "kind", "opaque") if cls is not None else "opaque"
    if kind in ("broadcast", "injective"):
        return "view" if node.op in VIEW_OPS else "elementwise"   # Gather: fusable, does work
    if kind in ("elementwise", "reduce", "extern", "tuple"):
        return kind
    return "opaque"


@dataclass(frozen=True)
class FusedGroup:
    """One kernel: nodes in topological order, the values it reads from outside (first-use
    order), the values it produces for the outside (or the graph's return), its kind
    ("elementwise" | "reduce" | "extern" | "opaque" | "view") and the reduce/extern anchor."""

    id: int
    node_ids: tuple[int, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    kind: str
    anchor: Optional[int] = None

    def subgraph(self, graph: Graph) -> Graph:
        """The group as a standalone graph: `input` nodes in0.. for its inputs, its nodes
        re-numbered after them, and `return` of its outputs."""
        return cut(graph, (*self.inputs, *self.node_ids), self.inputs, self.outputs, f"{graph.name}.k{self.id}")


@dataclass
class FusionPlan:
    """The groups (in a topological order of groups; `id` = index) and every refused merge
    that stayed refused: `(producer node id, consumer node id, reason)`."""

    groups: list[FusedGroup]
    why_not: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def kernels(self) -> int:
        """Groups that do work (not view-only)."""
        return sum(1 for g in self.groups if g.kind != "view")

    @property
    def fused_ops(self) -> int:
        """Nodes that share a working group with at least one other node."""
        return sum(len(g.node_ids) for g in self.groups if g.kind != "view" and len(g.node_ids) > 1)

    def group_of(self, node_id: int) -> Optional[FusedGroup]:
        for g in self.groups:
            if node_id in g.node_ids:
                return g
        return None


# ---- planning -----------------------------------------------------------------------------
def _numel(node: Node) -> int:
    return prod(node.type.shape) if not node.is_tuple else -1


class _Planner:
    def __init__(self, graph: Graph):
        self.g = graph
        self.pos = {n.id: i for i, n in enumerate(graph.nodes)}
        self.first_pos: dict[int, int] = {}  # group -> position of its first node
        self.users = graph.users()
        self.returned = set(graph.outputs)
        self.cls = {n.id: node_class(n) for n in graph.nodes if n.op not in _FREE}
        self.group: dict[int, int] = {}            # node id -> group key
        self.members: dict[int, list[int]] = {}    # group key -> node ids
        for nid in self.cls:
            self.group[nid] = nid
            self.members[nid] = [nid]
        # a topological order of the groups (kept through merges): a group can reach only
        # groups after it, which bounds the cycle search
        self.order: list[Optional[int]] = [n.id for n in graph.nodes if n.id in self.cls]
        self.index: dict[int, int] = {k: i for i, k in enumerate(self.order)}
        self.succs = {k: {u for u in self.users[k] if u != k} for k in self.cls}  # group edges
        self.preds = {k: {i for i in graph.node(k).inputs if i in self.cls and i != k} for k in self.cls}
        self.refused: dict[tuple[int, int], list[str]] = {}
        self.kinds: dict[int, str] = {}            # group key -> kind (cache; merge drops it)
        self.input_views = self._input_views()

    def _input_views(self) -> set:
        """View nodes computed from graph inputs/consts only (cheap to recompute)."""
        out = set()
        for n in self.g.nodes:
            if self.cls.get(n.id) == "view" and all(
                    self.g.node(i).op in _FREE or i in out for i in n.inputs):
                out.add(n.id)
        return out

    # -- group facts
    def kind(self, key: int) -> str:
        if key not in self.kinds:
            classes = {self.cls[n] for n in self.members[key]}
            self.kinds[key] = next((k for k in ("tuple", "opaque", "extern", "reduce") if k in classes),
                                   "elementwise" if "elementwise" in classes else "view")
        return self.kinds[key]

    def anchor(self, nodes) -> Optional[int]:
        """The group's extern node, or its first reduction (in graph order)."""
        return min((n for n in nodes if self.cls[n] in ("reduce", "extern")), key=self.pos.get, default=None)

    def outputs(self, nodes: set) -> list[int]:
        return [n for n in nodes if n in self.returned or any(u not in nodes for u in self.users[n])]

    # -- rules
    def reason(self, p: int, c: int) -> Optional[str]:
        """Why the group of producer p may not absorb the group of consumer c (None: it may)."""
        P, C = self.group[p], self.group[c]
        kp, kc = self.kind(P), self.kind(C)
        if "tuple" in (kp, kc):
            return "tuple op"
        if "opaque" in (kp, kc):
            return "opaque op"
        if self._too_big(P, C):
            return f"a kernel holds at most {MAX_GROUP_NODES} nodes"
        pn, cn = set(self.members[P]), set(self.members[C])
        if kp in ("reduce", "extern") and kc in ("reduce", "extern"):
            if kc == "extern":
                return "extern takes no prologue"
            if kp == "extern":
                return "extern epilogue takes no reduction"
            if not self._row_chain(pn | cn):
                return ("reduce output feeds a reduction" if self._after_anchor(P, p)
                        else "a group holds one reduction")
        if kc == "extern":      # elementwise/view producer into an extern group
            a = self.anchor(cn)
            if any(i in pn for i in self.g.node(a).inputs):
                return "extern takes no prologue"
        if kp in ("reduce", "extern") and kc in ("elementwise", "view"):
            post = self._post_anchor(P)
            if not any(i in post for n in cn for i in self.g.node(n).inputs):
                return f"consumer reads only the {kp}'s prologue"
        if kc == "view" and self._gemm_operand(cn):
            return "view of a GEMM operand stays a view"
        if self.input_views & pn and pn <= self.input_views:
            if any(u not in pn and u not in cn for n in pn for u in self.users[n]) or \
                    any(n in self.returned for n in pn):
                return "cheap view of an input shared by several groups: each recomputes it"
        bad = self._domain(pn | cn)
        if bad:
            return bad
        if self._cycle(P, C):
            return "would create a cycle"
        return None

    def _too_big(self, P: int, C: int) -> bool:
        return len(self.members[P]) + len(self.members[C]) > MAX_GROUP_NODES

    def _row_chain(self, nodes: set) -> bool:
        """The reductions in `nodes` all reduce the same axes of one input shape, the innermost
        (non-unit) axis among them: one kernel runs them one after another over each row."""
        reds = [self.g.node(n) for n in nodes if self.cls[n] == "reduce"]
        shape = self.g.node(reds[0].inputs[0]).type.shape
        axes = reduced_axes(reds[0], len(shape))
        inner = max((k for k, d in enumerate(shape) if d != 1), default=None)
        return inner in axes and all(
            self.g.node(r.inputs[0]).type.shape == shape and reduced_axes(r, len(shape)) == axes
            for r in reds[1:])

    def _gemm_operand(self, nodes: set) -> bool:
        """Transposes/reshapes read only by extern ops: the GEMM reads them as strided operands."""
        if not all(self.g.node(n).op in _BIJECTIVE_VIEWS for n in nodes):
            return False
        outside = [u for n in nodes for u in self.users[n] if u not in nodes]
        return bool(outside) and not (nodes & self.returned) and \
            all(self.cls[u] == "extern" for u in outside)

    def _post_anchor(self, key: int) -> set:
        nodes = sorted(self.members[key], key=self.pos.get)
        a = self.anchor(nodes)
        post = {a}
        for n in nodes:
            if any(i in post for i in self.g.node(n).inputs):
                post.add(n)
        return post

    def _after_anchor(self, key: int, n: int) -> bool:
        return n in self._post_anchor(key)

    def _domain(self, nodes: set) -> Optional[str]:
        a = self.anchor(nodes)
        outs = self.outputs(nodes)
        if a is not None:
            an = self.g.node(a)
            if self.cls[a] == "reduce":
                src = self.g.node(an.inputs[0])
                sizes = {_numel(src), _numel(an)}
            else:
                sizes = {_numel(an)}
        else:
            shaped = [n for n in nodes if self.cls[n] == "elementwise"] + outs
            sizes = {max((_numel(self.g.node(n)) for n in shaped), default=0)}
        big = max(sizes)
        for n in nodes:
            if self.cls[n] == "elementwise" and _numel(self.g.node(n)) > big:
                return "shape mismatch: consumer iterates a different domain"
        for n in outs:
            if _numel(self.g.node(n)) not in sizes and not (a is None and self.kind_of(nodes) == "view"):
                return "shape mismatch: consumer iterates a different domain"
        return None

    def kind_of(self, nodes) -> str:
        return "elementwise" if any(self.cls[n] != "view" for n in nodes) else "view"

    def _succ(self, key: int) -> set:
        """The groups reading a value of group `key` (kept up to date by `merge`)."""
        return self.succs[key]

    def _first(self, key: int) -> int:
        """The graph position of the group's first node."""
        if key not in self.first_pos:
            self.first_pos[key] = min(self.pos[n] for n in self.members[key])
        return self.first_pos[key]

    def _reach(self, P: int, C: int) -> set:
        """The groups after P and before C in the topological order that P reaches (a group
        reaches only groups after it, so the search stops at C's place)."""
        end = self.index[C]
        start = {k for k in self._succ(P) if self.index[k] < end}
        seen, todo = set(start), deque(start)
        while todo:
            for s in self._succ(todo.popleft()):
                if s not in seen and self.index[s] < end:
                    seen.add(s)
                    todo.append(s)
        return seen

    def _cycle(self, P: int, C: int) -> bool:
        """A path P -> X -> ... -> C through another group X (merging would close a cycle)."""
        if self.index[P] > self.index[C]:
            return False
        return any(C in self._succ(k) for k in self._reach(P, C))

    def merge(self, P: int, C: int) -> None:
        """Group C joins group P (no path between them through another group). The order stays
        topological: between the two, the groups the earlier one reaches move after the
        merged group, the others before it."""
        first, second = sorted((P, C), key=self.index.get)
        i, j = self.index[first], self.index[second]
        after = self._reach(first, second)
        between = [k for k in self.order[i + 1:j] if k is not None]
        segment = [k for k in between if k not in after] + [P] + [k for k in between if k in after]
        # the segment keeps its length (holes: None), so the positions of later groups stay
        self.order[i:j + 1] = segment + [None] * (j + 1 - i - len(segment))
        del self.index[C]
        for pos, k in enumerate(segment, i):
            self.index[k] = pos
        for k in self.preds[C]:
            self.succs[k].discard(C)
            self.succs[k].add(P)
        for k in self.succs[C]:
            self.preds[k].discard(C)
            self.preds[k].add(P)
        self.succs[P] = (self.succs[P] | self.succs.pop(C)) - {P, C}
        self.preds[P] = (self.preds[P] | self.preds.pop(C)) - {P, C}
        self.first_pos[P] = min(self._first(P), self._first(C))
        self.first_pos.pop(C, None)
        self.kinds.pop(P, None)
        self.kinds.pop(C, None)
        for n in self.members[C]:
            self.group[n] = P
        self.members[P].extend(self.members.pop(C))

    # -- sweeps
    def sweep(self, allow) -> bool:
        changed = False
        for cnode in self.g.nodes:
            c = cnode.id
            if c not in self.cls:
                continue
            for p in dict.fromkeys(cnode.inputs):
                if p not in self.cls or self.group[p] == self.group[c]:
                    continue
                if not allow(self.group[p], self.group[c]):
                    continue
                why = self.reason(p, c)
                if why is None:
                    self.merge(self.group[p], self.group[c])
                    changed = True
                else:
                    reasons = self.refused.setdefault((p, c), [])
                    if why not in reasons:
                        reasons.append(why)
        return changed

    def _private(self, P: int, C: int) -> bool:
        """Every reader of group P's values is in group C (and the graph returns none)."""
        return all(self.group.get(u) == C for n in self.members[P] for u in self.users[n]) and \
            not any(n in self.returned for n in self.members[P])

    def run(self) -> FusionPlan:
        light = ("elementwise", "view")
        kind = self.kind
        while self.sweep(lambda P, C: kind(P) in light and kind(C) == "reduce" and self._private(P, C)):
            pass
        self.sweep(lambda P, C: kind(P) in light and kind(C) in light)
        self.sweep(lambda P, C: kind(P) == "extern" and kind(C) in light)
        self.sweep(lambda P, C: kind(P) in light and kind(C) == "reduce")
        self.sweep(lambda P, C: kind(P) == "reduce" and kind(C) in light)
        while self.sweep(lambda P, C: True):
            pass
        self.siblings()
        return self.plan()

    def siblings(self) -> None:
        """Row reductions that read the same value (a softmax loss's max, exp-sum and
        sum(z * onehot) over the logits) join one row chain, so the rows are read once."""
        for v in self.g.nodes:
            readers = list(dict.fromkeys(self.group[u] for u in self.users[v.id] if u in self.cls))
            reds = [k for k in readers if self.kind(k) == "reduce"]
            for other in reds[1:]:  # reds[0] absorbs the others: it stays a group key
                nodes = set(self.members[reds[0]]) | set(self.members[other])
                if not self._too_big(reds[0], other) and self._row_chain(nodes) and \
                        self._domain(nodes) is None and \
                        not self._cycle(reds[0], other) and not self._cycle(other, reds[0]):
                    self.merge(reds[0], other)

    def plan(self) -> FusionPlan:
        keys = list(self.members)
        order = topological_order(keys, {k: self._succ(k) for k in keys}, self._first)
        assert len(order) == len(keys), "fusion produced a cycle between groups"
        groups = []
        for gid, k in enumerate(order):
            nodes = sorted(self.members[k], key=self.pos.get)
            nodeset = set(nodes)
            ins: list[int] = []
            for n in nodes:
                for i in self.g.node(n).inputs:
                    if i not in nodeset and i not in ins:
                        ins.append(i)
            kind = self.kind(k)
            if kind == "tuple":
                kind = "view"
            groups.append(FusedGroup(gid, tuple(nodes), tuple(ins),
                                     tuple(n for n in nodes if n in set(self.outputs(nodeset))),
                                     kind, self.anchor(nodes)))
        why_not = [(p, c, r) for (p, c), reasons in sorted(
            self.refused.items(), key=lambda e: (self.pos[e[0][1]], self.pos[e[0][0]]))
            if self.group[p] != self.group[c] for r in reasons]
        return FusionPlan(groups, why_not)


def plan_fusion(graph: Graph) -> FusionPlan:
    """The fusion plan of `graph` (see the module docstring for the rules)."""
    return _Planner(graph).run()


def format_plan(plan: FusionPlan, graph: Optional[Graph] = None, why_not: bool = False) -> str:
    """One line per group: `k0 [reduce @5]: %3 %4 %5 <- ins %0 -> outs %5` (`-` for none);
    with `why_not=True`, then the refusal log (`format_why_not`)."""
    lines = []
    for g in plan.groups:
        head = f"k{g.id} [{g.kind}" + (f" @{g.anchor}" if g.anchor is not None else "") + "]"
        body = " ".join(f"%{n}" for n in g.node_ids)
        ins = " ".join(f"%{i}" for i in g.inputs) or "-"
        outs = " ".join(f"%{o}" for o in g.outputs) or "-"
        lines.append(f"{head}: {body} <- ins {ins} -> outs {outs}\n")
    text = "".join(lines)
    return text + format_why_not(plan, graph) if why_not else text


def format_why_not(plan: FusionPlan, graph: Optional[Graph] = None) -> str:
    """The refusal log, one line per refused merge: `why-not %p Op -> %c Op: reason`."""
    out = []
    for p, c, r in plan.why_not:
        ops = (f" {graph.node(p).op}", f" {graph.node(c).op}") if graph is not None else ("", "")
        out.append(f"why-not %{p}{ops[0]} -> %{c}{ops[1]}: {r}\n")
    return "".join(out)


class FusionPass(Analysis):
    name = "fusion"

    def analyze(self, graph: Graph) -> FusionPlan:
        return plan_fusion(graph)

    def summary(self, plan: FusionPlan) -> dict:
        return {"kernels": plan.kernels, "fused_ops": plan.fused_ops}


register_pass(FusionPass())
