"""Pure-numpy device module with the same low-level interface as ndarray_backend_cpu.

Used by the `cpu_numpy()` device (and as a reference in tests).  Arguments are
validated like the C++ module: bad sizes raise ValueError, views reaching
outside a buffer and bad gather indices raise IndexError.
"""
import numpy as np

__device_name__ = "numpy"
__tile_size__ = 8

_DTYPE = np.float32
_ITEMSIZE = np.dtype(_DTYPE).itemsize


class Array:
    """A flat float32 buffer."""

    def __init__(self, size):
        size = int(size)
        if size < 0:
            raise ValueError(f"Array: negative size {size}")
        if size > 1 << 40:  # the compiled modules' limit
            raise ValueError(f"Array: size too large: {size}")
        self.array = np.empty(size, dtype=_DTYPE)

    @property
    def size(self):
        return self.array.size

    def ptr(self):
        return self.array.__array_interface__["data"][0]


def _check_size(fn, what, a, expected):
    if not isinstance(a, Array):
        raise TypeError(f"{fn}: {what} must be an Array, got {type(a).__name__}")
    if a.size != expected:
        raise ValueError(f"{fn}: {what} has size {a.size}, expected {expected}")


def _check_view(fn, buf_size, shape, strides, offset):
    shape, strides, offset = tuple(int(s) for s in shape), tuple(int(s) for s in strides), int(offset)
    if len(shape) != len(strides):
        raise ValueError(f"{fn}: shape {shape} and strides {strides} have different lengths")
    if offset < 0:
        raise ValueError(f"{fn}: negative offset {offset}")
    if any(s < 0 for s in shape):
        raise ValueError(f"{fn}: negative dimension in shape {shape}")
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if numel:
        lo = offset + sum((s - 1) * st for s, st in zip(shape, strides) if st < 0)
        hi = offset + sum((s - 1) * st for s, st in zip(shape, strides) if st > 0)
        if lo < 0 or hi >= buf_size:
            raise IndexError(f"{fn}: view (shape {shape}, strides {strides}, offset {offset}) reaches "
                             f"elements [{lo}, {hi}] outside the buffer of size {buf_size}")
    return shape, strides, offset, numel


def _view(a, shape, strides, offset, writeable=False):
    """numpy view of buffer `a` (already validated); negative strides allowed."""
    base = a.array
    if not shape or int(np.prod(shape)) == 0:
        return np.lib.stride_tricks.as_strided(base[offset:offset + 1] if base.size else base,
                                               shape, [s * _ITEMSIZE for s in strides], writeable=writeable)
    # as_strided on the whole buffer, starting at `offset` (views stay inside it)
    start = base[offset:]
    return np.lib.stride_tricks.as_strided(start, shape, [s * _ITEMSIZE for s in strides], writeable=writeable)


def to_numpy(a, shape, strides, offset):
    shape, strides, offset, numel = _check_view("to_numpy", a.size, shape, strides, offset)
    if numel == 0:
        return np.empty(shape, dtype=_DTYPE)
    return _view(a, shape, strides, offset).copy()


def from_numpy(a, out):
    a = np.ascontiguousarray(a, dtype=_DTYPE)
    if a.size != out.size:
        raise ValueError(f"from_numpy: array has {a.size} elements, buffer has {out.size}")
    out.array[:] = a.reshape(-1)


def fill(out, val):
    out.array.fill(val)


def compact(a, out, shape, strides, offset):
    shape, strides, offset, numel = _check_view("compact", a.size, shape, strides, offset)
    _check_size("compact", "out", out, numel)
    if numel and a is out:
        raise ValueError("compact: a and out must be different buffers")
    if numel:
        out.array[:] = _view(a, shape, strides, offset).reshape(-1)


def ewise_setitem(a, out, shape, strides, offset):
    shape, strides, offset, numel = _check_view("ewise_setitem", out.size, shape, strides, offset)
    _check_size("ewise_setitem", "a", a, numel)
    if numel:
        _view(out, shape, strides, offset, writeable=True)[...] = a.array.reshape(shape)


def scalar_setitem(size, val, out, shape, strides, offset):
    shape, strides, offset, numel = _check_view("scalar_setitem", out.size, shape, strides, offset)
    if int(size) != numel:
        raise ValueError(f"scalar_setitem: size {size} does not match shape {shape}")
    if numel:
        _view(out, shape, strides, offset, writeable=True)[...] = val


def _binary(name, fn):
    def ewise(a, b, out):
        _check_size("ewise_" + name, "b", b, a.size)
        _check_size("ewise_" + name, "out", out, a.size)
        with np.errstate(all="ignore"):
            out.array[:] = fn(a.array, b.array)

    def scalar(a, val, out):
        _check_size("scalar_" + name, "out", out, a.size)
        with np.errstate(all="ignore"):
            out.array[:] = fn(a.array, _DTYPE(val))

    ewise.__name__, scalar.__name__ = "ewise_" + name, "scalar_" + name
    return ewise, scalar


ewise_add, scalar_add = _binary("add", np.add)
ewise_mul, scalar_mul = _binary("mul", np.multiply)
ewise_div, scalar_div = _binary("div", np.divide)
ewise_maximum, scalar_maximum = _binary("maximum", np.maximum)
ewise_eq, scalar_eq = _binary("eq", lambda x, y: (x == y).astype(_DTYPE))
ewise_ge, scalar_ge = _binary("ge", lambda x, y: (x >= y).astype(_DTYPE))
ewise_power, scalar_power = _binary("power", np.power)


def _unary(name, fn):
    def f(a, out):
        _check_size(name, "out", out, a.size)
        with np.errstate(all="ignore"):
            out.array[:] = fn(a.array)

    f.__name__ = name
    return f


ewise_log = _unary("ewise_log", np.log)
ewise_exp = _unary("ewise_exp", np.exp)
ewise_tanh = _unary("ewise_tanh", np.tanh)
ewise_sin = _unary("ewise_sin", np.sin)
ewise_cos = _unary("ewise_cos", np.cos)
ewise_sqrt = _unary("ewise_sqrt", np.sqrt)
ewise_neg = _unary("ewise_neg", np.negative)


def ewise_where(cond, a, b, out):
    for what, x in (("a", a), ("b", b), ("out", out)):
        _check_size("ewise_where", what, x, cond.size)
    out.array[:] = np.where(cond.array != 0, a.array, b.array)


def _check_dims(fn, *dims):
    for d in dims:
        if int(d) < 0:
            raise ValueError(f"{fn}: negative dimension {d}")


def matmul(a, b, out, m, n, p):
    _check_dims("matmul", m, n, p)
    _check_size("matmul", "a", a, m * n)
    _check_size("matmul", "b", b, n * p)
    _check_size("matmul", "out", out, m * p)
    out.array[:] = (a.array.reshape(m, n) @ b.array.reshape(n, p)).reshape(-1)


def matmul_tiled(a, b, out, m, n, p):
    t = __tile_size__
    _check_dims("matmul_tiled", m, n, p)
    if m % t or n % t or p % t:
        raise ValueError(f"matmul_tiled: dimensions ({m}, {n}, {p}) must be multiples of the tile size {t}")
    _check_size("matmul_tiled", "a", a, m * n)
    _check_size("matmul_tiled", "b", b, n * p)
    _check_size("matmul_tiled", "out", out, m * p)
    at = a.array.reshape(m // t, n // t, t, t)
    bt = b.array.reshape(n // t, p // t, t, t)
    out.array[:] = np.einsum("ikrc,kjcq->ijrq", at, bt).reshape(-1)


def matmul_batched(a, b, out, batch, m, n, p, a_batch_stride, b_batch_stride):
    fn = "matmul_batched"
    _check_dims(fn, batch, m, n, p, a_batch_stride, b_batch_stride)
    _check_size(fn, "out", out, batch * m * p)
    if batch == 0:
        return
    for what, x, need in (("a", a, (batch - 1) * a_batch_stride + m * n),
                          ("b", b, (batch - 1) * b_batch_stride + n * p)):
        if x.size < need:
            raise ValueError(f"{fn}: {what} has size {x.size}, needs at least {need}")
    av = np.lib.stride_tricks.as_strided(a.array, (batch, m, n), (a_batch_stride * 4, n * 4, 4))
    bv = np.lib.stride_tricks.as_strided(b.array, (batch, n, p), (b_batch_stride * 4, p * 4, 4))
    out.array[:] = np.matmul(av, bv).reshape(-1)


def _check_reduce(fn, a, out, n):
    n = int(n)
    if n < 0:
        raise ValueError(f"{fn}: negative reduction size {n}")
    if n == 0:
        if a.size:
            raise ValueError(f"{fn}: reduction size 0 with a non-empty input of size {a.size}")
    else:
        _check_size(fn, "a", a, out.size * n)
    return n


def reduce_sum(a, out, n):
    n = _check_reduce("reduce_sum", a, out, n)
    with np.errstate(all="ignore"):
        out.array[:] = a.array.reshape(out.size, n).sum(axis=1) if n else 0.0


def reduce_max(a, out, n):
    n = _check_reduce("reduce_max", a, out, n)
    if n == 0:
        if out.size:
            raise ValueError("reduce_max: zero-size reduction has no identity")
        return
    out.array[:] = a.array.reshape(out.size, n).max(axis=1)


def _reduce_axis(fn, a, out, outer, n, inner, op):
    _check_dims(fn, outer, n, inner)
    _check_size(fn, "out", out, outer * inner)
    _check_size(fn, "a", a, outer * n * inner)
    if n == 0:
        if op is np.max and out.size:
            raise ValueError(f"{fn}: zero-size reduction has no identity")
        out.array[:] = 0.0
        return
    with np.errstate(all="ignore"):
        out.array[:] = op(a.array.reshape(outer, n, inner), axis=1).reshape(-1)


def reduce_sum_axis(a, out, outer, n, inner):
    _reduce_axis("reduce_sum_axis", a, out, outer, n, inner, np.sum)


def reduce_max_axis(a, out, outer, n, inner):
    _reduce_axis("reduce_max_axis", a, out, outer, n, inner, np.max)


def reduce_argmax(a, out, n):
    n = _check_reduce("reduce_argmax", a, out, n)
    if n == 0:
        if out.size:
            raise ValueError("reduce_argmax: attempt to get argmax of an empty sequence")
        return
    out.array[:] = a.array.reshape(out.size, n).argmax(axis=1).astype(_DTYPE)


def _rows(fn, idx, n_rows):
    v = idx.array
    bad = ~((v >= 0) & (v < n_rows) & (np.floor(v) == v))
    if bad.any():
        i = int(np.argmax(bad))
        raise IndexError(f"{fn}: index {v[i]} at position {i} is out of bounds for axis 0 with size {n_rows}")
    return v.astype(np.int64)


def take_rows(a, idx, out, n_rows, row_size):
    fn = "take_rows"
    _check_dims(fn, n_rows, row_size)
    _check_size(fn, "a", a, n_rows * row_size)
    _check_size(fn, "out", out, idx.size * row_size)
    rows = _rows(fn, idx, n_rows)
    out.array[:] = a.array.reshape(n_rows, row_size)[rows].reshape(-1)


def index_add_rows(values, idx, out, n_rows, row_size):
    fn = "index_add_rows"
    _check_dims(fn, n_rows, row_size)
    _check_size(fn, "out", out, n_rows * row_size)
    _check_size(fn, "values", values, idx.size * row_size)
    rows = _rows(fn, idx, n_rows)
    np.add.at(out.array.reshape(n_rows, row_size), rows, values.array.reshape(idx.size, row_size))


def set_num_threads(n):
    if int(n) < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")


def get_num_threads():
    return 1
