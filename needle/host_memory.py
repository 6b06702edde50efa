"""Host memory seen from numpy: a float32 array over a raw address (no copy). The native
executor's host steps and callbacks, and the collectives, read and write buffers this way."""
from __future__ import annotations

import ctypes
from math import prod

import numpy as np


def float_view(address: int, shape: tuple) -> np.ndarray:
    """A float32 array of `shape` over the memory at `address`; it does not keep that memory
    alive (the caller holds its owner)."""
    n = int(prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * max(n, 1)).from_address(address))[:n].reshape(shape)
