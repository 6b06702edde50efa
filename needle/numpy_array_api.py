"""The array API of the numpy backend: numpy itself plus the few extras needle's ops use.

Every function here has the same name and arguments as its twin in
`needle.backend_ndarray`, so ops are written once against either module.
"""
from __future__ import annotations

import numpy as np
from numpy import (  # noqa: F401  (re-exported array API)
    abs,
    argmax,
    broadcast_to,
    concatenate,
    cos,
    exp,
    flip,
    log,
    matmul,
    max,
    maximum,
    minimum,
    ndarray,
    pad,
    reshape,
    sin,
    sqrt,
    stack,
    sum,
    tanh,
    transpose,
    where,
)


def array(a, dtype=None, device=None) -> np.ndarray:
    """A numpy array copy of `a` (dtype None keeps numpy's inference)."""
    return np.array(a, dtype=dtype)


def full(shape, fill_value, dtype="float32", device=None) -> np.ndarray:
    return np.full(shape, fill_value, dtype=dtype)


def empty(shape, dtype="float32", device=None) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


def zeros(shape, dtype="float32", device=None) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


def ones(shape, dtype="float32", device=None) -> np.ndarray:
    return np.ones(shape, dtype=dtype)


def _index_array(indices, bound: int) -> np.ndarray:
    idx = np.asarray(indices)
    idx_int = idx.astype(np.int64)
    if idx.size and (not np.array_equal(idx_int, idx) or idx_int.min() < 0 or idx_int.max() >= bound):
        raise IndexError(f"indices must be integers in [0, {bound}); got range "
                         f"[{idx.min()}, {idx.max()}]")
    return idx_int


def take(a: np.ndarray, indices, axis: int = 0) -> np.ndarray:
    """Rows of `a` (axis 0) picked by `indices`: shape indices.shape + a.shape[1:]."""
    if axis != 0:
        raise ValueError("take: only axis=0 is supported")
    return np.take(a, _index_array(indices, a.shape[0]), axis=0)


def index_add(indices, values: np.ndarray, num_rows: int) -> np.ndarray:
    """Scatter-add: zeros (num_rows, *rest) with values[i] added at row indices[i]."""
    idx = _index_array(indices, num_rows)
    row_shape = values.shape[idx.ndim:]
    out = np.zeros((num_rows,) + row_shape, dtype=values.dtype)
    np.add.at(out, idx.reshape(-1), values.reshape((-1,) + row_shape))
    return out


def col2im(cols: np.ndarray, shape, stride: int) -> np.ndarray:
    """The adjoint of im2col: (N, Ho, Wo, KH, KW, C) patches summed into zeros of `shape`
    (N, H, W, C) at the positions im2col read them from."""
    _, ho, wo, kh, kw, _ = cols.shape
    out = np.zeros(shape, dtype=cols.dtype)
    for dy in range(kh):
        for dx in range(kw):
            out[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride, :] += \
                cols[:, :, :, dy, dx, :]
    return out


def im2col(a: np.ndarray, kernel_size, stride: int) -> np.ndarray:
    """(N, H, W, C) -> (N, Ho, Wo, KH, KW, C) patches, compact; kernel_size is K or (KH, KW)."""
    n, h, w, c = a.shape
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    s = a.strides
    view = np.lib.stride_tricks.as_strided(
        a, (n, ho, wo, kh, kw, c), (s[0], s[1] * stride, s[2] * stride, s[1], s[2], s[3]),
        writeable=False)
    return np.ascontiguousarray(view)
