"""The split path of the CUDA program builder, for groups `lower` refuses.

Each op of `HARD_OPS` (the view walker's `PIECES`) is materialised into scratch by a
pointwise kernel built with the view walker (values it reads that are computed in the group
are materialised first by their own lowered kernels), and the rest of the group is lowered
with those values as inputs. `check_known` sends a lowered kernel with loop-IR nodes the
renderer does not know down this path too.
"""
from __future__ import annotations

import dataclasses
from math import prod
from typing import Collection, Sequence

from ...ir.graph import Graph
from ...ir.subgraph import cut, is_literal
from ..loop_ir import (BINARY_OPS, UNARY_OPS, AccInit, AccRef, AccUpdate, Binary, Cmp, FConst, For, IBin, IConst, IVar,
                       Load, LoopKernel, Select, Store, Unary, linearize)
from .gpu_ir import GParam, ICmp
from .records import CudaCodegenError
from .templates import pointwise_kernel
from .views import PIECES, NotWalkable, Walker

#: ops the split path materialises with the view walker: the maps that pick between pieces
#: or zeros, and Gather
HARD_OPS = frozenset(PIECES)


class UnknownLoopIR(Exception):
    """A loop kernel uses a node the CUDA renderer or the emulator does not know."""


def check_known(lk: LoopKernel) -> None:
    """Raise UnknownLoopIR unless the loop kernel uses only node types the CUDA renderer and the
    emulator know (the loop IR may grow; unknown nodes send the group to the split path)."""
    def idx(e):
        if isinstance(e, (IVar, IConst)):
            return
        if isinstance(e, IBin) and e.op in ("add", "mul", "div", "mod"):
            idx(e.a)
            idx(e.b)
            return
        raise UnknownLoopIR(f"index expression {type(e).__name__}")

    seen = set()

    def val(e):
        if id(e) in seen:
            return
        seen.add(id(e))
        if isinstance(e, (FConst, AccRef)):
            return
        if isinstance(e, Load):
            return idx(e.index)
        if isinstance(e, Unary) and e.op in UNARY_OPS:
            return val(e.a)
        if isinstance(e, Binary) and e.op in BINARY_OPS:
            val(e.a)
            return val(e.b)
        if isinstance(e, Cmp):
            val(e.a)
            return val(e.b)
        if isinstance(e, Select) and isinstance(e.cond, Cmp):
            val(e.cond)
            val(e.a)
            return val(e.b)
        if isinstance(e, Select) and isinstance(e.cond, ICmp) and e.cond.op in ("eq", "ne", "lt", "le", "gt", "ge"):
            idx(e.cond.a)
            idx(e.cond.b)
            val(e.a)
            return val(e.b)
        raise UnknownLoopIR(f"value expression {type(e).__name__}")

    def stmts(body):
        for s in body:
            if type(s) is For:
                stmts(s.body)
            elif type(s) is Store:
                idx(s.index)
                val(s.value)
            elif type(s) is AccInit:
                pass
            elif type(s) is AccUpdate:
                val(s.value)
            else:
                raise UnknownLoopIR(f"statement {type(s).__name__}")

    stmts(lk.body)


def cut_cone(sub: Graph, outputs: Sequence[int], stops: Collection[int]) -> tuple[Graph, list[int]]:
    """(Graph, input ids): the nodes of `sub` that `outputs` need, with `stops` (and sub's
    inputs) as inputs; scalar consts stay consts."""
    need = set()
    stack = list(outputs)
    while stack:
        v = stack.pop()
        if v in need:
            continue
        need.add(v)
        n = sub.node(v)
        if v in stops or n.op in ("input", "const"):
            continue
        stack.extend(n.inputs)
    ids = [n.id for n in sub.nodes if n.id in need]
    ins = [v for v in ids if v in stops or sub.node(v).op in ("input", "const") and not is_literal(sub.node(v))]
    return cut(sub, ids, ins, outputs, sub.name), ins


class SplitPath:
    """The split path of the CUDA program builder (`program._Builder`)."""

    def split(self, sub: Graph, leaves, in_locs, out_locs):
        from ..lower import LoweringError, lower

        loc = {}      # sub node id -> Loc of its buffer
        origin = {}   # sub node id -> graph value (for constants)
        for k, n in enumerate(sub.inputs):
            loc[n.id] = in_locs[k]
            origin[n.id] = leaves[k]
        done = set(loc)
        hard = [n.id for n in sub.nodes if n.op in HARD_OPS]
        if not hard:  # nothing to materialise: the rest must lower, or this would recurse
            try:
                check_known(lower(sub, column_blocks=False))
            except (LoweringError, UnknownLoopIR) as e:
                raise CudaCodegenError(f"cannot lower {sorted({n.op for n in sub.nodes})}: {e}") from e
        for h in hard:
            while True:
                try:
                    self.walker_kernel(sub, h, loc, origin, done)
                    break
                except NotWalkable as e:
                    self.materialize(sub, e.node_id, loc, origin, done)
        final = cut_cone(sub, list(sub.outputs), done)
        self.subgraph_from_cut(final, loc, origin, out_locs)

    def materialize(self, sub, c, loc, origin, done):
        if c in done:
            raise CudaCodegenError(f"cannot materialise %{c} of {sub.name}")
        cone = cut_cone(sub, [c], done)
        out = self.scratch(4 * prod(sub.node(c).type.shape))
        self.subgraph_from_cut(cone, loc, origin, [out])
        loc[c] = out
        done.add(c)

    def subgraph_from_cut(self, cut, loc, origin, out_locs):
        graph, ins = cut
        in_locs = [loc[v] for v in ins]
        leaves = [origin.get(v) for v in ins]
        self.subgraph(graph, leaves, in_locs, out_locs, force_split=False)

    def walker_kernel(self, sub, h, loc, origin, done):
        """Materialise hard node h into scratch with a pointwise walker kernel."""
        shape = sub.node(h).type.shape
        names: dict = {}
        inputs = []

        def leaf(node, idx):
            v = node.id
            o = origin.get(v)
            if o is not None and self.graph.node(o).op == "const":
                return Load(self.const_symbol(o), linearize(idx, node.type.shape))
            if v not in names:
                names[v] = f"in{len(names)}"
                inputs.append(v)
            return Load(names[v], linearize(idx, node.type.shape))

        ranges = {f"i{k}": d for k, d in enumerate(shape) if d != 1}
        walker = Walker(sub, leaf, ranges, stop=lambda nid: nid in done and nid != h)
        walker.value(h, tuple(IConst(0) if d == 1 else IVar(f"i{k}") for k, d in enumerate(shape)))  # may raise
        kernel = pointwise_kernel(self.name("_" + sub.node(h).op.lower()), shape, lambda idx: walker.value(h, idx),
                                  [], out_size=prod(shape))
        kernel = dataclasses.replace(kernel, params=tuple(
            [GParam(names[v], prod(sub.node(v).type.shape), "in") for v in inputs]) + kernel.params)
        out = self.scratch(4 * prod(shape))
        self.launch(kernel, [loc[v] for v in inputs] + [out], note=f"materialise {sub.node(h).op}")
        loc[h] = out
        done.add(h)
