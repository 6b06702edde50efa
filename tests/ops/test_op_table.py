"""Ops declared the new way, one table row each: eager against numpy, compiled against eager
(fused with its neighbours into one kernel), and a finite-difference gradient check of
eager backward() and of the compiled gradient (the autodiff pass)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import needle as ndl
from tests.conftest import BACKEND, numeric_grads, tensor


def normal(*shapes):
    return [np.random.randn(*s) for s in shapes]


def positive(*shapes):
    return [np.random.uniform(0.5, 2.0, s) for s in shapes]


def away_from_zero(*shapes):
    """|x| in [0.2, 2]: finite differences never cross a kink at 0."""
    return [np.random.uniform(0.2, 2.0, s) * np.random.choice([-1.0, 1.0], s) for s in shapes]


def apart(*shapes):
    """Elements at least 0.3 apart across all inputs: finite differences never cross a tie
    of a minimum or maximum."""
    sizes = [int(np.prod(s)) for s in shapes]
    values = (np.random.permutation(sum(sizes)) - sum(sizes) / 2) * 0.3
    return [part.reshape(s) for part, s in zip(np.split(values, np.cumsum(sizes)[:-1]), shapes)]


#: (name, function of tensors, numpy reference, input shapes, input sampler)
OPS = [
    ("exp", ndl.exp, np.exp, [(3, 5)], normal),
    ("tanh", ndl.tanh, np.tanh, [(3, 5)], normal),
    ("log", ndl.log, np.log, [(3, 5)], positive),
    ("sin", ndl.sin, np.sin, [(3, 5)], normal),
    ("cos", ndl.cos, np.cos, [(3, 5)], normal),
    ("minimum", ndl.minimum, np.minimum, [(3, 5), (3, 5)], apart),
    ("minimum_broadcast", ndl.minimum, np.minimum, [(3, 5), (5,)], apart),
    ("abs", ndl.abs, np.abs, [(3, 5)], away_from_zero),
    ("sqrt", ndl.sqrt, np.sqrt, [(3, 5)], positive),
    ("max", lambda x: ndl.max(x, (1,)), lambda a: a.max(axis=1), [(4, 6)], apart),
    ("min_rows", lambda x: ndl.min(x, (1,)), lambda a: a.min(axis=1), [(4, 6)], apart),
    ("min_columns_keepdims", lambda x: ndl.min(x, (0,), keepdims=True), lambda a: a.min(axis=0, keepdims=True),
     [(5, 6)], apart),
    ("min_all", ndl.min, np.min, [(3, 4)], apart),
    ("erf", ndl.erf, np.vectorize(math.erf), [(3, 5)], normal),
]


def _inputs(shapes, sample):
    return [np.asarray(a, np.float64 if BACKEND == "np" else np.float32) for a in sample(*shapes)]


def _close(actual, expected, tol):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=tol, atol=tol)


@pytest.mark.parametrize("name,fn,ref,shapes,sample", OPS, ids=[row[0] for row in OPS])
def test_eager_matches_numpy(name, fn, ref, shapes, sample):
    arrays = _inputs(shapes, sample)
    _close(fn(*[tensor(a) for a in arrays]).numpy(), ref(*arrays), 1e-6 if BACKEND == "np" else 1e-5)


@pytest.mark.parametrize("name,fn,ref,shapes,sample", OPS, ids=[row[0] for row in OPS])
def test_compiled_matches_eager_in_one_kernel(name, fn, ref, shapes, sample):
    arrays = _inputs(shapes, sample)

    def f(*xs):
        return fn(*(x * 1.0 + 0.0 for x in xs)) * 2.0 + 1.0

    cf = ndl.compile(f)
    got = cf(*[tensor(a) for a in arrays])
    _close(got.numpy(), f(*[tensor(a) for a in arrays]).numpy(), 1e-5)
    assert cf.stats["kernels"] == 1 or BACKEND == "np"   # kernels are float32 (np tests run float64)


@pytest.mark.parametrize("name,fn,ref,shapes,sample", OPS, ids=[row[0] for row in OPS])
def test_gradient_against_finite_differences(name, fn, ref, shapes, sample):
    arrays = _inputs(shapes, sample)
    weights = np.random.randn(*ref(*arrays).shape)

    def objective(*xs):
        return (fn(*xs) * tensor(weights, requires_grad=False)).sum()

    expected = numeric_grads(fn, arrays, weights)
    tol = 1e-5 if BACKEND == "np" else 2e-2
    ts = [tensor(a) for a in arrays]
    objective(*ts).backward()
    compiled = ndl.compile(ndl.grad(objective, argnums=tuple(range(len(arrays)))))(*[tensor(a) for a in arrays])
    for k, (t, c) in enumerate(zip(ts, compiled)):
        _close(t.grad.numpy(), expected[k], tol)
        _close(c.numpy(), expected[k], tol)
