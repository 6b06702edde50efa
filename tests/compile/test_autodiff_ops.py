"""The autodiff pass alone, on each op, against finite differences (not the eager tape)."""
from __future__ import annotations

import numpy as np
import pytest

import needle as ndl
from needle.ir.parser import parse_graph
from needle.ir.printer import print_graph
from needle.passes.autodiff import autodiff
from needle.runtime import run_graph
from tests.conftest import BACKEND, numeric_grads, tensor
from tests.ops.test_ops import GRAD_CASES, NONDIFF_INPUTS


@pytest.mark.parametrize("name,fn,ref,inputs", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_autodiff_pass_gradient(name, fn, ref, inputs):
    arrays = [np.asarray(x, dtype=np.float64 if BACKEND == "np" else np.float32) for x in inputs]
    out_shape = fn(*[tensor(a) for a in arrays]).shape
    weights = np.random.randn(*out_shape)
    wrt = [i for i in range(len(arrays)) if i not in NONDIFF_INPUTS.get(name, [])]
    w = tensor(weights, requires_grad=False)

    def objective(*xs):
        return (fn(*xs) * w).sum()

    grad_fn = ndl.compile(ndl.grad(objective, argnums=tuple(wrt)))
    got = grad_fn(*[tensor(a) for a in arrays])
    assert "grad(" in grad_fn.ir("input") and "grad(" not in grad_fn.ir("autodiff")
    expected = numeric_grads(fn, arrays, weights)
    tol = 1e-5 if BACKEND == "np" else 2e-2
    for g, i in zip(got, wrt):
        scale = max(1.0, float(np.abs(expected[i]).max()))
        np.testing.assert_allclose(g.numpy(), expected[i], rtol=tol, atol=tol * scale, err_msg=f"input {i}")


INPUT = """graph @f {
  %0 = input() {name="x", role="arg"} : f32[3] cpu
  %1 = Exp(%0) : f32[3] cpu  # f.py:2
  %2 = Summation(%1) {axes=None} : f32[] cpu  # f.py:3
  %3 = grad(%2, %0) {seeded=False} : (f32[3] cpu)  # f.py:4
  %4 = TupleGetItem(%3) {index=0} : f32[3] cpu  # f.py:4
  return %2, %4
}
"""

EXPECTED = """graph @f {
  %0 = input() {name="x", role="arg"} : f32[3] cpu
  %1 = Exp(%0) : f32[3] cpu  # f.py:2
  %2 = Summation(%1) {axes=None} : f32[] cpu  # f.py:3
  %3 = const() {value=1.0} : f32[] cpu  # f.py:4
  %4 = Reshape(%3) {shape=(1,)} : f32[1] cpu  # f.py:3
  %5 = BroadcastTo(%4) {shape=(3,)} : f32[3] cpu  # f.py:3
  %6 = EWiseMul(%5, %1) : f32[3] cpu  # f.py:2
  %7 = MakeTensorTuple(%6) : (f32[3] cpu)  # f.py:4
  return %2, %6
}
"""


def test_autodiff_text_ir():
    """Input IR -> autodiff -> expected IR: each VJP node carries the location of the node
    it differentiates (the seed is a const node at the grad request's line; simplify folds
    its broadcast), and reads of the grad tuple use the adjoints directly."""
    out = autodiff(parse_graph(INPUT))
    assert print_graph(out) == EXPECTED
    x = np.random.randn(3).astype(np.float32)
    arr = ndl.Tensor(x).realize_cached_data()
    loss, g = run_graph(out, [arr])
    np.testing.assert_allclose(np.asarray(g.numpy() if hasattr(g, "numpy") else g), np.exp(x), rtol=1e-6)


LINEAR = """graph @f {
  %0 = input() {name="x", role="arg"} : f32[3] cpu
  %1 = MulScalar(%0) {scalar=3.0} : f32[3] cpu  # f.py:2
  %2 = Summation(%1) {axes=None} : f32[] cpu  # f.py:2
  %3 = grad(%2, %0) {seeded=False} : (f32[3] cpu)  # f.py:3
  %4 = TupleGetItem(%3) {index=0} : f32[3] cpu  # f.py:3
  return %2, %4
}
"""

LINEAR_EXPECTED = """graph @f {
  %0 = input() {name="x", role="arg"} : f32[3] cpu
  %1 = MulScalar(%0) {scalar=3.0} : f32[3] cpu  # f.py:2
  %2 = Summation(%1) {axes=None} : f32[] cpu  # f.py:2
  %3 = const() {value=1.0} : f32[] cpu  # f.py:3
  %4 = Reshape(%3) {shape=(1,)} : f32[1] cpu  # f.py:2
  %5 = BroadcastTo(%4) {shape=(3,)} : f32[3] cpu  # f.py:2
  %6 = MulScalar(%5) {scalar=3.0} : f32[3] cpu  # f.py:2
  %7 = MakeTensorTuple(%6) : (f32[3] cpu)  # f.py:3
  return %2, %6
}
"""


def test_autodiff_gradient_of_a_linear_function_is_a_const():
    """A gradient that reads no graph value is computed by graph nodes from the seed (a const
    node); it used to leave an untraced tensor ('NoneType' has no node_id)."""
    assert print_graph(autodiff(parse_graph(LINEAR))) == LINEAR_EXPECTED
