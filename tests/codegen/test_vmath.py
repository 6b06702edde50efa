"""The LLVM renderer's inline transcendentals (needle/codegen/vmath.py) against numpy.

sin and cos are vectorised polynomials after a double-precision reduction by pi/2; lanes
beyond 2**24, infinities and NaN take libm's values on a branch. Checked over wide ranges,
in the vector body and the scalar tail, with special values mixed into vectors of ordinary
ones."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llvmlite")

from needle.codegen import compile_kernel  # noqa: E402
from needle.codegen.vmath import TRIG_REDUCE_MAX  # noqa: E402
from needle.ir import parse_graph  # noqa: E402
from tests.codegen.test_kernels import graph1  # noqa: E402

SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 1e-30, np.pi, np.pi / 2, np.pi / 4, -np.pi / 4,
           100 * np.pi, 6.2831855, 1e4, -1e4, 8192.0, 1e5, 1e6, 1e7, TRIG_REDUCE_MAX, -TRIG_REDUCE_MAX,
           np.nextafter(np.float32(TRIG_REDUCE_MAX), np.float32(0)), 3e7, 1e30, -3.4e38, 3.4e38]


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    parts = [rng.uniform(-10, 10, 4000), rng.uniform(-1e4, 1e4, 4000), rng.uniform(-1e6, 1e6, 2000),
             rng.uniform(-TRIG_REDUCE_MAX, TRIG_REDUCE_MAX, 2000), rng.uniform(-1e-3, 1e-3, 500),
             np.arange(-2000, 2000) * (np.pi / 4),           # near the quadrant boundaries
             SPECIAL, rng.uniform(-5, 5, 8 * 3 + 5)]             # a scalar tail
    x = np.concatenate(parts).astype(np.float32)
    rng.shuffle(x[:-29])                                      # specials inside vectors of ordinary values
    return x


@pytest.mark.parametrize("op,fn", [("Sin", np.sin), ("Cos", np.cos)])
def test_sin_cos_match_numpy_over_a_wide_range(op, fn):
    x = _inputs()
    k = compile_kernel(parse_graph(graph1(op, (x.size,))))
    got = k(x)[0]
    finite = np.isfinite(x)
    with np.errstate(invalid="ignore"):
        exact = fn(x.astype(np.float64))
        ref32 = fn(x)
    assert np.array_equal(np.isnan(got), ~finite)            # sin(+-inf) and sin(nan) are NaN
    err = np.abs(got[finite] - exact[finite])
    assert err.max() <= 2e-7, (x[finite][np.argmax(err)], err.max())
    np.testing.assert_allclose(got[finite], ref32[finite], rtol=0, atol=3e-7)
    assert "fptrunc <8 x double>" in k.llvm_ir                # the reduction is vectorised


@pytest.mark.parametrize("op,fn", [("Sin", np.sin), ("Cos", np.cos)])
@pytest.mark.parametrize("n", [1, 7, 9])
def test_sin_cos_specials_on_scalars_and_short_vectors(op, fn, n):
    """Kernels of 1 and 7 elements run scalar code only, of 9 one vector and a tail."""
    k = compile_kernel(parse_graph(graph1(op, (n,))))
    x = np.resize(np.array(SPECIAL, np.float32), -(-len(SPECIAL) // n) * n)
    got = np.concatenate([k(part)[0] for part in x.reshape(-1, n)])
    with np.errstate(invalid="ignore"):
        want = fn(x.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-7)  # NaN where numpy's is NaN
