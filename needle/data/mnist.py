"""MNIST in the IDX format (gzip-compressed, as published)."""
import gzip
import zlib
from pathlib import Path

import numpy as np

from .dataset import Dataset

__all__ = ["MNISTDataset", "parse_mnist", "read_idx_images", "read_idx_labels"]

N_CLASSES = 10
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


def _read_bytes(filename) -> bytes:
    """File contents, gunzipped when the file is gzip (magic 1f 8b)."""
    path = Path(filename)
    raw = path.read_bytes()  # FileNotFoundError names the path itself
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from None


def _header(path, buf: bytes, magic: int, ndims: int):
    need = 4 * (1 + ndims)
    if len(buf) < need:
        raise ValueError(
            f"{path}: truncated IDX header ({len(buf)} bytes, need {need})"
        )
    head = np.frombuffer(buf, dtype=">u4", count=1 + ndims)
    if int(head[0]) != magic:
        raise ValueError(
            f"{path}: wrong IDX magic number {int(head[0])} (expected {magic})"
        )
    return [int(d) for d in head[1:]], need


def _payload(path, buf: bytes, offset: int, dims):
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(buf) - offset
    if got < expected:
        raise ValueError(
            f"{path}: truncated IDX payload ({got} bytes, header says {expected})"
        )
    if got > expected:
        raise ValueError(
            f"{path}: IDX payload size mismatch ({got} bytes, header says {expected})"
        )
    return np.frombuffer(buf, dtype=np.uint8, count=expected, offset=offset)


def read_idx_images(filename) -> np.ndarray:
    """uint8 array (N, rows, cols) from an IDX3 image file (gzip or raw)."""
    path = Path(filename)
    buf = _read_bytes(path)
    dims, off = _header(path, buf, IMAGES_MAGIC, 3)
    return _payload(path, buf, off, dims).reshape(dims)


def read_idx_labels(filename) -> np.ndarray:
    """uint8 array (N,) from an IDX1 label file (gzip or raw)."""
    path = Path(filename)
    buf = _read_bytes(path)
    dims, off = _header(path, buf, LABELS_MAGIC, 1)
    return _payload(path, buf, off, dims).reshape(dims)


def _load(image_filename, label_filename):
    images = read_idx_images(image_filename)
    labels = read_idx_labels(label_filename)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{image_filename} has {images.shape[0]} images but {label_filename} "
            f"has {labels.shape[0]} labels (count mismatch)"
        )
    bad = np.flatnonzero(labels >= N_CLASSES)
    if bad.size:
        raise ValueError(f"{label_filename}: label {int(labels[bad[0]])} at position {int(bad[0])} is outside "
                         f"[0, {N_CLASSES}) ({bad.size} such labels)")
    X = images.astype(np.float32) / np.float32(255.0)
    return X, labels.copy()


def parse_mnist(image_filename, label_filename):
    """Read MNIST IDX files.

    Returns (X float32 (N, rows*cols) in [0, 1], y uint8 (N,)).
    Raises ValueError (naming the file and the problem) on a wrong magic number, a
    truncated gzip stream or payload, an image/label count mismatch or a label outside [0, 10).
    """
    X, y = _load(image_filename, label_filename)
    return X.reshape(X.shape[0], -1), y


class MNISTDataset(Dataset):
    """MNIST: item i is (image float32 (28, 28, 1) in [0, 1], label uint8).

    Transforms are applied per image (in index order); a slice or an index array
    returns the stacked (images (n, 28, 28, 1), labels (n,)).
    """

    def __init__(self, image_filename: str, label_filename: str, transforms=None):
        super().__init__(transforms)
        X, y = _load(image_filename, label_filename)
        self.images = X[..., None]  # (N, rows, cols, 1)
        self.labels = y

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.apply_transforms(self.images[index]), self.labels[index]
        return self._fetch_batch(index)

    def _fetch_batch(self, indices):
        imgs = self.images[indices]
        labels = self.labels[indices]
        if self.transforms and len(imgs):
            imgs = np.stack([self.apply_transforms(img) for img in imgs])
        return imgs, labels

    _batch_getitem = __getitem__
