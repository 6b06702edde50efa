"""Shared numeric checks of the compiler tests: results against the reference interpreter."""
from __future__ import annotations

import numpy as np

from needle.backend_selection import BACKEND, array_api
from needle.runtime import interpreter


def as_float32(x) -> np.ndarray:
    """A Tensor, NDArray or array as a float32 numpy array."""
    assert x is not None
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.asarray(x, dtype=np.float32)


def assert_close(actual, expected, tol: float = 1e-5, what: str = "", floor: float = 1e-30) -> None:
    """NaN and Inf in the same positions (infinities of the same sign), and a normwise
    relative error of the finite elements <= tol (the denominator at least `floor`)."""
    a, e = as_float32(actual), as_float32(expected)
    assert a.shape == e.shape, (what, a.shape, e.shape)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=what)
    inf = np.isinf(e)
    np.testing.assert_array_equal(np.isinf(a), inf, err_msg=what)
    np.testing.assert_array_equal(a[inf], e[inf], err_msg=what)
    fin = np.isfinite(e)
    a64, e64 = a[fin].astype(np.float64), e[fin].astype(np.float64)
    err = np.linalg.norm(a64 - e64) / max(np.linalg.norm(e64), floor)
    assert err <= tol, f"{what}: relative error {err:.3g}"


def reference(graph, arrays) -> list:
    """The reference interpreter on numpy inputs (as backend arrays): float32 numpy outputs."""
    if BACKEND == "nd":
        import needle as ndl

        arrays = [array_api.array(a, device=ndl.cpu()) for a in arrays]
    with np.errstate(all="ignore"):
        outs = interpreter.run_graph(graph, arrays)
    return [as_float32(o) for o in outs]
