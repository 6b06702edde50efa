"""Emulated programs checked against the reference interpreter, value by value."""
from __future__ import annotations

from math import prod

import numpy as np

from needle.backend_selection import BACKEND, array_api
from needle.ops.registry import op_from_node
from needle.runtime.interpreter import const_array

from .program import emulate_program


def reference_values(graph, inputs) -> dict:
    """Every node's value under the reference interpreter (float32 numpy), by node id."""
    def to_backend(a):
        return a if BACKEND == "np" else array_api.array(a)

    env: dict = {}
    out: dict = {}
    for node, value in zip(graph.inputs, inputs):
        env[node.id] = to_backend(np.asarray(value, np.float32))
    with np.errstate(all="ignore"):
        for node in graph.nodes:
            if node.op == "input":
                v = env[node.id]
            elif node.op == "const":
                v = env[node.id] = const_array(node)
            else:
                v = env[node.id] = op_from_node(node.op, node.attr_dict).compute(*[env[i] for i in node.inputs])
            if not isinstance(v, tuple):  # copied now: a later kernel may reuse the array
                out[node.id] = np.array(v.numpy() if hasattr(v, "numpy") else v, np.float32)
    return out


def relative_error(a, b) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        return float("inf")
    fin = np.isfinite(b64)
    if np.any(np.isfinite(a64) != fin) or np.any(np.isnan(a64) != np.isnan(b64)):
        return float("inf")
    return float(np.linalg.norm(a64[fin] - b64[fin]) / max(np.linalg.norm(b64[fin]), 1e-30))


def check_program(program, graph, inputs, tol: float = 1e-5, checks: bool = True) -> list:
    """Emulate `program` and compare, after each group's last launch, every value the
    group writes with the reference interpreter; raise AssertionError at the first value
    off by more than `tol` (normwise relative), naming the group and value. Returns the
    outputs."""
    ref = reference_values(graph, inputs)
    last = {}
    for k, ln in enumerate(program.launches):
        last[ln.group] = k
    position = {k: g for g, k in last.items()}
    count = [0]

    def trace(ln, mem):
        k = count[0]
        count[0] += 1
        gid = position.get(k)
        if gid is None or gid < 0:
            return
        for v in program.writes.get(gid, []):
            loc = program.homes[v]
            _, data, off = mem.region(loc)
            shape = graph.node(v).type.shape
            got = data[off // 4:off // 4 + max(prod(shape), 1)][:prod(shape)].reshape(shape)
            checked[v] = got.copy()
            err = scaled_error(got, ref[v], scales.get(gid, 0.0))
            if err > tol:
                raise AssertionError(f"group k{gid}: value %{v} ({graph.node(v).op}{shape}) differs from the "
                                     f"interpreter by {err:.3g} (launch {ln.kernel.name})")

    scales = group_scales(program, graph, ref)
    checked: dict = {}
    outs = emulate_program(program, inputs, checks=checks, trace=trace)
    producer = {v: gid for gid, vs in program.writes.items() for v in vs}
    for k, (o, v) in enumerate(zip(outs, graph.outputs)):
        err = scaled_error(o, ref[v], scales.get(producer.get(v), 0.0))
        if v in checked:  # the value as its group wrote it: the output must equal it
            err = max(err, relative_error(o, checked[v]))
        if err > tol:
            raise AssertionError(f"output {k} (%{v}) differs from the interpreter by {err:.3g}")
    return outs


def _rms(x) -> float:
    x = np.asarray(x, np.float64)
    fin = x[np.isfinite(x)]
    return float(np.sqrt(np.mean(fin * fin))) if fin.size else 0.0


def group_scales(program, graph, ref) -> dict:
    """Group id -> the largest RMS of the values it reads (graph inputs and buffers)."""
    written = {v: gid for gid, vs in program.writes.items() for v in vs}
    reads: dict = {}
    for gid, vs in program.writes.items():
        reads[gid] = set()
    for n in graph.nodes:
        gid = written.get(n.id)
        if gid is None:
            continue
        for i in n.inputs:
            reads[gid].add(i)
    return {gid: max([_rms(ref[i]) for i in ins if i in ref] + [0.0]) for gid, ins in reads.items()}


def scaled_error(a, b, scale: float) -> float:
    """Normwise relative error of a against b, where the reference norm is at least
    `scale` (the RMS of the computation's inputs) per element: values that cancel to
    rounding noise (an exactly-zero gradient) are compared to the size of what they were
    computed from."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        return float("inf")
    fin = np.isfinite(b64)
    if np.any(np.isfinite(a64) != fin) or np.any(np.isnan(a64) != np.isnan(b64)):
        return float("inf")
    infinite = np.isinf(b64)   # NaN positions match (above); infinities must match in sign
    if np.any(a64[infinite] != b64[infinite]):
        return float("inf")
    floor = scale * np.sqrt(max(fin.sum(), 1))
    return float(np.linalg.norm(a64[fin] - b64[fin]) / max(np.linalg.norm(b64[fin]), floor, 1e-30))
