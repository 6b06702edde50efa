"""needle.init: values and the RNG call rules (exactly one global-RNG call per helper)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import needle as ndl
from tests.conftest import close


def redraw(seed, fn):
    np.random.seed(seed)
    return fn()


@pytest.mark.parametrize("make,ref", [
    (lambda: ndl.init.rand(3, 4, low=-2, high=3), lambda: np.random.rand(3, 4) * 5 - 2),
    (lambda: ndl.init.randn(3, 4, mean=1, std=2), lambda: np.random.randn(3, 4) * 2 + 1),
    (lambda: ndl.init.randb(3, 4, p=0.3), lambda: np.random.rand(3, 4) <= 0.3),
    (lambda: ndl.init.xavier_uniform(3, 5, gain=2.0),
     lambda: np.random.rand(3, 5) * 2 * (2 * math.sqrt(6 / 8)) - 2 * math.sqrt(6 / 8)),
    (lambda: ndl.init.xavier_normal(3, 5), lambda: np.random.randn(3, 5) * math.sqrt(2 / 8)),
    (lambda: ndl.init.kaiming_uniform(4, 6),
     lambda: np.random.rand(4, 6) * 2 * math.sqrt(6 / 4) - math.sqrt(6 / 4)),
    (lambda: ndl.init.kaiming_uniform(4, 6, shape=(2, 2, 1, 6)),
     lambda: np.random.rand(2, 2, 1, 6) * 2 * math.sqrt(6 / 4) - math.sqrt(6 / 4)),
    (lambda: ndl.init.kaiming_normal(4, 6), lambda: np.random.randn(4, 6) * math.sqrt(2) / 2),
], ids=["rand", "randn", "randb", "xavier_uniform", "xavier_normal", "kaiming_uniform",
        "kaiming_uniform_shape", "kaiming_normal"])
def test_random_init_matches_one_numpy_call(make, ref):
    t = redraw(7, make)
    state_after = np.random.get_state()[1].copy()
    expected = redraw(7, ref)
    assert np.array_equal(np.random.get_state()[1], state_after)
    close(t.numpy().astype(np.float64), expected.astype(np.float64), rtol=1e-6, atol=1e-6)
    assert not t.requires_grad


def test_constants_and_one_hot():
    close(ndl.init.ones(2, 3), np.ones((2, 3)))
    close(ndl.init.zeros(4), np.zeros(4))
    close(ndl.init.constant(2, c=3.5), [3.5, 3.5])
    t = ndl.init.randn(2, 3)
    assert ndl.init.zeros_like(t).shape == (2, 3)
    close(ndl.init.ones_like(t), np.ones((2, 3)))
    ids = ndl.Tensor(np.array([[1, 0], [3, 2]], dtype=np.float32))
    close(ndl.init.one_hot(4, ids), np.eye(4)[[[1, 0], [3, 2]]])
    with pytest.raises(ValueError, match="one_hot"):
        ndl.init.one_hot(3, ndl.Tensor(np.array([3.0], dtype=np.float32)))


def test_one_hot_large_vocabulary_is_cheap():
    """one_hot never builds an n x n identity (10k vocabulary, 560 ids)."""
    ids = np.random.randint(0, 10000, size=560)
    t = ndl.init.one_hot(10000, ndl.Tensor(ids.astype(np.float32), requires_grad=False))
    out = t.numpy()
    assert out.shape == (560, 10000) and out.sum() == 560
    assert np.array_equal(out.argmax(1), ids)
