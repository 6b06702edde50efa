"""Shape, axis, index and dtype arithmetic of the NDArray backend (no arrays here)."""
from __future__ import annotations

import builtins
import functools
import math
import numbers
import operator

import numpy as np

_builtin_max = builtins.max
_builtin_sum = builtins.sum


def prod(x):
    return math.prod(x)


@functools.lru_cache(maxsize=4096)
def _compact_strides(shape):
    stride = 1
    res = []
    for s in reversed(shape):
        res.append(stride)
        stride *= s
    return tuple(res[::-1])


_LAYOUTS: dict = {}


def _layout(shape) -> tuple:
    """(shape as ints, compact strides, size) of `shape` (any sequence of integers), validated
    (no negative dimension, addressable) and memoised: every new array's hot path."""
    key = shape if type(shape) is tuple else tuple(shape)
    layout = _LAYOUTS.get(key)
    if layout is None:
        ints = tuple(map(int, key))
        if builtins.min(ints, default=1) < 0:
            raise ValueError(f"negative dimensions are not allowed: {ints}")
        size = prod(ints)
        if size >= 2 ** 62 // 4:
            raise ValueError(f"array of shape {ints} is too large ({size} elements of 4 bytes)")
        if len(_LAYOUTS) > 4096:
            _LAYOUTS.clear()
        layout = _LAYOUTS[key] = (ints, _compact_strides(ints), size)
    return layout


def _check_dtype(dtype):
    """Accept float32 and bool (stored as float32 0/1, exact); any other requested dtype
    (float16, bfloat16, float64, integers, ...) is a TypeError naming float32."""
    if dtype is None:
        return
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        np_dtype = None  # e.g. "bfloat16", which numpy does not know
    if np_dtype == np.float32 or np_dtype == np.bool_:
        return
    raise TypeError(f"the nd backend supports only dtype float32 (bool is stored as float32 0/1), "
                    f"got dtype {dtype!r}; NEEDLE_BACKEND=np keeps numpy dtypes")


def _as_shape(shape):
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    try:
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints, got {shape!r}") from None
    for s in shape:
        if s < 0:
            raise ValueError(f"negative dimensions are not allowed: {shape}")
    return shape


def _norm_axis(axis, ndim):
    ax = operator.index(axis)
    if not -ndim <= ax < ndim:
        raise np.exceptions.AxisError(f"axis {axis} is out of bounds for array of dimension {ndim}")
    return ax + ndim if ax < 0 else ax


def _norm_axes(axis, ndim):
    """None -> all axes; int or tuple -> sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (tuple, list)):
        axes = tuple(_norm_axis(a, ndim) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError(f"duplicate value in 'axis': {axis}")
        return tuple(sorted(axes))
    return (_norm_axis(axis, ndim),)


def n_axes_contiguous(axes):
    """True if the sorted axes are consecutive (e.g. (1, 2))."""
    return all(b == a + 1 for a, b in zip(axes, axes[1:]))


def _is_scalar(x):
    return isinstance(x, (numbers.Number, np.number, np.bool_)) or (isinstance(x, np.ndarray) and x.ndim == 0)


def _shape_str(shape):
    return str(tuple(shape))


def _explicit_slice(sl: slice, size: int) -> slice:
    """`sl` with explicit start, stop and step (a positive step) for an axis of `size`."""
    if sl.step is not None and operator.index(sl.step) <= 0:
        raise ValueError(f"only positive slice steps are supported, got {sl.step}")
    start, stop, step = sl.indices(size)
    return slice(start, builtins.max(stop, start), step)



def _broadcast_shapes(s1, s2):
    n = _builtin_max(len(s1), len(s2))
    s1, s2 = (1,) * (n - len(s1)) + tuple(s1), (1,) * (n - len(s2)) + tuple(s2)
    out = []
    for x, y in zip(s1, s2):
        if x != y and x != 1 and y != 1:
            return None
        out.append(x if y == 1 else y)
    return tuple(out)

