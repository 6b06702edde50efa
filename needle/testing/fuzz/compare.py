"""Compiled results against eager ones: the rounding-noise model (perturbed eager runs) that
widens the float32 tolerance, near ties at comparisons, and the comparison itself."""
from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np

from needle import autograd

RTOL = 1e-3            # relative to the magnitude of the element
SCALE_TOL = 1e-5       # relative to the largest finite magnitude of the whole array
ATOL = 1e-5
NOISE_FACTOR = 8.0     # times the spread of the perturbed eager runs
PERTURBATION = 2e-6    # relative size of the input perturbation (about 16 float32 ulps)


def perturb(a: np.ndarray, rng: np.random.Generator, absolute: bool = False) -> np.ndarray:
    """`a` moved by PERTURBATION relative to each element (and, if `absolute`, to max |a|)."""
    out = a * (1 + PERTURBATION * rng.uniform(-1, 1, a.shape))
    if absolute and a.size:
        finite = np.abs(a[np.isfinite(a)])
        out = out + PERTURBATION * (finite.max() if finite.size else 0.0) * rng.uniform(-1, 1, a.shape)
    return out.astype(np.float32)


@contextlib.contextmanager
def rounding_noise(rng: np.random.Generator):
    """Eager ops (backward included) perturb their results: a model of compiled rounding."""
    compute = autograd._compute

    def noisy(op, arrays, inputs):
        out = compute(op, arrays, inputs)
        if isinstance(out, tuple):
            return out
        a = np.asarray(out.numpy() if hasattr(out, "numpy") else out)
        if a.dtype != np.float32:
            return out
        return autograd.Tensor._array_from_numpy(perturb(a, rng, absolute=True),
                                                 device=getattr(out, "device", None), dtype="float32")

    autograd._compute = noisy
    try:
        yield
    finally:
        autograd._compute = compute


#: relative distance under which two compared values are a tie that rounding may break
TIE = 1e-5


@contextlib.contextmanager
def watching_ties(ties: list):
    """Eager comparisons of two different values within TIE of each other (v < log(exp(v)))
    append to `ties`: which side wins is decided by rounding, so compiled may differ there."""
    compute = autograd._compute

    def watched(op, arrays, inputs):
        if type(op).__name__ == "Compare" and (len(arrays) == 1 or arrays[0] is not arrays[1]):
            a = np.asarray(arrays[0].numpy() if hasattr(arrays[0], "numpy") else arrays[0], np.float64)
            b = op.scalar if len(arrays) == 1 else arrays[1]
            b = np.asarray(b.numpy() if hasattr(b, "numpy") else b, np.float64)
            with np.errstate(all="ignore"):
                near = np.abs(a - b) <= TIE * np.maximum(np.abs(a), np.abs(b))
            if np.any(near & np.isfinite(a) & np.isfinite(b)):
                ties.append(op.cmp)
        return compute(op, arrays, inputs)

    autograd._compute = watched
    try:
        yield
    finally:
        autograd._compute = compute


def _classes(a: np.ndarray) -> np.ndarray:
    """0 finite, 1 NaN, 2 +Inf, 3 -Inf."""
    return np.select([np.isnan(a), a == np.inf, a == -np.inf], [1, 2, 3], 0)


def compare(label: str, expected, got, perturbed: list) -> Optional[str]:
    """Why `got` (compiled) is not `expected` (eager) within the perturbed runs' noise, or None."""
    if expected is None or got is None:
        return None if expected is None and got is None else (
            f"{label}: eager {'None' if expected is None else 'a tensor'}, "
            f"compiled {'None' if got is None else 'a tensor'}")
    if expected.shape != got.shape:
        return f"{label}: shape {got.shape}, eager {expected.shape}"
    e, g = expected.astype(np.float64), got.astype(np.float64)
    noise, unstable = np.zeros(e.shape), np.zeros(e.shape, dtype=bool)
    for p in perturbed:
        if p is None or p.shape != e.shape:
            continue
        p = p.astype(np.float64)
        unstable |= _classes(p) != _classes(e)
        both = np.isfinite(p) & np.isfinite(e)
        noise = np.maximum(noise, np.abs(np.where(both, p, 0) - np.where(both, e, 0)))
    names = {1: "NaN", 2: "+Inf", 3: "-Inf", 0: "finite"}
    differs = (_classes(e) != _classes(g)) & ~unstable
    if differs.any():
        idx = tuple(int(i) for i in np.argwhere(differs)[0])
        return (f"{label}: non-finite positions differ at {int(differs.sum())} of {e.size} elements, "
                f"first {idx}: eager {names[int(_classes(e[idx]))]} {e[idx]!r}, compiled {g[idx]!r}")
    finite = np.isfinite(e) & np.isfinite(g) & ~unstable
    scale = float(np.abs(e[finite]).max()) if finite.any() else 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(finite, np.abs(e - g), 0)
        tol = ATOL + RTOL * np.maximum(np.abs(e), np.abs(g)) + SCALE_TOL * scale + NOISE_FACTOR * noise
    bad = finite & (err > tol)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        return (f"{label}: {int(bad.sum())} of {e.size} elements differ, first {idx}: "
                f"eager {e[idx]!r}, compiled {g[idx]!r} (tolerance {tol[idx]:.3g})")
    return None
