"""Dataset base class and NDArrayDataset."""
import numpy as np

__all__ = ["Dataset", "NDArrayDataset"]


class Dataset:
    """An abstract dataset.

    Subclasses implement ``__getitem__`` (one sample, a tuple of fields) and
    ``__len__``. ``transforms`` is an optional list of callables applied in order by
    :meth:`apply_transforms`.
    """

    def __init__(self, transforms=None):
        self.transforms = transforms

    def __getitem__(self, index):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError

    def apply_transforms(self, x):
        if self.transforms is not None:
            for tform in self.transforms:
                x = tform(x)
        return x

    # Batched fetching used by DataLoader. ``_batch_getitem`` names the
    # ``__getitem__`` for which ``_fetch_batch`` is known to give exactly what
    # stacking per-item results would (same values, same RNG use); a subclass that
    # overrides ``__getitem__`` without updating it falls back to per-item fetching.
    _batch_getitem = None

    def _fetch_batch(self, indices):
        raise NotImplementedError


def _supports_batch_fetch(dataset):
    cls = type(dataset)
    marker = getattr(cls, "_batch_getitem", None)
    return marker is not None and marker is getattr(cls, "__getitem__", None)


class NDArrayDataset(Dataset):
    """Dataset over equally long arrays: item i is ``tuple(a[i] for a in arrays)``.

    Slices (and integer index arrays) give the tuple of sliced arrays.
    """

    def __init__(self, *arrays):
        super().__init__()
        if not arrays:
            raise ValueError("NDArrayDataset needs at least one array")
        n = len(arrays[0])
        for k, a in enumerate(arrays):
            if len(a) != n:
                raise ValueError(
                    f"NDArrayDataset: array {k} has length {len(a)}, "
                    f"array 0 has length {n}"
                )
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, i) -> tuple:
        return tuple(a[i] for a in self.arrays)

    def _fetch_batch(self, indices):
        return tuple(
            a[indices] if isinstance(a, np.ndarray) else np.stack([a[i] for i in indices])
            for a in self.arrays
        )

    _batch_getitem = __getitem__
