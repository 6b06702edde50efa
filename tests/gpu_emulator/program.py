"""A `CudaProgram` run launch by launch on one emulated device memory."""
from __future__ import annotations

from math import prod

import numpy as np

from .kernel import Buffer, EmulationError, KernelRun


class Memory:
    """The device memory of one program run: arena, inputs, outputs and constants."""

    def __init__(self, program, inputs):
        self.program = program
        self.arena = np.full(program.arena_bytes // 4 + 1, np.nan, np.float32)
        self.inputs = [np.ascontiguousarray(np.asarray(x, np.float32)).reshape(-1).copy() for x in inputs]
        self.outputs = [np.full(max(prod(shape), 1), np.nan, np.float32) for shape in program.outputs]
        self.consts = {k: np.asarray(v, np.float32).reshape(-1) for k, v in program.consts.items()}

    def region(self, loc):
        if loc.space == "arena":
            return ("arena",), self.arena, loc.offset
        if loc.space == "in":
            return ("in", loc.index), self.inputs[loc.index], loc.offset
        if loc.space == "out":
            return ("out", loc.index), self.outputs[loc.index], loc.offset
        raise EmulationError(f"unknown location {loc!r}")


def emulate_program(program, inputs, checks: bool = True, trace=None) -> list:
    """Run every launch of a `CudaProgram` in order on the CPU; returns the outputs as
    float32 numpy arrays of the graph's output shapes. `trace(launch, memory)` is called
    after each launch when given."""
    if len(inputs) != len(program.inputs):
        raise ValueError(f"program {program.name} takes {len(program.inputs)} inputs, got {len(inputs)}")
    for x, shape in zip(inputs, program.inputs):
        if tuple(np.shape(x)) != tuple(shape):
            raise ValueError(f"input of shape {np.shape(x)}, expected {shape}")
    mem = Memory(program, inputs)
    for ln in program.launches:
        k = ln.kernel
        bufs = {}
        spans = []
        for loc, p in zip(ln.args, k.params):
            region, data, off = mem.region(loc)
            if off % 4:
                raise EmulationError(f"{k.name}: argument {p.name} at byte offset {off} (not float aligned)")
            start = off // 4
            if start + p.size > data.size:
                raise EmulationError(f"{k.name}: argument {p.name} [{start}, {start + p.size}) exceeds its "
                                     f"region {region} of {data.size} floats")
            bufs[p.name] = Buffer(p.name, data[start:start + p.size], region, start, p.size, p.role)
            spans.append((p.name, region, start, start + p.size, p.role))
        for name, region, lo, hi, role in spans:  # arguments overlapping a written one
            for name2, region2, lo2, hi2, role2 in spans:
                if name2 != name and region2 == region and lo < hi2 and lo2 < hi and role2 != "in":
                    bufs[name].track_loads = True
        KernelRun(k, bufs, mem.consts, checks).run()
        if trace is not None:
            trace(ln, mem)
    return [o[:prod(shape)].reshape(shape).copy() for o, shape in zip(mem.outputs, program.outputs)]
