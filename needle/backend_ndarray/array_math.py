"""NDArray's computations: elementwise ops and comparisons, matmul, reductions, flip, pad.

`ArrayMath` is NDArray's base class (core.py): every method reads the array through the
NDArray interface (`_shape`, `_device`, `_handle`, `compact`, `make`, `_new`) and returns a
new compact array.
"""
from __future__ import annotations

import numpy as np

from .shapes import _broadcast_shapes, _is_scalar, _norm_axes, _shape_str, n_axes_contiguous, prod


class ArrayMath:
    """The computing half of NDArray (see the module docstring)."""

    def _other_array(self, other, opname):
        if not isinstance(other, ArrayMath):
            other = type(self)(np.asarray(other, dtype=np.float32), device=self._device)
        if other.device != self._device:
            raise ValueError(f"{opname}: operands are on different devices ({self._device} and {other.device})")
        if other._shape != self._shape:
            raise ValueError(f"{opname}: operands have different shapes {_shape_str(self._shape)} and "
                             f"{_shape_str(other._shape)} (broadcast explicitly with broadcast_to)")
        return other

    def ewise_or_scalar(self, other, ewise_func, scalar_func, opname="op"):
        out = self._new()
        if type(other) is float or (not isinstance(other, ArrayMath) and _is_scalar(other)):
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
            return self._device.full(self._shape, float(other)) / self
        return type(self)(other, device=self._device) / self

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
        return self._device.full(self._shape, float(other)) ** self

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

    def sin(self):
        return self._unary("ewise_sin")

    def cos(self):
        return self._unary("ewise_cos")

    def sqrt(self):
        if hasattr(self._device.mod, "ewise_sqrt"):
            return self._unary("ewise_sqrt")
        return self ** 0.5

    # ---- matmul ----------------------------------------------------------------
    def __matmul__(self, other):
        """numpy matmul for 2-D and batched N-D arrays (batch dims broadcast)."""
        a, b = self, other if isinstance(other, ArrayMath) else type(self)(other, device=self._device)
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
            out = self.make((m, p), device=dev)
            dev.matmul(a.compact()._handle, b.compact()._handle, out._handle, m, n, p)
            return out
        batch = prod(batch_shape)
        out_shape = batch_shape + (m, p)
        a_bcast = prod(a.shape[:-2]) == 1
        b_bcast = prod(b.shape[:-2]) == 1
        if b_bcast and not a_bcast and a.shape[:-2] == batch_shape:
            # (batch*m, n) @ (n, p): one GEMM
            a2 = a.compact().reshape((batch * m, n))
            out = self.make((batch * m, p), device=dev)
            dev.matmul(a2._handle, b.compact()._handle, out._handle, batch * m, n, p)
            return self.make(out_shape, device=dev, handle=out._handle)

        def operand(x, rows, cols):
            if prod(x.shape[:-2]) == 1:
                return x.compact(), 0
            if x.shape[:-2] == batch_shape:
                return x.compact(), rows * cols
            return x.broadcast_to(batch_shape + (rows, cols)).compact(), rows * cols

        ah, a_stride = operand(a, m, n)
        bh, b_stride = operand(b, n, p)
        out = self.make(out_shape, device=dev)
        if hasattr(dev.mod, "matmul_batched"):
            dev.matmul_batched(ah._handle, bh._handle, out._handle, batch, m, n, p, a_stride, b_stride)
        else:
            a3 = ah.reshape((prod(ah.shape[:-2]), m, n))
            b3 = bh.reshape((prod(bh.shape[:-2]), n, p))
            o3 = out.reshape((batch, m, p))
            for i in range(batch):
                ai = a3[i if a_stride else 0].compact().reshape((m, n))
                bi = b3[i if b_stride else 0].compact().reshape((n, p))
                o3[i] = (ai @ bi).reshape((1, m, p))
        return out

    def __rmatmul__(self, other):
        return type(self)(other, device=self._device) @ self

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
            out = self.make(out_shape, device=self._device)
            getattr(self._device, fn_name + "_axis")(self.compact()._handle, out._handle, outer, n, inner)
        else:
            view, n, out_shape, _ = self._reduce_view(axes, keepdims, fn_name)
            out = self.make(out_shape, device=self._device)
            if n == 0 and fn_name == "reduce_max" and out.size:
                raise ValueError("zero-size array to reduction operation maximum which has no identity")
            getattr(self._device, fn_name)(view._handle, out._handle, n)
        if keepdims:
            final = tuple(1 if i in axes else s for i, s in enumerate(self._shape))
            return self.make(final, device=self._device, handle=out._handle)
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
            out = self.make((), device=self._device)
            self._device.reduce_argmax(self.compact()._handle, out._handle, self.size)
            return out.reshape((1,) * self.ndim) if keepdims else out
        view, n, out_shape, final = self._reduce_view(axis, keepdims, "argmax")
        out = self.make(out_shape, device=self._device)
        self._device.reduce_argmax(view._handle, out._handle, n)
        return out if final == out_shape else self.make(final, device=self._device, handle=out._handle)

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
        view = self.make(self._shape, strides=tuple(strides), device=self._device, handle=self._handle,
                            offset=offset)
        return view._copy()

    def pad(self, axes):
        """Zero padding: axes is one (left, right) pair per axis."""
        axes = tuple(tuple(int(v) for v in p) for p in axes)
        if len(axes) != self.ndim or any(len(p) != 2 or p[0] < 0 or p[1] < 0 for p in axes):
            raise ValueError(f"pad: need one non-negative (left, right) pair per axis of shape {self._shape}, "
                             f"got {axes}")
        out = self._device.full(tuple(s + l + r for s, (l, r) in zip(self._shape, axes)), 0.0)
        out[tuple(slice(l, l + s) for s, (l, r) in zip(self._shape, axes))] = self
        return out

