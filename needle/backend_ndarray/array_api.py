"""The array API of the NDArray backend: numpy's names and signatures, so that needle's ops
call ``array_api.<fn>`` on either numpy or this backend."""
from __future__ import annotations

import builtins
import numbers

import numpy as np

from .core import NDArray, default_device
from .shapes import _builtin_sum, _check_dtype, _is_scalar, _norm_axis, _norm_axes, _shape_str, prod

__all__ = [
    "array", "asarray", "empty", "full", "zeros", "ones", "empty_like", "zeros_like", "ones_like",
    "broadcast_to", "reshape", "transpose", "permute_dims", "swapaxes", "expand_dims", "squeeze",
    "maximum", "minimum", "log", "exp", "tanh", "sin", "cos", "sqrt", "negative", "abs",
    "add", "subtract", "multiply", "divide", "power", "equal", "greater_equal",
    "sum", "max", "min", "argmax", "flip", "pad", "matmul", "matmul_tiled", "where",
    "concatenate", "stack", "split", "take", "index_add", "im2col", "col2im",
]


def _nd(a, device=None):
    if isinstance(a, NDArray):
        return a if device is None or a.device == device else a.to(device)
    return NDArray(a, device=device)


def array(a, dtype="float32", device=None):
    _check_dtype(dtype)
    return NDArray(a, device=device)


def asarray(a, dtype="float32", device=None):
    _check_dtype(dtype)
    if isinstance(a, NDArray) and (device is None or a.device == device):
        return a
    return NDArray(a, device=device)


def empty(shape, dtype="float32", device=None):
    device = device if device is not None else default_device()
    return device.empty(shape, dtype)


def full(shape, fill_value, dtype="float32", device=None):
    device = device if device is not None else default_device()
    return device.full(shape, fill_value, dtype)


def zeros(shape, dtype="float32", device=None):
    return full(shape, 0.0, dtype, device)


def ones(shape, dtype="float32", device=None):
    return full(shape, 1.0, dtype, device)


def empty_like(a, dtype="float32", device=None):
    return empty(a.shape, dtype, device if device is not None else a.device)


def zeros_like(a, dtype="float32", device=None):
    return zeros(a.shape, dtype, device if device is not None else a.device)


def ones_like(a, dtype="float32", device=None):
    return ones(a.shape, dtype, device if device is not None else a.device)


def broadcast_to(a, shape):
    return _nd(a).broadcast_to(shape)


def reshape(a, newshape):
    """numpy-style reshape: compacts a non-compact input first."""
    return _nd(a).compact().reshape(newshape)


def transpose(a, axes=None):
    return _nd(a).transpose(axes)


permute_dims = transpose


def swapaxes(a, axis1, axis2):
    a = _nd(a)
    perm = list(range(a.ndim))
    i, j = _norm_axis(axis1, a.ndim), _norm_axis(axis2, a.ndim)
    perm[i], perm[j] = perm[j], perm[i]
    return a.permute(perm)


def expand_dims(a, axis):
    a = _nd(a)
    axes = _norm_axes(axis, a.ndim + (len(axis) if isinstance(axis, (tuple, list)) else 1))
    shape = list(a.shape)
    for ax in axes:
        shape.insert(ax, 1)
    return reshape(a, tuple(shape))


def squeeze(a, axis=None):
    a = _nd(a)
    if axis is None:
        axes = tuple(i for i, s in enumerate(a.shape) if s == 1)
    else:
        axes = _norm_axes(axis, a.ndim)
        for ax in axes:
            if a.shape[ax] != 1:
                raise ValueError(f"cannot select an axis to squeeze out which has size not equal to one: "
                                 f"axis {ax} of shape {a.shape}")
    return reshape(a, tuple(s for i, s in enumerate(a.shape) if i not in axes))


def _binary(a, b, method):
    if isinstance(a, NDArray):
        return getattr(a, method)(b)
    if isinstance(b, NDArray) and _is_scalar(a):
        return getattr(full(b.shape, float(a), device=b.device), method)(b)
    return getattr(_nd(a), method)(b)


def maximum(a, b):
    return _binary(a, b, "maximum")


def minimum(a, b):
    return -maximum(-_nd(a) if not _is_scalar(a) else -float(a), -_nd(b) if not _is_scalar(b) else -float(b))


def add(a, b):
    return _binary(a, b, "__add__")


def subtract(a, b):
    return _binary(a, b, "__sub__")


def multiply(a, b):
    return _binary(a, b, "__mul__")


def divide(a, b):
    return _binary(a, b, "__truediv__")


def power(a, b):
    return _binary(a, b, "__pow__")


def equal(a, b):
    return _binary(a, b, "__eq__")


def greater_equal(a, b):
    return _binary(a, b, "__ge__")


def negative(a):
    return -_nd(a)


def abs(a):  # noqa: A001 (numpy name)
    return builtins.abs(_nd(a))


def log(a):
    return _nd(a).log()


def exp(a):
    return _nd(a).exp()


def tanh(a):
    return _nd(a).tanh()


def sin(a):
    return _nd(a).sin()


def cos(a):
    return _nd(a).cos()


def sqrt(a):
    return _nd(a).sqrt()


def sum(a, axis=None, keepdims=False):  # noqa: A001
    return _nd(a).sum(axis=axis, keepdims=keepdims)


def max(a, axis=None, keepdims=False):  # noqa: A001
    return _nd(a).max(axis=axis, keepdims=keepdims)


def min(a, axis=None, keepdims=False):  # noqa: A001
    return _nd(a).min(axis=axis, keepdims=keepdims)


def argmax(a, axis=None, keepdims=False):
    return _nd(a).argmax(axis=axis, keepdims=keepdims)


def flip(a, axis=None):
    return _nd(a).flip(axis)


def pad(a, pad_width, mode="constant", constant_values=0):
    a = _nd(a)
    if mode != "constant":
        raise ValueError(f"pad: only mode='constant' is supported, got {mode!r}")
    if isinstance(pad_width, numbers.Integral):
        pad_width = ((pad_width, pad_width),) * a.ndim
    if constant_values == 0:
        return a.pad(pad_width)
    pad_width = tuple(tuple(int(v) for v in p) for p in pad_width)
    out = full(tuple(s + l + r for s, (l, r) in zip(a.shape, pad_width)), float(constant_values), device=a.device)
    out[tuple(slice(l, l + s) for s, (l, r) in zip(a.shape, pad_width))] = a
    return out


def matmul_tiled(a, b):
    """2-D a @ b through the device's matmul_tiled kernel (dims multiple of __tile_size__)."""
    a, b = _nd(a), _nd(b, a.device)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul_tiled: shapes {_shape_str(a.shape)} and {_shape_str(b.shape)} not aligned")
    dev = a.device
    t = dev.__tile_size__
    m, n, p = a.shape[0], a.shape[1], b.shape[1]
    if m % t or n % t or p % t:
        raise ValueError(f"matmul_tiled: dimensions {(m, n, p)} must be multiples of the tile size {t}")

    def tile(x, tile_size):
        x = x.compact()
        return x.as_strided((x.shape[0] // tile_size, x.shape[1] // tile_size, tile_size, tile_size),
                            (x.shape[1] * tile_size, tile_size, x.shape[1], 1))

    out = NDArray.make((m // t, p // t, t, t), device=dev)
    dev.matmul_tiled(tile(a, t).compact()._handle, tile(b, t).compact()._handle, out._handle, m, n, p)
    return out.permute((0, 2, 1, 3)).compact().reshape((m, p))


def matmul(a, b):
    """numpy matmul for 2-D and batched N-D arrays (batch dims broadcast)."""
    return _nd(a) @ _nd(b)


def where(condition, x, y):
    """condition ? x : y elementwise (condition nonzero = true); x, y NDArrays or scalars."""
    cond = _nd(condition)
    dev = cond.device
    x = full(cond.shape, float(x), device=dev) if _is_scalar(x) else _nd(x, dev)
    y = full(cond.shape, float(y), device=dev) if _is_scalar(y) else _nd(y, dev)
    if not (cond.shape == x.shape == y.shape):
        raise ValueError(f"where: shapes {_shape_str(cond.shape)}, {_shape_str(x.shape)} and "
                         f"{_shape_str(y.shape)} differ (broadcast explicitly)")
    out = NDArray.make(cond.shape, device=dev)
    if hasattr(dev.mod, "ewise_where"):
        dev.ewise_where(cond.compact()._handle, x.compact()._handle, y.compact()._handle, out._handle)
        return out
    mask = 1.0 - (cond == 0.0)
    return x * mask + y * (1.0 - mask)


def concatenate(arrays, axis=0):
    arrays = [_nd(a) for a in arrays]
    if not arrays:
        raise ValueError("need at least one array to concatenate")
    first = arrays[0]
    if first.ndim == 0:
        raise ValueError("zero-dimensional arrays cannot be concatenated")
    axis = _norm_axis(axis, first.ndim)
    for a in arrays[1:]:
        if a.ndim != first.ndim or any(s != t for i, (s, t) in enumerate(zip(a.shape, first.shape)) if i != axis):
            raise ValueError(f"concatenate: shapes {_shape_str(first.shape)} and {_shape_str(a.shape)} "
                             f"do not match except along axis {axis}")
    shape = list(first.shape)
    shape[axis] = _builtin_sum(a.shape[axis] for a in arrays)
    out = NDArray.make(tuple(shape), device=first.device)
    pos = 0
    for a in arrays:
        k = a.shape[axis]
        if k:
            idx = tuple(slice(pos, pos + k) if i == axis else slice(None) for i in range(first.ndim))
            out[idx] = a.to(first.device)
        pos += k
    return out


def stack(arrays, axis=0):
    arrays = [_nd(a) for a in arrays]
    if not arrays:
        raise ValueError("need at least one array to stack")
    shape = arrays[0].shape
    for a in arrays[1:]:
        if a.shape != shape:
            raise ValueError(f"stack: all input arrays must have the same shape, got {_shape_str(shape)} "
                             f"and {_shape_str(a.shape)}")
    axis = _norm_axis(axis, len(shape) + 1)
    new_shape = shape[:axis] + (1,) + shape[axis:]
    return concatenate([reshape(a, new_shape) for a in arrays], axis=axis)


def split(a, indices_or_sections, axis=0):
    a = _nd(a)
    axis = _norm_axis(axis, a.ndim)
    n = a.shape[axis]
    if isinstance(indices_or_sections, numbers.Integral):
        k = int(indices_or_sections)
        if k <= 0 or n % k:
            raise ValueError("array split does not result in an equal division")
        bounds = [i * (n // k) for i in range(k + 1)]
    else:
        bounds = [0] + [int(i) for i in indices_or_sections] + [n]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        lo, hi = builtins.min(lo, n), builtins.min(builtins.max(hi, lo), n)
        idx = tuple(slice(lo, hi) if i == axis else slice(None) for i in range(a.ndim))
        out.append(a[idx].compact())
    return out


def _index_nd(indices, device):
    """Indices as a compact float32 NDArray on device (numpy ints / lists accepted)."""
    if isinstance(indices, NDArray):
        return indices.to(device).compact()
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iufb":
        raise IndexError(f"indices must be integers, got dtype {idx.dtype}")
    if idx.size and (np.abs(idx).max() >= 2 ** 24):
        raise IndexError("take: index too large to be represented exactly in float32")
    return NDArray(idx.astype(np.float32), device=device)


def take(a, indices, axis=0):
    """Rows of a (axis 0) picked by indices: shape indices.shape + a.shape[1:]."""
    a = _nd(a)
    if axis != 0:
        raise ValueError("take: only axis=0 is supported")
    if a.ndim == 0:
        raise ValueError("take: cannot index a 0-d array")
    idx = _index_nd(indices, a.device)
    row_shape = a.shape[1:]
    out = NDArray.make(idx.shape + row_shape, device=a.device)
    a.device.take_rows(a.compact()._handle, idx._handle, out._handle, a.shape[0], prod(row_shape))
    return out


def index_add(indices, values, num_rows):
    """Scatter-add: zeros (num_rows, *values.shape[indices.ndim:]) with values[i] added at row indices[i]."""
    values = _nd(values)
    idx = _index_nd(indices, values.device)
    if values.shape[:idx.ndim] != idx.shape:
        raise ValueError(f"index_add: values shape {_shape_str(values.shape)} does not start with the "
                         f"indices shape {_shape_str(idx.shape)}")
    row_shape = values.shape[idx.ndim:]
    out = zeros((int(num_rows),) + row_shape, device=values.device)
    values.device.index_add_rows(values.compact()._handle, idx._handle, out._handle, int(num_rows),
                                 prod(row_shape))
    return out


def col2im(cols, shape, stride):
    """The adjoint of im2col: (N, Ho, Wo, KH, KW, C) patches summed into zeros of `shape`
    (N, H, W, C) at the positions im2col read them from."""
    cols = _nd(cols).compact()
    n, h, w, c = (int(d) for d in shape)
    _, ho, wo, kh, kw, _ = cols.shape
    stride = int(stride)
    out = zeros((n, h, w, c), device=cols.device)
    for dy in range(kh):
        for dx in range(kw):
            window = (slice(0, n), slice(dy, dy + stride * (ho - 1) + 1, stride),
                      slice(dx, dx + stride * (wo - 1) + 1, stride), slice(0, c))
            piece = cols[:, :, :, dy:dy + 1, dx:dx + 1, :].compact().reshape((n, ho, wo, c))
            out[window] = out[window] + piece
    return out


def im2col(a, kernel_size, stride):
    """(N, H, W, C) -> compact (N, Ho, Wo, KH, KW, C) patches; kernel_size is K or (KH, KW)."""
    a = _nd(a).compact()
    if a.ndim != 4:
        raise ValueError(f"im2col: expected an NHWC array, got shape {_shape_str(a.shape)}")
    n, h, w, c = a.shape
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, numbers.Integral) else tuple(kernel_size)
    stride = int(stride)
    if stride < 1 or kh < 1 or kw < 1 or kh > h or kw > w:
        raise ValueError(f"im2col: kernel {(kh, kw)} / stride {stride} invalid for input of shape {a.shape}")
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    sn, sh, sw, sc = a.strides
    view = a.as_strided((n, ho, wo, kh, kw, c), (sn, sh * stride, sw * stride, sh, sw, sc))
    return view._copy()
