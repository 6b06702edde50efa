"""The compiled CUDA executor: a whole graph as one native entry point on the GPU.

    runner = CudaGraphExecutor(graph, plan)   # plan: the pipeline's KernelPlan (None: planned here)
    outputs = runner(inputs)          # cuda NDArrays in (other arrays are copied over), out

At construction the graph becomes a CUDA program (`needle.codegen.cuda.build_program` of the
`KernelPlan`: every fusion group as generated kernels, GEMM/conv as tiled-GEMM kernels, arena
offsets from the memory plan; or `program=`, one already built), rendered as one translation
unit, compiled by nvcc for this GPU's compute capability into a shared library (cached on
disk by source text, architecture and nvcc version) and loaded. The arena (the memory plan's bytes plus scratch for values internal to a
group) is one device allocation owned by the executor. A call makes the output arrays,
passes every input/output pointer to the library's entry `needle_graph_<name>`, which launches
every kernel in schedule order on the legacy default stream (the stream the cuda NDArray
backend uses), then waits for the GPU (`synchronize=False` leaves the work queued: the
eager backend's later kernels and copies are ordered after it on the same stream).
No Python runs per kernel.

With `NEEDLE_PROFILE=1` when the executor is built, every call goes through the library's
profiled entry (a CUDA event after each launch; the call waits for the GPU) and `.profile`
holds one `StepProfile` per launch (its group's ops and source line, the group's FLOPs on
its first launch, the bytes of the launch's arguments), printed at exit and by
`CompiledFunction.profile()` like the CPU executors' (the first call is left out once there
are more).
"""
from __future__ import annotations

from math import prod
from typing import Any, Optional, Sequence

import numpy as np

from ..codegen.cuda.program import CudaProgram, build_program
from ..passes.pipeline import KernelPlan, plan_kernels
from . import profile as _profile


class CudaGraphExecutor:
    """Runs `graph` on the GPU (see the module docstring): the program of `plan` (None: the
    cuda pipeline's analyses of `graph`), or `program`, a `CudaProgram` already built for this
    graph. `arch` overrides the detected `sm_XY`."""

    def __init__(self, graph, plan: Optional[KernelPlan] = None, *, program: Optional[CudaProgram] = None,
                 arch: Optional[str] = None, synchronize: bool = True):
        from ..backend_ndarray import cuda
        from ..codegen.cuda.build import GraphLibrary, compile_library, compute_capability

        self.graph = graph
        self.device = cuda()
        if not self.device.enabled():
            raise RuntimeError("CudaGraphExecutor needs the cuda device (ndarray_backend_cuda and a GPU)")
        if plan is None and (program is None or _profile.enabled()):
            plan = plan_kernels(graph, "cuda")
        self.program = program or build_program(graph, plan)
        self.source = self.program.source()
        self.arch = arch or compute_capability()
        self.library = GraphLibrary(compile_library(self.source, self.arch), self.program.symbol)
        self.synchronize = synchronize
        floats = max(self.library.arena_bytes // 4 + 1, 1)
        self._arena = self.device.Array(floats)   # device memory owned by this executor
        self._arena_ptr = int(self._arena.ptr())
        self.output_shapes = [tuple(s) for s in self.program.outputs]
        self.input_shapes = [tuple(s) for s in self.program.inputs]
        self.steps = self.program.launches
        self.stats = {"launches": len(self.program.launches), "arena_bytes": self.program.arena_bytes,
                      "calls": 0}
        self.profile: Optional[list] = None
        if _profile.enabled():
            self.profile = _launch_profiles(graph, plan, self.program)
            _profile.register(self, graph.name)

    def _on_device(self, x):
        from ..backend_ndarray import NDArray

        if isinstance(x, NDArray):
            if x.device != self.device:
                x = x.to(self.device)
            return x.compact()
        return NDArray(np.ascontiguousarray(np.asarray(x, dtype=np.float32)), device=self.device)

    @staticmethod
    def _ptr(a) -> int:
        return int(a._handle.ptr()) + 4 * int(a._offset)

    def __call__(self, inputs: Sequence[Any]) -> list:
        from ..backend_ndarray import NDArray

        if len(inputs) != len(self.input_shapes):
            raise ValueError(f"graph @{self.graph.name} takes {len(self.input_shapes)} inputs, got {len(inputs)}")
        ins = []
        for x, shape in zip(inputs, self.input_shapes):
            a = self._on_device(x)
            if tuple(a.shape) != shape:
                raise ValueError(f"input of shape {tuple(a.shape)}, expected {shape}")
            ins.append(a)
        outs = [NDArray.make(shape, device=self.device) for shape in self.output_shapes]
        times = [] if self.profile is not None else None
        self.library.run([self._ptr(a) for a in ins], [self._ptr(o) if prod(o.shape) else 0 for o in outs],
                         self._arena_ptr, 0, self.synchronize, times)
        self.stats["calls"] += 1
        if times is not None:
            for p, t in zip(self.profile, times):
                if self.stats["calls"] == 2:  # the first call (cold caches, lazy loading) is left out
                    p.calls, p.seconds = 0, 0.0
                p.calls += 1
                p.seconds += t
        return outs


def _launch_profiles(graph, plan: KernelPlan, program: CudaProgram) -> list:
    """A StepProfile per launch: the group's label with the kernel's name and schedule; the
    group's FLOP estimate on its first launch; the bytes of the launch's arguments."""
    groups = {g.id: g for g in plan.fusion.groups}
    seen: set = set()
    out = []
    for ln in program.launches:
        k = ln.kernel
        nbytes = 4 * sum(p.size for p in k.params)
        schedule = k.note.split(":")[0]
        g = groups.get(ln.group)
        if g is None:  # the output copies
            out.append(_profile.StepProfile(f"{k.name} [{schedule}] output copy", 0, nbytes))
            continue
        step = _profile.step_profile(g, g.subgraph(graph), None, head=f"{k.name} [{schedule}]")
        out.append(_profile.StepProfile(step.label, 0 if ln.group in seen else step.flops, nbytes))
        seen.add(ln.group)
    return out


__all__ = ["CudaGraphExecutor"]
