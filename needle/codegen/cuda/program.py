"""A compiled graph as a CUDA program: every kernel launch in schedule order, with buffers.

`build_program(graph, plan)` turns each fusion group of the pipeline's `KernelPlan` (fusion
plan, schedule, memory plan: `needle.passes.pipeline`) into
one or more GPU kernels (`CudaProgram.launches`), each launch's arguments being locations:
an offset in the arena (the memory plan's buffers, then a scratch area for values internal
to one group), a graph input or a graph output. `render.render_program` prints the
translation unit; `emulate.emulate_program` runs it on the CPU. The program's records
(`CudaProgram`, `Launch`) are in `records.py`; `Loc` and `GroupReport` are the neutral
builder's (`codegen/program.py`), whose walk (groups in schedule order, homes of values,
view groups, output copies, reports) this builder specialises.

How each group becomes kernels:

* **elementwise / reduce**: the group plus the view nodes it reads through (`views.expand`)
  is lowered with `needle.codegen.lower` and bound to the grid (`schedule.bind`). When
  `lower` refuses (a Gather, outputs of different sizes...), the group is *split*
  (`split.py`): each op of `HARD_OPS` (the view walker's `PIECES`) is materialised into
  scratch by a pointwise kernel built with the view walker (values it reads that are
  computed in the group are materialised first by their own lowered kernels), and the rest
  of the group is lowered with those values as inputs.
* **extern** (MatMul, Conv): the tiled GEMM template (`templates.gemm_kernel`; a conv is
  an implicit GEMM with im2col computed in the operand loads), operands read through their
  views in place; a GEMM of few output tiles and a long K is split-K (`templates.split_k`:
  partial products in scratch, summed in order by a second kernel that runs the epilogue); an epilogue runs as a second, lowered kernel reading the GEMM result
  (from scratch unless the result is itself a buffer; a reshape-only epilogue costs nothing).
* **opaque**: RandomUniform (the compiled RNG), IndexAdd (zero + atomicAdd), ToDevice (a copy).
* **view** groups make no kernel: their consumers recompute them.
* graph outputs that no kernel writes in place (inputs, constants, views, values returned
  twice) are copied at the end.
"""
from __future__ import annotations

import dataclasses
from math import prod
from typing import Optional

import numpy as np

from ...ir.graph import Graph
from ...ir.subgraph import cut, is_literal
from ...ops.registry import OPS
from ...passes.pipeline import KernelPlan, plan_kernels
from ..loop_ir import AccUpdate, For, IConst, IVar, Load, LoopKernel, Store, linearize
from .gpu_ir import GpuKernel
from ..program import GroupReport, Loc, ProgramBuilder
from .records import CudaCodegenError, CudaProgram, Launch, align
from .schedule import bind_all
from .split import SplitPath, UnknownLoopIR, check_known
from .templates import (Operand, conv_data_operands, conv_filter_operands, conv_operands, fill_kernel, gemm_kernels,
                        pointwise_kernel, rand_kernel, scatter_add_kernels)
from .views import NotWalkable, Walker, expand, rewrite_tuples

def _rename_loads(lk: LoopKernel, names: dict) -> LoopKernel:
    """Loads of buffers in `names` read the given symbols instead (constants); those
    parameters are dropped."""
    if not names:
        return lk
    from ..loop_ir import map_loads

    memo: dict = {}

    def fix(ld):
        return Load(names[ld.buf], ld.index) if ld.buf in names else ld

    def stmts(body):
        out = []
        for s in body:
            if isinstance(s, For):
                out.append(For(s.var, s.extent, s.kind, stmts(s.body)))
            elif isinstance(s, Store):
                out.append(Store(s.buf, s.index, map_loads(s.value, fix, memo)))
            elif isinstance(s, AccUpdate):
                out.append(AccUpdate(s.acc, s.op, map_loads(s.value, fix, memo)))
            else:
                out.append(s)
        return tuple(out)

    return LoopKernel(lk.name, tuple(p for p in lk.params if p.name not in names), stmts(lk.body))


class _Builder(SplitPath, ProgramBuilder):
    """The CUDA specialisation of the neutral walk (`codegen/program.py`): a step is a launch."""

    def __init__(self, graph: Graph, plan: KernelPlan, force_split=False):
        for v in plan.memory.offsets:
            if isinstance(graph.node(v).type, tuple):
                raise CudaCodegenError(f"tuple-typed buffer %{v} ({graph.node(v).op}) is not supported")
        super().__init__(graph, plan.fusion, plan.schedule, plan.memory)
        self.force_split = force_split
        self.launches: list = []
        self.consts: dict = {}
        self.const_name: dict = {}
        self.scratch_base = align(self.memory.arena_bytes)
        self.scratch_top = 0
        self.scratch_max = 0
        self.count = 0

    def is_view_group(self, g) -> bool:
        if g.kind in ("view", "tuple"):
            return True
        writes = self.schedule.writes.get(g.id, []) if hasattr(self.schedule, "writes") else []
        return bool(writes) and all(v in self.memory.aliases for v in writes)

    # ---- helpers ---------------------------------------------------------------------
    def has_buffer(self, v) -> bool:
        if v in self.homes:
            return True
        group = self.group_of.get(v)
        gid = None if group is None else group.id
        if gid is not None and gid not in self.view_groups and gid != self.gid:
            raise CudaCodegenError(f"%{v} ({self.graph.node(v).op}, group k{gid}) is read by group k{self.gid} "
                                   "but has no buffer in the memory plan")
        return False

    def scratch(self, nbytes) -> Loc:
        loc = Loc("arena", 0, self.scratch_base + self.scratch_top)
        self.scratch_top += align(max(nbytes, 4))
        self.scratch_max = max(self.scratch_max, self.scratch_top)
        return loc

    def const_symbol(self, v) -> str:
        if v not in self.const_name:
            n = self.graph.node(v)
            from ...passes.fold import const_array
            arr = np.asarray(const_array(n), np.float32).reshape(n.type.shape)
            name = f"ndl_const_{v}"
            self.const_name[v] = name
            self.consts[name] = arr
        return self.const_name[v]

    def name(self, suffix=""):
        self.count += 1
        return f"k{self.gid}_{self.count}{suffix}" if self.gid >= 0 else f"kout_{self.count}{suffix}"

    def launch(self, kernel: GpuKernel, args: list, note=""):
        """Record a launch; arguments whose memory overlaps lose __restrict__."""
        spans = []
        for loc, p in zip(args, kernel.params):
            spans.append((loc.space, loc.index, loc.offset, loc.offset + 4 * p.size))
        params = []
        for i, p in enumerate(kernel.params):
            s = spans[i]
            alias = any(j != i and t[0] == s[0] and t[1] == s[1] and t[2] < s[3] and s[2] < t[3]
                        for j, t in enumerate(spans))
            params.append(dataclasses.replace(p, restrict=not alias))
        kernel = dataclasses.replace(kernel, params=tuple(params))
        self.launches.append(Launch(kernel, tuple(args), self.gid, note))

    def leaf_loc(self, v) -> Loc:
        if v not in self.homes and self.graph.node(v).op == "const":
            return Loc("const", v)   # read from its __device__ array, never passed
        return self.homes[v]

    def dtype_check(self, sub: Graph, what):
        for n in sub.nodes:
            types = n.type if isinstance(n.type, tuple) else (n.type,)
            for t in types:
                if t.dtype != "float32":
                    raise CudaCodegenError(f"{what}: %{n.id} {n.op} has dtype {t.dtype} (float32 only)")

    # ---- the walk's hooks --------------------------------------------------------------
    def begin_group(self) -> None:
        self.count = 0
        self.scratch_top = 0

    def n_steps(self) -> int:
        return len(self.launches)

    def build_group(self, g) -> tuple[str, str]:
        try:
            return super().build_group(g)
        except CudaCodegenError as e:
            raise CudaCodegenError(f"group k{g.id} [{g.kind}] of @{self.graph.name}: {e}") from e

    def writes(self, g) -> list:
        return [v for v in g.node_ids if v in self.homes]

    # ---- fused groups ----------------------------------------------------------------
    def fused(self, g):
        outs = self.writes(g)
        if not outs:
            return "lowered", "no value of the group is used"
        sub, leaves = expand(self.graph, g.node_ids, outs, self.has_buffer, f"{self.graph.name}.k{g.id}")
        sub = rewrite_tuples(sub)
        self.dtype_check(sub, f"k{g.id}")
        locs = [self.leaf_loc(v) for v in leaves]
        return self.subgraph(sub, leaves, locs, [self.homes[o] for o in outs])

    def subgraph(self, sub: Graph, leaves, in_locs, out_locs, force_split=None):
        """Emit kernels computing `sub`'s outputs into out_locs (its inputs at in_locs)."""
        from ..lower import LoweringError, lower

        reason = "forced"
        if not (self.force_split if force_split is None else force_split):
            try:
                lk = lower(sub, self.name(), column_blocks=False)
                check_known(lk)
                self.emit_loop_kernel(lk, leaves, in_locs, out_locs)
                return "lowered", ""
            except (LoweringError, UnknownLoopIR) as e:
                reason = str(e)
        self.split(sub, leaves, in_locs, out_locs)
        return "split", f"lower: {reason}"

    def emit_loop_kernel(self, lk: LoopKernel, leaves, in_locs, out_locs, note=""):
        consts = {}
        for k, (v, loc) in enumerate(zip(leaves, in_locs)):
            if v is not None and self.graph.node(v).op == "const":
                consts[f"in{k}"] = self.const_symbol(v)
        lk = _rename_loads(lk, consts)
        by_name = {f"in{k}": loc for k, loc in enumerate(in_locs)}
        by_name.update({f"out{k}": loc for k, loc in enumerate(out_locs)})
        self.launch_all(bind_all(lk, lk.name), by_name, note)

    def launch_all(self, kernels: list, locs: dict, note="") -> None:
        """Launch `kernels` in order with their arguments at `locs` (parameter name -> Loc); a
        parameter not there (the partials a split reduction or a split-K GEMM passes from its
        first launch to its second) gets scratch, shared by the launches."""
        for kernel in kernels:
            for p in kernel.params:
                if p.name not in locs:
                    locs[p.name] = self.scratch(4 * p.size)
            self.launch(kernel, [locs[p.name] for p in kernel.params], note)

    # ---- extern groups ---------------------------------------------------------------
    def extern(self, g):
        anchor = self.graph.node(g.anchor)
        outs = self.writes(g)
        epi = [v for v in g.node_ids if v != anchor.id]
        aloc = None
        if anchor.id in self.homes:
            aloc = self.homes[anchor.id]
        elif epi and self._reshape_chain(anchor.id, epi, outs):
            aloc = self.homes[outs[0]]
            epi = []
        sub, leaves = expand(self.graph, [anchor.id], [anchor.id], self.has_buffer, f"{self.graph.name}.k{g.id}")
        sub = rewrite_tuples(sub)
        self.dtype_check(sub, f"k{g.id}")
        names = {n.id: f"in{k}" for k, n in enumerate(sub.inputs)}
        node = sub.node(sub.outputs[0])

        def leaf(n, idx):
            o = leaves[int(names[n.id][2:])]
            if self.graph.node(o).op == "const":
                return Load(self.const_symbol(o), linearize(idx, n.type.shape))
            return Load(names[n.id], linearize(idx, n.type.shape))

        walker = Walker(sub, leaf)
        size = prod(node.type.shape)
        self._sizes = {f"in{k}": prod(n.type.shape) for k, n in enumerate(sub.inputs)}
        if node.op not in _EXTERN:
            raise CudaCodegenError(f"extern op {node.op} has no CUDA template")
        how, index, emit = _EXTERN[node.op]
        fused = self._fused_epilogue(g, anchor, epi, outs, *index(node), aloc is not None) if epi else None
        if fused is None and aloc is None:
            aloc = self.scratch(4 * size)
        gemm_args = {} if fused is None else {"epilogue": fused[0], "outputs": [(n, s) for n, s, _ in fused[1]],
                                              "extra_inputs": [(n, s) for n, s, _ in fused[2]]}
        (kernels, splits), detail = emit(self, walker, sub, node, size, **gemm_args)
        locs = {f"in{k}": self.homes[v] if self.graph.node(v).op != "const" else None for k, v in enumerate(leaves)}
        if fused is None:
            locs["out0"] = aloc
        else:
            locs.update({n: loc for n, _, loc in fused[1] + fused[2]})
            detail += f"; epilogue of {len(epi)} ops fused"
        if splits > 1:
            detail += f"; split-K in {splits}"
        self.launch_all(kernels, locs, note=f"{node.op} %{anchor.id}")
        if epi and fused is None:
            has = lambda v: v == anchor.id or self.has_buffer(v)  # noqa: E731
            esub, eleaves = expand(self.graph, epi, [o for o in outs if o != anchor.id], has,
                                   f"{self.graph.name}.k{g.id}.epilogue")
            esub = rewrite_tuples(esub)
            locs = [aloc if v == anchor.id else self.leaf_loc(v) for v in eleaves]
            self.subgraph(esub, eleaves, locs, [self.homes[o] for o in outs if o != anchor.id])
            detail += f"; epilogue of {len(epi)} ops"
        return how, detail

    @staticmethod
    def _matmul_index(node):
        """(the output index of GEMM element (m, n) in batch `bvars`, the number of batch axes)."""
        def index_of(bvars, gm, gn):
            return tuple(bvars) + (gm, gn)
        return index_of, len(node.type.shape) - 2

    @staticmethod
    def _conv_index(node):
        """The conv ops' `_matmul_index`: m runs over the first three output axes (row-major),
        n over the last; no batch axes."""
        _, d1, d2, _ = node.type.shape
        from ..loop_ir import idiv, imod

        def index_of(bvars, gm, gn):
            return (idiv(gm, d1 * d2), imod(idiv(gm, d2), d1), imod(gm, d2), gn)
        return index_of, 0

    def _fused_epilogue(self, g, anchor, epi, outs, index_of, batch: int, anchor_stored: bool):
        """(epilogue(bvars, m, n, value) -> [Store], outputs [(name, size, Loc)], extra inputs
        [(name, size, Loc)]) computing the group's elementwise epilogue in the GEMM's store,
        or None when it is not elementwise at the GEMM's own element (views of the result,
        outputs of another shape, ops the walker does not evaluate)."""
        shape = anchor.type.shape
        e_outs = [o for o in outs if o != anchor.id]
        if any(self.graph.node(o).type.shape != shape for o in e_outs):
            return None
        has = lambda v: v == anchor.id or self.has_buffer(v)  # noqa: E731
        esub, eleaves = expand(self.graph, epi, e_outs, has, f"{self.graph.name}.k{g.id}.epilogue")
        esub = rewrite_tuples(esub)
        self.dtype_check(esub, f"k{g.id} epilogue")
        origin = {n.id: v for n, v in zip(esub.inputs, eleaves)}
        names: dict = {}
        extra: list = []
        current: dict = {}

        def leaf(n, idx):
            o = origin[n.id]
            if o == anchor.id:
                if tuple(idx) != current["idx"]:
                    raise NotWalkable(n.id)
                return current["tile"]
            if self.graph.node(o).op == "const":
                return Load(self.const_symbol(o), linearize(idx, n.type.shape))
            if n.id not in names:
                names[n.id] = f"e{len(names)}"
                extra.append((names[n.id], prod(n.type.shape), self.leaf_loc(o)))
            return Load(names[n.id], linearize(idx, n.type.shape))

        walker = Walker(esub, leaf, elementwise=True)
        outputs = [(f"out{k}", prod(shape), self.homes[o]) for k, o in enumerate(e_outs)]
        if anchor_stored:
            outputs.append(("outa", prod(shape), self.homes[anchor.id]))

        def epilogue(bvars, gm, gn, tile):
            idx = tuple(index_of(bvars, gm, gn))
            current["idx"], current["tile"] = idx, tile
            lin = linearize(idx, shape)
            stores = [Store(f"out{k}", lin, walker.value(o, idx)) for k, o in enumerate(esub.outputs)]
            if anchor_stored:
                stores.append(Store("outa", lin, tile))
            return stores

        from .gpu_ir import TileRef
        try:
            epilogue(tuple(IVar(f"b{k}") for k in range(batch)), IVar("gm"), IVar("gn"), TileRef("c", 0, 0))
        except NotWalkable:
            return None
        walker.memo.clear()
        return epilogue, outputs, extra

    def _reshape_chain(self, anchor, epi, outs) -> bool:
        """Whether the epilogue is a chain of ops sharing the anchor's memory (reshapes)."""
        cur = anchor
        for v in epi:
            n = self.graph.node(v)
            if not OPS[n.op].aliases_input or n.inputs[0] != cur:
                return False
            cur = v
        return outs == [cur]

    def matmul(self, walker, sub, node, size, **gemm_args):
        a, b = node.inputs
        sa, sb = sub.node(a).type.shape, sub.node(b).type.shape
        out = node.type.shape
        batch = out[:-2]
        M, N, K = out[-2], out[-1], sa[-1]

        def bidx(shape, bvars):
            nb = len(shape) - 2
            lead = len(batch) - nb
            return tuple(IConst(0) if shape[i] == 1 else bvars[lead + i] for i in range(nb))

        def a_fn(bvars, gm, gk):
            return [], None, walker.value(a, bidx(sa, bvars) + (gm, gk)), gm.name, gk.name

        def b_fn(bvars, gk, gn):
            return [], None, walker.value(b, bidx(sb, bvars) + (gk, gn)), gk.name, gn.name

        kernel = self._gemm(a_fn, b_fn, M, N, K, batch, size, **gemm_args)
        return kernel, f"M={M} N={N} K={K} batch={prod(batch)}"

    def _gemm(self, a_fn, b_fn, M, N, K, batch, size, note="", **gemm_args):
        # the operands' buffers are found by tracing them once
        probe = []
        for fn, args in ((a_fn, (IVar("gm"), IVar("gk"))), (b_fn, (IVar("hk"), IVar("hn")))):
            bv = tuple(IVar(f"b{k}") for k in range(len(batch)))
            probe.append(fn(bv, *args))
        from ..loop_ir import walk_exprs
        bufs = []
        for _, _, val, _, _ in probe:
            for e in walk_exprs(val):
                if isinstance(e, Load) and e.buf.startswith("in") and e.buf not in bufs:
                    bufs.append(e.buf)
        inputs = [(n, self._size_of(n)) for n in sorted(bufs, key=lambda s: int(s[2:]))]
        return gemm_kernels(self.name("_gemm"), M, N, K, batch, Operand(a_fn, inputs), Operand(b_fn, []),
                            size, note=note, **gemm_args)

    def _size_of(self, name):
        return self._sizes[name]

    def conv(self, walker, sub, node, size, **gemm_args):
        x, w = node.inputs
        sx, sw = sub.node(x).type.shape, sub.node(w).type.shape
        stride, padding = node.attr("stride", 1), node.attr("padding", 0)
        xf, wf = (lambda idx: walker.value(x, idx)), (lambda idx: walker.value(w, idx))
        a, b, (M, N, K) = _CONV_OPERANDS[node.op](xf, wf, sx, sw, node, stride, padding)
        kernel = self._gemm(a.fn, b.fn, M, N, K, (), size, note=f"{node.op} stride {stride} padding {padding}",
                            **gemm_args)
        return kernel, f"{node.op} as an implicit GEMM M={M} N={N} K={K} stride={stride} padding={padding}"

    # ---- opaque groups ---------------------------------------------------------------
    def _input_loads(self, sub: Graph, leaves: list) -> tuple:
        """(leaf, names, inputs) for a Walker over `sub`: leaf(node, idx) loads a leaf's element,
        a const from its symbol, any other value from a parameter named in0, in1, ... in the
        order first read (`names`: sub input id -> parameter; `inputs`: (sub input id, graph
        value) in that order)."""
        names: dict = {}
        inputs: list = []
        position = {m.id: k for k, m in enumerate(sub.inputs)}

        def leaf(node_, idx):
            o = leaves[position[node_.id]]
            if self.graph.node(o).op == "const":
                return Load(self.const_symbol(o), linearize(idx, node_.type.shape))
            if node_.id not in names:
                names[node_.id] = f"in{len(names)}"
                inputs.append((node_.id, o))
            return Load(names[node_.id], linearize(idx, node_.type.shape))

        return leaf, names, inputs

    def opaque(self, g):
        if len(g.node_ids) != 1:
            raise CudaCodegenError(f"opaque group of {len(g.node_ids)} nodes")
        v = g.node_ids[0]
        node = self.graph.node(v)
        if v not in self.homes:
            return "skipped", "result unused"
        sub, leaves = expand(self.graph, [v], [v], self.has_buffer, f"{self.graph.name}.k{g.id}")
        sub = rewrite_tuples(sub)
        n = sub.node(sub.outputs[0])
        leaf, names, inputs = self._input_loads(sub, leaves)

        if node.op not in _OPAQUE:
            raise CudaCodegenError(f"opaque op {node.op} has no CUDA template")
        return _OPAQUE[node.op](self, Walker(sub, leaf), sub, n, v, names, inputs)

    def _rng(self, walker, sub, n, v, names, inputs):
        counter = walker.value(n.inputs[0], ())
        base = walker.value(n.inputs[1], ())
        ins = [(names[i], prod(sub.node(i).type.shape)) for i, _ in inputs]
        kernel = rand_kernel(self.name("_rng"), n.type.shape, counter, base, n.attr("stream", 0), ins)
        self.launch(kernel, [self.homes[o] for _, o in inputs] + [self.homes[v]])
        return "rng", f"stream {n.attr('stream', 0)}"

    def _index_add(self, walker, sub, n, v, names, inputs):
        values, indices = n.inputs
        vshape = sub.node(values).type.shape
        k = len(sub.node(indices).type.shape)
        vfn = lambda idx: walker.value(values, idx)  # noqa: E731
        ifn = lambda idx: walker.value(indices, idx)  # noqa: E731
        # trace once to learn the buffers
        probe = [IVar(f"i{d}") for d in range(len(vshape))]
        vfn(tuple(probe))
        ifn(tuple(probe[:k]))
        ins = [(names[i], prod(sub.node(i).type.shape)) for i, _ in inputs]
        zero, scatter = scatter_add_kernels(self.name("_index_add"), n.type.shape, vshape, k, vfn, ifn, ins)
        self.launch(zero, [self.homes[v]])
        self.launch(scatter, [self.homes[o] for _, o in inputs] + [self.homes[v]])
        return "index_add", "zero + atomicAdd scatter"

    def _copy(self, walker, sub, n, v, names, inputs):
        src = n.inputs[0]
        fn = lambda idx: walker.value(src, idx)  # noqa: E731
        fn(tuple(IVar(f"i{d}") for d in range(len(n.type.shape))))
        ins = [(names[i], prod(sub.node(i).type.shape)) for i, _ in inputs]
        kernel = pointwise_kernel(self.name("_copy"), n.type.shape, fn, ins)
        self.launch(kernel, [self.homes[o] for _, o in inputs] + [self.homes[v]])
        return "copy", n.op

    # ---- graph outputs ---------------------------------------------------------------
    def copy_output(self, v: int, k: int) -> None:
        node = self.graph.node(v)
        if isinstance(node.type, tuple):
            raise CudaCodegenError(f"graph output %{v} is a tuple")
        shape = node.type.shape
        if prod(shape) == 0:
            return
        if is_literal(node):
            self.launch(fill_kernel(self.name("_fill"), prod(shape), node.attr("value")), [Loc("out", k)])
            return
        if v in self.homes or node.op == "const":
            sub = cut(self.graph, [v], [v], [v], f"{self.graph.name}.out{k}")
            leaves = [v]
        else:
            sub, leaves = expand(self.graph, [v], [v], self.has_buffer, f"{self.graph.name}.out{k}")
            sub = rewrite_tuples(sub)
        leaf, names, inputs = self._input_loads(sub, leaves)

        walker = Walker(sub, leaf)
        out_id = sub.outputs[0]
        fn = (lambda idx: walker.value(out_id, idx))  # noqa: E731
        fn(tuple(IConst(0) if d == 1 else IVar(f"i{j}") for j, d in enumerate(shape)))
        ins = [(names[i], prod(sub.node(i).type.shape)) for i, _ in inputs]
        kernel = pointwise_kernel(self.name("_copy"), shape, fn, ins)
        self.launch(kernel, [self.homes[o] for _, o in inputs] + [Loc("out", k)], note=f"output {k}: copy of %{v}")


#: extern op -> (its report's `how`, its GEMM element's output index, the method emitting the GEMM)
_EXTERN = {"MatMul": ("gemm", _Builder._matmul_index, _Builder.matmul),
           "Conv": ("conv", _Builder._conv_index, _Builder.conv),
           "ConvBackwardData": ("conv_grad", _Builder._conv_index, _Builder.conv),
           "ConvBackwardFilter": ("conv_grad", _Builder._conv_index, _Builder.conv)}
#: conv op -> its implicit GEMM's operands (x, w: index -> value; their shapes; the node)
_CONV_OPERANDS = {
    "Conv": lambda xf, wf, sx, sw, node, s, p: conv_operands(xf, wf, sx, sw, s, p, [], []),
    "ConvBackwardData": lambda xf, wf, sx, sw, node, s, p: conv_data_operands(xf, wf, sx, sw, tuple(node.attr("size")),
                                                                               s, p),
    "ConvBackwardFilter": lambda xf, wf, sx, sw, node, s, p: conv_filter_operands(xf, wf, sx, sw,
                                                                                   tuple(node.attr("kernel")), s, p)}
#: opaque op -> the method emitting its kernels
_OPAQUE = {"RandomUniform": _Builder._rng, "IndexAdd": _Builder._index_add, "ToDevice": _Builder._copy}


def build_program(graph: Graph, plan: Optional[KernelPlan] = None, name=None,
                  force_split: bool = False) -> CudaProgram:
    """The CUDA program of `graph` from its kernel plan (when None, the cuda pipeline's
    analyses of `graph`: `plan_kernels(graph, "cuda")`). `force_split` sends every fused
    group through the split path (tests)."""
    plan = plan_kernels(graph, "cuda") if plan is None else plan
    for n in graph.inputs:
        if n.type.dtype != "float32":
            raise CudaCodegenError(f"graph input %{n.id} has dtype {n.type.dtype} (float32 only)")
    b = _Builder(graph, plan, force_split)
    b.build()
    outs = []
    for v in graph.outputs:
        t = graph.node(v).type
        if isinstance(t, tuple):
            raise CudaCodegenError(f"graph output %{v} is a tuple")
        outs.append(tuple(t.shape))
    return CudaProgram(name or graph.name, [tuple(n.type.shape) for n in graph.inputs], outs, b.launches, b.consts,
                       align(plan.memory.arena_bytes) + b.scratch_max, plan.memory.arena_bytes, b.scratch_max,
                       b.reports, dict(b.homes),
                       {gid: b.writes(b.groups[gid]) for gid in plan.schedule.order if gid not in b.view_groups})


__all__ = ["build_program", "CudaProgram", "Launch", "Loc", "GroupReport", "CudaCodegenError", "check_known"]
