"""The native executor: a compiled graph as one native program, run by one call per step.

The program's steps are built in codegen (`needle.codegen.cpu.build_cpu_program`: LLVM
kernels, BLAS GEMMs with fused epilogues, convs, native RNG/gather/scatter steps, copies and
interpreter callbacks over buffer slots, from the fusion plan, the schedule and the memory
plan). This module loads and runs them: it allocates the arena, the scratch region, const
arrays and the buffers of values the plan gave no place, JIT-compiles each kernel's loop IR,
and adds every step to one `ndarray_backend_cpu.Program` (backends/cpu/program.cc), which
holds them in schedule order.

Python runs once per call: it makes the output arrays and passes every input and output
address to `Program.run`.

Nothing runs outside its buffers, whatever the graph says: the builder bounds every kernel's
loads and stores over its loops against its buffers' sizes, and the Program checks each
step's extent (from its parameters: a GEMM's operands with their leading dimensions and batch
offsets, a conv's images...) against the sizes of the slots it touches as the step is added.
Either failure is an `UnsafeProgram` error, before any run.
"""
from __future__ import annotations

from math import prod
from typing import Any, Optional, Sequence

import numpy as np

from ..backend_selection import array_api
from ..codegen.cpu.program import NativeUnsupported, UnsafeProgram, build_cpu_program
from ..codegen.cpu.steps import (CallbackStep, CollectiveStartStep, CollectiveWaitStep, ConvStep, CopyStep,
                                 GatherStep, GemmStep, HostStep, IndexAddStep, KernelStep, RandomStep)
from ..codegen.jit import compile_loop_kernel
from ..host_memory import float_view
from ..ir.graph import Graph
from . import profile as _profile
from .interpreter import const_array, run_graph

__all__ = ["NativeExecutor", "NativeUnsupported", "UnsafeProgram"]

#: bytes of a float32 value
_F32 = 4


class NativeExecutor:
    """Runs `graph` as one native program (see the module docstring)."""

    def __init__(self, graph: Graph, fusion_plan, schedule, memory_plan):
        from ..backend_ndarray import NDArray, cpu
        from ..backend_ndarray import ndarray_backend_cpu as backend
        from ..backend_selection import BACKEND

        if BACKEND != "nd":
            raise NativeUnsupported("the native executor needs NEEDLE_BACKEND=nd")
        self.graph = graph
        self.device = cpu()
        built = build_cpu_program(graph, fusion_plan, schedule, memory_plan, profile=_profile.enabled())
        self.built = built
        self.steps = built.steps
        self.stats = built.stats
        self.out_types = [graph.node(v).type for v in graph.outputs]
        self._keep: list = []           # arrays and kernels the program points into
        self.in_flight: dict = {}       # collectives started and not yet waited for: handle -> (op, started)
        self.arena = NDArray.make((max(built.arena_bytes // _F32, 1),), device=self.device)
        self.scratch = NDArray.make((max(built.scratch_bytes // _F32, 1),), device=self.device)
        self.program = backend.Program(built.n_slots, [prod(n.type.shape) for n in graph.inputs],
                                       [prod(t.shape) for t in self.out_types])
        try:  # every step is checked against the sizes of the buffers it reads and writes
            for slot, where in built.slots.items():
                self.program.set_slot(slot, self._address(where, built.slot_sizes[slot]), built.slot_sizes[slot])
            for step in built.steps:
                _ADD[type(step)](self, step)
        except ValueError as e:
            raise UnsafeProgram(f"internal error building @{graph.name}'s native program: {e}") from None
        self.stats["steps"] = len(self.program)
        self._profiles = [_step_profile(s) for s in built.sources] if built.sources is not None else []
        if _profile.enabled():
            self.program.set_profile(True)
            _profile.register(self, graph.name)

    def _address(self, where, size: int) -> int:
        """The address of a static slot's memory (allocating a const's or a buffer's array)."""
        if where.space == "arena":
            return self.arena._handle.ptr() + where.offset
        if where.space == "scratch":
            return self.scratch._handle.ptr() + where.offset
        from ..backend_ndarray import NDArray

        if where.space == "const":
            arr = const_array(self.graph.node(where.value)).compact()
        else:
            arr = NDArray.make((max(size, 1),), device=self.device)
        self._keep.append(arr)
        return arr._handle.ptr() + arr._offset * _F32

    def _kernel_address(self, loop) -> int:
        kernel = compile_loop_kernel(loop)
        self._keep.append(kernel)
        return kernel.range_address

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

    # ---- running ------------------------------------------------------------------------
    #: CompiledFunction may pass hyper-parameters (lr, Adam's step...) as Python floats
    takes_scalars = True

    def __call__(self, inputs: Sequence[Any]) -> list:
        from ..backend_ndarray import NDArray

        if self._out_specs is None:
            self._prepare_call()
        io, seen = self._io, self._seen
        keep = []
        for k, x in enumerate(inputs):
            if x is seen[k]:   # the array of the last call (a weight): its address is in io
                continue
            if x.__class__ is float:
                view, io[k] = self._scalar_buffers[k]
                view[...] = x
                continue
            strides, size = self._in_specs[k]
            if not isinstance(x, NDArray):
                x = array_api.array(np.asarray(x, dtype=np.float32), device=self.device)
                seen[k] = None
            elif x._offset or x._strides != strides or x._handle.size != size:
                seen[k] = None   # a copy for this call only: the next call checks again
                x = x.compact()  # (returns x itself when only unit axes' strides differ)
            else:
                seen[k] = x   # (NDArrays do not change: the same one is at the same address)
            keep.append(x)
            io[k] = x._handle.ptr()
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
        # per input, the address passed last and the NDArray it was (held, so that its address
        # stays its own): a weight passed again is not checked again
        self._io = [0] * len(self._in_specs)
        self._seen = [None] * len(self._in_specs)
        self._out_specs = [(tuple(t.shape), NDArray.compact_strides(t.shape)) for t in self.out_types]
        self._scalar_buffers = {}
        for k, node in enumerate(self.graph.inputs):
            if node.type.shape == ():
                arr = np.zeros((), dtype=np.float32)
                self._keep.append(arr)
                self._scalar_buffers[k] = (arr, arr.ctypes.data)


def _step_profile(source) -> _profile.StepProfile:
    """A step's profile label and estimates, from what it computes."""
    prof = _profile.step_profile(source.group, source.subgraph, None, where=source.where)
    prof.label = source.label + prof.label[prof.label.index(" "):]
    prof.flops, prof.bytes = int(prof.flops * source.share), int(prof.bytes * source.share)
    return prof


def _add_gemm(ex: NativeExecutor, s: GemmStep) -> None:
    e = s.epilogue
    if e is None:
        ex.program.add_gemm(list(s.slots), list(s.params), 0, [], [], 0, list(s.offsets))
    else:
        ex.program.add_gemm(list(s.slots), list(s.params), ex._kernel_address(e.loop), list(e.slots), list(e.sizes),
                            e.extent, list(s.offsets))


def _add_conv(ex: NativeExecutor, s: ConvStep) -> None:
    e = s.epilogue
    if e is None:
        ex.program.add_conv(s.kind, list(s.slots), list(s.params), 0, [], [], 0)
    else:
        ex.program.add_conv(s.kind, list(s.slots), list(s.params), ex._kernel_address(e.loop), list(e.slots),
                            list(e.sizes), e.extent)


def _add_callback(ex: NativeExecutor, s: CallbackStep) -> None:
    sub, device = s.subgraph, ex.device
    in_types = [n.type for n in sub.inputs]
    out_types = [sub.node(o).type for o in sub.outputs]

    def run(addresses):
        ins = [array_api.array(float_view(a, t.shape), device=device) for a, t in zip(addresses, in_types)]
        outs = run_graph(sub, ins)
        for a, t, o in zip(addresses[len(ins):], out_types, outs):
            float_view(a, t.shape)[...] = o.numpy()

    ex.program.add_callback(run, list(s.slots), list(s.sizes), s.name)


def _add_host(ex: NativeExecutor, s: HostStep) -> None:
    n_in = len(s.shapes) - 1

    def run(addresses):
        views = [float_view(a, shape) for a, shape in zip(addresses, s.shapes)]
        s.op.host_compute(views[n_in:], views[:n_in])

    ex.program.add_callback(run, list(s.slots), [prod(shape) for shape in s.shapes], s.name)


def _add_collective_start(ex: NativeExecutor, s: CollectiveStartStep) -> None:
    def run(addresses):
        ex.in_flight[s.handle] = (s.op, s.op.start([float_view(a, (n,)) for a, n in zip(addresses, s.sizes)]))

    ex.program.add_callback(run, list(s.slots), list(s.sizes), s.name)


def _add_collective_wait(ex: NativeExecutor, s: CollectiveWaitStep) -> None:
    def run(addresses):
        op, started = ex.in_flight.pop(s.handle)
        op.finish(started)

    ex.program.add_callback(run, [], [], s.name)


#: step record -> how it is added to the Program
_ADD = {
    KernelStep: lambda ex, s: ex.program.add_kernel(s.name, ex._kernel_address(s.loop), list(s.slots), list(s.sizes),
                                                    s.extent, s.min_chunk, s.align),
    GemmStep: _add_gemm,
    ConvStep: _add_conv,
    RandomStep: lambda ex, s: ex.program.add_random(list(s.slots), s.size, s.stream),
    GatherStep: lambda ex, s: ex.program.add_gather(list(s.slots), s.n_indices, s.n_rows, s.row_size),
    IndexAddStep: lambda ex, s: ex.program.add_index_add(list(s.slots), s.n_indices, s.n_rows, s.row_size),
    CopyStep: lambda ex, s: ex.program.add_copy(list(s.slots), s.n, s.rows, s.dst_ld),
    CallbackStep: _add_callback,
    HostStep: _add_host,
    CollectiveStartStep: _add_collective_start,
    CollectiveWaitStep: _add_collective_wait,
}
