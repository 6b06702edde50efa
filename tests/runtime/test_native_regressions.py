"""Regressions of the native executor (NEEDLE_EXECUTOR=native), each compared against eager
mode on random inputs: the values a step returns and the gradients it leaves in `.grad`.
Inputs are fresh on every run: NEEDLE_TEST_SEED=<n> replays a run (the seed is in every
failure message)."""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import pytest

pytest.importorskip("llvmlite")

import needle as ndl  # noqa: E402
import needle.nn as nn  # noqa: E402
from needle.backend_selection import BACKEND  # noqa: E402

if BACKEND != "nd":
    pytest.skip("the native executor runs on the nd backend", allow_module_level=True)

from needle.ir import parse_graph  # noqa: E402
from needle.passes import pipeline  # noqa: E402
from needle.runtime.native import NativeExecutor, UnsafeProgram  # noqa: E402
from tests import numerics  # noqa: E402

SEED = int(os.environ.get("NEEDLE_TEST_SEED") or np.random.SeedSequence().entropy % 2**32)
RNG = np.random.default_rng(SEED)


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def run_step(step: Callable, params: Sequence[nn.Parameter], arrays: Sequence[np.ndarray]) -> list:
    """step's outputs and then its parameters' gradients, as float32 numpy arrays."""
    for p in params:
        p.grad = None
    out = step(*[ndl.Tensor(a, requires_grad=True) for a in arrays])
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return [numerics.as_float32(o) for o in outs] + [numerics.as_float32(p.grad) for p in params]


def check_step(monkeypatch, step: Callable, params: Sequence[nn.Parameter], *shapes: tuple,
               tol: float = 1e-5) -> None:
    """`step` (which may call loss.backward()) compiled on the native executor against eager
    mode: outputs and parameter gradients, on two sets of fresh random inputs."""
    monkeypatch.setenv("NEEDLE_EXECUTOR", "native")
    compiled = ndl.compile(step)
    for _ in range(2):
        arrays = [randn(*s) for s in shapes]
        want = run_step(step, params, arrays)
        got = run_step(compiled, params, arrays)
        assert compiled.stats["executor"] == "native", compiled.stats
        assert len(got) == len(want)
        for k, (a, e) in enumerate(zip(got, want)):
            numerics.assert_close(a, e, tol, f"result {k} (NEEDLE_TEST_SEED={SEED})")


def param(*shape: int) -> nn.Parameter:
    return nn.Parameter(randn(*shape))


# ---- in-place reuse in a kernel with several outputs ---------------------------------------
def test_concat_of_a_product_twice_parameter_gradients(monkeypatch):
    """c.grad's kernel also writes b's gradient pieces; one of them took the slot of a @ b,
    which the kernel still read after writing it."""
    b, c = param(4, 6), param(3, 6)

    def step(a):
        loss = ndl.summation(ndl.concat([(a @ b) * c, (a @ b) * c], 1) ** 2)
        loss.backward()
        return loss

    check_step(monkeypatch, step, [b, c], (3, 4))


def test_logsumexp_of_concat_of_quotients_gradients(monkeypatch):
    b, c = param(4, 6), param(3, 6)

    def step(a):
        z = ndl.concat([(a @ b) / c, (a @ b) / (c * c + 1.0), ndl.exp(a @ b)], 1)
        loss = ndl.summation(ndl.log(ndl.exp(ndl.logsumexp(z, axes=(1,))) + 1.0))
        loss.backward()
        return loss

    check_step(monkeypatch, step, [b, c], (3, 4), tol=1e-4)


# ---- size-0 axes ----------------------------------------------------------------------------
EMPTY_CASES = {
    "relu_of_0_row_product": ((0, 4), (4, 3), lambda x, w: ndl.relu(x @ w)),
    "product_over_0_columns": ((3, 0), (0, 5), lambda x, w: ndl.relu(x @ w + 1.0)),
    "sum_over_0_axis": ((3, 0), (3, 1), lambda x, w: ndl.summation(x * 2.0, axes=(1,)) + w.reshape((3,))),
    "concat_with_0_piece": ((3, 0), (3, 4), lambda x, w: ndl.exp(ndl.concat([x, w, x], 1)) * 2.0),
    "reshape_and_broadcast_of_0": ((0, 4), (1, 4), lambda x, w: (x.reshape((2, 0, 2)) + 1.0).reshape((0, 4)) + w),
    "slice_and_sum_of_0": ((0, 6), (6, 2), lambda x, w: ndl.summation(ndl.tanh(x @ w)[:, 1:], axes=(0,))),
}


@pytest.mark.parametrize("case", list(EMPTY_CASES))
def test_size_0_axes(monkeypatch, case):
    x_shape, w_shape, f = EMPTY_CASES[case]
    w = param(*w_shape)

    def step(x):
        y = f(x, w)
        loss = ndl.summation(y * y)
        loss.backward()
        return y, loss

    check_step(monkeypatch, step, [w], x_shape)


def native_executor(text: str) -> tuple:
    """(graph, NativeExecutor) of IR text after the kernel pipeline."""
    g = parse_graph(text)
    g, plan = pipeline.run(g, "native", names=pipeline.KERNEL_PASSES)
    return g, NativeExecutor(g, plan.fusion, plan.schedule, plan.memory)


def run_ir(text: str, *shapes: tuple) -> None:
    """IR text on the native executor against the reference interpreter."""
    g, ex = native_executor(text)
    arrays = [randn(*s) for s in shapes]
    got = ex([ndl.backend_ndarray.array(a) for a in arrays])
    want = numerics.reference(g, arrays)
    assert len(got) == len(want)
    for k, (a, e) in enumerate(zip(got, want)):
        numerics.assert_close(a, e, 1e-6, f"output {k} (NEEDLE_TEST_SEED={SEED})")


@pytest.mark.parametrize("shape, body", [
    # an UnSlice of nothing into one row: its index along that axis is the constant 0
    ((0, 4), """%1 = UnSlice(%0) {slices=((0, 0, 1), (0, 4, 1)), shape=(1, 4)} : f32[1,4] cpu"""),
    # a Concat of one row after no rows: its index along that axis is the constant 0
    ((1, 4), """%2 = GetItem(%0) {slices=((0, 0, 1), (0, 4, 1))} : f32[0,4] cpu
  %3 = MakeTensorTuple(%2, %0) : (f32[0,4] cpu, f32[1,4] cpu)
  %1 = Concat(%3) {axis=0} : f32[1,4] cpu"""),
], ids=["unslice_into_one_row", "concat_after_no_rows"])
def test_size_0_pieces_ir(shape, body):
    run_ir(f"""graph @k {{
  %0 = input() {{name="x", role="arg"}} : f32[{shape[0]},{shape[1]}] cpu
  {body}
  %4 = Exp(%1) : f32[1,4] cpu
  return %4
}}""", shape)


# ---- long chains -----------------------------------------------------------------------------
def test_5000_op_elementwise_chain(monkeypatch):
    """Lowering walked each node's operands recursively (RecursionError from ~200 ops on);
    the fusion pass split a chain this long into kernels of at most MAX_GROUP_NODES."""
    w = param(64)

    def step(x):
        y = x * w
        for _ in range(2500):
            y = y * 1.0001 + 0.0001
        loss = ndl.summation(y)
        loss.backward()
        return y

    check_step(monkeypatch, step, [w], (64,), tol=1e-4)


def test_chain_reusing_its_operand(monkeypatch):
    """Each value uses the previous one twice: as a tree its C text (the kernel's cache key)
    doubled at every op (16 ops took minutes); shared sub-expressions are temporaries."""
    w = param(32)

    def step(x):
        y = ndl.tanh(x * w)
        for _ in range(40):
            y = y * y * 0.5 + y * 0.5
        loss = ndl.summation(y)
        loss.backward()
        return y

    check_step(monkeypatch, step, [w], (32,), tol=1e-4)


# ---- gradients that read no graph value ------------------------------------------------------
@pytest.mark.parametrize("shape, f", [
    ((2000,), lambda w: ndl.summation(w[2:50])),
    ((300, 8), lambda w: ndl.summation(w[2:50, :] * 3.0)),
    ((40, 60), lambda w: ndl.summation(ndl.ops.Flip((0,))(w[::3, 5:]) * 2.0)),
], ids=["slice_1d", "slice_rows", "strided_slice"])
def test_constant_gradient_over_1024_elements(monkeypatch, shape, f):
    """The gradient of a linear function was computed eagerly while differentiating; over
    1024 elements it became a const input that no call bound ('Program.run: expects 5
    addresses, got 4'). The weights are positive so that the loss, a float32 sum of hundreds
    of terms, has no cancellation that summation order could magnify past the tolerance."""
    w = nn.Parameter(np.abs(randn(*shape)))

    def step(x):
        loss = f(w) + ndl.summation(x)
        loss.backward()
        return loss

    check_step(monkeypatch, step, [w], (3,))


# ---- slices past the end; the program builder's bounds checks --------------------------------
@pytest.mark.parametrize("slices", [((2, 15, 1), (0, 100, 2)), ((-3, 20, 2), (-50, -1, 1)), ((12, 20, 1), (0, 6, 1))],
                         ids=["stop_past_end", "negative_bounds", "start_past_end"])
def test_getitem_bounds_clamp_as_eager(monkeypatch, slices):
    """GetItem's bounds read as Python slices (eager clamped them; compiled code read past
    the input, a SIGSEGV on large ones, or returned zeros)."""
    w = param(10, 6)

    def step(x):
        y = ndl.ops.GetItem(slices)(w * x)
        loss = ndl.summation(y * y)
        loss.backward()
        return y

    check_step(monkeypatch, step, [w], (10, 6))


def test_unslice_bounds_clamp_as_eager(monkeypatch):
    w = param(8, 6)

    def step(x):
        y = ndl.ops.UnSlice(((2, 100, 1), (-6, 60, 1)), (10, 6))(w * x)
        loss = ndl.summation(ndl.exp(y))
        loss.backward()
        return y

    check_step(monkeypatch, step, [w], (8, 6))


def test_program_builder_refuses_an_out_of_range_slice():
    """Hand-edited IR (GetItem keeps its slices when parsed) with a slice past its input:
    the kernel's loads are checked against its buffers before the program is built."""
    with pytest.raises(UnsafeProgram, match=r"load of in0 at index 8\.\.59, outside its 40 elements"):
        native_executor("""graph @k {
  %0 = input() {name="x", role="arg"} : f32[10,4] cpu
  %1 = GetItem(%0) {slices=((2, 15, 1), (0, 4, 1))} : f32[13,4] cpu
  %2 = Exp(%1) : f32[13,4] cpu
  return %2
}""")


def test_program_steps_are_checked_against_their_buffers():
    """Every step's extent (from its parameters) must fit the sizes of its slots."""
    from needle.backend_ndarray import ndarray_backend_cpu as backend

    p = backend.Program(4, [12, 6], [8])     # inputs of 12 and 6 floats, an output of 8
    p.set_slot(3, 0, 5)
    p.add_copy([0, 2], 8)
    with pytest.raises(ValueError, match="copy would touch 8 floats of slot 3"):
        p.add_copy([0, 3], 8)
    # out (2x4) = a (2x6, lda 6) @ b (6x4): b needs 24 floats, slot 1 holds 6
    with pytest.raises(ValueError, match="gemm would touch 24 floats of slot 1"):
        p.add_gemm([0, 1, 2], [1, 2, 4, 6, 0, 0, 6, 4, 0, 0, 8, 0], 0, [], [], 0, [])
    # the same product from 4 rows of b on: 6 rows at offset 4 need 40 floats
    with pytest.raises(ValueError, match="gemm would touch 40 floats of slot 1"):
        p.add_gemm([0, 1, 2], [1, 2, 4, 6, 0, 0, 6, 4, 0, 0, 8, 1], 0, [], [], 0, [0, 16])
    with pytest.raises(ValueError, match="gather would touch 12 floats of slot 3"):
        p.add_gather([0, 1, 3], 6, 3, 2)   # 6 rows of 2 into a 5-float slot
    with pytest.raises(ValueError, match="kernel k0 would touch 9 floats of slot 2"):
        p.add_kernel("k0", 0, [0, 2], [12, 9], 1, 1, 1)
    with pytest.raises(ValueError, match="a kernel larger than the padded image"):
        p.add_conv(0, [0, 1, 2, 3], [1, 2, 2, 1, 5, 5, 1, 1, 0])   # a 5x5 kernel over a 2x2 image


def test_gemm_epilogue_reading_a_wide_stack(monkeypatch):
    """a @ b + stack(6 pieces): the stack is copied piece by piece into scratch by steps
    after the GEMM's; an epilogue fused into the GEMM step read that scratch before the
    copies ran (a kernel after the copies instead)."""
    def step(a, b, *xs):
        return a @ b + ndl.stack(xs, axis=0)

    check_step(monkeypatch, step, [], (6, 5), (5, 7), *[(7,)] * 6)
