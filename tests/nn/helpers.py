"""Shared helpers of the needle.nn tests: dtypes per backend and finite-difference checks."""
import numpy as np

import needle as ndl

BACKEND = ndl.BACKEND
#: float64 under the numpy backend (tight finite differences); float32 under nd
DTYPE = "float64" if BACKEND == "np" else "float32"
EPS = 1e-6 if DTYPE == "float64" else 1e-3
RTOL = 1e-5 if DTYPE == "float64" else 2e-2
ATOL = 1e-6 if DTYPE == "float64" else 5e-3
#: forward comparisons against numpy references
FRTOL = 1e-9 if DTYPE == "float64" else 1e-4
FATOL = 1e-9 if DTYPE == "float64" else 1e-5


def tensor(a, requires_grad=False, dtype=DTYPE):
    return ndl.Tensor(np.asarray(a).astype(dtype), dtype=dtype, requires_grad=requires_grad)


def set_data(t, arr):
    t.data = ndl.Tensor(np.asarray(arr).astype(str(np.dtype(str(t.dtype)))), device=t.device,
                        dtype=t.dtype, requires_grad=False)


def check_grads(fn, tensors, n_entries=5, seed=0):
    """Compare .grad of each tensor with central differences of sum(fn() * R)."""
    out = fn()
    rng = np.random.RandomState(seed)
    R = rng.randn(*out.shape)
    loss = (out * tensor(R)).sum()
    loss.backward()
    for t in tensors:
        assert t.grad is not None, "a tensor received no gradient"
        grad = t.grad.numpy()
        assert grad.shape == tuple(t.shape)
        base = t.numpy().copy()
        idxs = rng.choice(base.size, min(n_entries, base.size), replace=False)
        for j in idxs:
            vals = []
            for sign in (1, -1):
                arr = base.copy()
                arr.flat[j] += sign * EPS
                set_data(t, arr)
                vals.append(float((fn().numpy().astype(np.float64) * R).sum()))
            set_data(t, base)
            numeric = (vals[0] - vals[1]) / (2 * EPS)
            np.testing.assert_allclose(grad.flat[j], numeric, rtol=RTOL, atol=ATOL)


def assert_close(actual, expected, rtol=FRTOL, atol=FATOL):
    if isinstance(actual, ndl.Tensor):
        actual = actual.numpy()
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=atol)
