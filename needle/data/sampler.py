"""Samplers: which dataset indices a DataLoader visits, in which order."""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from ..distributed import world

__all__ = ["DistributedSampler"]


class DistributedSampler:
    """This rank's share of every epoch, for data-parallel training (PyTorch's signature).

    Every rank draws the same permutation of the dataset's N indices (from `seed` and the
    epoch number: `np.random.default_rng((seed, epoch))`, never the global RNG), then takes
    every `num_replicas`-th index from position `rank`. So the ranks' shares are disjoint
    and together cover the epoch. When N is not a multiple of the number of ranks, the
    order is padded with its own first indices (`drop_last=False`) or cut short
    (`drop_last=True`), so every rank gets the same number of samples and none waits.

    The epoch advances by one each time the sampler is iterated; `set_epoch(e)` fixes the
    epoch of the next iteration (as in PyTorch, e.g. when resuming). `num_replicas` and
    `rank` default to `needle.distributed.world_size()` and `rank()`.
    """

    def __init__(self, dataset, num_replicas: Optional[int] = None, rank: Optional[int] = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        num_replicas = world.world_size() if num_replicas is None else num_replicas
        rank = world.rank() if rank is None else rank
        if int(num_replicas) < 1 or not 0 <= int(rank) < int(num_replicas):
            raise ValueError(f"DistributedSampler: rank {rank} is not in [0, num_replicas={num_replicas})")
        self.dataset = dataset
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        n = len(dataset)
        self.num_samples = n // self.num_replicas if drop_last else -(-n // self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Use `epoch`'s permutation on the next iteration."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch (does not advance it)."""
        n = len(self.dataset)
        order = (np.random.default_rng((self.seed, self.epoch)).permutation(n) if self.shuffle
                 else np.arange(n))
        total = self.num_samples * self.num_replicas
        if total > n:
            order = np.resize(order, total)   # pads with the order's own first indices
        return order[:total][self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        mine = self.indices()
        self.epoch += 1
        return iter(int(i) for i in mine)
