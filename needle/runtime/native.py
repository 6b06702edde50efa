"""The native executor: a compiled graph as one native program, run by one call per step.

Built from the fusion plan, the schedule and the memory plan: every value a kernel writes
lives at its arena offset (or, when the graph returns it, in the output array made for the
call); graph inputs are read in place. The program (`ndarray_backend_cpu.Program`, in
backends/cpu/program.cc) holds the steps in schedule order:

* an elementwise/reduce group is one LLVM kernel, called through its `name_range` entry
  with its top-level loop split across the thread pool. The view groups it reads (index
  maps: broadcast, permute, slices, tuple ops...) are inlined as index arithmetic, as the
  memory plan assumes (views own no bytes);
* a MatMul is a BLAS GEMM on its operands in place (a transposed or reshaped operand
  is passed as a transposed/strided GEMM operand), batched with broadcast operands; its
  elementwise epilogue runs as an LLVM kernel on each block of rows right after the GEMM
  wrote them (while they are in cache), or after the GEMM when it reads them otherwise;
* a Conv is im2col + GEMM by cache-sized blocks of output pixels, one block buffer per
  thread; its input gradient (ConvBackwardData) GEMM + col2im, its weight gradient
  (ConvBackwardFilter) im2col + one GEMM; their epilogues as for a GEMM (these steps
  are built in native_gemm.py);
* RandomUniform, Gather and IndexAdd are native steps;
* a view operand that no kernel can read in place is materialised by a copy kernel into
  scratch memory (one scratch region shared by all steps: it lives for one step);
* anything else (an op with no kernel lowering) is a callback that runs the group on the
  reference interpreter, and is counted in `stats["callbacks"]`.

Python runs once per call: it makes the output arrays and passes every input and output
address to `Program.run`.

Nothing runs outside its buffers, whatever the graph says: every kernel's loads and stores
are bounded over its loops against its buffers' sizes (`loop_ir.out_of_bounds`), and the
Program checks each step's extent (from its parameters: a GEMM's operands with their
leading dimensions and batch offsets, a conv's images...) against the sizes of the slots it
touches as the step is added. Either failure is an `UnsafeProgram` error, before any run.
"""
from __future__ import annotations

from math import prod
from typing import Any, Optional, Sequence

import numpy as np

from ..backend_selection import array_api
from ..ir.graph import Graph, TensorType
from ..ir.subgraph import is_literal
from ..passes.schedule import plan_groups
from . import profile as _profile
from .interpreter import const_array, run_graph
from .native_gemm import F32 as _F32, GemmConvSteps


class NativeUnsupported(NotImplementedError):
    """The graph has something the native executor does not run (non-float32 values...)."""


class UnsafeProgram(RuntimeError):
    """Internal error: a program step would read or write outside one of its buffers (a
    wrong graph, kernel or builder). Raised while the program is built, so it never runs."""


def _is_f32_tensor(t) -> bool:
    return isinstance(t, TensorType) and t.dtype == "float32"


def _align(n: int, a: int = 64) -> int:
    return (n + a - 1) // a * a


class NativeExecutor(GemmConvSteps):
    """Runs `graph` as one native program (see the module docstring); its GEMM and conv
    steps are built by `GemmConvSteps` (native_gemm.py)."""

    def __init__(self, graph: Graph, fusion_plan, schedule, memory_plan):
        from ..backend_ndarray import NDArray, cpu
        from ..backend_ndarray import ndarray_backend_cpu as backend

        from ..backend_selection import BACKEND

        if BACKEND != "nd":
            raise NativeUnsupported("the native executor needs NEEDLE_BACKEND=nd")
        self.graph = graph
        self.device = cpu()
        for n in graph.nodes:
            if n.op not in ("return",) and n.type is not None and not isinstance(n.type, tuple) \
                    and not _is_f32_tensor(n.type):
                raise NativeUnsupported(f"%{n.id} ({n.op}) has type {n.type}: the native executor runs float32 only")
        self.groups = {g.id: g for g in plan_groups(fusion_plan)}
        self.group_of = {v: g for g in self.groups.values() for v in g.node_ids}
        self.order = list(schedule.order)
        self.stats = {"steps": 0, "llvm_kernels": 0, "gemms": 0, "fused_epilogues": 0, "convs": 0,
                      "copies": 0, "callbacks": 0, "scratch_bytes": 0}
        self._keep: list = []           # arrays the program points into
        self._callbacks: list = []      # (name, subgraph) of callback steps, for reports
        n_in, n_out = len(graph.inputs), len(graph.outputs)
        self.n_io = n_in + n_out
        self.loc: dict[int, int] = {n.id: k for k, n in enumerate(graph.inputs)}
        self.tmp_loc: dict[int, int] = {}       # values materialised in scratch for one group
        self.position = {n.id: k for k, n in enumerate(graph.nodes)}
        self.static: dict[int, tuple] = {}     # slot -> ("arena"|"scratch", offset) or ("array", NDArray)
        self.slot_size: dict[int, int] = {}    # static slot -> floats its buffer holds
        self.n_slots = self.n_io
        self.out_types = [graph.node(v).type for v in graph.outputs]
        for t in self.out_types:
            if not _is_f32_tensor(t):
                raise NativeUnsupported(f"returns a value of type {t}")
        # values written into the caller's output arrays (first position of each); the others are copied
        late_copies = []
        for j, v in enumerate(graph.outputs):
            node = graph.node(v)
            if v in self.loc or node.op == "const" or self._is_view(v):
                late_copies.append((v, n_in + j))
            else:
                self.loc[v] = n_in + j
        self.arena = NDArray.make((max(memory_plan.arena_bytes // _F32, 1),), device=self.device)
        for v, off in memory_plan.offsets.items():
            if v not in self.loc and not isinstance(graph.node(v).type, tuple):
                self.loc[v] = self._new_slot(("arena", off), memory_plan.sizes[v] // _F32)
        self.scratch_top = 0
        self.scratch_size = 0
        self.steps: list = []            # (kind, args...) recorded, then replayed into the Program
        self._profiles: list = []        # a StepProfile per step (NEEDLE_PROFILE)
        for gid in self.order:
            self._group(self.groups[gid])
        self.scratch_top = 0
        self.tmp_loc.clear()
        for v, slot in late_copies:      # returned inputs, consts and views (bases are still live)
            self._copy_into(v, slot)
        self.scratch = NDArray.make((max(self.scratch_size // _F32, 1),), device=self.device)
        self.stats["scratch_bytes"] = self.scratch_size
        self.program = backend.Program(self.n_slots, [prod(n.type.shape) for n in graph.inputs],
                                       [prod(t.shape) for t in self.out_types])
        arena_ptr, scratch_ptr = self.arena._handle.ptr(), self.scratch._handle.ptr()
        try:  # every step is checked against the sizes of the buffers it reads and writes
            for slot, (kind, x) in self.static.items():
                addr = (arena_ptr + x if kind == "arena" else scratch_ptr + x if kind == "scratch"
                        else x._handle.ptr() + x._offset * _F32)
                self.program.set_slot(slot, addr, self.slot_size[slot])
            for kind, *args in self.steps:
                getattr(self.program, "add_" + kind)(*args)
        except ValueError as e:
            raise self._unsafe(str(e)) from None
        self.stats["steps"] = len(self.program)
        if _profile.enabled():
            self.program.set_profile(True)
            _profile.register(self, graph.name)

    @property
    def profile(self) -> Optional[list]:
        """StepProfile per step with the program's counters (None unless NEEDLE_PROFILE=1
        was set when this executor was built)."""
        if not _profile.enabled() and not any(p.calls for p in self._profiles):
            return None
        seconds, calls = self.program.profile()
        for p, sec, n in zip(self._profiles, seconds, calls):
            p.seconds, p.calls = sec, n
        return self._profiles

    def _profiled(self, node_ids, outputs) -> tuple:
        """(group, subgraph) of some nodes with their views inlined, for profile estimates."""
        ex = self._expand(tuple(node_ids), tuple(outputs), materialize=False)
        return ex, ex.subgraph(self.graph)

    def _emit(self, step: list, node_ids, outputs, where: str, label: str = "") -> list:
        """Append a program step, with its profile label and estimates."""
        prof = _profile.step_profile(*self._profiled(node_ids, outputs), None, where=where)
        if label:
            prof.label = label + prof.label[prof.label.index(" "):]
        self.steps.append(step)
        self._profiles.append(prof)
        return step

    def _unsafe(self, problem: str) -> UnsafeProgram:
        return UnsafeProgram(f"internal error building @{self.graph.name}'s native program: {problem}")

    # ---- slots --------------------------------------------------------------------------
    def _new_slot(self, where: tuple, size: int) -> int:
        """A static slot at `where` holding `size` floats."""
        slot = self.n_slots
        self.n_slots += 1
        self.static[slot] = where
        self.slot_size[slot] = size
        return slot

    def _scratch(self, nbytes: int) -> int:
        """A slot in the scratch region, valid until the next group's step."""
        slot = self._new_slot(("scratch", self.scratch_top), nbytes // _F32)
        self.scratch_top += _align(nbytes)
        self.scratch_size = max(self.scratch_size, self.scratch_top)
        return slot

    def _is_view(self, v: int) -> bool:
        g = self.group_of.get(v)
        return g is not None and g.kind == "view"

    def _slot_of(self, v: int) -> int:
        """The slot holding value v: its buffer, a const array, or a materialised view."""
        if v in self.loc:
            return self.loc[v]
        if v in self.tmp_loc:
            return self.tmp_loc[v]
        node = self.graph.node(v)
        if node.op == "const":
            arr = const_array(node)
            self._keep.append(arr)
            self.loc[v] = self._new_slot(("array", arr.compact()), prod(node.type.shape))
            return self.loc[v]
        if self._is_view(v) and self._wide_stack(node):
            self._materialize_stack(node)
            return self.tmp_loc[v]
        if self._is_view(v):
            slot = self._scratch(prod(node.type.shape) * _F32)
            self._copy_into(v, slot)
            return slot
        raise NativeUnsupported(f"%{v} ({node.op}) has no buffer")

    def _shape(self, v: int) -> tuple:
        return self.graph.node(v).type.shape

    # ---- subgraphs with their views inlined ---------------------------------------------
    def _expand(self, node_ids, outputs, materialize: bool = True):
        """A FusedGroup over `node_ids` plus every view node (and scalar const) they read
        through, so that its inputs are values with buffers. A stack of many pieces along
        axis 0 is not inlined (a select between its pieces per element) but copied piece by
        piece into scratch first (`materialize`; off for profile labels)."""
        g = self.graph
        inside = set(node_ids)
        if materialize:  # wide stacks fused into the group itself
            for i in node_ids:
                if i not in outputs and self._wide_stack(g.node(i)):
                    self._materialize_stack(g.node(i))
                    inside.discard(i)
        stack = list(inside)
        while stack:
            for i in g.node(stack.pop()).inputs:
                if i in inside or i in self.tmp_loc:
                    continue
                n = g.node(i)
                if self._is_view(i) or is_literal(n):
                    if self._wide_stack(n):
                        if materialize:
                            self._materialize_stack(n)
                        continue
                    inside.add(i)
                    stack.append(i)
        needed: set = set()  # what the outputs read (a materialised stack's pieces are not)
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
        from ..passes.fusion import FusedGroup

        return FusedGroup(-1, ids, tuple(inputs), tuple(outputs), "elementwise")

    def _wide_stack(self, n) -> bool:
        """A Stack or Concat of many pieces along axis 0."""
        if n.op not in ("Stack", "Concat") or int(n.attr("axis")) % len(n.type.shape) != 0:
            return False
        src = self.graph.node(n.inputs[0])
        return src.op == "MakeTensorTuple" and len(src.inputs) > 4

    def _materialize_stack(self, n) -> None:
        """Stack or Concat along axis 0: piece k is a contiguous block of a scratch buffer."""
        pieces = self.graph.node(n.inputs[0]).inputs
        slot = self._scratch(prod(n.type.shape) * _F32)
        offset = self.static[slot][1]
        for k, p in enumerate(pieces):
            size = prod(self._shape(p))
            dst = self._new_slot(("scratch", offset), size)
            offset += size * _F32
            if p in self.loc or p in self.tmp_loc or self.graph.node(p).op == "const":
                self._emit(["copy", [self._slot_of(p), dst], size], (), (), "copy", f"stack%{n.id}[{k}]")
                self.stats["copies"] += 1
            else:
                self._copy_into(p, dst)
        self.tmp_loc[n.id] = slot

    def _kernel(self, group) -> Any:
        """The LLVM kernel of a group (its subgraph), or None if it does not lower."""
        from ..codegen import LoweringError, compile_kernel
        from ..codegen.loop_ir import out_of_bounds

        sub = group.subgraph(self.graph)
        try:
            kernel = compile_kernel(sub)
        except LoweringError:
            return None
        problem = out_of_bounds(kernel.loop)
        if problem:
            raise self._unsafe(problem)
        return kernel

    def _add_kernel(self, kernel, slots, name: str, group) -> None:
        extent = kernel.range_extent
        per_iter = max(1, max((p.size for p in kernel.loop.params), default=1) // extent)
        min_chunk = max(1, 16384 // per_iter)   # ~16k elements per thread before splitting pays
        align = 8 if per_iter == 1 else 1
        self._emit(["kernel", name, kernel.range_address, slots, [p.size for p in kernel.loop.params], extent,
                    min_chunk, align],
                   group.node_ids, group.outputs, "llvm", name)
        self.stats["llvm_kernels"] += 1

    def _copy_into(self, v: int, slot: int) -> None:
        """Write value v (a view, const or input) into `slot` with a copy kernel."""
        node = self.graph.node(v)
        if v in self.loc or node.op == "const" and not self._is_view(v):
            src = self._slot_of(v)
            self._emit(["copy", [src, slot], prod(node.type.shape)], (), (), "copy", f"copy%{v}")
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

    def _out_slot(self, v: int, transient: bool = False) -> int:
        """The buffer a step writes value v to: its planned place; for a value the plan gave
        none, scratch when it lives within the group (`transient`: a GEMM result only its
        epilogue reads), else a buffer of its own that later groups can read."""
        if v in self.loc:
            return self.loc[v]
        n = prod(self._shape(v))
        if transient:
            return self._scratch(n * _F32)
        from ..backend_ndarray import NDArray

        arr = NDArray.make((max(n, 1),), device=self.device)
        self._keep.append(arr)
        self.loc[v] = self._new_slot(("array", arr), n)
        return self.loc[v]

    # ---- groups -------------------------------------------------------------------------
    def _group(self, group) -> None:
        self.scratch_top = 0
        self.tmp_loc.clear()
        kind = group.kind
        if kind == "view":
            return  # read as index arithmetic by its consumers; returned views are copied at the end
        if kind == "extern":
            self._extern(group)
        elif kind in ("elementwise", "reduce"):
            self._working(group, group.node_ids, group.outputs)
        else:
            self._opaque(group)

    def _working(self, group, node_ids, outputs) -> None:
        g = self.graph
        ex = self._expand(node_ids, outputs)
        kernel = self._kernel(ex)
        gathers = [i for i in node_ids if g.node(i).op == "Gather"]
        if kernel is None and gathers:
            # a gather reads indices at run time: a native step into scratch, then the rest
            for i in gathers:
                a, idx = g.node(i).inputs
                slot = self._out_slot(i) if i in outputs else self._scratch(prod(self._shape(i)) * _F32)
                self._emit(["gather", [self._slot_of(a), self._slot_of(idx), slot],
                            prod(self._shape(idx)), self._shape(a)[0], prod(self._shape(a)[1:])],
                           (i,), (i,), "native", f"k{group.id}.gather")
                self.loc[i] = slot
            node_ids = tuple(i for i in node_ids if i not in gathers)
            outputs = tuple(o for o in outputs if o not in gathers)
            if not outputs:
                return
            ex = self._expand(node_ids, outputs)
            kernel = self._kernel(ex)
        if kernel is None and self._split_view_outputs(group, node_ids, outputs):
            return
        ins = [self._slot_of(i) for i in ex.inputs]
        outs = [self._out_slot(v) for v in outputs]
        if kernel is None:
            self._callback(ex, ins, outs, f"k{group.id}")
            return
        moved = self._unalias(ex, ins, outs)
        self._add_kernel(kernel, ins + outs, f"k{group.id}", ex)
        for tmp, dst, n in moved:
            self._emit(["copy", [tmp, dst], n], (), (), "copy", f"k{group.id}.unalias")

    def _place(self, slot: int):
        """A hashable name of a static slot's memory (None for the per-call io slots)."""
        where = self.static.get(slot)
        if where is None:
            return None
        return (where[0], id(where[1])) if where[0] == "array" else where

    def _split_view_outputs(self, group, node_ids, outputs) -> bool:
        """A group that does not lower because some outputs are views (another shape) of
        others (`return e, reshape(e)`): the kernel of the other outputs, then a copy kernel
        per view output reading their buffers. False when that does not apply."""
        from ..codegen.lower import VIEWS

        g = self.graph
        views = [o for o in outputs if g.node(o).op in VIEWS and g.node(o).inputs[0] in outputs]
        main = tuple(o for o in outputs if o not in views)
        if not views or not main:
            return False
        ex = self._expand(node_ids, main)
        kernel = self._kernel(ex)
        if kernel is None:
            return False
        ins = [self._slot_of(i) for i in ex.inputs]
        outs = [self._out_slot(v) for v in main]
        moved = self._unalias(ex, ins, outs)
        self._add_kernel(kernel, ins + outs, f"k{group.id}", ex)
        for tmp, dst, n in moved:
            self._emit(["copy", [tmp, dst], n], (), (), "copy", f"k{group.id}.unalias")
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
        viewed = {j for i in ex.node_ids if self._is_view(i) for j in g.node(i).inputs if j in ex.inputs}
        places = {self._place(s) for s, v in zip(ins, ex.inputs) if v in viewed} - {None}
        moved = []
        for k, (slot, v) in enumerate(zip(outs, ex.outputs)):
            if self._place(slot) in places:
                n = prod(self._shape(v))
                outs[k] = self._scratch(n * _F32)
                moved.append((outs[k], slot, n))
        return moved

    def _opaque(self, group) -> None:
        g = self.graph
        if len(group.node_ids) == 1:
            n = g.node(group.node_ids[0])
            if n.op in _NATIVE_STEPS and n.id in group.outputs:
                self._emit(_NATIVE_STEPS[n.op](self, n), (n.id,), (n.id,), "native", f"k{group.id}")
                return
        ex = self._expand(group.node_ids, group.outputs)
        self._callback(ex, [self._slot_of(i) for i in ex.inputs], [self._out_slot(v) for v in group.outputs],
                       f"k{group.id}")

    def _callback(self, group, in_slots, out_slots, label: str = "") -> None:
        sub = group.subgraph(self.graph)
        in_types = [n.type for n in sub.inputs]
        out_types = [sub.node(o).type for o in sub.outputs]
        device = self.device
        name = "+".join(sorted({n.op for n in sub.nodes if n.op != "input"}))

        def run(addresses):
            ins = [array_api.array(_view(a, t), device=device) for a, t in zip(addresses, in_types)]
            outs = run_graph(sub, ins)
            for a, t, o in zip(addresses[len(ins):], out_types, outs):
                _view(a, t)[...] = o.numpy()

        sizes = [prod(t.shape) for t in in_types + out_types]
        self._emit(["callback", run, list(in_slots) + list(out_slots), sizes, name], group.node_ids, group.outputs,
                   "interp", label or "callback")
        self._callbacks.append((name, sub))
        self.stats["callbacks"] += 1

    # ---- running ------------------------------------------------------------------------
    #: CompiledFunction may pass hyper-parameters (lr, Adam's step...) as Python floats
    takes_scalars = True

    def __call__(self, inputs: Sequence[Any]) -> list:
        from ..backend_ndarray import NDArray

        if self._out_specs is None:
            self._prepare_call()
        io = []
        keep = []
        for x, (strides, size) in zip(inputs, self._in_specs):
            if x.__class__ is float:
                view, addr = self._scalar_buffers[len(io)]
                view[...] = x
                io.append(addr)
                continue
            if not isinstance(x, NDArray):
                x = array_api.array(np.asarray(x, dtype=np.float32), device=self.device)
            elif x._offset or x._strides != strides or x._handle.size != size:
                x = x.compact()  # (returns x itself when only unit axes' strides differ)
            keep.append(x)
            io.append(x._handle.ptr())
        handles = self.program.run_alloc(io)
        device, new = self.device, NDArray.__new__
        outs = []
        for (shape, strides), handle in zip(self._out_specs, handles):
            o = new(NDArray)
            o._shape, o._strides, o._offset, o._device, o._handle = shape, strides, 0, device, handle
            outs.append(o)
        return outs

    _out_specs = None

    def _prepare_call(self) -> None:
        """Per-input (strides, size) of a compact array, per-output (shape, strides), and a
        float32 buffer for every scalar input."""
        from ..backend_ndarray import NDArray

        self._in_specs = [(NDArray.compact_strides(n.type.shape), max(prod(n.type.shape), 1))
                          for n in self.graph.inputs]
        self._out_specs = [(tuple(t.shape), NDArray.compact_strides(t.shape)) for t in self.out_types]
        self._scalar_buffers = {}
        for k, node in enumerate(self.graph.inputs):
            if node.type.shape == ():
                arr = np.zeros((), dtype=np.float32)
                self._keep.append(arr)
                self._scalar_buffers[k] = (arr, arr.ctypes.data)


#: opaque op -> its backends/cpu/program.cc step, from (executor, node)
_NATIVE_STEPS = {
    "RandomUniform": lambda ex, n: ["random", [ex._slot_of(n.inputs[0]), ex._slot_of(n.inputs[1]), ex._out_slot(n.id)],
                                    prod(n.type.shape), int(n.attr("stream"))],
    "IndexAdd": lambda ex, n: ["index_add", [ex._slot_of(n.inputs[0]), ex._slot_of(n.inputs[1]), ex._out_slot(n.id)],
                               prod(ex._shape(n.inputs[1])), n.type.shape[0], prod(n.type.shape[1:])],
}


def _view(address: int, t) -> np.ndarray:
    """A numpy float32 array over `address` (no copy)."""
    import ctypes

    n = int(prod(t.shape))
    buf = (ctypes.c_float * max(n, 1)).from_address(address)
    return np.ctypeslib.as_array(buf)[:n].reshape(t.shape)
