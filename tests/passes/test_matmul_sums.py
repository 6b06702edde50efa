"""The matmul_sums pass: text IR before/after (under the verifier) and values kept."""
from __future__ import annotations

import numpy as np

from tests.numerics import assert_close, reference
from tests.passes.test_simplify import check, ir, run, unchanged


def same_values(before, after):
    """The reference interpreter gives the same outputs before and after, on random inputs."""
    rng = np.random.default_rng()
    inputs = [rng.standard_normal(n.type.shape).astype(np.float32) for n in before.inputs]
    for a, b in zip(reference(after, inputs), reference(before, inputs)):
        assert_close(a, b, 1e-5)

BEFORE = """
graph @g {
  %0 = input() {name="x0", role="arg"} : f32[3,4] cpu
  %1 = input() {name="x1", role="arg"} : f32[3,4] cpu
  %2 = input() {name="x2", role="arg"} : f32[2,4] cpu
  %3 = input() {name="x3", role="arg"} : f32[3,4] cpu
  %4 = input() {name="g0", role="arg"} : f32[3,5] cpu
  %5 = input() {name="g1", role="arg"} : f32[3,5] cpu
  %6 = input() {name="g2", role="arg"} : f32[2,5] cpu
  %7 = input() {name="g3", role="arg"} : f32[3,5] cpu
  %8 = input() {name="b", role="arg"} : f32[4,5] cpu
  %9 = Transpose(%0) {axes=None} : f32[4,3] cpu  # rnn.py:1
  %10 = MatMul(%9, %4) : f32[4,5] cpu  # rnn.py:1
  %11 = Transpose(%1) {axes=None} : f32[4,3] cpu  # rnn.py:2
  %12 = MatMul(%11, %5) : f32[4,5] cpu  # rnn.py:2
  %13 = EWiseAdd(%10, %12) : f32[4,5] cpu  # rnn.py:2
  %14 = Transpose(%2) {axes=None} : f32[4,2] cpu  # rnn.py:3
  %15 = MatMul(%14, %6) : f32[4,5] cpu  # rnn.py:3
  %16 = EWiseAdd(%13, %15) : f32[4,5] cpu  # rnn.py:3
  %17 = EWiseAdd(%16, %8) : f32[4,5] cpu  # rnn.py:4
  %18 = Transpose(%3) {axes=None} : f32[4,3] cpu  # rnn.py:5
  %19 = MatMul(%18, %7) : f32[4,5] cpu  # rnn.py:5
  %20 = EWiseAdd(%17, %19) : f32[4,5] cpu  # rnn.py:5
  return %20
}
"""

AFTER = """
graph @g {
  %0 = input() {name="x0", role="arg"} : f32[3,4] cpu
  %1 = input() {name="x1", role="arg"} : f32[3,4] cpu
  %2 = input() {name="x2", role="arg"} : f32[2,4] cpu
  %3 = input() {name="x3", role="arg"} : f32[3,4] cpu
  %4 = input() {name="g0", role="arg"} : f32[3,5] cpu
  %5 = input() {name="g1", role="arg"} : f32[3,5] cpu
  %6 = input() {name="g2", role="arg"} : f32[2,5] cpu
  %7 = input() {name="g3", role="arg"} : f32[3,5] cpu
  %8 = input() {name="b", role="arg"} : f32[4,5] cpu
  %21 = MakeTensorTuple(%0, %1, %2, %3) : (f32[3,4] cpu, f32[3,4] cpu, f32[2,4] cpu, f32[3,4] cpu)  # rnn.py:5
  %22 = Concat(%21) {axis=0} : f32[11,4] cpu  # rnn.py:5
  %23 = Transpose(%22) {axes=None} : f32[4,11] cpu  # rnn.py:5
  %24 = MakeTensorTuple(%4, %5, %6, %7) : (f32[3,5] cpu, f32[3,5] cpu, f32[2,5] cpu, f32[3,5] cpu)  # rnn.py:5
  %25 = Concat(%24) {axis=0} : f32[11,5] cpu  # rnn.py:5
  %26 = MatMul(%23, %25) : f32[4,5] cpu  # rnn.py:5
  %20 = EWiseAdd(%26, %8) : f32[4,5] cpu  # rnn.py:5
  return %20
}
"""


def test_sum_of_transposed_products_becomes_one_product():
    """Four x_i^T @ g_i (one of another inner size) and a plain term: one GEMM over K = 11."""
    ctx = check("matmul_sums", BEFORE, AFTER)
    assert ctx.reports["matmul_sums"]["rewritten"] == 1
    same_values(ir(BEFORE), run("matmul_sums", ir(BEFORE))[0])


def _sum_text(n_terms: int, transposed: bool, extra_user: bool = False) -> str:
    lines = []
    for i in range(n_terms):
        lines.append(f'  %{i} = input() {{name="a{i}", role="arg"}} : f32[{"3,4" if transposed else "4,3"}] cpu')
    for i in range(n_terms):
        lines.append(f'  %{n_terms + i} = input() {{name="g{i}", role="arg"}} : f32[3,5] cpu')
    k = 2 * n_terms
    acc = None
    for i in range(n_terms):
        left = i
        if transposed:
            lines.append(f"  %{k} = Transpose(%{i}) {{axes=None}} : f32[4,3] cpu")
            left, k = k, k + 1
        lines.append(f"  %{k} = MatMul(%{left}, %{n_terms + i}) : f32[4,5] cpu")
        term, k = k, k + 1
        if acc is None:
            acc = term
        else:
            lines.append(f"  %{k} = EWiseAdd(%{acc}, %{term}) : f32[4,5] cpu")
            acc, k = k, k + 1
    ret = f"%{acc}, %{k - 2}" if extra_user else f"%{acc}"
    return "graph @g {\n" + "\n".join(lines) + f"\n  return {ret}\n}}\n"


def test_plain_left_operands_concatenate_along_axis_1_and_keep_values():
    before = ir(_sum_text(5, transposed=False))
    after, ctx = run("matmul_sums", before)
    ops = [n.op for n in after.nodes]
    assert ops.count("MatMul") == 1 and "Transpose" not in ops and ops.count("Concat") == 2
    assert [n.attr("axis") for n in after.nodes if n.op == "Concat"] == [1, 0]
    same_values(before, after)


def test_too_few_terms_or_shared_products_stay():
    unchanged("matmul_sums", _sum_text(3, transposed=True))
    # a product read outside the sum (returned) cannot be folded in: 4 terms -> 3 foldable
    text = _sum_text(4, transposed=True, extra_user=True)
    out, _ = run("matmul_sums", ir(text))
    assert [n.op for n in out.nodes].count("MatMul") == 4


def test_thick_terms_stay():
    """Products whose concatenated operands would be larger than the partial sums they save
    (K (M + N) > 2 T M N: here 64 x 4 against 32) stay separate: copying both operands each
    call cost more than the one GEMM saves (a sum of 30 products of 49x512 by 512x2048 ran 2x
    slower rewritten)."""
    lines = [f'  %{i} = input() {{name="a{i}", role="arg"}} : f32[2,16] cpu' for i in range(4)]
    lines += [f'  %{4 + i} = input() {{name="b{i}", role="arg"}} : f32[16,2] cpu' for i in range(4)]
    lines += [f"  %{8 + i} = MatMul(%{i}, %{4 + i}) : f32[2,2] cpu" for i in range(4)]
    lines += ["  %12 = EWiseAdd(%8, %9) : f32[2,2] cpu", "  %13 = EWiseAdd(%12, %10) : f32[2,2] cpu",
              "  %14 = EWiseAdd(%13, %11) : f32[2,2] cpu"]
    unchanged("matmul_sums", "graph @g {\n" + "\n".join(lines) + "\n  return %14\n}\n")


def test_compiled_recurrent_weight_gradient_matches_eager():
    """An RNN step unrolled 6 times: the weight gradient (6 products) is one GEMM, and the
    compiled gradient equals eager's."""
    import needle as ndl

    rng = np.random.default_rng()
    w = ndl.Tensor(rng.standard_normal((8, 8)).astype(np.float32) * 0.3, requires_grad=True)
    xs = ndl.Tensor(rng.standard_normal((6, 4, 8)).astype(np.float32), requires_grad=False)

    def loss_fn(w, xs):
        h = ndl.ops.split(xs, 0).tuple()[0]
        for x in ndl.ops.split(xs, 0).tuple()[1:]:
            h = ndl.ops.tanh(h @ w + x)
        return h.sum()

    grad = ndl.compile(ndl.grad(loss_fn))
    got = grad(w, xs).numpy()  # argnums=0: the gradient itself
    loss = loss_fn(w, xs)
    loss.backward()
    np.testing.assert_allclose(got, w.grad.numpy(), rtol=1e-4, atol=1e-5)
    # 5 forward products, 4 for the hidden states' gradients, 1 (not 5) for the weight's
    assert grad.ir("final").count("= MatMul(") == 10
