"""Devices of the numpy backend (`NEEDLE_BACKEND=np`): tensors hold plain numpy arrays."""
from __future__ import annotations

import numpy as np


class Device:
    """Base class of the numpy backend's devices."""


class CPUDevice(Device):
    """The numpy backend's CPU device; `str()` is exactly "cpu()"."""

    def __repr__(self) -> str:
        return "cpu()"

    __str__ = __repr__

    def __hash__(self) -> int:
        return hash(self.__repr__())

    def __eq__(self, other) -> bool:
        return isinstance(other, CPUDevice) or (
            getattr(other, "name", None) == "cpu" and not hasattr(other, "mod"))

    def enabled(self) -> bool:
        return True

    name = "cpu"

    def zeros(self, *shape, dtype="float32"):
        return np.zeros(shape, dtype=dtype)

    def ones(self, *shape, dtype="float32"):
        return np.ones(shape, dtype=dtype)

    def randn(self, *shape):
        return np.random.randn(*shape)

    def rand(self, *shape):
        return np.random.rand(*shape)

    def one_hot(self, n, i, dtype="float32"):
        """Rows of length n with a 1 at each id of `i` (O(len(i) * n), no n x n identity)."""
        i = np.asarray(i).astype(np.int64)
        out = np.zeros(i.shape + (n,), dtype=dtype)
        np.put_along_axis(out, i[..., None], 1, axis=-1)
        return out

    def empty(self, shape, dtype="float32"):
        return np.empty(shape, dtype=dtype)

    def full(self, shape, fill_value, dtype="float32"):
        return np.full(shape, fill_value, dtype=dtype)


class DisabledDevice(Device):
    """A device this backend does not have (the numpy backend's `cuda()`)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name + "()"

    def enabled(self) -> bool:
        return False


def cpu() -> CPUDevice:
    """The numpy backend's CPU device."""
    return CPUDevice()


def default_device() -> CPUDevice:
    return cpu()


def cuda() -> DisabledDevice:
    """The numpy backend has no CUDA device: a disabled device object."""
    return DisabledDevice("cuda")


def all_devices() -> list:
    return [cpu()]
