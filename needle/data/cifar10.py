"""CIFAR-10 (python version: pickled ``data_batch_1..5`` / ``test_batch``).

The batch files are read with a restricted unpickler that only resolves the globals
the real format needs (numpy's array reconstruction), so a crafted file cannot run
code: any other global raises ValueError naming the file and the global.
"""
import errno
import importlib
import pickle
from pathlib import Path

import numpy as np

from .dataset import Dataset

__all__ = ["CIFAR10Dataset", "load_cifar10_batch"]

_IMAGE_SIZE = 3 * 32 * 32


def _numpy_global(modules, name):
    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    return None


def _allowed_globals():
    reconstruct = _numpy_global(
        ("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct"
    )
    frombuffer = _numpy_global(("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer")
    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        if reconstruct is not None:
            allowed[(mod, "_reconstruct")] = reconstruct
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        if frombuffer is not None:
            # what numpy itself emits for arrays pickled with protocol 5
            allowed[(mod, "_frombuffer")] = frombuffer
    return allowed


class _BatchFormatError(ValueError):
    """A ValueError whose message already names the file."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module, name):
        obj = self._allowed.get((module, name))
        if obj is None:
            raise _BatchFormatError(
                f"{self._path}: forbidden global {module}.{name} in pickle "
                "(not part of the CIFAR-10 batch format)"
            )
        return obj

    def persistent_load(self, pid):
        raise _BatchFormatError(f"{self._path}: persistent ids are not allowed in pickle")


def _get(d, key):
    for k in (key, key.encode("ascii")):
        if k in d:
            return d[k], True
    return None, False


def load_cifar10_batch(filename):
    """Read one CIFAR-10 batch file safely.

    Returns (data uint8 (n, 3072), labels int64 (n,)). Raises FileNotFoundError for a
    missing file and ValueError (naming the file) for forbidden pickle content,
    missing keys or a wrong data size.
    """
    path = Path(filename)
    if not path.is_file():
        raise FileNotFoundError(
            errno.ENOENT, "CIFAR-10 batch file not found", str(path)
        )
    with open(path, "rb") as f:
        try:
            obj = _RestrictedUnpickler(f, path).load()
        except _BatchFormatError:
            raise
        except Exception as e:  # malformed pickle stream
            raise ValueError(f"{path}: cannot unpickle CIFAR-10 batch ({e!r})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    data, ok = _get(obj, "data")
    if not ok:
        raise ValueError(f"{path}: missing key 'data'")
    labels, ok = _get(obj, "labels")
    if not ok:
        raise ValueError(f"{path}: missing key 'labels'")
    if not isinstance(data, np.ndarray):
        raise ValueError(f"{path}: key 'data' is {type(data).__name__}, not a numpy array")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: key 'labels' is not a list of integers") from None
    if labels.ndim != 1:
        raise ValueError(f"{path}: key 'labels' has shape {labels.shape}, expected 1-D")
    bad = np.flatnonzero((labels < 0) | (labels >= 10))
    if bad.size:
        raise ValueError(f"{path}: label {int(labels[bad[0]])} at position {int(bad[0])} is outside [0, 10) "
                         f"({bad.size} such labels)")
    n = labels.shape[0]
    if data.size != n * _IMAGE_SIZE:
        raise ValueError(
            f"{path}: key 'data' has {data.size} values, expected "
            f"{n} labels x {_IMAGE_SIZE} = {n * _IMAGE_SIZE}"
        )
    if data.dtype != np.uint8:
        raise ValueError(f"{path}: key 'data' has dtype {data.dtype}, expected uint8")
    return data.reshape(n, _IMAGE_SIZE), labels


class CIFAR10Dataset(Dataset):
    """CIFAR-10: item i is (X[i] float32 (3, 32, 32) in [0, 1], label).

    ``train`` selects ``data_batch_1..5`` (50000 images) or ``test_batch`` (10000).
    ``p`` is kept for API compatibility (unused). Transforms act on (H, W, C)
    images, so each image is transposed to HWC, transformed, and transposed back.
    """

    def __init__(self, base_folder: str, train: bool, p=0.5, transforms=None):
        super().__init__(transforms)
        self.p = p
        self.train = train
        base = Path(base_folder)
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        datas, labels = [], []
        for name in names:
            d, l = load_cifar10_batch(base / name)
            datas.append(d)
            labels.append(l)
        data = np.concatenate(datas)
        self.X = (data.astype(np.float32) / np.float32(255.0)).reshape(-1, 3, 32, 32)
        self.y = np.concatenate(labels)

    def __len__(self) -> int:
        return self.X.shape[0]

    def _transform(self, img):
        if not self.transforms:
            return img
        return np.ascontiguousarray(
            self.apply_transforms(img.transpose(1, 2, 0)).transpose(2, 0, 1)
        )

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self._transform(self.X[index]), self.y[index]
        return self._fetch_batch(index)

    def _fetch_batch(self, indices):
        X = self.X[indices]
        y = self.y[indices]
        if self.transforms and len(X):
            X = np.stack([self._transform(img) for img in X])
        return X, y

    _batch_getitem = __getitem__
