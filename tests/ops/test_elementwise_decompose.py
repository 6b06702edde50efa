"""`Elementwise.decompose`: an elementwise op's scalar formula evaluated over Tensors (the
decompose pass expands ReLU and Sigmoid with it) agrees with its eager kernel."""
import numpy as np
import pytest

import needle as ndl
from needle.ops import scalar as S
from needle.ops.composite import ReLU, Sigmoid
from needle.ops.elementwise import Elementwise


class _Formula(Elementwise, abstract=True):  # not registered: a test-only op
    """Numbers on either side, a folded constant, where and minimum with number operands."""

    def element(self, a, b):
        big = 2.0 - a > b
        return S.where(big, S.minimum(a, 0.25), S.exp(1.0) * b) / 2.0 + S.where(0.5 <= a, 1.0, -b)


X = np.array([-3.0, -0.5, 0.0, 0.2, 0.9, 4.0], dtype=np.float32)
Y = np.array([1.5, -2.0, 0.3, 0.0, 3.0, -1.0], dtype=np.float32)


@pytest.mark.parametrize("op, inputs", [(_Formula(), (X, Y)), (ReLU(), (X,)), (Sigmoid(), (X * 30,))])
def test_decompose_matches_compute(op, inputs):
    tensors = [ndl.Tensor(x, requires_grad=False) for x in inputs]
    arrays = [t.realize_cached_data() for t in tensors]
    expected = op.compute(*arrays)
    expected = expected if isinstance(expected, np.ndarray) else expected.numpy()
    np.testing.assert_allclose(op.decompose(*tensors).numpy(), expected, rtol=1e-6, atol=1e-7)


def test_relu_decompose_keeps_nan():
    out = ReLU().decompose(ndl.Tensor(np.array([np.nan, -np.inf, 1.0], np.float32), requires_grad=False))
    np.testing.assert_array_equal(out.numpy(), [np.nan, 0.0, 1.0])
