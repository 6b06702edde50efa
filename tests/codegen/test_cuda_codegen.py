"""CUDA code generation (needle.codegen.cuda) checked on the CPU.

Every test builds the CUDA program of a small compiled graph and runs all of its kernels in
the CPU emulator (grid/block loops, loop fission at barriers, shared memory per block, warp
lanes), comparing each value a fusion group writes with the reference interpreter
(normwise relative error 1e-5). The emulator itself fails on out-of-bounds accesses,
shared-memory races (a missing barrier), divergent barriers/shuffles and two threads
storing one element; the negative tests at the end check that it does.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

import needle as ndl
from needle.codegen.cuda import build_program, render_kernel
from needle.codegen.cuda.gpu_ir import (AtomicAdd, Barrier, Decl, GParam, GpuKernel, IDecl, If, Shared, Shfl, SLoad,
                                        SStore, Var)
from needle.codegen.loop_ir import FConst, ICmp, IConst, IVar, Load, Store
from needle.codegen.cuda.render import HELPERS
from needle.codegen.cuda.schedule import bind, bind_all
from needle.codegen.lower import lower
from tests.gpu_emulator import EmulationError, check_program, emulate_kernel, emulate_program, reference_values, uniform


@pytest.fixture(autouse=True)
def _interpreted(monkeypatch):
    # only the traced graph matters here: run the compiled functions on the interpreter
    monkeypatch.setenv("NEEDLE_EXECUTOR", "interp")


def compiled(fn, *arrays):
    """(final graph, its input values as numpy arrays) of `fn` compiled on `arrays`
    (parameters and other state the function reads are graph inputs too)."""
    cf = ndl.compile(fn)
    args = [ndl.Tensor(np.asarray(a, np.float32), requires_grad=False) for a in arrays]
    cf(*args)
    entry = cf._cache[cf._last_key]
    values, _ = cf._inputs(entry, tuple(args), {})
    return entry.graph, [np.asarray(v.numpy() if hasattr(v, "numpy") else v, np.float32) for v in values]


def graph_of(fn, *arrays):
    return compiled(fn, *arrays)[0]


def emulate(fn, *arrays, tol=1e-5, **kw):
    g, inputs = compiled(fn, *arrays)
    prog = build_program(g, **kw)
    outs = check_program(prog, g, inputs, tol=tol)
    return prog, outs


def hows(prog):
    return sorted(r.how for r in prog.groups if r.how != "view")


def rnd(*shape, scale=1.0):
    return (np.random.randn(*shape) * scale).astype(np.float32)


# ---- elementwise, broadcast, views ------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1,), (7,), (37,), (3, 5), (33, 65), (2, 3, 9), (257, 3)])
def test_elementwise_chain(shape):
    x, y = rnd(*shape), rnd(*shape)
    prog, _ = emulate(lambda a, b: ndl.ops.tanh(a * b + 1.0) / (ndl.ops.exp(a * 0.5) + 2.0) - ndl.ops.relu(b), x, y)
    assert hows(prog) == ["lowered"]


def test_broadcast_transpose_and_slices():
    x, b, m = rnd(5, 7, 9), rnd(9), rnd(9, 7)

    def f(a, bias, mat):
        t = a + bias.reshape((1, 1, 9)).broadcast_to((5, 7, 9))
        u = t * ndl.ops.transpose(mat).reshape((1, 7, 9)).broadcast_to((5, 7, 9))
        return u[1:4, ::2, 3:], ndl.ops.log(ndl.ops.exp(u) + 1.0)
    emulate(f, x, b, m)


def test_pow_compare_where():
    x = np.abs(rnd(6, 11)) + 0.1

    def f(a):
        return (a ** 1.7) * (a > 0.5) + a ** -2 + a ** 0.5
    emulate(f, x)


# ---- reductions ---------------------------------------------------------------------------
@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 1), (1, 2), (0, 2), None])
@pytest.mark.parametrize("op", ["sum", "max"])
def test_reduction_each_axis_odd_sizes(axes, op):
    x = rnd(5, 37, 19)
    if op == "sum":
        emulate(lambda a: ndl.ops.summation(a * 2.0, axes=axes), x)
    else:
        emulate(lambda a: ndl.ops.max(a * 2.0, axes=axes), x)


@pytest.mark.parametrize("shape", [(3, 300), (300, 3), (70, 70), (1, 1000), (1000, 1), (45, 33)])
def test_softmax_rows(shape):
    x = rnd(*shape, scale=3)

    def softmax(a):
        z = ndl.ops.exp(a - ndl.ops.max(a, axes=(1,)).reshape((shape[0], 1)).broadcast_to(shape).detach())
        return z / ndl.ops.summation(z, axes=(1,)).reshape((shape[0], 1)).broadcast_to(shape)
    emulate(softmax, x)


@pytest.mark.parametrize("shape", [(6, 33), (40, 300)])
def test_layernorm(shape):
    x = rnd(*shape)
    ln = ndl.nn.LayerNorm1d(shape[1])
    emulate(lambda a: ln(a), x)


def test_a_large_column_sum_binds_as_a_column_reduction():
    """A column sum large enough for lower's CPU column blocks (one parallel loop over blocks of
    columns) is lowered whole for the GPU and bound as a column reduction over all its
    columns, not one thread per block of columns (a 10k-column bias gradient once ran on 10
    threads); few columns for a grid become two launches over slices of the rows."""
    x, p = rnd(600, 128), rnd(128)
    from needle.codegen.lower import COLUMN_BLOCKS_MIN
    assert x.size >= COLUMN_BLOCKS_MIN

    def f(a, w):
        return w - ndl.ops.summation(a, axes=(0,)) * 0.1
    prog, _ = emulate(f, x, p)
    kernels = [ln.kernel for ln in prog.launches]
    assert len(kernels) == 2 and all(k.note.startswith("column reduction") for k in kernels), kernels
    assert all(k.threads * k.blocks >= 128 * 8 * 4 for k in kernels)
    assert kernels[0].name.endswith("_part") and "part" in [p.name for p in kernels[1].params]


@pytest.mark.parametrize("shape", [(100, 10), (4000, 3), (13, 64), (8192, 16), (3000, 40), (4096, 24)])
def test_column_sums_batchnorm_statistics(shape):
    """BatchNorm statistics; few channels (16 or more, fewer would reduce by rows) over many
    rows take two launches over slices of the rows: partials, then the normalisation over
    every slice, several blocks each."""
    x = rnd(*shape)

    def f(a):
        mean = ndl.ops.summation(a, axes=(0,)) / shape[0]
        centred = a - mean.reshape((1, shape[1])).broadcast_to(shape)
        var = ndl.ops.summation(centred * centred, axes=(0,)) / shape[0]
        return centred / ((var + 1e-5) ** 0.5).reshape((1, shape[1])).broadcast_to(shape), mean, var
    prog, _ = emulate(f, x)
    split = [ln.kernel for ln in prog.launches if "row slices" in ln.kernel.note]
    if shape[0] >= 3000 and shape[1] >= 16:
        assert split and all(k.blocks >= 8 for k in split)


def test_column_lanes_grow_for_few_long_columns():
    from needle.codegen.cuda.columns import COLUMN_TY, COLUMN_TY_MAX, column_lanes
    assert column_lanes(1, 8192) == COLUMN_TY_MAX      # BatchNorm statistics of 16 channels
    assert column_lanes(320, 1024) == COLUMN_TY        # a 10k-column bias gradient: grid full
    assert column_lanes(1, 100) == COLUMN_TY           # short columns keep their 8 lanes


@pytest.mark.parametrize("schedule", ["pointwise", "row", "column"])
@pytest.mark.parametrize("shape,axis", [((37, 53), 1), ((37, 53), 0), ((3, 129, 5), 1), ((600, 7), 0)])
def test_every_reduce_schedule(schedule, shape, axis):
    """Each GPU schedule of one reduction kernel (exp, sum, a second pass dividing by it)."""
    x = rnd(*shape)
    rshape = tuple(1 if k == axis else d for k, d in enumerate(shape))

    def f(a):
        e = ndl.ops.exp(a)
        s = ndl.ops.summation(e, axes=(axis,))
        return e / s.reshape(rshape).broadcast_to(shape), s
    g = graph_of(f, x)
    from needle.passes.fusion import plan_fusion
    groups = [gr for gr in plan_fusion(g).groups if gr.kind == "reduce"]
    assert len(groups) == 1
    sub = groups[0].subgraph(g)
    lk = lower(sub)
    kernels = bind_all(lk, "k", schedule=schedule)
    reducing = [k for k in kernels if "reduction" in k.note]
    assert len(reducing) == 1 and reducing[0].note.startswith(schedule if schedule != "pointwise" else "pointwise")
    arrays = {p.name: np.full(p.size, np.nan, np.float32) for p in lk.params}
    ins = {n.id: k for k, n in enumerate(sub.inputs)}
    ref = reference_values(sub, [x])
    arrays["in0"] = x.reshape(-1).copy()
    for k in kernels:
        emulate_kernel(k, {p.name: arrays[p.name] for p in k.params})
    for j, o in enumerate(sub.outputs):
        got = arrays[f"out{j}"].reshape(ref[o].shape)
        np.testing.assert_allclose(got, ref[o], rtol=2e-5, atol=1e-6)
    del ins


# ---- GEMM and conv ------------------------------------------------------------------------
@pytest.mark.parametrize("m,k,n", [(37, 53, 29), (67, 33, 70), (5, 20, 70), (70, 9, 9), (1, 1, 1), (64, 64, 64),
                                   (130, 17, 3)])
def test_matmul_odd_sizes(m, k, n):
    prog, _ = emulate(lambda a, b: a @ b, rnd(m, k), rnd(k, n))
    assert hows(prog) == ["gemm"]


def test_matmul_transposed_operands_and_epilogue():
    a, b, bias = rnd(23, 41), rnd(19, 23), rnd(19)

    def f(x, w, c):
        return ndl.ops.relu(ndl.ops.transpose(x) @ ndl.ops.transpose(w) + c.reshape((1, 19)).broadcast_to((41, 19)))
    prog, _ = emulate(f, a, b, bias)
    assert "gemm" in hows(prog)


def test_big_tile_gemm_odd_sizes():
    """128x128 tiles (8x8 per thread) on a GEMM with partial tiles on both sides."""
    prog, _ = emulate(lambda a, b: ndl.ops.relu(a @ b), rnd(3000, 5), rnd(5, 3100))
    assert "tiled GEMM 128x128x8, 8x8 per thread" in prog.launches[0].kernel.note
    if shutil.which("nvcc"):
        from needle.codegen.cuda.build import compile_object
        messages = compile_object(prog.source(), "sm_90")
        assert "warning" not in messages.lower(), messages


def _split_launches(prog):
    return [ln.kernel for ln in prog.launches if "split-K" in ln.kernel.note]


@pytest.mark.parametrize("m,k,n", [(20, 2000, 30), (70, 1333, 9), (64, 4096, 64)])
def test_split_k_gemm_with_an_epilogue(m, k, n):
    """A GEMM of few output tiles and a long K: slices of K in blockIdx.z, partial products in
    scratch, summed in order by a second kernel that runs the fused epilogue."""
    from needle.codegen.cuda.templates import split_k
    a, b, c = rnd(m, k, scale=0.1), rnd(k, n), rnd(n)
    splits = split_k(m, n, k, 1)
    assert splits > 1

    def f(x, w, bias):
        return ndl.ops.relu(x @ w + bias.reshape((1, n)).broadcast_to((m, n)))
    prog, _ = emulate(f, a, b, c)
    gemm, total = _split_launches(prog)
    assert gemm.grid[2] == splits and f"{splits} slices" in gemm.note
    assert total.note.startswith(f"split-K sum of {splits} partial products")


def test_split_k_batched_gemm_and_conv_weight_gradient():
    emulate(lambda a, b: a @ b, rnd(2, 9, 700, scale=0.1), rnd(2, 700, 5))
    x, w = rnd(8, 12, 12, 3), rnd(3, 3, 3, 4)

    def f(a, b):
        b.requires_grad = True
        (ndl.ops.conv(a, b, stride=1, padding=1) ** 2).sum().backward()
        return b.grad
    prog, _ = emulate(f, x, w)
    assert _split_launches(prog), [ln.kernel.note for ln in prog.launches]


@pytest.mark.parametrize("sa,sb", [((3, 7, 11), (3, 11, 5)), ((2, 3, 9, 4), (4, 6)), ((4, 13), (2, 13, 9)),
                                   ((2, 1, 5, 8), (1, 3, 8, 7))])
def test_batched_matmul(sa, sb):
    emulate(lambda a, b: a @ b, rnd(*sa), rnd(*sb))


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1), (2, 0), (3, 2)])
def test_conv_forward(stride, padding):
    x, w = rnd(2, 9, 11, 3), rnd(3, 3, 3, 5)
    prog, _ = emulate(lambda a, b: ndl.ops.conv(a, b, stride=stride, padding=padding), x, w)
    assert hows(prog) == ["conv"]


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (2, 0), (3, 2)])
def test_conv_backward(stride, padding):
    """The gradient graph: flipped/permuted weights, dilated/padded output grads (views and
    the ops lower materialises as index conditions)."""
    x, w = rnd(2, 8, 7, 3), rnd(3, 3, 3, 4)

    def f(a, b):
        a.requires_grad = True
        b.requires_grad = True
        out = ndl.ops.conv(a, b, stride=stride, padding=padding)
        (out * out).sum().backward()
        return a.grad, b.grad
    emulate(f, x, w)


# ---- ops lower does not lower (split path), data-dependent ops, RNG ----------------------
def _embedding_step(t, i):
    t.requires_grad = True
    e = ndl.ops.gather(t, i)
    (e * e).sum().backward()
    return e * 2.0, t.grad


def test_gather_embedding_and_index_add():
    table, idx = rnd(11, 6), np.array([[3, 0, 10], [3, 7, 1]], np.float32)
    prog, _ = emulate(_embedding_step, table, idx)
    assert "index_add" in hows(prog)


def test_gather_and_index_add_with_bad_ids_stay_inside_their_tables():
    """Bad ids (out of range, fractional, NaN) read row 0 on the GPU, never past the table;
    the compiled step's id check (a graph output) reports them."""
    table, idx = rnd(11, 6), np.array([[3, 0, 10], [3, 7, 1]], np.float32)
    g, inputs = compiled(_embedding_step, table, idx)
    bad = np.array([[3, -5, 1e6], [np.nan, 7, 1]], np.float32)
    inputs = [bad if np.array_equal(x, idx) else x for x in inputs]
    e2, grad = emulate_program(build_program(g), inputs)[:2]
    rows = np.where((bad >= 0) & (bad < 11), bad, 0).astype(int)
    np.testing.assert_allclose(e2, table[rows] * 2.0, rtol=1e-6)
    expected = np.zeros_like(table)
    np.add.at(expected, rows.reshape(-1), 2 * table[rows].reshape(-1, 6))
    np.testing.assert_allclose(grad, expected, rtol=1e-5)


@pytest.mark.parametrize("force_split", [False, True])
def test_stack_concat_unslice_dilate_flip(force_split):
    a, b, c = rnd(4, 5), rnd(4, 5), rnd(4, 5)

    def f(x, y, z):
        s = ndl.ops.stack([x * 2.0, y, z + 1.0], axis=1)                       # (4, 3, 5)
        cat = ndl.ops.concat([x, ndl.ops.exp(y)], axis=0)                      # (8, 5)
        dil = ndl.ops.dilate(z * z, (0, 1), 1)                                 # (8, 10)
        fl = ndl.ops.flip(x - y, (1,))
        return s.sum(axes=(1,)) + fl, cat * 3.0, dil + 1.0
    prog, _ = emulate(f, a, b, c, force_split=force_split)
    if force_split:
        assert "split" in hows(prog)


def test_a_stack_of_1500_pieces():
    """Stack/Concat select between their pieces by a balanced tree (depth log2 of the pieces):
    a chain of 1,500 selects was deeper than the recursive walkers over expressions go."""
    n = 1500

    def f(a):
        parts = ndl.ops.split(a, 1)
        return ndl.ops.stack([parts[i] * 2.0 for i in range(n)], 1), ndl.ops.concat([a, a * 3.0], 1)
    emulate(f, rnd(3, n))


def test_split_and_tuple_items():
    x = rnd(3, 4, 5)

    def f(a):
        parts = ndl.ops.split(a * 2.0, axis=1)
        return parts[0] + parts[3] * parts[1], ndl.ops.stack([p.sum(axes=(1,)) for p in parts], axis=0)
    emulate(f, x)


def test_random_uniform_matches_the_op():
    from needle.backend_selection import BACKEND, array_api
    from needle.ops.random import RandomUniform
    counter, base = np.float32(5.0), np.float32(17.0)
    op = RandomUniform((7, 9), stream=3)
    wrap = (lambda v: np.asarray(v, np.float32)) if BACKEND == "np" else (lambda v: array_api.array(np.asarray(v, np.float32)))
    out = op.compute(wrap(counter), wrap(base))
    ref = np.asarray(out.numpy() if hasattr(out, "numpy") else out)
    got = uniform(counter, base, 3, np.arange(63)).reshape(7, 9)
    np.testing.assert_array_equal(got, ref)


def test_dropout_in_a_compiled_function():
    x = rnd(16, 20)
    drop = ndl.nn.Dropout(0.3)
    drop.train()
    prog, _ = emulate(lambda a: drop(a) * 2.0, x)
    assert "rng" in hows(prog)


# ---- the translation unit -----------------------------------------------------------------
def test_translation_unit_layout():
    prog, _ = emulate(lambda a, b: ndl.ops.relu(a @ b).sum(axes=(1,)), rnd(9, 5), rnd(5, 4))
    src = prog.source()
    assert src.count('extern "C" __global__') >= 2
    assert f'extern "C" int {prog.symbol}(void** inputs, void** outputs, char* arena, cudaStream_t stream)' in src
    assert f"{prog.symbol}_arena_bytes" in src
    assert f'extern "C" int {prog.symbol}_profiled(' in src
    assert src.count("<<<") == len(prog.launches)
    assert src.count("if (ev) cudaEventRecord(") == len(prog.launches) + 1


def test_launch_profiles_label_every_launch():
    """NEEDLE_PROFILE's per-launch rows (needle.runtime.cuda_executor): one per launch, each
    named by its kernel and schedule, the GEMM group's FLOPs counted once."""
    from needle.passes.pipeline import plan_kernels
    from needle.runtime.cuda_executor import _launch_profiles
    g, _ = compiled(lambda a, b: ndl.ops.relu(a @ b).sum(axes=(1,)), rnd(9, 5), rnd(5, 4))
    plan = plan_kernels(g, "cuda")
    prog = build_program(g, plan)
    rows = _launch_profiles(g, plan, prog)
    assert [r.label.split()[0] for r in rows] == [ln.kernel.name for ln in prog.launches]
    assert sum(r.flops for r in rows) >= 2 * 9 * 5 * 4
    gemm = [r for r in rows if "MatMul" in r.label]
    assert gemm and gemm[0].flops >= 2 * 9 * 5 * 4 and all(r.bytes > 0 for r in rows)


def test_identical_kernels_are_emitted_once():
    prog, _ = emulate(lambda a, b: (a * 2.0 + 1.0, b * 2.0 + 1.0), rnd(8, 8), rnd(8, 8))
    src = prog.source()
    assert len(prog.launches) == 2 and src.count("__global__") == 1


def _compile_host(tmp_path, body):
    cc = shutil.which("g++") or shutil.which("c++")
    if cc is None:
        pytest.skip("no host C++ compiler")
    src = tmp_path / "h.cc"
    src.write_text("#include <cstdio>\n#include <cmath>\n#include <cstring>\n"
                   "static float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }\n"
                   + HELPERS + body)
    exe = tmp_path / "h"
    subprocess.run([cc, "-O1", "-o", str(exe), str(src)], check=True, capture_output=True)
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout


def test_device_helpers_on_the_host(tmp_path):
    """The TU's __host__ __device__ helpers (RNG, NaN-propagating max) compiled by the host
    compiler give the emulator's values."""
    out = _compile_host(tmp_path, r"""
int main() {
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 5; ++i) printf("%.9g\n", ndl_uniform((float)c, 11.0f, 2ULL, (unsigned long long)(i * 1000)));
  printf("%g %g %g\n", ndl_max_nan(1.0f, NAN), ndl_max_nan(NAN, 1.0f), ndl_max_nan(2.0f, 3.0f));
  return 0;
}
""")
    lines = out.split()
    got = np.array([float(v) for v in lines[:15]], np.float32).reshape(3, 5)
    want = np.stack([uniform(np.float32(c), np.float32(11.0), 2, np.arange(5) * 1000) for c in range(3)])
    np.testing.assert_array_equal(got, want)
    assert lines[15:] == ["nan", "nan", "3"]


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"),
                    reason="nvcc is not installed")
def test_nvcc_accepts_a_small_translation_unit():
    from needle.codegen.cuda.build import compile_object
    x, w = rnd(2, 6, 6, 3), rnd(3, 3, 3, 4)

    def f(a, b):
        y = ndl.ops.conv(a, b, stride=2, padding=1)
        return ndl.ops.summation(ndl.ops.exp(y), axes=(3,)), ndl.ops.max(y, axes=(0, 1, 2))
    prog, _ = emulate(f, x, w)
    messages = compile_object(prog.source(), "sm_90")
    assert "warning" not in messages.lower(), messages


# ---- the emulator's own checks -------------------------------------------------------------
def _k(body, shared=(), threads=64, blocks=2, params=None):
    params = params or (GParam("in0", 128, "in"), GParam("out0", 128, "out"))
    return GpuKernel("t", params, (blocks, 1, 1), (threads, 1, 1), tuple(body), tuple(shared))


def _arrays():
    return {"in0": np.arange(128, dtype=np.float32), "out0": np.zeros(128, np.float32)}


def _lin():
    from needle.codegen.loop_ir import iadd, imul
    return iadd(imul(IVar("bx"), IConst(64)), IVar("tx"))


def test_emulator_runs_a_correct_shared_memory_kernel():
    from needle.codegen.loop_ir import iadd, imod
    body = [IDecl("g", _lin()), SStore("s", IVar("tx"), Load("in0", IVar("g"))), Barrier(),
            Store("out0", IVar("g"), SLoad("s", imod(iadd(IVar("tx"), IConst(1)), 64)))]
    arrays = _arrays()
    emulate_kernel(_k(body, [Shared("s", 64)]), arrays)
    want = np.roll(np.arange(128).reshape(2, 64), -1, axis=1).reshape(-1)
    np.testing.assert_array_equal(arrays["out0"], want)


def test_emulator_finds_a_missing_barrier():
    from needle.codegen.loop_ir import iadd, imod
    body = [IDecl("g", _lin()), SStore("s", IVar("tx"), Load("in0", IVar("g"))),
            Store("out0", IVar("g"), SLoad("s", imod(iadd(IVar("tx"), IConst(1)), 64)))]
    with pytest.raises(EmulationError, match="missing __syncthreads"):
        emulate_kernel(_k(body, [Shared("s", 64)]), _arrays())


def test_emulator_finds_a_write_after_read_race():
    from needle.codegen.loop_ir import iadd, imod
    body = [IDecl("g", _lin()), SStore("s", IVar("tx"), FConst(1.0)), Barrier(),
            Decl("v", SLoad("s", imod(iadd(IVar("tx"), IConst(1)), 64))),
            SStore("s", IVar("tx"), Var("v")), Barrier(), Store("out0", IVar("g"), SLoad("s", IVar("tx")))]
    with pytest.raises(EmulationError, match="missing __syncthreads"):
        emulate_kernel(_k(body, [Shared("s", 64)]), _arrays())


def test_emulator_finds_out_of_bounds_and_unguarded_partial_blocks():
    body = [IDecl("g", _lin()), Store("out0", IVar("g"), Load("in0", IVar("g")))]
    with pytest.raises(EmulationError, match="out of bounds"):
        emulate_kernel(_k(body, blocks=3), _arrays())
    guarded = [IDecl("g", _lin()), If(ICmp("lt", IVar("g"), IConst(128)), (Store("out0", IVar("g"), Load("in0", IVar("g"))),))]
    arrays = _arrays()
    emulate_kernel(_k(guarded, blocks=3), arrays)
    np.testing.assert_array_equal(arrays["out0"], arrays["in0"])


def test_emulator_finds_divergent_barriers_and_shuffles():
    body = [If(ICmp("lt", IVar("tx"), IConst(16)), (Barrier(),))]
    with pytest.raises(EmulationError, match="part of a block"):
        emulate_kernel(_k(body), _arrays())
    body = [Decl("v", FConst(1.0)), If(ICmp("lt", IVar("tx"), IConst(16)), (Shfl("v", "v", 1),))]
    with pytest.raises(EmulationError, match="part of a warp"):
        emulate_kernel(_k(body), _arrays())


def test_emulator_finds_two_threads_storing_one_element():
    body = [Store("out0", IConst(3), FConst(1.0))]
    with pytest.raises(EmulationError, match="two threads store"):
        emulate_kernel(_k(body), _arrays())
    arrays = _arrays()
    emulate_kernel(_k([AtomicAdd("out0", IConst(3), FConst(1.0))]), arrays)
    assert arrays["out0"][3] == 128


def test_warp_shuffle_reduction_kernel():
    """A lowered row reduction as rendered: shuffles, shared memory, broadcast."""
    g = graph_of(lambda a: ndl.ops.summation(a, axes=(1,)), rnd(5, 1000))
    from needle.passes.fusion import plan_fusion
    sub = plan_fusion(g).groups[0].subgraph(g)
    k = bind(lower(sub), "k", schedule="row")
    text = render_kernel(k)
    assert "__shfl_down_sync" in text and "__syncthreads" in text


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"),
                    reason="nvcc is not installed")
def test_shared_library_build_cache_and_load(tmp_path, monkeypatch):
    """The runtime's build path without a GPU: nvcc -shared into the disk cache (atomic,
    keyed by source, arch and nvcc version), loaded with ctypes; its exported sizes match
    the program. Without a GPU the launch reports the CUDA error instead of crashing."""
    from needle.codegen.cuda.build import GraphLibrary, compile_library, library_key
    monkeypatch.setenv("NEEDLE_CACHE_DIR", str(tmp_path))
    prog, _ = emulate(lambda a, b: ndl.ops.relu(a @ b).sum(axes=(0,)), rnd(5, 7), rnd(7, 3))
    path = compile_library(prog.source(), "sm_90")
    key = library_key(prog.source(), "sm_90")
    assert path == str(tmp_path / "cuda" / key[:2] / f"{key}.so")
    stamp = os.stat(path).st_mtime_ns
    assert compile_library(prog.source(), "sm_90") == path and os.stat(path).st_mtime_ns == stamp
    assert library_key(prog.source(), "sm_80") != key
    lib = GraphLibrary(path, prog.symbol)
    assert lib.arena_bytes == prog.arena_bytes
    if not ndl.backend_ndarray.cuda().enabled():
        with pytest.raises(RuntimeError, match="CUDA"):
            lib.run([0, 0], [0], 0)
