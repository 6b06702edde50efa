"""Data-parallel training helpers, named after Horovod's: `broadcast_parameters` and
`DistributedOptimizer`."""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from . import world
from .collectives import all_reduce


def broadcast_parameters(module: Any, src: int = 0) -> None:
    """Make every rank's parameters and buffers (BatchNorm statistics...) equal to rank
    `src`'s, in one broadcast of all of them packed together."""
    comm = world.comm()
    if comm is None:
        return
    state = module.state_dict()
    names = sorted(state)
    flat = np.concatenate([np.asarray(state[k], dtype=np.float32).ravel() for k in names]) if names \
        else np.zeros(0, np.float32)
    world.blocking(f"broadcast_parameters ({flat.size} floats)", comm.Bcast, flat, root=src)
    offset, received = 0, {}
    for k in names:
        size = int(np.prod(state[k].shape))
        received[k] = flat[offset:offset + size].reshape(state[k].shape).astype(state[k].dtype)
        offset += size
    module.load_state_dict(received)


class _AveragedGradients:
    """Mixin of DistributedOptimizer's classes: average the gradients, then the update."""

    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.grad = all_reduce(p.grad, "mean")
        super().step()


@functools.lru_cache(maxsize=None)
def _distributed_class(cls: type) -> type:
    return type(f"Distributed{cls.__name__}", (_AveragedGradients, cls), {"__doc__": cls.__doc__})


def DistributedOptimizer(optimizer: Any) -> Any:  # noqa: N802 (Horovod's name)
    """`optimizer` whose `step()` first averages every parameter's gradient over the ranks
    (`all_reduce(grad, "mean")`) and then applies its update.

    The result is an instance of a subclass of the optimizer's class sharing its state (so
    `isinstance`, learning-rate schedulers and checkpoints see the same optimizer). Eagerly
    the averages are MPI calls; inside `@needle.compile` they are nodes of the step's graph."""
    wrapped = object.__new__(_distributed_class(type(optimizer)))
    wrapped.__dict__ = optimizer.__dict__
    return wrapped
