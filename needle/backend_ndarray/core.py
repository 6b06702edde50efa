"""NDArray: a strided float32 array on a backend device (cpu, cuda, cpu_numpy), and the devices.

An NDArray is a view (shape, strides in elements, offset) on a flat buffer (`_handle`) owned
by a device module.  Views (reshape, permute, broadcast_to, getitem) share the buffer; every
computation (array_math.py, NDArray's base class) returns a new compact array.
"""
from __future__ import annotations

import builtins
import numbers
import operator

import numpy as np

from . import ndarray_backend_numpy
from .array_math import ArrayMath
from .blas import init_blas
from .loading import load_cpu_module, load_cuda_module
from .shapes import (_as_shape, _builtin_sum, _check_dtype, _compact_strides, _explicit_slice, _is_scalar, _layout,
                     _norm_axis, _shape_str, prod)


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


class DeviceUnavailable(RuntimeError, AttributeError):
    """A device that cannot run here (e.g. `cuda()` without a GPU); an AttributeError too,
    so `hasattr(device, ...)` stays False."""


_cpu_mod = load_cpu_module()
CPU_BACKEND_COMPILED = _cpu_mod is not None
BLAS_LOADED = init_blas(_cpu_mod)
_CPU = BackendDevice("cpu", _cpu_mod if _cpu_mod is not None else ndarray_backend_numpy)
_CPU_NUMPY = BackendDevice("cpu_numpy", ndarray_backend_numpy)
_CUDA = None


def cpu():
    """The compiled C++ cpu device."""
    return _CPU


def cpu_numpy():
    """The pure-numpy device (same low-level interface as cpu())."""
    return _CPU_NUMPY



def cuda():
    """The CUDA device; enabled() is True only when its module imports and a GPU is visible."""
    global _CUDA
    if _CUDA is None:
        mod, why = load_cuda_module()
        _CUDA = BackendDevice("cuda", mod)
        _CUDA.__dict__["unavailable"] = why
    return _CUDA


def default_device():
    return _CPU


def all_devices():
    return [cpu(), cuda(), cpu_numpy()]


class NDArray(ArrayMath):
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
        array._device = device if device is not None else default_device()
        if handle is None:   # a new buffer, compact
            array._shape, compact, size = _layout(shape)
            array._strides = compact if strides is None else tuple(map(int, strides))
            array._offset = int(offset)
            array._handle = array._device.Array(size)
            return array
        array._shape = tuple(map(int, shape))
        array._strides = _compact_strides(array._shape) if strides is None else tuple(map(int, strides))
        array._offset = int(offset)
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
        _, cs, size = _layout(self._shape)
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

    # ---- results ---------------------------------------------------------------
    def _new(self):
        """A new compact array of this shape on this device (the hot path of every op)."""
        out = NDArray.__new__(NDArray)
        out._shape = shape = self._shape
        _, out._strides, size = _layout(shape)
        out._offset = 0
        out._device = device = self._device
        out._handle = device.Array(size)
        return out
