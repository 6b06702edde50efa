"""A compiled graph as a CPU program: typed steps over buffer slots, in schedule order.

`build_cpu_program(graph, fusion_plan, schedule, memory_plan)` specialises the neutral walk
(`codegen/program.py`) for backends/cpu/program.cc; `runtime/native.py` loads and runs the
result. Every value a kernel writes lives at its arena offset (or, when the graph returns
it, in the output array made for the call); graph inputs are read in place.

* an elementwise/reduce group is one LLVM kernel (`KernelStep`), its top-level loop split
  across the thread pool. The view groups it reads (broadcast, permute, slices, tuple
  ops...) are inlined as index arithmetic, as the memory plan assumes (views own no bytes);
* a MatMul is a BLAS GEMM, a Conv im2col + GEMM, with their elementwise epilogue fused by
  row blocks where it allows (`gemm.py`);
* RandomUniform, Gather and IndexAdd are native steps;
* a collective with `host_compute` (an all-reduce...) is a host step on the program's
  buffers; a gradient bucket's all-reduces are one non-blocking step over the bucket's
  memory, waited for before their results are read (`buckets.py`);
* a view operand that no kernel can read in place is materialised by a copy kernel into
  scratch memory (one scratch region shared by all steps: it lives for one group);
* anything else (an op with no kernel lowering) is a callback that runs the group on the
  reference interpreter, counted in `stats["callbacks"]`.

Nothing runs outside its buffers: every kernel's loads and stores are bounded over its loops
against its buffers' sizes (`loop_ir.out_of_bounds`), else `UnsafeProgram`; the runtime's
Program checks each step's extent against its slots' sizes as the step is added.
"""
from __future__ import annotations

from math import prod
from typing import Optional

from ...ir.graph import Graph, TensorType
from ...ir.subgraph import is_literal
from ...ir.op_table import op_from_node
from ...ops.registry import OPS
from ...passes.fusion import FusedGroup
from ..llvm_render import range_extent
from ..loop_ir import LoopKernel, out_of_bounds
from ..lower import VIEWS, LoweringError, lower
from ..program import ProgramBuilder
from .buckets import BucketSteps
from .gemm import F32, GemmConvSteps
from .steps import (CallbackStep, CopyStep, CpuProgram, GatherStep, HostStep, IndexAddStep, KernelStep, RandomStep,
                    Slot, StepSource)


class NativeUnsupported(NotImplementedError):
    """The graph has something the native executor does not run (non-float32 values...)."""


class UnsafeProgram(RuntimeError):
    """Internal error: a program step would read or write outside one of its buffers (a
    wrong graph, kernel or builder). Raised while the program is built, so it never runs."""


def _is_f32_tensor(t) -> bool:
    return isinstance(t, TensorType) and t.dtype == "float32"


def _align(n: int, a: int = 64) -> int:
    return (n + a - 1) // a * a


#: a tuple of more pieces than this, laid along axis 0 by a join, is copied piece by piece
WIDE_JOIN = 4


class CpuBuilder(BucketSteps, GemmConvSteps, ProgramBuilder):
    """The CPU program of a graph (see the module docstring); GEMM and conv steps are
    `GemmConvSteps`' (gemm.py), gradient buckets `BucketSteps`' (buckets.py). `profile`:
    record a `StepSource` per step."""

    def __init__(self, graph: Graph, fusion_plan, schedule, memory_plan, profile: bool = False):
        for n in graph.nodes:
            if n.type is not None and not isinstance(n.type, tuple) and not _is_f32_tensor(n.type):
                raise NativeUnsupported(f"%{n.id} ({n.op}) has type {n.type}: the native executor runs float32 only")
        for v in graph.outputs:
            if not _is_f32_tensor(graph.node(v).type):
                raise NativeUnsupported(f"returns a value of type {graph.node(v).type}")
        super().__init__(graph, fusion_plan, schedule, memory_plan)
        self.stats = {"steps": 0, "llvm_kernels": 0, "gemms": 0, "fused_epilogues": 0, "convs": 0,
                      "copies": 0, "callbacks": 0, "scratch_bytes": 0}
        self.callbacks: list = []       # (name, subgraph) of callback steps
        self.n_in = len(graph.inputs)
        self.n_slots = self.n_in + len(graph.outputs)
        self.static: dict[int, Slot] = {}
        self.slot_size: dict[int, int] = {}     # static slot -> floats its memory holds
        self.loc: dict[int, int] = {}           # value -> the slot holding it
        for v, home in self.homes.items():
            if home.space == "in":
                self.loc[v] = home.index
            elif home.space == "out":
                self.loc[v] = self.n_in + home.index
            else:
                self.loc[v] = self._new_slot(Slot("arena", home.offset), memory_plan.sizes[v] // F32)
        self.tmp_loc: dict[int, int] = {}       # values materialised in scratch for one group
        self._users: Optional[dict] = None      # node -> its readers (made when first needed)
        self.position = {n.id: k for k, n in enumerate(graph.nodes)}
        self.scratch_top = 0
        self.scratch_size = 0
        self.steps: list = []
        self.sources: Optional[list] = [] if profile else None
        self.init_buckets()

    def program(self) -> CpuProgram:
        self.build()
        self.stats["scratch_bytes"] = self.scratch_size
        return CpuProgram(self.graph, self.n_slots, self.static, self.slot_size, self.steps, self.memory.arena_bytes,
                          self.scratch_size, self.stats, self.callbacks, self.reports, self.sources)

    # ---- the walk's hooks ---------------------------------------------------------------
    def begin_group(self) -> None:
        self.scratch_top = 0
        self.tmp_loc.clear()
        if self.gid not in self.view_groups:
            self.wait_for_buckets(self.groups[self.gid] if self.gid >= 0 else None)

    def n_steps(self) -> int:
        return len(self.steps)

    def fused(self, g) -> tuple[str, str]:
        return self._working(g, g.node_ids, g.outputs)

    def opaque(self, group) -> tuple[str, str]:
        g = self.graph
        if len(group.node_ids) == 1:
            n = g.node(group.node_ids[0])
            if n.id in self.bucket_of:
                return self.bucket_member(n)
            if n.op in _NATIVE_STEPS and n.id in group.outputs:
                self._emit(_NATIVE_STEPS[n.op](self, n, self._out_slot(n.id)), (n.id,), (n.id,), "native",
                           f"k{group.id}")
                return "native", n.op
            if hasattr(OPS.get(n.op), "host_compute") and n.id in group.outputs and _f32_tensors(g, n):
                slots = tuple(self._slot_of(i) for i in n.inputs) + (self._out_slot(n.id),)
                shapes = tuple(self._shape(i) for i in n.inputs) + (self._shape(n.id),)
                self._emit(HostStep(op_from_node(n.op, n.attr_dict), slots, shapes, n.op), (n.id,), (n.id,),
                           "host", f"k{group.id}")
                return "host", n.op
        ex = self._expand(group.node_ids, group.outputs)
        self._callback(ex, [self._slot_of(i) for i in ex.inputs], [self._out_slot(v) for v in group.outputs],
                       f"k{group.id}")
        return "callback", "no native step"

    def copy_output(self, v: int, k: int) -> None:
        self._copy_into(v, self.n_in + k)

    # ---- steps --------------------------------------------------------------------------
    def _emit(self, step, node_ids, outputs, where: str, label: str, share: float = 1.0) -> int:
        """Append a program step (and what it computes, when profiling: `share` of the work of
        `node_ids`); its index."""
        self.steps.append(step)
        if self.sources is not None:
            self.sources.append(self._source(node_ids, outputs, where, label, share))
        return len(self.steps) - 1

    def _source(self, node_ids, outputs, where: str, label: str, share: float = 1.0) -> StepSource:
        ex = self._expand(tuple(node_ids), tuple(outputs), materialize=False)
        return StepSource(ex, ex.subgraph(self.graph), where, label, share)

    def _unsafe(self, problem: str) -> UnsafeProgram:
        return UnsafeProgram(f"internal error building @{self.graph.name}'s native program: {problem}")

    # ---- slots --------------------------------------------------------------------------
    def _new_slot(self, where: Slot, size: int) -> int:
        """A static slot at `where` holding `size` floats."""
        slot = self.n_slots
        self.n_slots += 1
        self.static[slot] = where
        self.slot_size[slot] = size
        return slot

    def _scratch(self, nbytes: int) -> int:
        """A slot in the scratch region, valid until the next group's step."""
        slot = self._new_slot(Slot("scratch", self.scratch_top), nbytes // F32)
        self.scratch_top += _align(nbytes)
        self.scratch_size = max(self.scratch_size, self.scratch_top)
        return slot

    def _slot_of(self, v: int) -> int:
        """The slot holding value v: its buffer, a const array, or a materialised view."""
        if v in self.loc:
            return self.loc[v]
        if v in self.tmp_loc:
            return self.tmp_loc[v]
        node = self.graph.node(v)
        if node.op == "const":
            self.loc[v] = self._new_slot(Slot("const", value=v), prod(node.type.shape))
            return self.loc[v]
        if self.is_view(v) and (self._wide_join(node) or self._buffer_join(node)):
            self._materialize_join(node)
            return self.tmp_loc[v]
        if self.is_view(v):
            slot = self._scratch(prod(node.type.shape) * F32)
            self._copy_into(v, slot)
            return slot
        raise NativeUnsupported(f"%{v} ({node.op}) has no buffer")

    def _shape(self, v: int) -> tuple:
        return self.graph.node(v).type.shape

    def _out_slot(self, v: int, transient: bool = False) -> int:
        """The buffer a step writes value v to: its planned place; for a value the plan gave
        none, scratch when it lives within the group (`transient`: a GEMM result only its
        epilogue reads), else a buffer of its own that later groups can read."""
        if v in self.loc:
            return self.loc[v]
        n = prod(self._shape(v))
        if transient:
            return self._scratch(n * F32)
        self.loc[v] = self._new_slot(Slot("buffer", value=v), n)
        return self.loc[v]

    def _place(self, slot: int):
        """A hashable name of a static slot's memory (None for the per-call io slots)."""
        where = self.static.get(slot)
        return None if where is None else where.place

    # ---- subgraphs with their views inlined ---------------------------------------------
    def _expand(self, node_ids, outputs, materialize: bool = True) -> FusedGroup:
        """A FusedGroup over `node_ids` plus every view node (and scalar const) they read
        through, so that its inputs are values with buffers. A join of many pieces along
        axis 0, or one of pieces with buffers that several views read (a pooling window's
        slices of a channel concat), is not inlined (a select between its pieces per element
        read) but copied piece by piece into scratch first (`materialize`; off for profile
        labels)."""
        g = self.graph
        inside = set(node_ids)
        if materialize:  # such joins fused into the group itself
            for i in node_ids:
                if i not in outputs and (self._wide_join(g.node(i)) or self._reread_join(g.node(i))):
                    self._materialize_join(g.node(i))
                    inside.discard(i)
        stack = list(inside)
        while stack:
            for i in g.node(stack.pop()).inputs:
                if i in inside or i in self.tmp_loc:
                    continue
                n = g.node(i)
                if self.is_view(i) or is_literal(n):
                    if self._wide_join(n) or self._reread_join(n):
                        if materialize:
                            self._materialize_join(n)
                        continue
                    inside.add(i)
                    stack.append(i)
        needed: set = set()  # what the outputs read (a materialised join's pieces are not)
        stack = [o for o in outputs if o in inside]
        while stack:
            v = stack.pop()
            if v not in needed:
                needed.add(v)
                stack += [j for j in g.node(v).inputs if j in inside]
        ids = tuple(sorted(needed, key=self.position.__getitem__))
        inputs: list[int] = []
        for i in ids:
            for j in g.node(i).inputs:
                if j not in inside and j not in inputs:
                    inputs.append(j)
        return FusedGroup(-1, ids, tuple(inputs), tuple(outputs), "elementwise")

    def _wide_join(self, n) -> bool:
        """A join (an op that moves data and lays the pieces of a tuple along its `axis`:
        Stack, Concat) along axis 0 of more than WIDE_JOIN pieces, each piece an input of
        the node that made the tuple."""
        cls = OPS.get(n.op)
        if cls is None or not cls.moves_data or "axis" not in n.attr_dict or not n.inputs:
            return False
        src = self.graph.node(n.inputs[0])
        if not isinstance(src.type, tuple) or int(n.attr("axis")) % len(n.type.shape) != 0:
            return False
        return len(src.inputs) == len(src.type) > WIDE_JOIN

    def _buffer_join(self, n) -> bool:
        """A join (Stack, Concat) along any axis whose pieces all have buffers: copied as rows
        when it must be materialised (a GEMM or conv operand), not read by a select per element."""
        cls = OPS.get(n.op)
        if cls is None or not cls.moves_data or "axis" not in n.attr_dict or not n.inputs or not prod(n.type.shape):
            return False
        src = self.graph.node(n.inputs[0])
        return (isinstance(src.type, tuple) and len(src.inputs) == len(src.type)
                and all(p in self.loc or p in self.tmp_loc for p in src.inputs))

    def _reread_join(self, n) -> bool:
        """A join of pieces with buffers that more than one node reads."""
        if self._users is None:
            self._users = self.graph.users()
        return len(self._users[n.id]) > 1 and self._buffer_join(n)

    def _materialize_join(self, n) -> None:
        """A join along an axis: in each block of the axes before it (one block for axis 0),
        piece k's elements are a contiguous run of a scratch buffer's row (pieces not in a
        buffer, only for axis 0: written there by a copy kernel)."""
        pieces = self.graph.node(n.inputs[0]).inputs
        shape = n.type.shape
        outer = prod(shape[:int(n.attr("axis")) % len(shape)])
        row = prod(shape) // outer
        slot = self._scratch(prod(shape) * F32)
        offset = self.static[slot].offset
        for k, p in enumerate(pieces):
            width = prod(self._shape(p)) // outer
            dst = self._new_slot(Slot("scratch", offset), (outer - 1) * row + width)
            offset += width * F32
            if p in self.loc or p in self.tmp_loc or self.graph.node(p).op == "const":
                self._emit(CopyStep((self._slot_of(p), dst), width, outer, row), (), (), "copy", f"join%{n.id}[{k}]")
                self.stats["copies"] += 1
            else:
                self._copy_into(p, dst)
        self.tmp_loc[n.id] = slot

    def _kernel(self, group) -> Optional[LoopKernel]:
        """The loop kernel of a group (its subgraph), or None if it does not lower."""
        try:
            loop = lower(group.subgraph(self.graph))
        except LoweringError:
            return None
        problem = out_of_bounds(loop)
        if problem:
            raise self._unsafe(problem)
        return loop

    def _add_kernel(self, loop: LoopKernel, slots, name: str, group) -> None:
        extent = range_extent(loop)
        per_iter = max(1, max((p.size for p in loop.params), default=1) // extent)
        min_chunk = max(1, 16384 // per_iter)   # ~16k elements per thread before splitting pays
        align = 8 if per_iter == 1 else 1
        self._emit(KernelStep(name, loop, tuple(slots), tuple(p.size for p in loop.params), extent, min_chunk, align),
                   group.node_ids, group.outputs, "llvm", name)
        self.stats["llvm_kernels"] += 1

    def _copy_into(self, v: int, slot: int) -> None:
        """Write value v (a view, const or input) into `slot` with a copy kernel."""
        node = self.graph.node(v)
        if v in self.loc or node.op == "const" and not self.is_view(v):
            self._emit(CopyStep((self._slot_of(v), slot), prod(node.type.shape)), (), (), "copy", f"copy%{v}")
            self.stats["copies"] += 1
            return
        group = self._expand((v,), (v,))
        kernel = self._kernel(group)
        ins = [self._slot_of(i) for i in group.inputs]
        if kernel is None:
            self._callback(group, ins, [slot])
        else:
            self._add_kernel(kernel, ins + [slot], f"copy%{v}", group)
        self.stats["copies"] += 1

    # ---- elementwise / reduce groups ----------------------------------------------------
    def _working(self, group, node_ids, outputs) -> tuple[str, str]:
        g = self.graph
        ex = self._expand(node_ids, outputs)
        kernel = self._kernel(ex)
        native = [i for i in node_ids if g.node(i).op in _NATIVE_STEPS]
        how = "llvm"
        if kernel is None and native:
            # an op with a native step (a gather reads its indices at run time): that step
            # into scratch (or its output), then the rest
            for i in native:
                slot = self._out_slot(i) if i in outputs else self._scratch(prod(self._shape(i)) * F32)
                self._emit(_NATIVE_STEPS[g.node(i).op](self, g.node(i), slot), (i,), (i,), "native",
                           f"k{group.id}.{g.node(i).op.lower()}")
                self.loc[i] = slot
            node_ids = tuple(i for i in node_ids if i not in native)
            outputs = tuple(o for o in outputs if o not in native)
            if not outputs:
                return "native", ""
            ex = self._expand(node_ids, outputs)
            kernel = self._kernel(ex)
            how = "native+llvm"
        if kernel is None and self._split_view_outputs(group, node_ids, outputs):
            return "llvm+views", "view outputs copied from the kernel's"
        ins = [self._slot_of(i) for i in ex.inputs]
        outs = [self._out_slot(v) for v in outputs]
        if kernel is None:
            self._callback(ex, ins, outs, f"k{group.id}")
            return "callback", "does not lower"
        self._kernel_unaliased(kernel, ex, ins, outs, f"k{group.id}")
        return how, ""

    def _kernel_unaliased(self, kernel, ex, ins, outs, name: str) -> None:
        """The kernel step, its outputs placed over inputs it reads through a view moved."""
        moved = self._unalias(ex, ins, outs)
        self._add_kernel(kernel, ins + outs, name, ex)
        for tmp, dst, n in moved:
            self._emit(CopyStep((tmp, dst), n), (), (), "copy", f"{name}.unalias")

    def _split_view_outputs(self, group, node_ids, outputs) -> bool:
        """A group that does not lower because some outputs are views (another shape) of
        others (`return e, reshape(e)`): the kernel of the other outputs, then a copy kernel
        per view output reading their buffers. False when that does not apply."""
        g = self.graph
        views = [o for o in outputs if g.node(o).op in VIEWS and g.node(o).inputs[0] in outputs]
        main = tuple(o for o in outputs if o not in views)
        if not views or not main:
            return False
        ex = self._expand(node_ids, main)
        kernel = self._kernel(ex)
        if kernel is None:
            return False
        self._kernel_unaliased(kernel, ex, [self._slot_of(i) for i in ex.inputs], [self._out_slot(v) for v in main],
                               f"k{group.id}")
        for v in views:
            view = self._expand((v,), (v,))
            copy = self._kernel(view)
            slots = [self._slot_of(i) for i in view.inputs] + [self._out_slot(v)]
            if copy is None:
                self._callback(view, slots[:-1], slots[-1:], f"k{group.id}.view")
            else:
                self._add_kernel(copy, slots, f"k{group.id}.view%{v}", view)
        return True

    def _unalias(self, ex, ins, outs) -> list:
        """An output placed in place of an input that the kernel also reads through a view
        (a permutation: element i is not read only while element i is written) goes to
        scratch first; returns the (scratch, destination, floats) copies to add after."""
        g = self.graph
        viewed = {j for i in ex.node_ids if self.is_view(i) for j in g.node(i).inputs if j in ex.inputs}
        places = {self._place(s) for s, v in zip(ins, ex.inputs) if v in viewed} - {None}
        moved = []
        for k, (slot, v) in enumerate(zip(outs, ex.outputs)):
            if self._place(slot) in places:
                n = prod(self._shape(v))
                outs[k] = self._scratch(n * F32)
                moved.append((outs[k], slot, n))
        return moved

    def _callback(self, group, in_slots, out_slots, label: str = "callback") -> None:
        sub = group.subgraph(self.graph)
        types = [n.type for n in sub.inputs] + [sub.node(o).type for o in sub.outputs]
        name = "+".join(sorted({n.op for n in sub.nodes if n.op != "input"}))
        self._emit(CallbackStep(sub, tuple(in_slots) + tuple(out_slots), tuple(prod(t.shape) for t in types), name),
                   group.node_ids, group.outputs, "interp", label)
        self.callbacks.append((name, sub))
        self.stats["callbacks"] += 1


def _f32_tensors(graph: Graph, node) -> bool:
    """The node and its inputs are float32 tensors (what a host step's views hold)."""
    types = [node.type] + [graph.node(i).type for i in node.inputs]
    return all(isinstance(t, TensorType) and t.dtype == "float32" for t in types)


#: op -> its native step (backends/cpu/program.cc), from (builder, node, output slot)
_NATIVE_STEPS = {
    "RandomUniform": lambda b, n, out: RandomStep((b._slot_of(n.inputs[0]), b._slot_of(n.inputs[1]), out),
                                                  prod(n.type.shape), int(n.attr("stream"))),
    "IndexAdd": lambda b, n, out: IndexAddStep((b._slot_of(n.inputs[0]), b._slot_of(n.inputs[1]), out),
                                               prod(b._shape(n.inputs[1])), n.type.shape[0], prod(n.type.shape[1:])),
    "Gather": lambda b, n, out: GatherStep((b._slot_of(n.inputs[0]), b._slot_of(n.inputs[1]), out),
                                           prod(b._shape(n.inputs[1])), b._shape(n.inputs[0])[0],
                                           prod(b._shape(n.inputs[0])[1:])),
}


def build_cpu_program(graph: Graph, fusion_plan, schedule, memory_plan, profile: bool = False) -> CpuProgram:
    """The CPU program of `graph` from its kernel plan (`profile`: with a StepSource per step)."""
    return CpuBuilder(graph, fusion_plan, schedule, memory_plan, profile).program()
