"""Regressions of the native executor (NEEDLE_EXECUTOR=native), each compared against eager
mode on random inputs: the values a step returns and the gradients it leaves in `.grad`.
Inputs are fresh on every run: NEEDLE_TEST_SEED=<n> replays a run (the seed is in every
failure message)."""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import pytest

pytest.importorskip("llvmlite")

import needle as ndl  # noqa: E402
import needle.nn as nn  # noqa: E402
from needle.backend_selection import BACKEND  # noqa: E402

if BACKEND != "nd":
    pytest.skip("the native executor runs on the nd backend", allow_module_level=True)

from tests import numerics  # noqa: E402

SEED = int(os.environ.get("NEEDLE_TEST_SEED") or np.random.SeedSequence().entropy % 2**32)
RNG = np.random.default_rng(SEED)


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def run_step(step: Callable, params: Sequence[nn.Parameter], arrays: Sequence[np.ndarray]) -> list:
    """step's outputs and then its parameters' gradients, as float32 numpy arrays."""
    for p in params:
        p.grad = None
    out = step(*[ndl.Tensor(a, requires_grad=True) for a in arrays])
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return [numerics.as_float32(o) for o in outs] + [numerics.as_float32(p.grad) for p in params]


def check_step(monkeypatch, step: Callable, params: Sequence[nn.Parameter], *shapes: tuple,
               tol: float = 1e-5) -> None:
    """`step` (which may call loss.backward()) compiled on the native executor against eager
    mode: outputs and parameter gradients, on two sets of fresh random inputs."""
    monkeypatch.setenv("NEEDLE_EXECUTOR", "native")
    compiled = ndl.compile(step)
    for _ in range(2):
        arrays = [randn(*s) for s in shapes]
        want = run_step(step, params, arrays)
        got = run_step(compiled, params, arrays)
        assert compiled.stats["executor"] == "native", compiled.stats
        assert len(got) == len(want)
        for k, (a, e) in enumerate(zip(got, want)):
            numerics.assert_close(a, e, tol, f"result {k} (NEEDLE_TEST_SEED={SEED})")


def param(*shape: int) -> nn.Parameter:
    return nn.Parameter(randn(*shape))


# ---- in-place reuse in a kernel with several outputs ---------------------------------------
def test_concat_of_a_product_twice_parameter_gradients(monkeypatch):
    """c.grad's kernel also writes b's gradient pieces; one of them took the slot of a @ b,
    which the kernel still read after writing it."""
    b, c = param(4, 6), param(3, 6)

    def step(a):
        loss = ndl.summation(ndl.concat([(a @ b) * c, (a @ b) * c], 1) ** 2)
        loss.backward()
        return loss

    check_step(monkeypatch, step, [b, c], (3, 4))


def test_logsumexp_of_concat_of_quotients_gradients(monkeypatch):
    b, c = param(4, 6), param(3, 6)

    def step(a):
        z = ndl.concat([(a @ b) / c, (a @ b) / (c * c + 1.0), ndl.exp(a @ b)], 1)
        loss = ndl.summation(ndl.log(ndl.exp(ndl.logsumexp(z, axes=(1,))) + 1.0))
        loss.backward()
        return loss

    check_step(monkeypatch, step, [b, c], (3, 4), tol=1e-4)
