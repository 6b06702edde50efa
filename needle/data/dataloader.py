"""DataLoader: minibatches of Tensors over a Dataset."""
import numpy as np

from .dataset import Dataset, _supports_batch_fetch
from ..autograd import Tensor

__all__ = ["DataLoader"]


class DataLoader:
    """Iterate over ``dataset`` in minibatches.

    Batches are the index groups ``np.array_split(order, range(batch_size, N,
    batch_size))`` (the last may be short). ``order`` is ``arange(N)``, or with
    ``shuffle`` exactly one ``np.random.permutation(N)`` drawn when each pass
    (``iter``) starts (RNG: no other use of the random state here; transforms of the
    dataset draw per item in batch order).

    Each batch is a tuple with one Tensor per dataset field, built as
    ``Tensor(np.stack(items))``. The keyword-only extras ``device``, ``dtype`` and
    ``requires_grad`` are passed to Tensor only when not None.

    PyTorch-style extras (keyword-only; the defaults keep the behaviour above):
    ``drop_last=True`` leaves out the final batch when it is shorter than ``batch_size``
    (``len()`` counts full batches only; the shuffle still draws one permutation of all N).
    ``sampler`` (e.g. ``DistributedSampler``) gives the indices of each pass, in order, instead of
    ``arange(N)`` or the shuffle; it excludes ``shuffle=True``.
    ``collate_fn(samples)`` receives the list of ``dataset[i]`` items of a batch, in batch
    order, and its return value is the batch as it is (no Tensor conversion; ``device``,
    ``dtype`` and ``requires_grad`` are not applied).
    """

    dataset: Dataset
    batch_size: int

    def __init__(self, dataset, batch_size=1, shuffle=False, *, device=None,
                 dtype=None, requires_grad=None, drop_last=False, collate_fn=None, sampler=None):
        if batch_size is None or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.device = device
        self.dtype = dtype
        self.requires_grad = requires_grad
        if collate_fn is not None and not callable(collate_fn):
            raise TypeError(f"collate_fn must be callable or None, got {type(collate_fn).__name__}")
        self.drop_last = bool(drop_last)
        self.collate_fn = collate_fn
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: pass either shuffle=True or a sampler (it decides the order), not both")
        self.sampler = sampler
        self.ordering = None if shuffle or sampler is not None else self._split(np.arange(len(dataset)))
        self._idx = 0

    def _split(self, order):
        n = len(order)
        if n == 0:
            return []
        batches = np.array_split(order, range(self.batch_size, n, self.batch_size))
        if getattr(self, "drop_last", False) and len(batches[-1]) < self.batch_size:
            batches = batches[:-1]
        return batches

    def __len__(self):
        n = len(self.sampler if self.sampler is not None else self.dataset)
        if getattr(self, "drop_last", False):
            return n // self.batch_size
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        if self.sampler is not None:
            self.ordering = self._split(np.fromiter(iter(self.sampler), dtype=np.int64))
        elif self.shuffle:
            self.ordering = self._split(np.random.permutation(len(self.dataset)))
        self._idx = 0
        return self

    def __next__(self):
        if self.ordering is None or self._idx >= len(self.ordering):
            raise StopIteration
        indices = self.ordering[self._idx]
        self._idx += 1
        if getattr(self, "collate_fn", None) is not None:
            return self.collate_fn([self.dataset[int(i)] for i in indices])
        return self._make_batch(self._fetch(indices))

    def _fetch(self, indices):
        """A list with one stacked numpy array per dataset field."""
        ds = self.dataset
        if _supports_batch_fetch(ds):
            return [np.asarray(f) for f in ds._fetch_batch(indices)]
        items = [ds[int(i)] for i in indices]
        if not isinstance(items[0], (tuple, list)):
            return [np.stack(items)]
        return [np.stack([item[k] for item in items]) for k in range(len(items[0]))]

    def _make_batch(self, fields):
        kwargs = {}
        if self.device is not None:
            kwargs["device"] = self.device
        if self.dtype is not None:
            kwargs["dtype"] = self.dtype
        if self.requires_grad is not None:
            kwargs["requires_grad"] = self.requires_grad
        return tuple(Tensor(f, **kwargs) for f in fields)
