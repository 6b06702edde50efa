"""Random programs (needle.testing.fuzz's generator) through the CUDA code generator: each
program is traced, its final graph built as a CUDA program (`build_program`), every kernel
emulated on the CPU (tests/gpu_emulator) and every value each fusion group writes compared
with the reference interpreter.

A value may differ by 1e-4 (normwise, relative to the size of what it was computed from), or
by ten times what a relative 1e-6 perturbation of the inputs moves it in the interpreter,
whichever is larger: a gradient that cancels to rounding noise (a LayerNorm over two
features) has no digits to agree on. Graphs the generator makes that the CUDA path cannot
emit (`CudaCodegenError`: it runs them on the interpreter) are counted, not compared.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import needle as ndl
from needle.codegen.cuda import CudaCodegenError, build_program
from needle.testing.fuzz.generate import generate
from needle.testing.fuzz.run import _draw, _Harness
from tests.gpu_emulator import check_program, reference_values
from tests.gpu_emulator.check import relative_error

SEEDS = range(0, 400)
CHUNK = 50
#: programs of the seeds above the CUDA path cannot emit (each a reason): at most these
UNSUPPORTED_AT_MOST = 3


@pytest.fixture(autouse=True)
def _interpreted(monkeypatch):
    monkeypatch.setenv("NEEDLE_EXECUTOR", "interp")   # only the traced graph matters here


def traced(seed: int):
    """(final graph, its input values) of the fuzz program of `seed`, or None when the program
    raises (eager and compiled raise alike: tests/compile's fuzz covers that)."""
    h = _Harness(generate(seed), seed)
    arrays = _draw(h.inputs, np.random.default_rng(seed))
    args = [ndl.Tensor(a, dtype="float32", requires_grad=grad) for a, (_, _, grad) in zip(arrays, h.inputs.values())]
    step = ndl.compile(h.ns["program"])
    try:
        step(*args)
    except Exception:  # noqa: BLE001
        return None
    entry = step._cache[step._last_key]
    values, _ = step._inputs(entry, tuple(args), {})
    return entry.graph, [np.asarray(v.numpy() if hasattr(v, "numpy") else v, np.float32) for v in values]


def noise(graph, inputs) -> float:
    """The largest relative change of any value of `graph` in the interpreter when the inputs
    are perturbed by a relative 1e-6 (three draws)."""
    ref = reference_values(graph, inputs)
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(3):
        moved = reference_values(graph, [a if np.all(a == np.round(a)) else   # ids stay ids
                                         a * (1 + 1e-6 * rng.standard_normal(a.shape)).astype(np.float32)
                                         for a in inputs])
        for v, a in ref.items():
            if isinstance(a, np.ndarray) and a.dtype == np.float32 and v in moved:
                err = relative_error(moved[v], a)
                if np.isfinite(err):
                    worst = max(worst, err)
    return worst


@pytest.mark.parametrize("first", range(SEEDS.start, SEEDS.stop, CHUNK))
def test_random_programs_emulated(first):
    unsupported, checked = [], 0
    for seed in range(first, first + CHUNK):
        got = traced(seed)
        if got is None:
            continue
        graph, inputs = got
        try:
            prog = build_program(graph)
        except CudaCodegenError as e:
            unsupported.append(f"seed {seed}: {e}")
            continue
        try:
            check_program(prog, graph, inputs, tol=1e-4)
        except AssertionError as e:
            tol = 10 * noise(graph, inputs)
            if tol <= 1e-4:
                raise AssertionError(f"seed {seed}: {e}\n{generate(seed)}") from None
            check_program(prog, graph, inputs, tol=tol)
        checked += 1
    assert len(unsupported) <= UNSUPPORTED_AT_MOST, "\n".join(unsupported)
    assert checked >= CHUNK * 3 // 4, f"only {checked} of {CHUNK} programs reached the CUDA path"
