"""The kernel executor: runs a graph kernel by kernel, following its fusion plan.

Each fused group of kind elementwise or reduce becomes one LLVM kernel
(`needle.codegen.compile_kernel` on the group's subgraph); GEMM/conv groups, views,
tuple and opaque ops run on the reference interpreter, group by group, in the schedule's
order. Values cross between the two as numpy arrays (LLVM kernels) and backend arrays
(interpreter), converted only where a value changes sides.

This is the stepping stone to the native executor (one entry point per graph, arena
memory from the memory plan): the kernels are the same, Python still drives the order.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np

from ..backend_selection import BACKEND, array_api
from ..ir.graph import Graph
from ..passes.schedule import plan_groups
from . import profile as _profile
from .interpreter import const_array, run_graph
from ..backend_ndarray import NDArray
from ..codegen import LoweringError, compile_kernel


def _to_numpy(x):
    if isinstance(x, tuple):
        return tuple(_to_numpy(v) for v in x)
    return x if isinstance(x, np.ndarray) else x.numpy()


def _to_backend(x, device):
    if isinstance(x, tuple):
        return tuple(_to_backend(v, device) for v in x)
    if BACKEND == "np" or not isinstance(x, np.ndarray):
        return x
    return array_api.array(x, device=device)


class _Step:
    __slots__ = ("group", "inputs", "outputs", "kernel", "subgraph")

    def __init__(self, group, subgraph, kernel):
        self.group = group
        self.inputs = group.inputs
        self.outputs = group.outputs
        self.kernel = kernel
        self.subgraph = subgraph


class KernelExecutor:
    """Runs `graph` by the groups of `fusion_plan` in `schedule` order."""

    def __init__(self, graph: Graph, fusion_plan, schedule):
        self.graph = graph
        groups = {g.id: g for g in plan_groups(fusion_plan)}
        self.steps: list[_Step] = []
        self.llvm_kernels = 0
        for gid in schedule.order:
            for part in _split_extern(groups[gid], graph):
                sub = part.subgraph(graph)
                kernel = None
                if part.kind in ("elementwise", "reduce") and _float32_only(sub):
                    try:
                        kernel = compile_kernel(sub)
                        self.llvm_kernels += 1
                    except LoweringError:
                        kernel = None
                self.steps.append(_Step(part, sub, kernel))
        self.consts = [n for n in graph.nodes if n.op == "const"]
        # NEEDLE_PROFILE=1 (read now): per-step counters, in step order (needle.runtime.profile)
        self.profile: list | None = None
        if _profile.enabled():
            self.profile = [_profile.step_profile(s.group, s.subgraph, s.kernel,
                                                  epilogue=k > 0 and self.steps[k - 1].group.id == s.group.id)
                            for k, s in enumerate(self.steps)]
            _profile.register(self, graph.name)

    def __call__(self, inputs: Sequence[Any]) -> list:
        env: dict[int, Any] = {}
        device = None
        for node, value in zip(self.graph.inputs, inputs):
            env[node.id] = value
            device = device or getattr(value, "device", None)
        for node in self.consts:
            env[node.id] = const_array(node)
        prof = self.profile
        for k, step in enumerate(self.steps):
            args = [env[i] for i in step.inputs]
            if prof is not None:
                start = time.perf_counter()
            if step.kernel is not None:
                outs = _launch(step.kernel, args, device)
            else:
                outs = run_graph(step.subgraph, [_to_backend(a, device) for a in args])
            if prof is not None:
                counter = prof[k]
                counter.seconds += time.perf_counter() - start
                counter.calls += 1
            for i, value in zip(step.outputs, outs):
                env[i] = value
        return [_to_backend(env[i], device) for i in self.graph.outputs]


def _launch(kernel, args, device) -> list:
    """Run an LLVM kernel on backend arrays: NDArray buffers are passed by address (no
    copies); numpy arrays (NEEDLE_BACKEND=np, or values that came from numpy) go through
    the kernel's numpy wrapper."""
    if BACKEND == "np" or any(isinstance(a, (np.ndarray, tuple)) for a in args):
        return kernel(*[_to_numpy(a) for a in args])

    ins = [a.compact() for a in args]
    for a, p in zip(ins, kernel.inputs):
        if a.size != p.size:
            raise ValueError(f"kernel input {p.name}: expected shape {p.shape}, got {a.shape}")
    outs = [NDArray.make(p.shape, device=device) for p in kernel.outputs]
    kernel.launch([x._handle.ptr() for x in ins + outs])
    return outs


def _split_extern(group, graph: Graph) -> list:
    """A GEMM/conv group with an epilogue as two steps: the extern op alone (library GEMM
    on the interpreter), then its epilogue as an elementwise group (an LLVM kernel)."""
    if group.kind != "extern" or group.anchor is None or len(group.node_ids) == 1:
        return [group]
    rest = tuple(i for i in group.node_ids if i != group.anchor)
    inside = set(rest)
    inputs: list[int] = []
    for i in rest:
        for j in graph.node(i).inputs:
            if j not in inside and j not in inputs:
                inputs.append(j)
    head = dataclasses.replace(group, node_ids=(group.anchor,), outputs=(group.anchor,))
    tail = dataclasses.replace(group, kind="elementwise", anchor=None, node_ids=rest, inputs=tuple(inputs),
                               outputs=tuple(o for o in group.outputs if o != group.anchor))
    return [head, tail] if tail.outputs else [head]


def _float32_only(graph: Graph) -> bool:
    for n in graph.nodes:
        types = n.type if isinstance(n.type, tuple) else (n.type,)
        if any(t.dtype != "float32" for t in types):
            return False
    return True
