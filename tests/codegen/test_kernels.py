"""Compiled loop kernels (needle.codegen) against the reference interpreter."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest

pytest.importorskip("llvmlite")

import needle as ndl  # noqa: E402
from needle.backend_selection import BACKEND  # noqa: E402
from needle.codegen import compile_kernel, lower  # noqa: E402
from needle.codegen import jit  # noqa: E402
from needle.ir import parse_graph  # noqa: E402
from tests.numerics import assert_close, reference  # noqa: E402


def check(actual, expected, tol=1e-5):
    assert len(actual) == len(expected)
    for k, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, tol, f"output {k}")


def run_both(text, *arrays, tol=1e-5):
    g = parse_graph(text)
    k = compile_kernel(g)
    arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    with np.errstate(all="ignore"):
        out = k(*arrays)
    check(out, reference(g, arrays), tol)
    return k, out


def graph1(op, shape, attrs="", n_in=1, out_shape=None):
    s = ",".join(map(str, shape))
    o = ",".join(map(str, out_shape if out_shape is not None else shape))
    lines = [f'  %{i} = input() {{name="x{i}", role="arg"}} : f32[{s}] cpu' for i in range(n_in)]
    args = ", ".join(f"%{i}" for i in range(n_in))
    lines.append(f"  %{n_in} = {op}({args}){attrs} : f32[{o}] cpu")
    return "graph @k {\n" + "\n".join(lines) + f"\n  return %{n_in}\n}}\n"


SHAPES = [(1,), (7,), (37,), (3, 5), (4, 17), (2, 3, 9), (80,), (3, 32)]  # 16 lanes on AVX-512: the last two
UNARY = [("Negate", ""), ("Exp", ""), ("Log", ""), ("Tanh", ""), ("Detach", ""),
         ("AddScalar", " {scalar=1.5}"), ("MulScalar", " {scalar=-2.0}"), ("DivScalar", " {scalar=3.0}"),
         ("PowerScalar", " {scalar=2}"), ("PowerScalar", " {scalar=3}"), ("PowerScalar", " {scalar=-2}"),
         ("PowerScalar", " {scalar=0}"), ("PowerScalar", " {scalar=0.5}"), ("PowerScalar", " {scalar=1.7}"),
         ("Compare", ' {cmp="gt", scalar=0.1}'), ("Compare", ' {cmp="ne", scalar=0.0}'),
         ("ReLU", ""), ("Sigmoid", "")]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op,attrs", UNARY)
def test_unary(op, attrs, shape):
    x = np.random.randn(*shape) * 3
    if op in ("Log",) or "scalar=1.7" in attrs or "scalar=0.5" in attrs:
        x = np.abs(x) + 0.01
    run_both(graph1(op, shape, attrs), x)


BINARY = ["EWiseAdd", "EWiseMul", "EWiseDiv", "EWisePow"] + [
    ("Compare", f' {{cmp="{c}"}}') for c in ("eq", "ne", "gt", "ge", "lt", "le")]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", BINARY)
def test_binary(op, shape):
    op, attrs = op if isinstance(op, tuple) else (op, "")
    x, y = np.random.randn(*shape), np.random.randn(*shape)
    if op == "EWisePow":
        x = np.abs(x) + 0.1
    if op == "Compare":
        y = np.where(np.random.rand(*shape) < 0.3, x, y)
    run_both(graph1(op, shape, attrs, n_in=2), x, y)


@pytest.mark.parametrize("shape", [(37,), (4, 17)])
def test_where(shape):
    c = (np.random.rand(*shape) < 0.5).astype(np.float32)
    c[..., 0] = np.nan
    run_both(graph1("Where", shape, n_in=3), c, np.random.randn(*shape), np.random.randn(*shape))


@pytest.mark.parametrize("op", ["Summation", "Max"])
def test_reduction_of_a_scalar_is_the_value(op):
    """A reduction over no axes (a 0-d input) folds one element: lower reads the value (it
    refused the kernel, which then ran on numpy, and made the CUDA path fall back)."""
    text = ("graph @k {\n  %0 = input() {name=\"x0\", role=\"arg\"} : f32[] cpu\n"
            f"  %1 = {op}(%0) {{axes=None}} : f32[] cpu\n  %2 = Exp(%1) : f32[] cpu\n  return %2\n}}\n")
    lower(parse_graph(text))
    run_both(text, np.float32(np.random.randn()))


def test_a_kernel_of_1100_buffers_runs_compiled():
    """A fused kernel of 1,100 input buffers (a stack of 1,100 tensors) is called through its
    range entry with one array of addresses: a ctypes call takes at most 1,024 arguments."""
    xs = [np.random.randn(3).astype(np.float32) for _ in range(1100)]

    def f(*ts):
        return ndl.stack(list(ts), 1) * 2.0
    got = ndl.compile(f)(*[ndl.Tensor(x) for x in xs]).numpy()
    np.testing.assert_allclose(got, 2 * np.stack(xs, 1), rtol=0, atol=0)


def test_nan_inf_propagate():
    x = np.random.randn(4, 19).astype(np.float32)
    x[0, :5] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    x[3, 7] = np.nan
    for op, attrs in UNARY:
        run_both(graph1(op, (4, 19), attrs), x)
    for op in BINARY:
        op, attrs = op if isinstance(op, tuple) else (op, "")
        run_both(graph1(op, (4, 19), attrs, n_in=2), x, x[::-1].copy())


def test_division_by_a_row_value_keeps_special_values():
    """x / s and s ** -0.5 with s uniform along the vector loop (a per-row divisor, divided
    through its reciprocal): inf, 0 and NaN divisors give what numpy gives, in vector lanes
    and in the scalar tail."""
    text = """graph @k {
  %0 = input() {name="x", role="arg"} : f32[6,19] cpu
  %1 = input() {name="s", role="arg"} : f32[6,1] cpu
  %2 = BroadcastTo(%1) {shape=(6, 19)} : f32[6,19] cpu
  %3 = EWiseDiv(%0, %2) : f32[6,19] cpu
  %4 = PowerScalar(%2) {scalar=-0.5} : f32[6,19] cpu
  %5 = EWiseMul(%0, %4) : f32[6,19] cpu
  return %3, %5
}
"""
    x = np.random.randn(6, 19).astype(np.float32)
    x[:, 0], x[:, 18] = np.inf, 0.0
    s = np.array([[np.inf], [0.0], [2.5], [np.nan], [4.0], [1e-3]], dtype=np.float32)
    _, (q, r) = run_both(text, x, s)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(np.isnan(q), np.isnan(x / s))
        np.testing.assert_array_equal(np.isnan(r), np.isnan(x * s ** -0.5))


def test_exp_tanh_log_special_values():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, 100.0, -100.0, 88.0, -87.0, 1e-3, -1e-3, 20.0],
                 dtype=np.float32)
    n = len(x)
    for op in ("Exp", "Tanh", "Log"):
        run_both(graph1(op, (n,)), x)
    k = compile_kernel(parse_graph(graph1("Exp", (n,))))
    e = k(x)[0]
    assert np.isnan(e[0]) and e[1] == np.inf and e[2] == 0.0
    t = compile_kernel(parse_graph(graph1("Tanh", (n,))))(x)[0]
    assert np.isnan(t[0]) and t[1] == 1.0 and t[2] == -1.0


def test_transcendental_accuracy():
    x = np.linspace(-80, 80, 100003).astype(np.float32)
    for op, ref in (("Exp", np.exp), ("Tanh", np.tanh)):
        out = compile_kernel(parse_graph(graph1(op, x.shape)))(x)[0]
        r = ref(x.astype(np.float64))
        assert np.max(np.abs(out - r) / np.maximum(np.abs(r), 1e-30)) < 2e-6
    p = np.abs(x) + 1e-6
    out = compile_kernel(parse_graph(graph1("Log", x.shape)))(p)[0]
    r = np.log(p.astype(np.float64))
    assert np.max(np.abs(out - r) / np.maximum(np.abs(r), 1e-3)) < 2e-6


BCAST = """graph @k {
  %0 = input() {name="x", role="arg"} : f32[5,13] cpu
  %1 = input() {name="b", role="arg"} : f32[13] cpu
  %2 = input() {name="c", role="arg"} : f32[5,1] cpu
  %3 = BroadcastTo(%1) {shape=(5, 13)} : f32[5,13] cpu
  %4 = BroadcastTo(%2) {shape=(5, 13)} : f32[5,13] cpu
  %5 = EWiseMul(%0, %3) : f32[5,13] cpu
  %6 = EWiseAdd(%5, %4) : f32[5,13] cpu
  return %6, %5
}"""


def test_broadcast():
    run_both(BCAST, np.random.randn(5, 13), np.random.randn(13), np.random.randn(5, 1))


def test_transpose_permute_views():
    text = """graph @k {
  %0 = input() {name="x", role="arg"} : f32[6,11] cpu
  %1 = input() {name="y", role="arg"} : f32[11,6] cpu
  %2 = Transpose(%1) {axes=None} : f32[6,11] cpu
  %3 = EWiseSub(%0, %2) : f32[6,11] cpu
  return %3
}""".replace("EWiseSub", "EWiseAdd")
    run_both(text, np.random.randn(6, 11), np.random.randn(11, 6))
    text = """graph @k {
  %0 = input() {name="x", role="arg"} : f32[2,3,9] cpu
  %1 = Permute(%0) {axes=(2, 0, 1)} : f32[9,2,3] cpu
  %2 = Exp(%1) : f32[9,2,3] cpu
  return %2
}"""
    run_both(text, np.random.randn(2, 3, 9))


def test_reshape_and_getitem():
    text = """graph @k {
  %0 = input() {name="x", role="arg"} : f32[4,6] cpu
  %1 = Transpose(%0) {axes=None} : f32[6,4] cpu
  %2 = Reshape(%1) {shape=(3, 8)} : f32[3,8] cpu
  %3 = Reshape(%0) {shape=(3, 8)} : f32[3,8] cpu
  %4 = EWiseAdd(%2, %3) : f32[3,8] cpu
  %5 = GetItem(%4) {slices=((0, 3, 2), (1, 8, 3))} : f32[2,3] cpu
  return %5
}"""
    run_both(text, np.random.randn(4, 6))


REDUCE_SHAPES = [((7,), None), ((5, 13), (1,)), ((5, 13), (0,)), ((3, 4, 11), (0, 2)),
                 ((3, 4, 11), None), ((4, 1, 9), (2,)), ((2, 37), (1,)), ((3, 64), (1,)), ((96,), None)]


@pytest.mark.parametrize("op", ["Summation", "Max"])
@pytest.mark.parametrize("shape,axes", REDUCE_SHAPES)
def test_reduce(op, shape, axes):
    ax = range(len(shape)) if axes is None else axes
    out = tuple(d for i, d in enumerate(shape) if i not in ax)
    a = "None" if axes is None else "(" + "".join(f"{x}, " for x in axes).rstrip(" ") + ")"
    x = np.random.randn(*shape)
    run_both(graph1(op, shape, f" {{axes={a}}}", out_shape=out), x)
    x.flat[len(x.flat) // 2] = np.nan
    run_both(graph1(op, shape, f" {{axes={a}}}", out_shape=out), x)


def test_softmax_pieces():
    n, m = 37, 101
    maxk = """graph @k {
  %0 = input() {name="x", role="arg"} : f32[37,101] cpu
  %1 = Max(%0) {axes=(1,)} : f32[37] cpu
  return %1
}"""
    expsum = """graph @k {
  %0 = input() {name="x", role="arg"} : f32[37,101] cpu
  %1 = input() {name="m", role="arg"} : f32[37] cpu
  %2 = Reshape(%1) {shape=(37, 1)} : f32[37,1] cpu
  %3 = BroadcastTo(%2) {shape=(37, 101)} : f32[37,101] cpu
  %4 = EWiseAdd(%0, %5) : f32[37,101] cpu
  %6 = Exp(%4) : f32[37,101] cpu
  %7 = Summation(%6) {axes=(1,)} : f32[37] cpu
  %8 = Reshape(%7) {shape=(37, 1)} : f32[37,1] cpu
  %9 = BroadcastTo(%8) {shape=(37, 101)} : f32[37,101] cpu
  %10 = EWiseDiv(%6, %9) : f32[37,101] cpu
  return %6, %7, %10
}""".replace("%4 = EWiseAdd(%0, %5)", "%5 = Negate(%3) : f32[37,101] cpu\n  %4 = EWiseAdd(%0, %5)")
    x = np.random.randn(n, m).astype(np.float32) * 5
    _, (mx,) = run_both(maxk, x)
    np.testing.assert_array_equal(mx, x.max(axis=1))
    _, (e, s, p) = run_both(expsum, x, mx)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


SOFTMAX_CHAIN = """graph @k {
  %0 = input() {name="x", role="arg"} : f32[37,101] cpu
  %1 = Max(%0) {axes=(1,)} : f32[37] cpu
  %2 = Reshape(%1) {shape=(37, 1)} : f32[37,1] cpu
  %3 = BroadcastTo(%2) {shape=(37, 101)} : f32[37,101] cpu
  %4 = Negate(%3) : f32[37,101] cpu
  %5 = EWiseAdd(%0, %4) : f32[37,101] cpu
  %6 = Exp(%5) : f32[37,101] cpu
  %7 = Summation(%6) {axes=(1,)} : f32[37] cpu
  %8 = Reshape(%7) {shape=(37, 1)} : f32[37,1] cpu
  %9 = BroadcastTo(%8) {shape=(37, 101)} : f32[37,101] cpu
  %10 = EWiseDiv(%6, %9) : f32[37,101] cpu
  return %10, %1
}"""
LAYERNORM_CHAIN = """graph @k {
  %0 = input() {name="x", role="arg"} : f32[37,101] cpu
  %1 = Summation(%0) {axes=(1,)} : f32[37] cpu
  %2 = DivScalar(%1) {scalar=101} : f32[37] cpu
  %3 = Reshape(%2) {shape=(37, 1)} : f32[37,1] cpu
  %4 = BroadcastTo(%3) {shape=(37, 101)} : f32[37,101] cpu
  %5 = Negate(%4) : f32[37,101] cpu
  %6 = EWiseAdd(%0, %5) : f32[37,101] cpu
  %7 = EWiseMul(%6, %6) : f32[37,101] cpu
  %8 = Summation(%7) {axes=(1,)} : f32[37] cpu
  %9 = DivScalar(%8) {scalar=101} : f32[37] cpu
  %10 = AddScalar(%9) {scalar=1e-05} : f32[37] cpu
  %11 = PowerScalar(%10) {scalar=0.5} : f32[37] cpu
  %12 = Reshape(%11) {shape=(37, 1)} : f32[37,1] cpu
  %13 = BroadcastTo(%12) {shape=(37, 101)} : f32[37,101] cpu
  %14 = EWiseDiv(%6, %13) : f32[37,101] cpu
  return %14
}"""


def test_row_chains_are_one_kernel():
    """softmax (max, then the sum of exp(x - max), then the divide) and layernorm (mean, then
    variance, then normalise) each lower to one loop over the rows holding one pass per
    reduction and one output pass; values as numpy, NaN and inf rows included."""
    x = np.random.randn(37, 101).astype(np.float32) * 4
    x[3, 50], x[5, :] = np.nan, np.inf
    k, (p, mx) = run_both(SOFTMAX_CHAIN, x)
    body = lower(parse_graph(SOFTMAX_CHAIN)).body
    assert len(body) == 1 and body[0].kind == "parallel"
    assert [type(s).__name__ for s in body[0].body] == ["AccInit", "For", "AccInit", "For", "For", "Store"]
    fine = np.isfinite(x).all(axis=1)
    e = np.exp(x[fine] - x[fine].max(axis=1, keepdims=True))
    np.testing.assert_allclose(p[fine], e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    assert np.isnan(p[3]).all() and np.isnan(p[5]).all()
    y = np.random.randn(37, 101).astype(np.float32)
    _, (z,) = run_both(LAYERNORM_CHAIN, y)
    ref = (y - y.mean(axis=1, keepdims=True)) / np.sqrt(y.var(axis=1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-5)


GELU_SRC = "x*0.5*(1+tanh(0.79788456*(x+0.044715*x**3)))"


def gelu_graph(n):
    import needle as ndl
    from needle.compile import compiled_functions

    @ndl.compile
    def gelu(x):
        return x * 0.5 * (1 + ndl.ops.tanh(0.79788456 * (x + 0.044715 * x ** 3)))

    gelu(ndl.Tensor(np.zeros(n, dtype=np.float32)))
    cf = [c for c in compiled_functions() if getattr(c, "fn", None) is getattr(gelu, "fn", gelu)]
    cf = cf[-1] if cf else compiled_functions()[-1]
    return cf.entries()[-1][1]["final"]


def test_gelu_one_kernel_16m():
    n = 1 << 24
    g = gelu_graph(n)
    loop = lower(g)
    assert len(loop.body) == 1  # one loop nest: the whole chain is one kernel
    k = compile_kernel(g)
    x = np.random.randn(n).astype(np.float32) * 3
    k(x)
    t = time.perf_counter()
    (y,) = k(x)
    dt = time.perf_counter() - t
    print(f"\nGELU 16M: {dt * 1e3:.1f} ms, {2 * 4 * n / dt / 1e9:.2f} GB/s")
    x64 = x.astype(np.float64)
    ref = x64 * 0.5 * (1 + np.tanh(0.79788456 * (x64 + 0.044715 * x64 ** 3)))
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 1e-5
    small = gelu_graph(1003)
    xs = np.random.randn(1003).astype(np.float32)
    check(compile_kernel(small)(xs), reference(small, [xs]))
    assert "tanh_poly" in k.c_source
    import re
    body = k.llvm_ir_optimized.split("define")[1]
    assert not re.search(r"call [^@]*@(?!llvm\.)", body)  # no libm call: only LLVM intrinsics


def test_vector_loops_of_16_lanes_where_the_extent_allows():
    """On AVX-512 hosts a vector loop whose extent is a multiple of 16 runs on 16 lanes, any
    other on 8; rendered either way the module verifies, and the host's kernels match numpy
    (the NaN of a max included)."""
    import llvmlite.binding as llvm

    from needle.codegen.llvm_render import render_llvm
    for shape, lanes in (((5, 64), 16), ((5, 24), 8), ((37,), 8)):
        text = graph1("Max", shape, " {axes=(1,)}", out_shape=shape[:1]) if len(shape) == 2 else graph1("Exp", shape)
        x = np.random.randn(*shape)
        x.flat[3] = np.nan
        k, _ = run_both(text, x)
        module = str(render_llvm(k._named, wide=16))
        llvm.parse_assembly(module).verify()
        assert ("<16 x float>" in module) == (lanes == 16)
        assert ("<16 x float>" in k.llvm_ir) == (lanes == 16 and jit.wide_width() == 16)


def test_kernel_cache_returns_same_object():
    text = graph1("Exp", (29,))
    a = compile_kernel(parse_graph(text))
    b = compile_kernel(parse_graph(text.replace('name="x0"', 'name="other"')))
    assert a is b
    assert compile_kernel(parse_graph(graph1("Tanh", (29,)))) is not a


def test_kernel_text_dumps():
    k = compile_kernel(parse_graph(BCAST))
    assert k.c_source.startswith("void kernel(")
    assert "for (int64_t" in k.c_source and "// vector" in k.c_source
    assert "define void" in k.llvm_ir and "<8 x float>" in k.llvm_ir
    assert "nnan" not in k.llvm_ir and "ninf" not in k.llvm_ir and "fadd contract" in k.llvm_ir
    assert "reassoc" not in k.llvm_ir  # elementwise arithmetic: contract only (inf - inf stays NaN)


# ---- differential testing: random small elementwise + reduce subgraphs -----------------
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

H_SHAPES = [(9,), (2, 5), (3, 1, 4), (4, 11)]
H_UNARY = [("Negate", ""), ("Tanh", ""), ("Exp", ""), ("AddScalar", " {scalar=0.5}"),
           ("MulScalar", " {scalar=-1.5}"), ("DivScalar", " {scalar=4.0}"),
           ("PowerScalar", " {scalar=2}"), ("Sigmoid", ""), ("ReLU", ""), ("Detach", "")]


class _G:
    def __init__(self, shape):
        self.shape = shape
        self.lines = []
        self.n = 0

    def t(self, shape=None):
        return "f32[" + ",".join(map(str, self.shape if shape is None else shape)) + "] cpu"

    def add(self, rhs, shape=None):
        self.lines.append(f"  %{self.n} = {rhs} : {self.t(shape)}")
        self.n += 1
        return self.n - 1


@st.composite
def random_kernel(draw):
    shape = draw(st.sampled_from(H_SHAPES))
    g = _G(shape)
    n_in = draw(st.integers(1, 3))
    ins = [g.add(f'input() {{name="x{i}", role="arg"}}') for i in range(n_in)]
    # a broadcast input over the last axis and a transposed view when 2-d
    bshape = (shape[-1],)
    bin_ = g.add('input() {name="b", role="arg"}', bshape)
    vals = list(ins) + [g.add(f"BroadcastTo(%{bin_}) {{shape={shape!r}}}".replace(",)", ",)"))]
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["unary", "binary", "where", "log"]))
        a = draw(st.sampled_from(vals))
        if kind == "unary":
            op, attrs = draw(st.sampled_from(H_UNARY))
            if op == "Exp":
                a = g.add(f"Tanh(%{a})")
            vals.append(g.add(f"{op}(%{a}){attrs}"))
        elif kind == "binary":
            op = draw(st.sampled_from(["EWiseAdd", "EWiseMul", "EWiseDiv"]))
            b = draw(st.sampled_from(vals))
            if op == "EWiseDiv":
                b = g.add(f"AddScalar(%{g.add(f'EWiseMul(%{b}, %{b})')}) {{scalar=1.0}}")
            vals.append(g.add(f"{op}(%{a}, %{b})"))
        elif kind == "where":
            c = g.add(f'Compare(%{ins[0]}) {{cmp="gt", scalar=0.0}}')
            vals.append(g.add(f"Where(%{c}, %{a}, %{draw(st.sampled_from(vals))})"))
        else:
            sq = g.add(f"EWiseMul(%{a}, %{a})")
            vals.append(g.add(f"Log(%{g.add(f'AddScalar(%{sq}) {{scalar=1.0}}')})"))
    out = vals[-1]
    outs = [out]
    red = draw(st.sampled_from([None, "Summation", "Max"]))
    if red:
        nd = len(shape)
        axes = draw(st.sampled_from([None] + [(k,) for k in range(nd)] + ([(0, nd - 1)] if nd > 1 else [])))
        ax = range(nd) if axes is None else axes
        rshape = tuple(d for k, d in enumerate(shape) if k not in ax)
        r = g.add(f"{red}(%{out}) {{axes={axes!r}}}", rshape)
        outs = [r]
        if draw(st.booleans()):  # an elementwise consumer of the reduction
            outs.append(g.add(f"MulScalar(%{r}) {{scalar=2.0}}", rshape))
        if draw(st.booleans()):  # the full-domain value as a second output
            outs.append(out)
    text = "graph @h {\n" + "\n".join(g.lines) + "\n  return " + ", ".join(f"%{o}" for o in outs) + "\n}\n"
    return text, n_in, shape, bshape


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_kernel(), st.integers(0, 2**31 - 1))
def test_differential_random_kernels(case, seed):
    text, n_in, shape, bshape = case
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape).astype(np.float32) for _ in range(n_in)]
    arrays.append(rng.standard_normal(bshape).astype(np.float32))
    g = parse_graph(text)
    with np.errstate(all="ignore"):
        out = compile_kernel(g)(*arrays)
    expected = reference(g, arrays)
    summand = summation_input(text, arrays)
    assert len(out) == len(expected)
    for k, (a, e) in enumerate(zip(out, expected)):
        # a sum's rounding error scales with the sum of |terms|, not with the sum: when the
        # terms cancel, two summation orders differ by far more than 1e-5 of the result
        reduced = summand is not None and e.shape != summand.shape
        floor = 2.0 * float(np.sum(np.abs(summand[np.isfinite(summand)]), dtype=np.float64)) if reduced else 0.0
        assert_close(a, e, 1e-5, f"output {k}", max(floor, 1e-30))


def summation_input(text, arrays):
    """The reference value of the graph's Summation input, or None without one."""
    m = re.search(r"= Summation\(%(\d+)\)", text)
    if m is None:
        return None
    head = text[:text.index("  return")] + f"  return %{m.group(1)}\n}}\n"
    return reference(parse_graph(head), arrays)[0]


def test_training_step_reduce_groups_lower():
    """Every elementwise/reduce group of an MLP+BatchNorm training step becomes an LLVM
    kernel (reshaped kept-domain outputs, second passes reading the reduced value) and
    each kernel matches the reference interpreter on random inputs."""
    import needle as ndl
    import needle.nn as nn
    from needle.codegen import compile_kernel
    from needle.compile import compiled_functions
    from needle.passes.fusion import plan_fusion
    from needle.runtime import run_graph

    np.random.seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    opt = ndl.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.SoftmaxLoss()

    @ndl.compile
    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step(ndl.Tensor(np.random.randn(5, 4).astype(np.float32)),
         ndl.Tensor(np.array([0, 1, 2, 1, 0], dtype=np.float32), requires_grad=False))
    graph = compiled_functions()[-1].entries()[-1][1]["final"]
    groups = [g for g in plan_fusion(graph).groups if g.kind in ("elementwise", "reduce")]
    assert groups
    for g in groups:
        sub = g.subgraph(graph)
        kernel = compile_kernel(sub)
        # positive inputs keep log/sqrt (variance) nodes in their domain
        ins = [np.asarray(np.random.rand(*n.type.shape) + 0.5, dtype=np.float32) for n in sub.inputs]
        ref = run_graph(sub, [ndl.Tensor(a).realize_cached_data() for a in ins])
        for got, want in zip(kernel(*ins), ref):
            want = np.asarray(want.numpy() if hasattr(want, "numpy") else want, np.float64)
            assert np.array_equal(np.isnan(got), np.isnan(want))
            ok = ~np.isnan(want)
            assert np.linalg.norm(got[ok] - want[ok]) <= 1e-5 * max(np.linalg.norm(want[ok]), 1e-12)
