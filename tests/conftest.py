"""Shared test helpers: backend-aware tolerances and finite-difference gradient checks."""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import pytest

os.environ.setdefault("NEEDLE_VERIFY", "1")  # the IR verifier runs after every pass in tests
# compiled kernels go to a fresh cache folder, not the user's ~/.cache/needle
os.environ.setdefault("NEEDLE_CACHE_DIR", tempfile.mkdtemp(prefix="needle-test-cache-"))
# the cache's MAC key, kept outside the cache folder: never the user's own key file
os.environ.setdefault("NEEDLE_CACHE_KEY_FILE", os.path.join(tempfile.mkdtemp(prefix="needle-test-key-"), "key"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import needle as ndl  # noqa: E402

BACKEND = ndl.BACKEND
#: float64 under NEEDLE_BACKEND=np (exact checks), float32 under nd
FLOAT = np.float64 if BACKEND == "np" else np.float32


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(np.random.randint(0, 2**31 - 1) if os.environ.get("NEEDLE_TEST_RANDOM") else 0)
    yield


def tensor(a, requires_grad=True):
    return ndl.Tensor(np.asarray(a, dtype=FLOAT), dtype=None if BACKEND == "np" else "float32",
                      requires_grad=requires_grad)


def close(actual, expected, rtol=None, atol=None):
    rtol = (1e-9 if BACKEND == "np" else 2e-5) if rtol is None else rtol
    atol = (1e-9 if BACKEND == "np" else 2e-5) if atol is None else atol
    actual = actual.numpy() if isinstance(actual, ndl.Tensor) else actual
    expected = expected.numpy() if isinstance(expected, ndl.Tensor) else expected
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=rtol, atol=atol)


def numeric_grads(f, arrays, weights, eps=None):
    """Central differences of sum(f(*arrays) * weights) w.r.t. each array."""
    eps = (1e-6 if BACKEND == "np" else 1e-2) if eps is None else eps
    grads = []

    def value(arrs):
        out = f(*[tensor(a, requires_grad=False) for a in arrs])
        return float(np.sum(np.asarray(out.numpy(), dtype=np.float64) * weights))

    for i, a in enumerate(arrays):
        g = np.zeros(a.shape, dtype=np.float64)
        for j in range(a.size):
            plus = [x.copy() for x in arrays]
            minus = [x.copy() for x in arrays]
            plus[i].flat[j] += eps
            minus[i].flat[j] -= eps
            g.flat[j] = (value(plus) - value(minus)) / (2 * eps)
        grads.append(g)
    return grads


def gradient_check(f, *arrays, wrt=None, tol=None):
    """Compare needle's backward() with central differences on fresh random weights."""
    arrays = [np.asarray(a, dtype=FLOAT) for a in arrays]
    wrt = range(len(arrays)) if wrt is None else wrt
    tensors = [tensor(a) for a in arrays]
    out = f(*tensors)
    weights = np.random.randn(*out.shape)
    (out * tensor(weights, requires_grad=False)).sum().backward()
    expected = numeric_grads(f, arrays, weights)
    tol = (1e-5 if BACKEND == "np" else 2e-2) if tol is None else tol
    for i in wrt:
        got = tensors[i].grad.numpy()
        scale = max(1.0, float(np.abs(expected[i]).max()))
        np.testing.assert_allclose(got, expected[i], rtol=tol, atol=tol * scale,
                                   err_msg=f"gradient of input {i}")
    return tensors
