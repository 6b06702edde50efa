"""The CUDA program builder accepts every function of the scalar vocabulary (issue 13).

Its check of the loop IR once listed the unary functions by hand and refused `sin`/`cos`; the
split path then re-lowered the same group until RecursionError. These graphs must lower to
one kernel each and match the reference interpreter in the GPU emulator."""
from __future__ import annotations

import numpy as np
import pytest

import needle as ndl
from needle.codegen.cuda import split
from needle.codegen.cuda.program import CudaCodegenError, build_program
from needle.ops import OPS, elementwise_op, scalar as S
from tests.codegen.test_cuda_codegen import emulate, graph_of, hows, rnd


@pytest.fixture(autouse=True)
def _interpreted(monkeypatch):
    monkeypatch.setenv("NEEDLE_EXECUTOR", "interp")


@pytest.fixture
def wave():
    """A custom op written with `S.sin`, registered for one test."""
    @elementwise_op("wave_test")
    def wave(x, y):
        return S.sin(x) * S.cos(y) + S.minimum(x, y)

    yield wave
    OPS.pop("wave_test", None)  # other tests list the registered ops


def built_in(a, b):
    return ndl.sin(a) + ndl.cos(b) * ndl.minimum(a, b) - ndl.sqrt(ndl.abs(a) + 1.0)


@pytest.mark.parametrize("shape", [(7,), (5, 33)])
def test_built_in_vocabulary_ops_lower_to_one_kernel(shape):
    prog, _ = emulate(built_in, rnd(*shape, scale=3.0), rnd(*shape, scale=3.0))
    assert hows(prog) == ["lowered"]
    assert "sinf(" in prog.source() and "cosf(" in prog.source()


def test_custom_op_with_sin_lowers_and_fuses(wave):
    prog, _ = emulate(lambda a, b: wave(a, b) * 2.0 + ndl.sin(b).sum(axes=(1,)).reshape((4, 1)),
                      rnd(4, 9, scale=3.0), rnd(4, 9, scale=3.0))
    assert "sinf(" in prog.source()
    assert set(hows(prog)) == {"lowered"}


def test_a_function_the_builder_does_not_know_is_an_error_not_a_recursion(monkeypatch):
    g = graph_of(lambda a: ndl.sin(a) * 2.0, np.ones((3, 4), np.float32))
    monkeypatch.setattr(split, "UNARY_OPS", tuple(op for op in split.UNARY_OPS if op != "sin"))
    with pytest.raises(CudaCodegenError, match="cannot lower"):
        build_program(g)
