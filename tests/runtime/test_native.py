"""The native executor (needle.runtime.native) end to end: each case is compiled twice, with
NEEDLE_EXECUTOR=native and with the reference interpreter (or built from IR text and run
against `run_graph`), and compared on fresh random inputs (1e-5 normwise relative error
per output). Every case runs without interpreter callbacks, but for the known gaps marked
strict xfail. Inputs are fresh on every run: NEEDLE_TEST_SEED=<n> replays a run (the seed is
in every failure message)."""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("llvmlite")

import needle as ndl  # noqa: E402
import needle.nn as nn  # noqa: E402
from needle.backend_selection import BACKEND  # noqa: E402

if BACKEND != "nd":
    pytest.skip("the native executor runs on the nd backend", allow_module_level=True)

from needle.ir import parse_graph  # noqa: E402
from needle.ops.random import COMPILED_RNG  # noqa: E402
from needle.passes import pipeline  # noqa: E402
from needle.runtime import profile as _profile  # noqa: E402
from needle.runtime.interpreter import run_graph  # noqa: E402
from needle.runtime.native import NativeExecutor  # noqa: E402
from tests import numerics  # noqa: E402

SEED = int(os.environ.get("NEEDLE_TEST_SEED") or np.random.SeedSequence().entropy % 2**32)
RNG = np.random.default_rng(SEED)  # fresh inputs on every run


# ---- helpers ------------------------------------------------------------------------------
def assert_close(actual, expected, tol=1e-5, what="", floor=1e-30):
    numerics.assert_close(actual, expected, tol, f"{what} (NEEDLE_TEST_SEED={SEED})", floor)


def randn(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def T(a, requires_grad=False):
    return ndl.Tensor(np.asarray(a, dtype=np.float32), requires_grad=requires_grad)


def native_stats(compiled):
    assert compiled.stats["executor"] == "native", compiled.stats
    return compiled.stats["native"]


class Compiled:
    """`ndl.compile(fn)` whose calls run with NEEDLE_EXECUTOR=kind (read when a signature
    is compiled), so that native and interpreter versions can be called in any order."""

    def __init__(self, monkeypatch, kind, fn):
        self.monkeypatch, self.kind, self.compiled = monkeypatch, kind, ndl.compile(fn)

    def __call__(self, *args):
        self.monkeypatch.setenv("NEEDLE_EXECUTOR", self.kind)
        return self.compiled(*args)

    def __getattr__(self, name):
        return getattr(self.compiled, name)


def compile_with(monkeypatch, kind, fn):
    return Compiled(monkeypatch, kind, fn)


def run_both(monkeypatch, fn, *arrays, tol=1e-5, allow_callbacks=False):
    """fn compiled natively and on the interpreter, both called on the same inputs
    (twice: the second call runs the cached program); outputs compared; native stats."""
    fn_n = compile_with(monkeypatch, "native", fn)
    fn_n(*[T(a) for a in arrays])  # compile now, under this env
    fn_i = compile_with(monkeypatch, "interp", fn)
    fn_i(*[T(a) for a in arrays])
    for _ in range(2):
        fresh = [randn(*np.shape(a)) for a in arrays]
        out_n = fn_n(*[T(a) for a in fresh])
        out_i = fn_i(*[T(a) for a in fresh])
        outs_n = out_n if isinstance(out_n, (tuple, list)) else [out_n]
        outs_i = out_i if isinstance(out_i, (tuple, list)) else [out_i]
        assert len(outs_n) == len(outs_i)
        for k, (a, e) in enumerate(zip(outs_n, outs_i)):
            assert_close(a, e, tol, f"output {k}")
    stats = native_stats(fn_n)
    if not allow_callbacks:
        assert stats["callbacks"] == 0, stats
    return stats, fn_n


def executor_for(text):
    g = parse_graph(text)
    g2, plan = pipeline.run(g, "native", names=pipeline.KERNEL_PASSES)
    ex = NativeExecutor(g2, plan.fusion, plan.schedule, plan.memory)
    return g2, ex


def run_ir(text, arrays, tol=1e-5, exact=False):
    g, ex = executor_for(text)
    nd = [ndl.backend_ndarray.array(np.asarray(a, dtype=np.float32)) for a in arrays]
    got = ex(nd)
    with np.errstate(all="ignore"):
        want = run_graph(g, [ndl.backend_ndarray.array(np.asarray(a, dtype=np.float32)) for a in arrays])
    assert len(got) == len(want)
    for k, (a, e) in enumerate(zip(got, want)):
        if exact:
            np.testing.assert_array_equal(numerics.as_float32(a), numerics.as_float32(e), err_msg=f"output {k} (NEEDLE_TEST_SEED={SEED})")
        else:
            assert_close(a, e, tol, f"output {k}")
    assert ex.stats["callbacks"] == 0, ex.stats
    return ex, got


# ---- matmul -------------------------------------------------------------------------------
def test_matmul_plain(monkeypatch):
    stats, _ = run_both(monkeypatch, lambda x, w: x @ w, randn(9, 13), randn(13, 7))
    assert stats["gemms"] == 1 and stats["copies"] == 0


def test_matmul_transposed_operand_in_place(monkeypatch):
    stats, _ = run_both(monkeypatch, lambda x, w: x @ ndl.ops.transpose(w), randn(9, 13), randn(7, 13))
    assert stats["gemms"] == 1 and stats["copies"] == 0  # the transpose is read in place
    stats, _ = run_both(monkeypatch, lambda x, y: ndl.ops.transpose(x) @ y, randn(13, 9), randn(13, 5))
    assert stats["gemms"] == 1 and stats["copies"] == 0
    stats, _ = run_both(monkeypatch, lambda x, y: ndl.ops.transpose(x) @ ndl.ops.transpose(y),
                        randn(13, 9), randn(5, 13))
    assert stats["gemms"] == 1 and stats["copies"] == 0


@pytest.mark.parametrize("sa,sb", [((3, 5, 11), (11, 7)), ((3, 5, 11), (3, 11, 7)), ((1, 5, 11), (3, 11, 7)),
                                   ((3, 5, 11), (1, 11, 7)), ((5, 11), (3, 11, 7)), ((2, 3, 5, 11), (11, 7)),
                                   ((2, 3, 5, 11), (2, 3, 11, 7))])
def test_matmul_batched(monkeypatch, sa, sb):
    stats, _ = run_both(monkeypatch, lambda a, b: a @ b, randn(*sa), randn(*sb))
    assert stats["gemms"] == 1


def test_matmul_batched_transposed(monkeypatch):
    stats, _ = run_both(monkeypatch, lambda a, b: a @ ndl.ops.transpose(b), randn(3, 5, 11), randn(3, 7, 11))
    assert stats["gemms"] == 1 and stats["copies"] == 0


@pytest.mark.parametrize("sa,sb", [((3, 1, 5, 11), (1, 2, 11, 7)), ((3, 5, 11), (2, 1, 11, 7)),
                                   ((2, 3, 5, 11), (3, 11, 7)), ((2, 1, 5, 11), (2, 3, 11, 7))])
def test_matmul_partially_broadcast_batches(monkeypatch, sa, sb):
    """Batch axes that broadcast partly (neither operand is all or none of the batch)."""
    stats, _ = run_both(monkeypatch, lambda a, b: a @ b, randn(*sa), randn(*sb))
    assert stats["gemms"] == 1


def test_matmul_of_permuted_view(monkeypatch):
    """An operand that is a permute of a 3-D tensor (not of its last two axes) is materialised."""
    stats, _ = run_both(monkeypatch, lambda x, w: ndl.ops.permute(x, (1, 0, 2)) @ w, randn(5, 3, 11), randn(11, 7))
    assert stats["gemms"] == 1 and stats["copies"] >= 1
    stats, _ = run_both(monkeypatch, lambda x, w: x @ ndl.ops.permute(w, (2, 0, 1)), randn(3, 5, 11),
                        randn(11, 7, 3))
    assert stats["gemms"] == 1 and stats["copies"] >= 1


def test_matmul_of_sliced_view(monkeypatch):
    stats, _ = run_both(monkeypatch, lambda x, w: x[1:10:2, 1:12] @ w[:11, ::2], randn(11, 13), randn(13, 9))
    assert stats["gemms"] == 1 and stats["copies"] >= 1


def test_matmul_of_reshaped_and_flipped(monkeypatch):
    f = lambda x, w: ndl.ops.reshape(x, (15, 7)) @ ndl.ops.flip(w, (0,))  # noqa: E731
    stats, _ = run_both(monkeypatch, f, randn(3, 5, 7), randn(7, 9))
    assert stats["gemms"] == 1


def test_matmul_chain_with_views(monkeypatch):
    def f(x, w1, w2):
        h = ndl.ops.tanh(x @ w1)
        return ndl.ops.transpose(h) @ (x @ w2), h @ ndl.ops.transpose(w1)
    run_both(monkeypatch, f, randn(9, 5), randn(5, 7), randn(5, 3))


# ---- GEMM epilogues -----------------------------------------------------------------------
def test_linear_bias_relu_fused_epilogue(monkeypatch):
    def f(x, w, b):
        return ndl.ops.relu(x @ w + ndl.ops.broadcast_to(ndl.ops.reshape(b, (1, 11)), (33, 11)))
    stats, _ = run_both(monkeypatch, f, randn(33, 17), randn(17, 11), randn(11))
    assert stats["gemms"] == 1 and stats["fused_epilogues"] >= 1


def test_linear_module_relu_fused(monkeypatch):
    np.random.seed(RNG.integers(2**31))
    lin = nn.Linear(17, 13)
    stats, _ = run_both(monkeypatch, lambda x: ndl.ops.relu(lin(x)), randn(21, 17))
    assert stats["fused_epilogues"] >= 1


def test_epilogue_reads_gemm_output_transposed(monkeypatch):
    def square(x, w):
        c = x @ w
        return ndl.ops.relu(c + ndl.ops.transpose(c))
    stats, _ = run_both(monkeypatch, square, randn(9, 5), randn(5, 9))
    assert stats["gemms"] == 1 and stats["fused_epilogues"] == 0

    def transposed_out(x, w, b):
        c = x @ w
        return ndl.ops.transpose(c) * 2.0 + ndl.ops.broadcast_to(ndl.ops.reshape(b, (7, 1)), (7, 9))
    stats, _ = run_both(monkeypatch, transposed_out, randn(9, 5), randn(5, 7), randn(7))
    assert stats["gemms"] == 1 and stats["fused_epilogues"] == 0


def test_epilogue_with_gemm_output_also_returned(monkeypatch):
    def f(x, w):
        c = x @ w
        return c, ndl.ops.exp(ndl.ops.tanh(c)) * 3.0
    run_both(monkeypatch, f, randn(9, 5), randn(5, 7))


def test_epilogue_with_row_reduction(monkeypatch):
    def f(x, w):
        return ndl.ops.logsumexp(x @ w, axes=(1,))
    run_both(monkeypatch, f, randn(9, 5), randn(5, 7))


# ---- sizes that split across the thread pool ---------------------------------------------
@pytest.fixture
def three_threads():
    from needle.threads import get_num_threads, set_num_threads

    before = get_num_threads()
    set_num_threads(3)
    yield
    set_num_threads(before)


def test_large_gemm_epilogue_row_blocks(monkeypatch, three_threads):
    """A GEMM large enough for row blocks run in parallel, each followed by its epilogue."""
    def f(x, w, b):
        return ndl.ops.relu(x @ w + ndl.ops.broadcast_to(ndl.ops.reshape(b, (1, 257)), (515, 257)))
    stats, _ = run_both(monkeypatch, f, randn(515, 129), randn(129, 257), randn(257))
    assert stats["fused_epilogues"] == 1


def relu_linear_numpy(x, w, b, ta, tb):
    x, w = x.astype(np.float64), w.astype(np.float64)
    return np.maximum((x.T if ta else x) @ (w.T if tb else w) + b, 0.0)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m,n,k", [(100, 100, 784), (97, 50, 300), (13, 17, 9), (50, 100, 100), (5, 8, 1),
                                   (31, 7, 257), (100, 10, 100), (11, 128, 64),
                                   (1, 1043, 259), (3, 17, 6), (8, 2100, 33), (7, 300, 1), (49, 700, 300),
                                   (40, 260, 70)])
def test_small_gemm_shapes_and_transposes(monkeypatch, three_threads, m, n, k, ta, tb):
    """Products with few columns run needle's small_gemm (register tiles of 6 rows by 16
    columns, K in passes of 256), products of at most 8 rows its skinny path (B streamed
    row by row, columns in passes of 1024): row and column edges, operands read transposed in place,
    split across threads (by columns for fewer rows than columns), with a fused bias + ReLU
    epilogue; checked against numpy (the interpreter's matmul runs the same kernel)."""
    def f(x, w, b):
        x = ndl.ops.transpose(x) if ta else x
        w = ndl.ops.transpose(w) if tb else w
        return ndl.ops.relu(x @ w + ndl.ops.broadcast_to(ndl.ops.reshape(b, (1, n)), (m, n)))
    monkeypatch.setenv("NEEDLE_EXECUTOR", "native")
    compiled = ndl.compile(f)
    for _ in range(2):
        x, w, b = randn(*((k, m) if ta else (m, k))), randn(*((n, k) if tb else (k, n))), randn(n)
        assert_close(compiled(T(x), T(w), T(b)), relu_linear_numpy(x, w, b, ta, tb))
    assert native_stats(compiled)["gemms"] == 1


def test_gemm_without_blas(monkeypatch):
    """With BLAS off, every product (large, transposed, batched) runs small_gemm."""
    mod = ndl.cpu().mod
    monkeypatch.setenv("NEEDLE_EXECUTOR", "native")
    mod.set_blas_enabled(False)
    try:
        x, y = randn(300, 129), randn(257, 300)
        got = ndl.compile(lambda x, y: ndl.ops.transpose(x) @ ndl.ops.transpose(y))(T(x), T(y))
        assert_close(got, x.T.astype(np.float64) @ y.T)
        a, b = randn(3, 40, 70), randn(3, 70, 33)
        assert_close(ndl.compile(lambda a, b: a @ b)(T(a), T(b)), a.astype(np.float64) @ b)
    finally:
        mod.set_blas_enabled(True)


def test_large_kernels_split_across_threads(monkeypatch, three_threads):
    def f(x, y):
        e = ndl.ops.exp(x - ndl.ops.broadcast_to(ndl.ops.reshape(ndl.ops.max(x, axes=(1,)), (517, 1)), x.shape))
        soft = e / ndl.ops.broadcast_to(ndl.ops.reshape(ndl.ops.summation(e, axes=(1,)), (517, 1)), x.shape)
        cols = ndl.ops.summation(ndl.ops.tanh(x) * y, axes=(0,))
        flat = ndl.ops.transpose(x) * 2.0 + ndl.ops.transpose(y)
        return soft, cols, flat, ndl.ops.summation(x * x)
    run_both(monkeypatch, f, randn(517, 1031), randn(517, 1031))


def test_large_batched_matmul_and_conv(monkeypatch, three_threads):
    run_both(monkeypatch, lambda a, b: ndl.ops.tanh(a @ b), randn(7, 129, 67), randn(7, 67, 131))

    def conv(x, w):
        return ndl.ops.relu(ndl.ops.conv(x, w, stride=1, padding=1))
    run_both(monkeypatch, conv, randn(2, 33, 31, 8), randn(3, 3, 8, 16))

    run_both(monkeypatch, conv, randn(2, 9, 11, 32), randn(3, 3, 32, 8))  # wide channels: one GEMM per tap

    def conv2(x, w):
        return ndl.ops.conv(x, w, stride=2, padding=1)
    run_both(monkeypatch, conv2, randn(2, 33, 31, 8), randn(3, 3, 8, 16))


# ---- conv ---------------------------------------------------------------------------------
@pytest.mark.parametrize("k,stride,padding", [(1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1), (3, 1, 0),
                                              (3, 2, 0), (1, 1, 1)])
def test_conv_bias_relu(monkeypatch, k, stride, padding):
    def f(x, w, b):
        out = ndl.ops.conv(x, w, stride=stride, padding=padding)
        return ndl.ops.relu(out + ndl.ops.broadcast_to(ndl.ops.reshape(b, (1, 1, 1, 5)), out.shape))
    stats, _ = run_both(monkeypatch, f, randn(2, 9, 7, 3), randn(k, k, 3, 5), randn(5))
    assert stats["convs"] == 1


@pytest.mark.parametrize("n,h,w,ci,k,co,stride,padding", [
    (1, 9, 7, 3, 3, 5, 2, 1), (2, 9, 7, 3, 3, 5, 1, 0), (3, 6, 5, 17, 1, 19, 1, 0), (1, 40, 37, 3, 3, 21, 1, 1),
    (4, 23, 29, 5, 3, 33, 2, 0), (2, 30, 30, 16, 1, 70, 1, 0), (1, 28, 28, 64, 3, 40, 1, 1),
    (1, 9, 8, 16, 3, 200, 1, 1), (2, 9, 9, 8, 3, 197, 2, 0), (2, 30, 52, 5, 5, 24, 1, 2), (1, 20, 50, 8, 3, 16, 1, 0),
    (1, 15, 101, 3, 3, 64, 2, 0), (2, 9, 100, 5, 3, 24, 2, 1), (1, 8, 150, 4, 5, 16, 3, 2),
    (1, 14, 14, 64, 3, 200, 1, 1), (2, 7, 9, 96, 3, 256, 2, 1), (1, 8, 8, 70, 3, 193, 1, 0),
    (1, 7, 7, 300, 3, 192, 1, 1), (1, 6, 6, 64, 5, 200, 1, 2), (2, 30, 30, 64, 3, 72, 2, 1),
    (3, 20, 20, 128, 3, 64, 1, 1)])
def test_conv_epilogue_fused(monkeypatch, three_threads, n, h, w, ci, k, co, stride, padding):
    """A conv's bias + ReLU runs inside the conv step, on each block of output pixels (a 1x1
    stride-1 conv: a GEMM's row blocks): one or several blocks split across threads (in
    equal blocks, as many chunks as a multiple of the threads; few pixels and many channels:
    one GEMM split by channels; with 64 channels a kernel tap or more, every GEMM reads the
    patches in place from the zero-padded input or the input itself, in passes of at most
    256 channels; rows of 48 pixels or more and a small weight: one GEMM per kernel row and
    output row, over the zero-padded input or the input itself, at strides 1 to 3),
    channels not a multiple of the vector width, stride 2, padding 0 to 2, batch 1 and more."""
    def f(x, wt, b):
        out = ndl.ops.conv(x, wt, stride=stride, padding=padding)
        return ndl.ops.relu(out + ndl.ops.broadcast_to(ndl.ops.reshape(b, (1, 1, 1, co)), out.shape))
    stats, _ = run_both(monkeypatch, f, randn(n, h, w, ci), randn(k, k, ci, co, scale=0.3), randn(co))
    assert stats["convs"] == 1 and stats["fused_epilogues"] == 1, stats


@pytest.mark.parametrize("k,stride,padding", [(1, 1, 0), (3, 1, 1), (3, 2, 0)])
def test_conv_epilogue_in_place_with_residual(monkeypatch, three_threads, k, stride, padding):
    """A conv whose fused epilogue adds a residual (whose buffer the output may reuse: the conv
    then must not write its result there) and one whose output is all the epilogue writes
    (the conv writes into it and the epilogue rewrites it in place), chained."""
    def f(x, w1, w2, r):
        r = ndl.ops.conv(r, w2[1:2, 1:2], stride=1, padding=0)  # a buffer that dies in the next group
        a = ndl.ops.relu(ndl.ops.conv(x, w1, stride=stride, padding=padding) + r)
        return ndl.ops.relu(ndl.ops.conv(a, w2, stride=1, padding=1)) * 0.5 + a
    x = randn(2, 21, 19, 6)
    ho, wo = (21 + 2 * padding - k) // stride + 1, (19 + 2 * padding - k) // stride + 1
    stats, _ = run_both(monkeypatch, f, x, randn(k, k, 6, 10, scale=0.3), randn(3, 3, 10, 10, scale=0.2),
                        randn(2, ho, wo, 10))
    assert stats["convs"] == 3 and stats["fused_epilogues"] == 2, stats


@pytest.mark.parametrize("n,h,w", [(1, 7, 5), (2, 30, 31)])
def test_channel_concat_operand_copied_by_rows(monkeypatch, three_threads, n, h, w):
    """A fire module: two convs' outputs concatenated along channels (odd widths) and read
    by a 1x1 conv: with no more output channels than input ones, one GEMM per piece against
    its rows of the weight, summed in C (bias + ReLU fused into the last), no copy; with more,
    a GEMM operand materialised by one row copy per piece. The slices of a max pool read the
    concat many times: materialised too. A stack along an inner axis read by a MatMul."""
    def fire(x, w1, w2, w3, b3):
        a = ndl.ops.relu(ndl.ops.conv(x, w1, stride=1, padding=0))
        b = ndl.ops.relu(ndl.ops.conv(x, w2, stride=1, padding=1))
        y = ndl.ops.conv(ndl.ops.concat([a, b], axis=3), w3, stride=1, padding=0)
        return ndl.ops.relu(y + ndl.ops.broadcast_to(b3, y.shape))
    for co, copies in ((11, 0), (16, 0), (17, 2)):
        stats, _ = run_both(monkeypatch, fire, randn(n, h, w, 5), randn(1, 1, 5, 7), randn(3, 3, 5, 9),
                            randn(1, 1, 16, co), randn(co))
        assert stats["convs"] == 3 and stats["copies"] == copies and stats["fused_epilogues"] == 3, stats

    def pooled(x, w1, w2):  # a 2x1 max pool (stride 2) of the concat: two slices read it
        cat = ndl.ops.concat([ndl.ops.relu(ndl.ops.conv(x, w1, stride=1, padding=0)),
                              ndl.ops.conv(x, w2, stride=1, padding=1)], axis=3)
        rows = (h // 2) * 2
        even = ndl.ops.get_item(cat, (slice(None), slice(0, rows, 2)))
        odd = ndl.ops.get_item(cat, (slice(None), slice(1, rows, 2)))
        return -ndl.ops.minimum(-even, -odd)
    stats, _ = run_both(monkeypatch, pooled, randn(n, h, w, 5), randn(1, 1, 5, 7), randn(3, 3, 5, 9))
    assert stats["convs"] == 2 and stats["copies"] == 2, stats

    def stacked(x, y, m):
        return ndl.ops.stack([ndl.ops.tanh(x), y * 2.0], axis=1).reshape((n * 3, 2 * h)) @ m
    stats, _ = run_both(monkeypatch, stacked, randn(n * 3, h), randn(n * 3, h), randn(2 * h, 5))
    assert stats["copies"] == 2, stats

    def stacked_channels(x, y, w):  # a stack along the channel axis: one GEMM over its copy
        return ndl.ops.conv(ndl.ops.stack([ndl.ops.relu(x), ndl.ops.relu(y)], axis=3), w, stride=1, padding=0)
    stats, _ = run_both(monkeypatch, stacked_channels, randn(n, h, w), randn(n, h, w), randn(1, 1, 2, 2))
    assert stats["convs"] == 1, stats


@pytest.mark.parametrize("n,h,w,ci,kh,kw,co,stride,padding", [
    (1, 5, 9, 2, 1, 3, 3, 1, 1), (3, 9, 5, 4, 3, 1, 2, 1, 0), (2, 11, 9, 3, 5, 5, 4, 1, 2),
    (2, 8, 6, 3, 2, 2, 5, 1, 0), (2, 9, 11, 3, 5, 3, 4, 2, 2), (1, 7, 7, 1, 7, 7, 3, 1, 0),
    (2, 7, 9, 3, 3, 3, 4, 3, 1)])
def test_conv_shapes(monkeypatch, n, h, w, ci, kh, kw, co, stride, padding):
    """Non-square kernels, kernels as large as the input, even kernels, stride 3."""
    def f(x, wt):
        return ndl.ops.conv(x, wt, stride=stride, padding=padding) * 0.5
    stats, _ = run_both(monkeypatch, f, randn(n, h, w, ci), randn(kh, kw, ci, co))
    assert stats["convs"] == 1


def test_conv_of_views(monkeypatch):
    """NCHW input permuted to NHWC (a view, materialised) and a flipped kernel."""
    def f(x, wt):
        return ndl.ops.conv(ndl.ops.permute(x, (0, 2, 3, 1)), ndl.ops.flip(wt, (0, 1)), stride=1, padding=1)
    stats, _ = run_both(monkeypatch, f, randn(2, 3, 9, 7), randn(3, 3, 3, 5))
    assert stats["convs"] == 1


@pytest.mark.parametrize("k,stride,padding", [(3, 2, 1), (3, 1, 1), (1, 1, 0), (3, 3, 0), (1, 2, 1), (5, 1, 2)])
def test_conv_backward(monkeypatch, k, stride, padding):
    def f(x, w, b):
        out = ndl.ops.conv(x, w, stride=stride, padding=padding)
        y = ndl.ops.relu(out + ndl.ops.broadcast_to(ndl.ops.reshape(b, (1, 1, 1, 4)), out.shape))
        loss = ndl.ops.summation(y * y)
        loss.backward()
        return loss, x.grad, w.grad, b.grad

    fns = {}
    for kind in ("native", "interp"):
        fns[kind] = compile_with(monkeypatch, kind, f)
        fns[kind](T(randn(2, 7, 9, 3), True), T(randn(k, k, 3, 4), True), T(randn(4), True))  # compile now
    monkeypatch.delenv("NEEDLE_EXECUTOR")
    for _ in range(2):
        xs, ws, bs = randn(2, 7, 9, 3), randn(k, k, 3, 4), randn(4)
        res = {}
        for kind, fn in fns.items():
            x, w, b = T(xs, True), T(ws, True), T(bs, True)
            res[kind] = fn(x, w, b)
        assert len(res["native"]) == 4
        for k, (a, e) in enumerate(zip(res["native"], res["interp"])):
            assert_close(a, e, 1e-5, f"value {k}")
    stats = native_stats(fns["native"])
    assert stats["callbacks"] == 0 and stats["convs"] >= 2, stats


def test_conv_module_training_step(monkeypatch):
    def build():
        np.random.seed(3)
        model = nn.Sequential(nn.Conv(3, 4, 3, stride=1), nn.ReLU(), nn.Conv(4, 2, 3, stride=2))
        return model, ndl.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def stepper(model, opt):
        def step(x):
            opt.reset_grad()
            loss = ndl.ops.summation(model(x) ** 2) / 10.0
            loss.backward()
            opt.step()
            return loss
        return step

    ma, oa = build()
    mb, ob = build()
    sa = compile_with(monkeypatch, "native", stepper(ma, oa))
    sb = compile_with(monkeypatch, "interp", stepper(mb, ob))
    for _ in range(3):
        x = randn(2, 3, 7, 9)
        assert_close(sa(T(x)), sb(T(x)), 1e-5, "loss")
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        assert_close(pa, pb, 1e-5, "parameter")
    assert native_stats(sa)["callbacks"] == 0


# ---- gather / index_add -------------------------------------------------------------------
def test_embedding_lookup_and_backward(monkeypatch):
    def build():
        np.random.seed(5)
        return nn.Embedding(11, 7), nn.Linear(7, 3)

    def stepper(emb, lin):
        opt = ndl.optim.SGD(emb.parameters() + lin.parameters(), lr=0.1)

        def step(ids):
            opt.reset_grad()
            h = emb(ids)                                   # (5, 3, 7)
            out = lin(ndl.ops.reshape(h, (15, 7)))
            loss = ndl.ops.summation(out * out)
            loss.backward()
            opt.step()
            return loss, h
        return step

    ea, la = build()
    eb, lb = build()
    sa = compile_with(monkeypatch, "native", stepper(ea, la))
    sb = compile_with(monkeypatch, "interp", stepper(eb, lb))
    for _ in range(3):
        ids = RNG.integers(0, 11, size=(5, 3)).astype(np.float32)
        ids[0, 0] = ids[1, 1] = 4  # repeated ids accumulate in the backward scatter-add
        for k, (a, e) in enumerate(zip(sa(T(ids)), sb(T(ids)))):
            assert_close(a, e, 1e-5, f"output {k}")
    assert_close(ea.weight, eb.weight, 1e-5, "embedding weight")
    assert_close(la.weight, lb.weight, 1e-5, "linear weight")
    stats = native_stats(sa)
    assert stats["callbacks"] == 0, stats


GATHER_IR = """graph @g {
  %0 = input() {name="table", role="arg"} : f32[9,5] cpu
  %1 = input() {name="ids", role="arg"} : f32[4,3] cpu
  %2 = input() {name="v", role="arg"} : f32[4,3,5] cpu
  %3 = Gather(%0, %1) : f32[4,3,5] cpu
  %4 = MulScalar(%3) {scalar=2.0} : f32[4,3,5] cpu
  %5 = IndexAdd(%2, %1) {num_rows=9} : f32[9,5] cpu
  %6 = EWiseAdd(%5, %0) : f32[9,5] cpu
  return %4, %6, %3
}
"""


def test_gather_index_add_ir():
    ids = RNG.integers(0, 9, size=(4, 3)).astype(np.float32)
    ids[0, :] = 8
    ex, _ = run_ir(GATHER_IR, [randn(9, 5), ids, randn(4, 3, 5)])
    assert ex.stats["callbacks"] == 0


@pytest.mark.parametrize("bad,row", [(9.0, 8), (100.0, 8), (-1.0, 0), (2.5, 2), (np.nan, 0)])
def test_gather_clamps_bad_ids(bad, row):
    """A bad id reads (and index_add writes) a row clamped into the table, never out of
    bounds; a compiled function's id check reports the error after the step."""
    _, ex = executor_for(GATHER_IR)
    ids = RNG.integers(0, 9, size=(4, 3)).astype(np.float32)
    ids[2, 1] = bad
    table, values = randn(9, 5), randn(4, 3, 5)
    gathered = ex([ndl.backend_ndarray.array(a) for a in (table, ids, values)])[2].numpy()
    np.testing.assert_array_equal(gathered[2, 1], table[row])


def test_embedding_out_of_range_raises_the_id_check(monkeypatch):
    np.random.seed(5)
    emb = nn.Embedding(6, 4)
    fn = compile_with(monkeypatch, "native", lambda ids: emb(ids) * 2.0)
    fn(T(np.array([[0, 5], [1, 2]])))
    with pytest.raises(ValueError, match=r"Gather: indices must be integers in \[0, 6\) \(at .*test_native.py"):
        fn(T(np.array([[0, 6], [1, 2]])))


# ---- RandomUniform ------------------------------------------------------------------------
RANDOM_IR = """graph @r {
  %0 = input() {name="counter", role="hyper"} : f32[] cpu
  %1 = input() {name="base", role="hyper"} : f32[] cpu
  %2 = input() {name="x", role="arg"} : f32[7,9] cpu
  %3 = RandomUniform(%0, %1) {shape=(7, 9), stream=0} : f32[7,9] cpu
  %4 = RandomUniform(%0, %1) {shape=(3, 5, 11), stream=1} : f32[3,5,11] cpu
  %5 = RandomUniform(%0, %1) {shape=(7, 9), stream=7} : f32[7,9] cpu
  %6 = Compare(%3) {cmp="le", scalar=0.5} : f32[7,9] cpu
  %7 = EWiseMul(%2, %6) : f32[7,9] cpu
  return %3, %4, %5, %7
}
"""


@pytest.mark.parametrize("counter,base", [(0, 0), (1, 0), (17, 3), (12345, 987654), (2**20, 42)])
def test_random_uniform_bit_exact(counter, base):
    ex, got = run_ir(RANDOM_IR, [np.float32(counter), np.float32(base), randn(7, 9)], exact=True)
    u = numerics.as_float32(got[0])
    assert (u >= 0).all() and (u < 1).all() and len(np.unique(u)) > 50
    assert not np.array_equal(numerics.as_float32(got[0]), numerics.as_float32(got[2]))  # streams differ


def test_dropout_masks_match_interpreter(monkeypatch):
    drop = nn.Dropout(0.5)
    f = lambda x: drop(x) * 1.0  # noqa: E731
    fn_n = compile_with(monkeypatch, "native", f)
    fn_i = compile_with(monkeypatch, "interp", f)
    saved = (COMPILED_RNG.base, COMPILED_RNG.counter)
    try:
        for counter in (0, 1, 5):
            x = randn(13, 9)
            COMPILED_RNG.base, COMPILED_RNG.counter = 7, counter
            a = numerics.as_float32(fn_n(T(x)))
            COMPILED_RNG.base, COMPILED_RNG.counter = 7, counter
            b = numerics.as_float32(fn_i(T(x)))
            np.testing.assert_array_equal(a, b)
            assert COMPILED_RNG.counter == counter + 1
            assert 0 < (a == 0).sum() < a.size
    finally:
        COMPILED_RNG.base, COMPILED_RNG.counter = saved
    assert native_stats(fn_n)["callbacks"] == 0


# ---- returned values ----------------------------------------------------------------------
def test_returns_inputs_views_consts_and_duplicates(monkeypatch):
    c = T(randn(3, 5))  # a captured tensor (a graph input with role const or param)

    def f(x, y):
        s = x * 2.0 + y
        return (x, ndl.ops.transpose(x), x[1:4:2, ::2], s, s, ndl.ops.reshape(y, (5, 3)), c,
                ndl.ops.flip(x, (0, 1)), ndl.ops.broadcast_to(ndl.ops.reshape(y[0, :], (1, 5)), (4, 5)))
    run_both(monkeypatch, f, randn(3, 5), randn(3, 5))


def _value_and_view(kind):
    def f(x):
        e = ndl.ops.exp(x)
        return e, (ndl.ops.reshape(e, (35,)) if kind == "reshape" else ndl.ops.transpose(e))
    return f


@pytest.mark.parametrize("kind", ["reshape", "transpose"])
def test_returns_elementwise_value_and_its_view(monkeypatch, kind):
    run_both(monkeypatch, _value_and_view(kind), randn(5, 7), allow_callbacks=True)


@pytest.mark.parametrize("kind", ["reshape", "transpose"])
def test_returns_elementwise_value_and_its_view_without_callback(monkeypatch, kind):
    run_both(monkeypatch, _value_and_view(kind), randn(5, 7))


def _transposed_reduce(kind):
    def f(x):
        if kind == "reduced":   # the kept domain, transposed
            return ndl.ops.transpose(ndl.ops.summation(x, axes=(1,)) * 1.5)
        e = ndl.ops.exp(x)      # a softmax (the full domain reads the sum), transposed
        rows = x.shape[0]
        s = ndl.ops.broadcast_to(ndl.ops.reshape(ndl.ops.summation(e, axes=(1,)), (rows, 1)), x.shape)
        return ndl.ops.transpose(e / s)
    return f


@pytest.mark.parametrize("kind,shape", [("reduced", (3, 5, 3)), ("reduced", (3, 5, 7)), ("softmax", (5, 5)),
                                        ("softmax", (5, 9))])
def test_transposed_reduce_outputs(monkeypatch, kind, shape):
    stats, _ = run_both(monkeypatch, _transposed_reduce(kind), randn(*shape), allow_callbacks=True)
    if shape[0] != shape[-1]:
        assert stats["callbacks"] == 0, stats


@pytest.mark.parametrize("kind,shape", [("reduced", (3, 5, 3)), ("softmax", (5, 5))])
def test_transposed_square_reduce_outputs_without_callback(monkeypatch, kind, shape):
    run_both(monkeypatch, _transposed_reduce(kind), randn(*shape))


REASSOC_IR = """graph @k {
  %0 = input() {name="x", role="arg"} : f32[11] cpu
  %1 = MulScalar(%0) {scalar=-1.5} : f32[11] cpu
  %2 = EWiseAdd(%1, %0) : f32[11] cpu
  return %2
}
"""


def test_reassoc_fold_keeps_nan():
    """x*(-1.5) + x with x = +-inf is NaN in every element, the vector loop's and the scalar
    tail's (a `reassoc` flag once let LLVM fold it into x*(-0.5) in the tail)."""
    x = np.full(11, np.inf, np.float32)
    x[::2] = -np.inf
    run_ir(REASSOC_IR, [x])


def test_reassoc_fold_finite_values():
    run_ir(REASSOC_IR, [randn(11)])


DETACH_IR = """graph @d {
  %0 = input() {name="x", role="arg"} : f32[3,5] cpu
  %1 = input() {name="w", role="arg"} : f32[5,3] cpu
  %2 = Detach(%0) : f32[3,5] cpu
  %3 = MatMul(%2, %1) : f32[3,3] cpu
  return %3
}
"""


DETACH_CONV_IR = """graph @d {
  %0 = input() {name="x", role="arg"} : f32[2,5,7,3] cpu
  %1 = input() {name="w", role="arg"} : f32[3,3,3,4] cpu
  %2 = Detach(%0) : f32[2,5,7,3] cpu
  %3 = Conv(%2, %1) {padding=1, stride=1} : f32[2,5,7,4] cpu
  return %3
}
"""


def test_detach_feeding_matmul_has_a_buffer():
    """A lone Detach group (fusion: elementwise; the memory plan once took it for a view with
    no bytes) read by a MatMul or a Conv gets a buffer."""
    run_ir(DETACH_IR, [randn(3, 5), randn(5, 3)])
    run_ir(DETACH_CONV_IR, [randn(2, 5, 7, 3), randn(3, 3, 3, 4)])


def test_returns_constant_and_input_ir():
    text = """graph @c {
  %0 = input() {name="x", role="arg"} : f32[3,5] cpu
  %1 = const() {value=((1.0, 2.0), (3.0, 4.0))} : f32[2,2] cpu
  %2 = const() {value=2.5} : f32[3,5] cpu
  %3 = EWiseAdd(%0, %2) : f32[3,5] cpu
  %4 = Transpose(%0) {axes=None} : f32[5,3] cpu
  return %0, %1, %2, %3, %3, %4, %0
}
"""
    x = randn(3, 5)
    ex, got = run_ir(text, [x])
    got2 = ex([ndl.backend_ndarray.array(x)])  # a second call: the late copies run again
    for a, b in zip(got, got2):
        np.testing.assert_array_equal(numerics.as_float32(a), numerics.as_float32(b))
    np.testing.assert_array_equal(numerics.as_float32(got[0]), x)
    np.testing.assert_array_equal(numerics.as_float32(got[1]), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(numerics.as_float32(got[2]), np.full((3, 5), 2.5, np.float32))
    np.testing.assert_array_equal(numerics.as_float32(got[4]), numerics.as_float32(got[3]))
    # returned arrays are distinct buffers (none is the input's, a const's or another output's)
    ptrs = [o._handle.ptr() + o._offset * 4 for o in got]
    assert len(set(ptrs)) == len(ptrs)


def test_returned_outputs_are_fresh_each_call(monkeypatch):
    fn = compile_with(monkeypatch, "native", lambda x: x * 3.0)
    x1, x2 = randn(4, 7), randn(4, 7)
    a = fn(T(x1))
    b = fn(T(x2))
    assert_close(a, x1 * 3.0)
    assert_close(b, x2 * 3.0)


# ---- a training step ----------------------------------------------------------------------
def test_training_step_mlp_batchnorm_dropout_momentum(monkeypatch):
    def build():
        np.random.seed(11)
        model = nn.Sequential(nn.Linear(13, 17), nn.BatchNorm1d(17), nn.ReLU(), nn.Dropout(0.0),
                              nn.Linear(17, 5))
        opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return model, opt, ndl.optim.train_step(model, nn.SoftmaxLoss(), opt)

    ma, oa, fa = build()
    mb, ob, fb = build()
    sa = compile_with(monkeypatch, "native", fa)
    sb = compile_with(monkeypatch, "interp", fb)
    saved = (COMPILED_RNG.base, COMPILED_RNG.counter)
    try:
        for i in range(3):
            x = randn(19, 13)
            y = T(RNG.integers(0, 5, size=19).astype(np.float32))
            COMPILED_RNG.counter = i
            la = sa(T(x), y)
            COMPILED_RNG.counter = i
            lb = sb(T(x), y)
            assert_close(la, lb, 1e-5, f"loss at step {i}")
    finally:
        COMPILED_RNG.base, COMPILED_RNG.counter = saved
    for k, (pa, pb) in enumerate(zip(ma.parameters(), mb.parameters())):
        assert_close(pa, pb, 1e-5, f"parameter {k}")
    bn_a, bn_b = ma.modules[1], mb.modules[1]
    assert_close(bn_a.running_mean, bn_b.running_mean, 1e-5, "running mean")
    assert_close(bn_a.running_var, bn_b.running_var, 1e-5, "running var")
    for k in oa.u:  # the bias before BatchNorm has a zero gradient (rounding noise): floor 1
        assert_close(oa.u[k], ob.u[k], 1e-5, f"momentum {k}", floor=1.0)
    stats = native_stats(sa)
    assert stats["callbacks"] == 0 and stats["gemms"] >= 4, stats


# ---- profiling ----------------------------------------------------------------------------
def test_profile_names_the_steps(monkeypatch):
    monkeypatch.setattr(_profile, "_REGISTRY", [])  # nothing printed at exit
    monkeypatch.setenv("NEEDLE_PROFILE", "1")

    def f(x, w):
        return ndl.ops.summation(ndl.ops.relu(x @ w), axes=(1,))
    fn = compile_with(monkeypatch, "native", f)
    fn(T(randn(33, 17)), T(randn(17, 9)))
    runner = next(iter(fn._cache.values())).runner
    assert all(p.calls == 1 for p in runner.profile)  # one call: counted
    for _ in range(2):
        fn(T(randn(33, 17)), T(randn(17, 9)))
    text = fn.profile()
    runner = next(iter(fn._cache.values())).runner
    assert isinstance(runner, NativeExecutor)
    labels = [p.label.split()[0] for p in runner.profile]
    assert len(labels) == len(runner.steps) > 0
    for label in labels:
        assert label in text
    assert "MatMul" in text
    assert all(p.calls == 2 for p in runner.profile)  # three: the first (cold) left out
    assert native_stats(fn)["callbacks"] == 0


def test_profile_off_without_env(monkeypatch):
    monkeypatch.delenv("NEEDLE_PROFILE", raising=False)
    fn = compile_with(monkeypatch, "native", lambda x: x * 2.0)
    fn(T(randn(3, 5)))
    with pytest.raises(RuntimeError):
        fn.profile()


def test_inputs_passed_again_are_read_at_their_address(monkeypatch):
    """The executor keeps the address of each input's array from the last call and skips the
    checks when the same array comes again (a weight): a different array, the same one
    written in place, a transposed view (compacted, never kept) and a weight rebound to a new
    array all give numpy's product."""
    monkeypatch.setenv("NEEDLE_EXECUTOR", "native")
    w = ndl.Tensor(randn(5, 3), requires_grad=False)
    f = ndl.compile(lambda x: ndl.ops.tanh(x @ w))
    x1, x2 = ndl.Tensor(randn(4, 5)), ndl.Tensor(randn(4, 5))

    def want(x):
        return np.tanh(x.numpy().astype(np.float64) @ w.numpy())
    for x in (x1, x2, x1, x1):
        assert_close(f(x), want(x))
    x1.cached_data = ndl.Tensor(randn(4, 5)).cached_data   # a new array in the same tensor
    assert_close(f(x1), want(x1))
    view = ndl.ops.transpose(ndl.Tensor(randn(5, 4)))       # strided: compacted per call
    assert_close(f(view), want(view))
    w.data = ndl.Tensor(randn(5, 3), requires_grad=False)   # a weight rebound
    assert_close(f(x2), want(x2))
    assert_close(f(x1), want(x1))


def test_an_array_after_a_strided_view_at_its_place_is_read_again(monkeypatch):
    """A weight passed again after a call that passed a strided view at its place (compacted
    into a copy freed after that call) is read from its own memory, not the copy's."""
    monkeypatch.setenv("NEEDLE_EXECUTOR", "native")
    f = ndl.compile(lambda x, w: x @ w)
    x, w = ndl.Tensor(randn(4, 5)), ndl.Tensor(randn(5, 3))
    view = ndl.ops.transpose(ndl.Tensor(randn(3, 5)))
    for weight in (w, view, w):
        assert_close(f(x, weight), x.numpy().astype(np.float64) @ weight.numpy())
