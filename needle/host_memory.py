"""Host memory seen from numpy: a float32 array over a raw address (no copy). The native
executor's host steps and callbacks, and the collectives, read and write buffers this way."""
from __future__ import annotations

import numpy as np


class _Memory:
    """What numpy reads an array's memory from (the array interface)."""

    __slots__ = ("__array_interface__",)

    def __init__(self, interface: dict):
        self.__array_interface__ = interface


def float_view(address: int, shape: tuple) -> np.ndarray:
    """A float32 array of `shape` over the memory at `address`; it does not keep that memory
    alive (the caller holds its owner)."""
    return np.asarray(_Memory({"data": (address, False), "shape": tuple(shape), "typestr": "<f4",
                               "version": 3}))
