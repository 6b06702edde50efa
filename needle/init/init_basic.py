"""Basic tensor constructors. Each random helper makes exactly one call on numpy's global RNG.

Inside a compiled function numpy's RNG would run once, at trace time, and freeze its numbers
into the graph; there `rand`, `randb` and `randn` draw from the compiled counter-based generator
(`needle.ops.random`) instead, so every call gets new numbers.
"""
from __future__ import annotations

import numpy as np

from .. import ops
from ..autograd import Tensor
from ..backend_selection import cpu
from ..errors import IdError
from ..ops import registry
from ..ops.random import random_uniform
from ..trace import tracer


def _device(device):
    return cpu() if device is None else device


def rand(*shape, low=0.0, high=1.0, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """Uniform on [low, high): `np.random.rand(*shape) * (high - low) + low`."""
    if tracer.active() is not None:
        return _traced_uniform(shape) * (high - low) + low
    device = _device(device)
    array = device.rand(*shape) * (high - low) + low
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def randn(*shape, mean=0.0, std=1.0, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """Normal: `np.random.randn(*shape) * std + mean`."""
    if tracer.active() is not None:  # Box-Muller over two uniform draws
        radius = ops.sqrt(ops.log(1.0 - _traced_uniform(shape)) * -2.0)
        return radius * ops.cos(_traced_uniform(shape) * (2 * np.pi)) * std + mean
    device = _device(device)
    array = device.randn(*shape) * std + mean
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def _traced_uniform(shape) -> Tensor:
    """Uniform [0, 1) numbers of a compiled call (new ones at every call)."""
    return random_uniform(tuple(shape))


def constant(*shape, c=1.0, device=None, dtype="float32", requires_grad=False) -> Tensor:
    return registry.constant(shape, c, dtype, _device(device), requires_grad)


def ones(*shape, device=None, dtype="float32", requires_grad=False) -> Tensor:
    return constant(*shape, c=1.0, device=device, dtype=dtype, requires_grad=requires_grad)


def zeros(*shape, device=None, dtype="float32", requires_grad=False) -> Tensor:
    return constant(*shape, c=0.0, device=device, dtype=dtype, requires_grad=requires_grad)


def randb(*shape, p=0.5, device=None, dtype="bool", requires_grad=False) -> Tensor:
    """Bernoulli(p): `np.random.rand(*shape) <= p`."""
    if tracer.active() is not None:
        return ops.compare(_traced_uniform(shape), p, "le")
    device = _device(device)
    array = device.rand(*shape) <= p
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def one_hot(n, i, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """One-hot rows of length n for the integer ids in `i` (any shape; adds a trailing axis)."""
    device = _device(device)
    builder = tracer.ACTIVE
    if isinstance(i, Tensor) and builder is not None and (i._trace is not None or i._birth < builder.birth):
        return _traced_one_hot(n, i, device, dtype)  # a graph value (traced, or read at each call)
    ids = i.numpy() if isinstance(i, Tensor) else np.asarray(i)
    with np.errstate(invalid="ignore"):  # NaN and huge ids: caught by the check below
        ids_int = ids.astype("int64")
    if ids.size and (ids_int.min() < 0 or ids_int.max() >= n or not np.array_equal(ids_int, ids)):
        raise IdError(f"one_hot: ids must be integers in [0, {n}), got range [{ids.min()}, {ids.max()}]")
    return Tensor(device.one_hot(n, ids_int, dtype=dtype), device=device, dtype=dtype,
                  requires_grad=requires_grad)


def _traced_one_hot(n, i, device, dtype) -> Tensor:
    """one_hot of traced ids as graph ops: compare(ids[..., None], iota(n)) (no data read)."""
    shape = tuple(i.shape) + (n,)
    # a graph const: its reshape and broadcast stay graph views
    iota = tracer.ACTIVE.lift(Tensor(np.arange(n, dtype="float32"), device=device, dtype=dtype,
                                     requires_grad=False))
    ids = ops.broadcast_to(ops.reshape(i, tuple(i.shape) + (1,)), shape)
    ops.check_ids(i, n, f"one_hot: ids must be integers in [0, {n})")
    return ops.compare(ids, ops.broadcast_to(ops.reshape(iota, (1,) * len(i.shape) + (n,)), shape), "eq")


def zeros_like(array, *, device=None, requires_grad=False) -> Tensor:
    device = device if device else array.device
    return zeros(*array.shape, dtype=array.dtype, device=device, requires_grad=requires_grad)


def ones_like(array, *, device=None, requires_grad=False) -> Tensor:
    device = device if device else array.device
    return ones(*array.shape, dtype=array.dtype, device=device, requires_grad=requires_grad)
