"""BatchNorm with statistics over the global batch: `SyncBatchNorm`, `convert_sync_batchnorm`.

Under data parallelism a BatchNorm layer normalises each rank's share of the batch with that
share's mean and variance (as PyTorch DDP). A synchronised one sums the column sums (and
then the squared deviations) over the ranks with `all_reduce`, so every rank normalises with
the statistics of the whole global batch, its running statistics stay equal on all ranks,
and the gradients (through the all-reduces' VJPs) are those of one process on the global
batch. It costs two all-reduces of one value per channel for each layer, forward and back.
Every rank must have the same number of rows (DistributedSampler pads evenly).
"""
from __future__ import annotations

import functools
from typing import Any

from ..nn.nn_basic import BatchNorm1d
from . import world
from .collectives import all_reduce

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]


class _GlobalBatch:
    """Mixin of a BatchNorm class: batch statistics over the ranks."""

    def _batch_sum(self, column_sums, n: int) -> tuple:
        return all_reduce(column_sums, "sum"), n * world.world_size()


class SyncBatchNorm(_GlobalBatch, BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch (all ranks)."""


@functools.lru_cache(maxsize=None)
def _sync_class(cls: type) -> type:
    return type(f"Sync{cls.__name__}", (_GlobalBatch, cls), {"__doc__": cls.__doc__})


def convert_sync_batchnorm(module: Any) -> Any:
    """Make every BatchNorm layer of `module` (BatchNorm1d, BatchNorm2d) synchronised, in
    place, keeping its parameters and running statistics; returns `module`."""
    for _, m in module.named_modules():
        if isinstance(m, BatchNorm1d) and not isinstance(m, _GlobalBatch):
            m.__class__ = _sync_class(type(m))
    return module
