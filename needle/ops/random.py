"""Counter-based random numbers for compiled graphs (Dropout's masks under @needle.compile).

Eager mode draws from numpy's global RNG (the course's RNG rules). A compiled graph cannot
call numpy's RNG per call, so `RandomUniform` hashes (seed, stream, element index) with
splitmix64: the seed is a scalar graph input read from `COMPILED_RNG.counter` at every
call and advanced by one after it, `COMPILED_RNG.base` (set by `seed(n)`) is a second
scalar input, and each random op of a graph has its own stream.
Compiled masks therefore differ from eager ones (same distribution, other numbers).
"""
from __future__ import annotations

from math import prod

import numpy as np

from ..backend_selection import BACKEND, array_api
from ..trace import tracer
from .registry import TensorOp, zeros_like


class CompiledRNGState:
    """The state of compiled random ops: `base` (the seed) and `counter`, which advances
    by one per compiled call."""

    def __init__(self, base: int = 0, counter: int = 0):
        self.base = base
        self.counter = counter

    def seed(self, base: int) -> None:
        """Restart the compiled random streams from `base` (needle-train uses --seed)."""
        self.base, self.counter = int(base), 0


COMPILED_RNG = CompiledRNGState()

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class RandomUniform(TensorOp):
    """Uniform [0, 1) floats of `shape` from a scalar seed input and a stream number."""

    kind = "opaque"
    differentiable = False
    pure = False

    def __init__(self, shape, stream: int = 0):
        self.shape = tuple(shape)
        self.stream = stream

    def infer(self, counter, base):
        if tuple(counter.shape) != () or tuple(base.shape) != ():
            raise self.error(f"counter and base must be scalars, got shapes {counter.shape} and {base.shape}")
        return self.shape, counter.dtype

    def compute(self, counter, base):
        c, b = (np.uint64(int(round(float(v.numpy() if hasattr(v, "numpy") else v)))) for v in (counter, base))
        with np.errstate(over="ignore"):
            seed = _splitmix64(np.array([b], dtype=np.uint64))[0] + c * _GOLDEN
            key = _splitmix64(np.array([seed + np.uint64(self.stream)], dtype=np.uint64))[0]
            bits = _splitmix64(np.arange(prod(self.shape), dtype=np.uint64) + key)
        u = ((bits >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)).reshape(self.shape)
        return u if BACKEND == "np" else array_api.array(u, device=counter.device)

    def gradient(self, out_grad, node):
        return tuple(zeros_like(x) for x in node.inputs)


def random_uniform(shape):
    """Uniform [0, 1) tensor inside a compiled function (seeded by COMPILED_RNG)."""
    builder = tracer.ACTIVE
    if builder is None:
        raise RuntimeError("random_uniform is for compiled functions; eager code uses init.rand")
    stream = builder.rng_streams
    builder.rng_streams += 1
    if stream == 0:
        seed = builder.hyper_input(COMPILED_RNG, "counter")
        builder.set_hyper(COMPILED_RNG, "counter", seed + 1.0)
    counter = builder.hyper_updates[(id(COMPILED_RNG), "counter")][2] - 1.0
    return RandomUniform(shape, stream)(counter, builder.hyper_input(COMPILED_RNG, "base"))


__all__ = ["RandomUniform", "random_uniform", "COMPILED_RNG"]
