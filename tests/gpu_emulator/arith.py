"""The scalar semantics kernels rely on, in numpy: the loop IR's ops (`OPS`, keyed like
`loop_ir.VOCABULARY`), C's integer division and remainder, the compiled RNG (splitmix64),
NaN-propagating max, and pure index expressions as closures."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from needle.codegen.cuda.gpu_ir import IAnd, IOr
from needle.codegen.loop_ir import IBin, ICmp, IConst, IVar

_U64 = np.uint64


def _splitmix64(x):
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def uniform(counter, base, stream, index):
    """The compiled RNG's floats (as `RandomUniform.compute` and the CUDA helper)."""
    counter = np.asarray(counter, np.float32)
    base = np.asarray(base, np.float32)
    with np.errstate(over="ignore"):
        c = np.rint(counter).astype(np.int64).astype(np.uint64)
        b = np.rint(base).astype(np.int64).astype(np.uint64)
        seed = _splitmix64(b) + c * _U64(0x9E3779B97F4A7C15)
        key = _splitmix64(seed + _U64(stream))
        bits = _splitmix64(np.asarray(index, np.int64).astype(np.uint64) + key)
    return (bits >> _U64(40)).astype(np.float32) / np.float32(1 << 24)


def cdiv(a, b):
    """C's integer division (truncation toward zero)."""
    if isinstance(b, (int, np.integer)) and b > 0:
        if np.ndim(a) == 0:
            return a // b if a >= 0 else -((-a) // b)
        q = a // b
        neg = a < 0
        if neg.any():
            q = np.where(neg, -((-a) // b), q)
        return q
    q = np.floor_divide(a, b)
    fix = (np.mod(a, b) != 0) & ((np.asarray(a) < 0) != (np.asarray(b) < 0))
    return np.where(fix, q + 1, q)


def cmod(a, b):
    """C's integer remainder (the sign of the dividend)."""
    return a - b * cdiv(a, b)


#: comparison op name -> numpy function
CMP = {"eq": np.equal, "ne": np.not_equal, "gt": np.greater, "ge": np.greater_equal, "lt": np.less,
       "le": np.less_equal}


def max_nan(a, b):
    """max that propagates a NaN of either side (CUDA's fmaxf does not)."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return np.where(np.isnan(a) | (a > b), a, b).astype(np.float32)


#: the loop IR's ops in numpy, the emulator's spelling of the vocabulary (as a renderer's)
OPS = {
    "unary": {"neg": np.negative, "exp": np.exp, "log": np.log, "tanh": np.tanh, "sqrt": np.sqrt, "sin": np.sin,
              "cos": np.cos},
    "binary": {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "pow": np.power},
    "compare": CMP,
    "index": {"add": lambda a, b: a + b, "mul": lambda a, b: a * b, "div": cdiv, "mod": cmod},
    "accumulate": {"sum": np.add, "max": max_nan},
}


def compile_index(e) -> Optional[Callable[[dict], object]]:
    """A Python closure evaluating a pure index expression (no float reads) on the index
    variables, or None (evaluated by walking the tree)."""
    if isinstance(e, IConst):
        v = e.value
        return lambda iv: v
    if isinstance(e, IVar):
        name = e.name
        return lambda iv: iv[name]
    if isinstance(e, (IBin, ICmp, IAnd, IOr)):
        fa, fb = compile_index(e.a), compile_index(e.b)
        if fa is None or fb is None:
            return None
        if isinstance(e, IAnd):
            return lambda iv: np.logical_and(fa(iv), fb(iv))
        if isinstance(e, IOr):
            return lambda iv: np.logical_or(fa(iv), fb(iv))
        fn = OPS["compare" if isinstance(e, ICmp) else "index"][e.op]
        return lambda iv: fn(fa(iv), fb(iv))
    return None
