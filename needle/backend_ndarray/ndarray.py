"""NDArray: a strided float32 array on a backend device (cpu, cuda, cpu_numpy).

An NDArray is a view (shape, strides in elements, offset) on a flat buffer
(`_handle`) owned by a device module.  Views (reshape, permute, broadcast_to,
getitem) share the buffer; every computation returns a new compact array.

The module-level functions at the bottom have numpy's names and signatures so
that needle's ops can call ``array_api.<fn>`` on either numpy or this module.
"""
from __future__ import annotations

import builtins
import functools
import glob
import math
import numbers
import operator
import os
import warnings

import numpy as np

from . import ndarray_backend_numpy

__all__ = [
    "BackendDevice", "NDArray", "cpu", "cpu_numpy", "cuda", "default_device", "all_devices",
    "CPU_BACKEND_COMPILED", "BLAS_LOADED",
    "array", "asarray", "empty", "full", "zeros", "ones", "empty_like", "zeros_like", "ones_like",
    "broadcast_to", "reshape", "transpose", "permute_dims", "swapaxes", "expand_dims", "squeeze",
    "maximum", "minimum", "log", "exp", "tanh", "sqrt", "negative", "abs",
    "add", "subtract", "multiply", "divide", "power", "equal", "greater_equal",
    "sum", "max", "min", "argmax", "flip", "pad", "matmul", "matmul_tiled", "where",
    "concatenate", "stack", "split", "take", "index_add", "im2col", "col2im",
]

_builtin_max = builtins.max
_builtin_sum = builtins.sum


def prod(x):
    return math.prod(x)


# ---------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------
class BackendDevice:
    """A backend device: a name plus the low-level module that implements it."""

    def __init__(self, name, mod):
        self.name = name
        self.mod = mod

    def __eq__(self, other):
        return isinstance(other, BackendDevice) and self.name == other.name

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        return self.name + "()"

    __str__ = __repr__

    def __getattr__(self, name):
        # only reached for attributes not found normally: fall through to the module
        if (name.startswith("__") and name not in ("__tile_size__", "__device_name__")) or name in ("name", "mod"):
            raise AttributeError(name)
        mod = self.__dict__.get("mod")
        if mod is None:
            why = self.__dict__.get("unavailable") or "no backend module"
            raise DeviceUnavailable(f"device {self.__dict__.get('name')}() cannot be used here: {why}")
        value = getattr(mod, name)
        if callable(value):
            self.__dict__[name] = value  # cache: later lookups skip __getattr__
        return value

    def enabled(self):
        return self.mod is not None

    @staticmethod
    def _shape_args(shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            return tuple(shape[0])
        return shape

    def randn(self, *shape, dtype="float32"):
        # one call on numpy's global RNG for the whole shape (RNG contract)
        return NDArray(np.random.randn(*self._shape_args(shape)).astype(np.float32), device=self)

    def rand(self, *shape, dtype="float32"):
        return NDArray(np.random.rand(*self._shape_args(shape)).astype(np.float32), device=self)

    def one_hot(self, n, i, dtype="float32"):
        if isinstance(i, NDArray):
            i = i.numpy()
        i = np.asarray(i)
        if i.dtype.kind == "f":
            i = i.astype(np.int64)
        out = np.zeros(i.shape + (n,), dtype=np.float32)
        np.put_along_axis(out, i[..., None], 1.0, axis=-1)
        return NDArray(out, device=self)

    def empty(self, shape, dtype="float32"):
        _check_dtype(dtype)
        return NDArray.make(_as_shape(shape), device=self)

    def full(self, shape, fill_value, dtype="float32"):
        arr = self.empty(shape, dtype)
        arr.fill(fill_value)
        return arr


def _load_cpu_module():
    try:
        from . import ndarray_backend_cpu as mod
    except ImportError as e:  # not built: keep needle importable, but say so
        warnings.warn(f"needle: compiled cpu backend not available ({e}); cpu() falls back to the "
                      "numpy implementation. Build it with `pip install -e .`.", RuntimeWarning)
        return None
    return mod


def _init_blas(mod):
    """dlopen scipy-openblas32's sgemm into the cpu module (fallback kernel otherwise)."""
    if mod is None or os.environ.get("NEEDLE_NO_BLAS") == "1":
        return False
    try:
        import scipy_openblas32
        lib_dir = scipy_openblas32.get_lib_dir()
        name = scipy_openblas32.get_library()
    except Exception:
        return False
    for pattern in (f"lib{name}.so", f"lib{name}*.so*", f"lib{name}*.dylib", f"{name}*.dll", "*openblas*"):
        for path in sorted(glob.glob(os.path.join(lib_dir, pattern))):
            try:
                if mod.init_blas(path):
                    return True
            except Exception:
                pass
    return False


_cpu_mod = _load_cpu_module()
CPU_BACKEND_COMPILED = _cpu_mod is not None
BLAS_LOADED = _init_blas(_cpu_mod)
_CPU = BackendDevice("cpu", _cpu_mod if _cpu_mod is not None else ndarray_backend_numpy)
_CPU_NUMPY = BackendDevice("cpu_numpy", ndarray_backend_numpy)
_CUDA = None


def cpu():
    """The compiled C++ cpu device."""
    return _CPU


def cpu_numpy():
    """The pure-numpy device (same low-level interface as cpu())."""
    return _CPU_NUMPY


def _load_cuda_module():
    """(the compiled CUDA module or None when it is not built or no GPU is usable, why not)."""
    try:
        from . import ndarray_backend_cuda as mod
    except Exception as e:  # ImportError, or a CUDA runtime that fails to load
        return None, f"the cuda backend module is not built or does not load ({type(e).__name__}: {e})"
    try:
        count = int(mod.device_count())
    except Exception as e:
        return None, f"the CUDA runtime fails ({type(e).__name__}: {e}); the cuda backend module is built"
    return (mod, "") if count > 0 else (None, "no CUDA GPU is visible; the cuda backend module is built")


class DeviceUnavailable(RuntimeError, AttributeError):
    """A device that cannot run here (e.g. `cuda()` without a GPU); an AttributeError too,
    so `hasattr(device, ...)` stays False."""


def cuda():
    """The CUDA device; enabled() is True only when its module imports and a GPU is visible."""
    global _CUDA
    if _CUDA is None:
        mod, why = _load_cuda_module()
        _CUDA = BackendDevice("cuda", mod)
        _CUDA.__dict__["unavailable"] = why
    return _CUDA


def default_device():
    return _CPU


def all_devices():
    return [cpu(), cuda(), cpu_numpy()]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _compact_strides(shape):
    stride = 1
    res = []
    for s in reversed(shape):
        res.append(stride)
        stride *= s
    return tuple(res[::-1])


_LAYOUTS: dict = {}


def _layout(shape: tuple) -> tuple:
    """(compact strides, size) of a shape tuple, memoised (hot path of every op)."""
    layout = _LAYOUTS.get(shape)
    if layout is None:
        if len(_LAYOUTS) > 4096:
            _LAYOUTS.clear()
        layout = _LAYOUTS[shape] = (_compact_strides(shape), prod(shape))
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


# ---------------------------------------------------------------------------
# NDArray
# ---------------------------------------------------------------------------
def _explicit_slice(sl: slice, size: int) -> slice:
    """`sl` with explicit start, stop and step (a positive step) for an axis of `size`."""
    if sl.step is not None and operator.index(sl.step) <= 0:
        raise ValueError(f"only positive slice steps are supported, got {sl.step}")
    start, stop, step = sl.indices(size)
    return slice(start, builtins.max(stop, start), step)


class NDArray:
    """A generic strided float32 ND array on a BackendDevice."""

    __array_ufunc__ = None  # make numpy defer to our reflected operators

    def __init__(self, other, device=None):
        if isinstance(other, NDArray):
            if device is None:
                device = other.device
            src = other.to(device)
            self._init(src._copy() if src is other else src.compact())
        elif isinstance(other, np.ndarray):
            device = device if device is not None else default_device()
            if other.dtype.kind not in "fiub":
                raise TypeError(f"cannot make an NDArray from a numpy array of dtype {other.dtype}")
            array = self.make(other.shape, device=device)
            device.from_numpy(np.ascontiguousarray(other, dtype=np.float32), array._handle)
            self._init(array)
        else:
            self._init(NDArray(np.array(other, dtype=np.float32), device=device))

    def _init(self, other):
        self._shape = other._shape
        self._strides = other._strides
        self._offset = other._offset
        self._device = other._device
        self._handle = other._handle

    @staticmethod
    def compact_strides(shape):
        return _compact_strides(tuple(shape))

    @staticmethod
    def make(shape, strides=None, device=None, handle=None, offset=0):
        """An NDArray with the given fields; a new buffer when handle is None."""
        array = NDArray.__new__(NDArray)
        array._shape = shape = tuple(map(int, shape))
        array._strides = _compact_strides(shape) if strides is None else tuple(map(int, strides))
        array._offset = int(offset)
        array._device = device if device is not None else default_device()
        if handle is None:
            if builtins.min(shape, default=1) < 0:
                raise ValueError(f"negative dimensions are not allowed: {shape}")
            if prod(shape) >= 2 ** 62 // 4:
                raise ValueError(f"array of shape {shape} is too large ({prod(shape)} elements of 4 bytes)")
            array._handle = array._device.Array(prod(shape))
        else:
            array._handle = handle
            if strides is not None or offset:
                array._check_view()
        return array

    def _check_view(self):
        if len(self._strides) != len(self._shape):
            raise ValueError(f"shape {self._shape} and strides {self._strides} have different lengths")
        if prod(self._shape) == 0:
            return
        lo = hi = self._offset
        for s, st in zip(self._shape, self._strides):
            if s < 0:
                raise ValueError(f"negative dimension in shape {self._shape}")
            if st < 0:
                lo += (s - 1) * st
            else:
                hi += (s - 1) * st
        if lo < 0 or hi >= self._handle.size:
            raise IndexError(f"view (shape {self._shape}, strides {self._strides}, offset {self._offset}) "
                             f"is outside its buffer of size {self._handle.size}")

    # ---- properties ----------------------------------------------------
    @property
    def shape(self):
        return self._shape

    @property
    def strides(self):
        return self._strides

    @property
    def device(self):
        return self._device

    @property
    def dtype(self):
        return "float32"

    @property
    def ndim(self):
        return len(self._shape)

    @property
    def size(self):
        return prod(self._shape)

    @property
    def flat(self):
        return self.reshape((self.size,))

    def __len__(self):
        if not self._shape:
            raise TypeError("len() of unsized object")
        return self._shape[0]

    def __repr__(self):
        return "NDArray(" + self.numpy().__str__() + f", device={self.device})"

    def __str__(self):
        return self.numpy().__str__()

    def __array__(self, dtype=None, copy=None):
        out = self.numpy()
        return out if dtype is None else out.astype(dtype)

    def numpy(self):
        """A numpy copy of the array."""
        return self.device.to_numpy(self._handle, self._shape, self._strides, self._offset)

    def item(self):
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return float(self.numpy().reshape(-1)[0])

    def __float__(self):
        return self.item()

    def __bool__(self):
        if self.size != 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous")
        return bool(self.item())

    def tolist(self):
        return self.numpy().tolist()

    # ---- basic memory ops -------------------------------------------------
    def fill(self, value):
        """Fill (in place) with a constant value."""
        if self.is_compact():
            self._device.fill(self._handle, float(value))
        else:
            self[...] = value

    def to(self, device):
        if device == self.device:
            return self
        return NDArray(self.numpy(), device=device)

    def is_compact(self):
        """True when the array is the whole buffer in row-major order."""
        cs, size = _layout(self._shape)
        if self._offset != 0 or size != self._handle.size:
            return False
        return self._strides == cs or all(st == c for s, st, c in zip(self._shape, self._strides, cs) if s != 1)

    def compact(self):
        """Self if compact, otherwise a compact copy."""
        if self.is_compact():
            return self
        return self._copy()

    def _copy(self):
        out = NDArray.make(self._shape, device=self._device)
        if out.size:
            self._device.compact(self._handle, out._handle, self._shape, self._strides, self._offset)
        return out

    def copy(self):
        return self._copy()

    def astype(self, dtype=None, copy=True):
        _check_dtype(dtype)
        return self._copy() if copy else self

    def as_strided(self, shape, strides):
        """A view with new shape and strides (in elements) on the same buffer."""
        shape, strides = tuple(shape), tuple(strides)
        if len(shape) != len(strides):
            raise ValueError(f"as_strided: shape {shape} and strides {strides} have different lengths")
        return NDArray.make(shape, strides=strides, device=self._device, handle=self._handle, offset=self._offset)

    # ---- views ---------------------------------------------------------------
    def reshape(self, *new_shape):
        """A view with a new shape (compact arrays only; one entry may be -1)."""
        if len(new_shape) == 1 and not isinstance(new_shape[0], numbers.Integral):
            new_shape = new_shape[0]
        new_shape = tuple(operator.index(s) for s in new_shape)
        if new_shape.count(-1) > 1:
            raise ValueError(f"cannot reshape array of shape {self._shape} into shape {new_shape}: "
                             "can only specify one unknown dimension")
        if -1 in new_shape:
            known = prod(s for s in new_shape if s != -1)
            if known == 0 or self.size % known:
                raise ValueError(f"cannot reshape array of shape {self._shape} into shape {new_shape}")
            new_shape = tuple(self.size // known if s == -1 else s for s in new_shape)
        if builtins.min(new_shape, default=0) < 0 or prod(new_shape) != self.size:
            raise ValueError(f"cannot reshape array of shape {self._shape} (size {self.size}) "
                             f"into shape {new_shape} (size {prod(new_shape)})")
        if not self.is_compact():
            raise ValueError(f"reshape of a non-compact array of shape {self._shape} (strides {self._strides}); "
                             "call .compact() first or use the module-level reshape()")
        return NDArray.make(new_shape, device=self._device, handle=self._handle)

    def permute(self, new_axes):
        """A view with axes reordered: new axis i is old axis new_axes[i]."""
        new_axes = tuple(_norm_axis(a, self.ndim) for a in new_axes)
        if sorted(new_axes) != list(range(self.ndim)):
            raise ValueError(f"permute: axes {new_axes} are not a permutation of the {self.ndim} axes of "
                             f"an array of shape {self._shape}")
        return NDArray.make(tuple(self._shape[a] for a in new_axes),
                            strides=tuple(self._strides[a] for a in new_axes),
                            device=self._device, handle=self._handle, offset=self._offset)

    def transpose(self, *axes):
        """numpy's transpose: no axes reverses them, otherwise a permutation."""
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
            axes = axes[0]
        if not axes:
            axes = tuple(range(self.ndim))[::-1]
        return self.permute(axes)

    @property
    def T(self):
        return self.transpose()

    def broadcast_to(self, new_shape):
        """A view broadcast (numpy rules) to new_shape; broadcast axes get stride 0."""
        new_shape = _as_shape(new_shape)
        lead = len(new_shape) - self.ndim
        if lead < 0:
            raise ValueError(f"cannot broadcast array of shape {self._shape} to shape {new_shape}")
        strides = [0] * lead
        for i, (s, st) in enumerate(zip(self._shape, self._strides)):
            t = new_shape[lead + i]
            if s == t:
                strides.append(st)
            elif s == 1:
                strides.append(0)
            else:
                raise ValueError(f"cannot broadcast array of shape {self._shape} to shape {new_shape}")
        return NDArray.make(new_shape, strides=tuple(strides), device=self._device, handle=self._handle,
                            offset=self._offset)

    def process_slice(self, sl, dim):
        """A slice with explicit start, stop, step (positive step) for axis `dim` (its index:
        the axis size is `self.shape[dim]`, as the course's contract says)."""
        return _explicit_slice(sl, self._shape[dim])


    def _expand_index(self, idxs):
        if not isinstance(idxs, tuple):
            idxs = (idxs,)
        n_ell = _builtin_sum(1 for i in idxs if i is Ellipsis)
        if n_ell > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if n_ell:
            k = idxs.index(Ellipsis)
            fill = self.ndim - (len(idxs) - 1)
            idxs = idxs[:k] + (slice(None),) * builtins.max(fill, 0) + idxs[k + 1:]
        if len(idxs) > self.ndim:
            raise IndexError(f"too many indices for array of shape {self._shape}: {len(idxs)} given")
        return idxs + (slice(None),) * (self.ndim - len(idxs))

    def __getitem__(self, idxs):
        """A view for ints and positive-step slices; an int keeps its axis (size 1)."""
        idxs = self._expand_index(idxs)
        shape, strides, offset = [], [], self._offset
        for i, (idx, dim, st) in enumerate(zip(idxs, self._shape, self._strides)):
            if isinstance(idx, slice):
                sl = _explicit_slice(idx, dim)
                n = len(range(sl.start, sl.stop, sl.step))
                offset += sl.start * st if n else 0
                shape.append(n)
                strides.append(st * sl.step)
            elif isinstance(idx, (numbers.Integral, np.integer)):
                k = int(idx)
                if not 0 <= k < dim:
                    raise IndexError(f"index {k} is out of bounds for axis {i} with size {dim} "
                                     "(negative indices are not supported)")
                offset += k * st
                shape.append(1)
                strides.append(st)
            else:
                raise TypeError(f"NDArray indices must be ints or slices, got {type(idx).__name__}")
        return NDArray.make(tuple(shape), strides=tuple(strides), device=self._device, handle=self._handle,
                            offset=offset)

    def __setitem__(self, idxs, other):
        """Write an NDArray (broadcast to the view's shape) or a scalar into the view."""
        view = self[idxs]
        if isinstance(other, NDArray) or (isinstance(other, (np.ndarray, list, tuple)) and not _is_scalar(other)):
            if not isinstance(other, NDArray):
                other = NDArray(np.asarray(other, dtype=np.float32), device=self._device)
            elif other.device != self._device:
                other = other.to(self._device)
            if other.shape != view.shape:
                try:
                    other = other.broadcast_to(view.shape)
                except ValueError:
                    raise ValueError(f"could not broadcast input array from shape {_shape_str(other.shape)} "
                                     f"into shape {_shape_str(view.shape)}") from None
            if view.size == 0:
                return
            src = other.compact()
            if src._handle is self._handle:
                src = src._copy()
            self._device.ewise_setitem(src._handle, view._handle, view.shape, view.strides, view._offset)
        else:
            if view.size == 0:
                return
            self._device.scalar_setitem(view.size, float(other), view._handle, view.shape, view.strides,
                                        view._offset)

    # ---- elementwise -----------------------------------------------------------
    def _new(self):
        """A new compact array of this shape on this device (the hot path of every op)."""
        out = NDArray.__new__(NDArray)
        out._shape = shape = self._shape
        out._strides, size = _layout(shape)
        out._offset = 0
        out._device = device = self._device
        out._handle = device.Array(size)
        return out

    def _other_array(self, other, opname):
        if not isinstance(other, NDArray):
            other = NDArray(np.asarray(other, dtype=np.float32), device=self._device)
        if other.device != self._device:
            raise ValueError(f"{opname}: operands are on different devices ({self._device} and {other.device})")
        if other._shape != self._shape:
            raise ValueError(f"{opname}: operands have different shapes {_shape_str(self._shape)} and "
                             f"{_shape_str(other._shape)} (broadcast explicitly with broadcast_to)")
        return other

    def ewise_or_scalar(self, other, ewise_func, scalar_func, opname="op"):
        out = self._new()
        if type(other) is float or (not isinstance(other, NDArray) and _is_scalar(other)):
            scalar_func(self.compact()._handle, float(other), out._handle)
        else:
            other = self._other_array(other, opname)
            ewise_func(self.compact()._handle, other.compact()._handle, out._handle)
        return out

    def _unary(self, name):
        out = self._new()
        getattr(self._device, name)(self.compact()._handle, out._handle)
        return out

    def __add__(self, other):
        return self.ewise_or_scalar(other, self._device.ewise_add, self._device.scalar_add, "add")

    __radd__ = __add__

    def __sub__(self, other):
        if _is_scalar(other):
            return self + (-float(other))
        return self + (-self._other_array(other, "subtract"))

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        return self.ewise_or_scalar(other, self._device.ewise_mul, self._device.scalar_mul, "multiply")

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self.ewise_or_scalar(other, self._device.ewise_div, self._device.scalar_div, "divide")

    def __rtruediv__(self, other):
        if _is_scalar(other):
            return full(self._shape, float(other), device=self._device) / self
        return NDArray(other, device=self._device) / self

    def __neg__(self):
        if hasattr(self._device.mod, "ewise_neg"):
            return self._unary("ewise_neg")
        return self * (-1.0)

    def __pos__(self):
        return self

    def __abs__(self):
        return self.maximum(-self)

    def __pow__(self, other):
        if _is_scalar(other):
            out = self._new()
            self._device.scalar_power(self.compact()._handle, float(other), out._handle)
            return out
        other = self._other_array(other, "power")
        out = self._new()
        self._device.ewise_power(self.compact()._handle, other.compact()._handle, out._handle)
        return out

    def __rpow__(self, other):
        return full(self._shape, float(other), device=self._device) ** self

    def maximum(self, other):
        return self.ewise_or_scalar(other, self._device.ewise_maximum, self._device.scalar_maximum, "maximum")

    # comparisons return 1.0 / 0.0; NaN compares false (like numpy), != true
    def __eq__(self, other):
        return self.ewise_or_scalar(other, self._device.ewise_eq, self._device.scalar_eq, "equal")

    def __ge__(self, other):
        return self.ewise_or_scalar(other, self._device.ewise_ge, self._device.scalar_ge, "greater_equal")

    def __ne__(self, other):
        return 1.0 - (self == other)

    def __gt__(self, other):
        return (self >= other) * (self != other)

    def __le__(self, other):
        if _is_scalar(other):
            return (-self) >= (-float(other))
        return self._other_array(other, "less_equal") >= self

    def __lt__(self, other):
        return (self <= other) * (self != other)

    __hash__ = None

    def log(self):
        return self._unary("ewise_log")

    def exp(self):
        return self._unary("ewise_exp")

    def tanh(self):
        return self._unary("ewise_tanh")

    def sqrt(self):
        if hasattr(self._device.mod, "ewise_sqrt"):
            return self._unary("ewise_sqrt")
        return self ** 0.5

    # ---- matmul ----------------------------------------------------------------
    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(NDArray(other, device=self._device), self)

    # ---- reductions --------------------------------------------------------------
    def _reduce_view(self, axis, keepdims, name):
        """(compact view with reduced axes last and merged, out array, final shape)."""
        axes = _norm_axes(axis, self.ndim)
        kept = [i for i in range(self.ndim) if i not in axes]
        view = self.permute(tuple(kept) + axes).compact() if axes != tuple(range(self.ndim - len(axes), self.ndim)) \
            else self.compact()
        n = prod(self._shape[i] for i in axes)
        out_shape = tuple(self._shape[i] for i in kept)
        if keepdims:
            final = tuple(1 if i in axes else s for i, s in enumerate(self._shape))
        else:
            final = out_shape
        return view, n, out_shape, final

    def _reduce(self, axis, keepdims, fn_name):
        if isinstance(axis, (tuple, list)) and len(axis) == 0:
            return self._copy()
        axes = _norm_axes(axis, self.ndim)
        if self.size and axes and n_axes_contiguous(axes) and axes[-1] != self.ndim - 1 \
                and hasattr(self._device.mod, fn_name + "_axis"):
            # reduced axes form one block followed by kept axes: combine rows, no transpose
            outer = prod(self._shape[:axes[0]])
            n = prod(self._shape[axes[0]:axes[-1] + 1])
            inner = prod(self._shape[axes[-1] + 1:])
            out_shape = tuple(s for i, s in enumerate(self._shape) if i not in axes)
            out = NDArray.make(out_shape, device=self._device)
            getattr(self._device, fn_name + "_axis")(self.compact()._handle, out._handle, outer, n, inner)
        else:
            view, n, out_shape, _ = self._reduce_view(axes, keepdims, fn_name)
            out = NDArray.make(out_shape, device=self._device)
            if n == 0 and fn_name == "reduce_max" and out.size:
                raise ValueError("zero-size array to reduction operation maximum which has no identity")
            getattr(self._device, fn_name)(view._handle, out._handle, n)
        if keepdims:
            final = tuple(1 if i in axes else s for i, s in enumerate(self._shape))
            return NDArray.make(final, device=self._device, handle=out._handle)
        return out

    def sum(self, axis=None, keepdims=False):
        return self._reduce(axis, keepdims, "reduce_sum")

    def max(self, axis=None, keepdims=False):
        return self._reduce(axis, keepdims, "reduce_max")

    def min(self, axis=None, keepdims=False):
        return -((-self).max(axis=axis, keepdims=keepdims))

    def argmax(self, axis=None, keepdims=False):
        """Index of the first maximum (as float32), over all elements or one axis."""
        if isinstance(axis, (tuple, list)):
            raise TypeError("argmax: axis must be None or an int")
        if self.size == 0:
            raise ValueError("attempt to get argmax of an empty sequence")
        if axis is None:
            out = NDArray.make((), device=self._device)
            self._device.reduce_argmax(self.compact()._handle, out._handle, self.size)
            return out.reshape((1,) * self.ndim) if keepdims else out
        view, n, out_shape, final = self._reduce_view(axis, keepdims, "argmax")
        out = NDArray.make(out_shape, device=self._device)
        self._device.reduce_argmax(view._handle, out._handle, n)
        return out if final == out_shape else NDArray.make(final, device=self._device, handle=out._handle)

    # ---- data movement ---------------------------------------------------------
    def flip(self, axes=None):
        """A compact copy with the given axes (None: all) reversed."""
        axes = _norm_axes(axes, self.ndim)
        strides, offset = list(self._strides), self._offset
        if self.size == 0:
            return self._copy()
        for a in axes:
            offset += (self._shape[a] - 1) * strides[a]
            strides[a] = -strides[a]
        view = NDArray.make(self._shape, strides=tuple(strides), device=self._device, handle=self._handle,
                            offset=offset)
        return view._copy()

    def pad(self, axes):
        """Zero padding: axes is one (left, right) pair per axis."""
        axes = tuple(tuple(int(v) for v in p) for p in axes)
        if len(axes) != self.ndim or any(len(p) != 2 or p[0] < 0 or p[1] < 0 for p in axes):
            raise ValueError(f"pad: need one non-negative (left, right) pair per axis of shape {self._shape}, "
                             f"got {axes}")
        out = full(tuple(s + l + r for s, (l, r) in zip(self._shape, axes)), 0.0, device=self._device)
        out[tuple(slice(l, l + s) for s, (l, r) in zip(self._shape, axes))] = self
        return out


# ---------------------------------------------------------------------------
# module-level functions (numpy names and signatures)
# ---------------------------------------------------------------------------
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


def _broadcast_shapes(s1, s2):
    n = _builtin_max(len(s1), len(s2))
    s1, s2 = (1,) * (n - len(s1)) + tuple(s1), (1,) * (n - len(s2)) + tuple(s2)
    out = []
    for x, y in zip(s1, s2):
        if x != y and x != 1 and y != 1:
            return None
        out.append(x if y == 1 else y)
    return tuple(out)


def matmul(a, b):
    """numpy matmul for 2-D and batched N-D arrays (batch dims broadcast)."""
    a, b = _nd(a), _nd(b)
    if b.device != a.device:
        raise ValueError(f"matmul: operands are on different devices ({a.device} and {b.device})")
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul: both operands need at least 2 dimensions, got shapes "
                         f"{_shape_str(a.shape)} and {_shape_str(b.shape)}")
    m, n = a.shape[-2:]
    n2, p = b.shape[-2:]
    batch_shape = _broadcast_shapes(a.shape[:-2], b.shape[:-2])
    if n != n2 or batch_shape is None:
        raise ValueError(f"matmul: shapes {_shape_str(a.shape)} and {_shape_str(b.shape)} are not aligned")
    dev = a.device
    if a.ndim == 2 and b.ndim == 2:
        out = NDArray.make((m, p), device=dev)
        dev.matmul(a.compact()._handle, b.compact()._handle, out._handle, m, n, p)
        return out
    batch = prod(batch_shape)
    out_shape = batch_shape + (m, p)
    a_bcast = prod(a.shape[:-2]) == 1
    b_bcast = prod(b.shape[:-2]) == 1
    if b_bcast and not a_bcast and a.shape[:-2] == batch_shape:
        # (batch*m, n) @ (n, p): one GEMM
        a2 = reshape(a, (batch * m, n))
        out = NDArray.make((batch * m, p), device=dev)
        dev.matmul(a2._handle, b.compact()._handle, out._handle, batch * m, n, p)
        return NDArray.make(out_shape, device=dev, handle=out._handle)

    def operand(x, rows, cols):
        if prod(x.shape[:-2]) == 1:
            return x.compact(), 0
        if x.shape[:-2] == batch_shape:
            return x.compact(), rows * cols
        return x.broadcast_to(batch_shape + (rows, cols)).compact(), rows * cols

    ah, a_stride = operand(a, m, n)
    bh, b_stride = operand(b, n, p)
    out = NDArray.make(out_shape, device=dev)
    if hasattr(dev.mod, "matmul_batched"):
        dev.matmul_batched(ah._handle, bh._handle, out._handle, batch, m, n, p, a_stride, b_stride)
    else:
        a3 = ah.reshape((prod(ah.shape[:-2]), m, n))
        b3 = bh.reshape((prod(bh.shape[:-2]), n, p))
        o3 = out.reshape((batch, m, p))
        for i in range(batch):
            ai = a3[i if a_stride else 0].compact().reshape((m, n))
            bi = b3[i if b_stride else 0].compact().reshape((n, p))
            o3[i] = matmul(ai, bi).reshape((1, m, p))
    return out


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
