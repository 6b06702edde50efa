"""View and data-movement primitives: reshape, permute, broadcast, slice, flip, dilate, device."""
from __future__ import annotations

from math import prod
from typing import Callable, Optional

from ..backend_selection import array_api
from .registry import TensorOp, normalize_axes, zeros_like


def _compact(a):
    """A compact (contiguous) array: NDArray.compact(), numpy arrays as they are."""
    return a.compact() if hasattr(a, "compact") else a


def linear_index(idx, shape):
    """Row-major linear index of multi-index `idx` into `shape` (index values: ints, or any
    values with + and *, like codegen's)."""
    out, stride = 0, 1
    for i, d in reversed(list(zip(idx, shape))):
        out = out + i * stride
        stride *= d
    return out


def unravel_index(lin, shape) -> tuple:
    """Row-major multi-index of linear index `lin` into `shape` (inverse of `linear_index`)."""
    out, stride = [], 1
    for d in reversed(shape):
        out.append(0 if d == 1 else (lin // stride) % d)
        stride *= d
    return tuple(out[::-1])


class View(TensorOp, abstract=True):
    """Base of pure index maps: `index_map(idx, in_shape, out_shape)` is the input index an
    output index reads; a bijective one also has `inverse_index_map(idx, in_shape, out_shape)`,
    the output index an input index is read at."""

    kind = "injective"
    moves_data = True
    inverse_index_map: Optional[Callable] = None


class Reshape(View):
    aliases_input = True

    def __init__(self, shape):
        self.shape = tuple(shape)

    def index_map(self, idx, in_shape, out_shape):
        # size-1 axes carry no index; equal remaining shapes map one to one
        kept = [(i, d) for i, d in zip(idx, out_shape) if d != 1]
        if [d for _, d in kept] == [d for d in in_shape if d != 1]:
            it = iter(i for i, _ in kept)
            return tuple(0 if d == 1 else next(it) for d in in_shape)
        return unravel_index(linear_index(idx, out_shape), in_shape)

    def inverse_index_map(self, idx, in_shape, out_shape):
        return unravel_index(linear_index(idx, in_shape), out_shape)

    def infer(self, a):
        shape = _resolve_shape(self, a.shape, self.shape)
        return shape, a.dtype

    def compute(self, a):
        return array_api.reshape(_compact(a), _resolve_shape(self, a.shape, self.shape))

    def gradient(self, out_grad, node):
        return reshape(out_grad, node.inputs[0].shape)


def _resolve_shape(op, in_shape, shape):
    """`shape` with one -1 filled in; a size mismatch raises OpError naming both shapes."""
    if shape.count(-1) > 1 or any((not isinstance(d, int)) or d < -1 for d in shape):
        raise op.error(f"invalid target shape {shape}")
    size = prod(in_shape)
    if -1 in shape:
        known = prod(d for d in shape if d != -1)
        if known == 0 or size % known:
            raise op.error(f"cannot reshape {in_shape} (size {size}) into {shape}")
        shape = tuple(size // known if d == -1 else d for d in shape)
    if prod(shape) != size:
        raise op.error(f"cannot reshape {in_shape} (size {size}) into {shape} (size {prod(shape)})")
    return shape


class Permute(View):
    """General axis permutation (numpy's transpose)."""

    def __init__(self, axes):
        self.axes = tuple(axes)

    def permutation(self, ndim) -> tuple:
        """Output axis k reads input axis permutation(ndim)[k]."""
        return self.axes

    def index_map(self, idx, in_shape, out_shape):
        out = [0] * len(in_shape)
        for k, ax in enumerate(self.permutation(len(in_shape))):
            out[ax] = idx[k]
        return tuple(out)

    def inverse_index_map(self, idx, in_shape, out_shape):
        return tuple(idx[ax] for ax in self.permutation(len(in_shape)))

    def infer(self, a):
        if sorted(self.axes) != list(range(len(a.shape))):
            raise self.error(f"axes {self.axes} are not a permutation of the {len(a.shape)} axes of {a.shape}")
        return tuple(a.shape[i] for i in self.axes), a.dtype

    def compute(self, a):
        return array_api.transpose(a, self.axes)

    def gradient(self, out_grad, node):
        inverse = [0] * len(self.axes)
        for i, ax in enumerate(self.axes):
            inverse[ax] = i
        return permute(out_grad, inverse)


class Transpose(Permute):
    """Swaps two axes: the last two by default, else the pair `axes=(i, j)` (course semantics)."""

    def __init__(self, axes: Optional[tuple] = None):
        self.axes = axes

    def permutation(self, ndim) -> tuple:
        i, j = self.axes if self.axes is not None else (ndim - 2, ndim - 1)
        if ndim < 2 or not (-ndim <= i < ndim and -ndim <= j < ndim):
            raise self.error(f"cannot swap axes {(i, j)} of a {ndim}-d input")
        perm = list(range(ndim))
        perm[i], perm[j] = perm[j], perm[i]
        return tuple(perm)

    def infer(self, a):
        perm = self.permutation(len(a.shape))
        return tuple(a.shape[i] for i in perm), a.dtype

    def compute(self, a):
        return array_api.transpose(a, self.permutation(len(a.shape)))

    def gradient(self, out_grad, node):
        return Transpose(self.axes)(out_grad)


class BroadcastTo(View):
    kind = "broadcast"

    def __init__(self, shape):
        self.shape = tuple(shape)

    def index_map(self, idx, in_shape, out_shape):
        lead = len(out_shape) - len(in_shape)
        return tuple(0 if d == 1 else idx[lead + k] for k, d in enumerate(in_shape))

    def infer(self, a):
        ok = len(self.shape) >= len(a.shape) and all(
            d == 1 or d == t for d, t in zip(reversed(a.shape), reversed(self.shape)))
        if not ok:
            raise self.error(f"cannot broadcast shape {a.shape} to {self.shape}")
        return self.shape, a.dtype

    def compute(self, a):
        if len(a.shape) != len(self.shape):
            a = array_api.reshape(_compact(a), (1,) * (len(self.shape) - len(a.shape)) + tuple(a.shape))
        return array_api.broadcast_to(a, self.shape)

    def gradient(self, out_grad, node):
        return sum_to_shape(out_grad, node.inputs[0].shape)


def sum_to_shape(t, shape):
    """Sum `t` over the axes numpy broadcasting added or stretched, giving `shape`."""
    shape = tuple(shape)
    if t.shape == shape:
        return t
    lead = len(t.shape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, d in enumerate(shape) if d == 1 and t.shape[i + lead] != 1)
    out = t.sum(axes) if axes else t
    return reshape(out, shape) if out.shape != shape else out


class GetItem(View):
    """Strided slice keeping every axis: `slices` holds (start, stop, step) per axis, step > 0,
    read as Python slices (negative bounds count from the end, bounds past an end clamp)."""

    def __init__(self, slices):
        self.slices = tuple(tuple(s) for s in slices)

    def index_map(self, idx, in_shape, out_shape):
        return tuple(start + i * step for i, (start, _, step) in zip(idx, self.slices))

    def __call__(self, a):
        # applied with its bounds clamped into a's shape, so graphs (and the kernels reading
        # them) only ever hold slices inside their input
        return TensorOp.__call__(GetItem(_clamp_slices(self, self.slices, a.shape)), a)

    def infer(self, a):
        if len(self.slices) != len(a.shape):
            raise self.error(f"{len(self.slices)} slices for an input of shape {a.shape}")
        return tuple(_slice_len(s) for s in self.slices), a.dtype

    def compute(self, a):
        return a[tuple(slice(*s) for s in self.slices)]

    def gradient(self, out_grad, node):
        return UnSlice(self.slices, node.inputs[0].shape)(out_grad)


def _slice_len(s) -> int:
    start, stop, step = s
    return max(0, (stop - start + step - 1) // step)


def _clamp_slices(op, slices, shape) -> tuple:
    """(start, stop, step) per axis of `shape` as Python reads slices (None for a default;
    negative bounds from the end, bounds past an end clamped to it), with stop >= start:
    every slice lies inside the shape. A step must be positive."""
    if len(slices) != len(shape):
        return tuple(slices)  # infer names the mismatch
    out = []
    for (start, stop, step), dim in zip(slices, shape):
        if step is not None and step <= 0:
            raise op.error(f"slice step must be positive, got {step}")
        start, stop, step = slice(start, stop, step).indices(dim)
        out.append((start, max(stop, start), step))
    return tuple(out)


class UnSlice(TensorOp):
    """Zeros of `shape` with the input written at `slices` (the transpose of GetItem; the
    slices are read as Python slices of `shape`, like GetItem's)."""

    kind = "injective"
    moves_data = True

    def __init__(self, slices, shape):
        self.shape = tuple(shape)
        self.slices = _clamp_slices(self, tuple(tuple(s) for s in slices), self.shape)

    def infer(self, a):
        expected = tuple(_slice_len(s) for s in self.slices)
        if expected != a.shape:
            raise self.error(f"input shape {a.shape} does not fill slices of shape {expected}")
        return self.shape, a.dtype

    def compute(self, a):
        out = array_api.full(self.shape, 0.0, dtype=a.dtype, device=a.device)
        out[tuple(slice(*s) for s in self.slices)] = a
        return out

    def gradient(self, out_grad, node):
        return GetItem(self.slices)(out_grad)


class Flip(View):
    def __init__(self, axes):
        self.axes = (axes,) if isinstance(axes, int) else tuple(axes)

    def index_map(self, idx, in_shape, out_shape):
        axes = normalize_axes(self, self.axes, len(idx))
        return tuple(d - 1 - i if a in axes else i for a, (i, d) in enumerate(zip(idx, in_shape)))

    def infer(self, a):
        normalize_axes(self, self.axes, len(a.shape))
        return a.shape, a.dtype

    def compute(self, a):
        return _compact(array_api.flip(a, self.axes))

    def gradient(self, out_grad, node):
        return flip(out_grad, self.axes)


class Dilate(TensorOp):
    """Insert `dilation` zeros after every element along each of `axes`."""

    kind = "injective"
    moves_data = True

    def __init__(self, axes: tuple, dilation: int):
        self.axes = (axes,) if isinstance(axes, int) else tuple(axes)
        self.dilation = dilation

    def infer(self, a):
        axes = normalize_axes(self, self.axes, len(a.shape))
        shape = tuple(d * (self.dilation + 1) if i in axes else d for i, d in enumerate(a.shape))
        return shape, a.dtype

    def compute(self, a):
        if self.dilation == 0:
            return a
        shape, _ = self.infer(a)
        axes = normalize_axes(self, self.axes, len(a.shape))
        out = array_api.full(shape, 0.0, dtype=a.dtype, device=a.device)
        out[tuple(slice(None, None, self.dilation + 1) if i in axes else slice(None)
                  for i in range(len(shape)))] = a
        return out

    def gradient(self, out_grad, node):
        return undilate(out_grad, self.axes, self.dilation)


class UnDilate(View):
    """Keep every (dilation+1)-th element along each of `axes` (inverse of Dilate)."""

    def __init__(self, axes: tuple, dilation: int):
        self.axes = (axes,) if isinstance(axes, int) else tuple(axes)
        self.dilation = dilation

    def index_map(self, idx, in_shape, out_shape):
        axes = normalize_axes(self, self.axes, len(idx))
        return tuple(i * (self.dilation + 1) if a in axes else i for a, i in enumerate(idx))

    def infer(self, a):
        axes = normalize_axes(self, self.axes, len(a.shape))
        step = self.dilation + 1
        shape = tuple((d + step - 1) // step if i in axes else d for i, d in enumerate(a.shape))
        return shape, a.dtype

    def compute(self, a):
        axes = normalize_axes(self, self.axes, len(a.shape))
        return _compact(a[tuple(slice(None, None, self.dilation + 1) if i in axes else slice(None)
                                for i in range(len(a.shape)))])

    def gradient(self, out_grad, node):
        return dilate(out_grad, self.axes, self.dilation)


class Detach(TensorOp):
    """Identity that stops gradients (`Tensor.detach()` of a traced value)."""

    kind = "elementwise"
    differentiable = False
    aliases_input = True

    def element(self, a):
        return a

    def compute(self, a):
        return a

    def gradient(self, out_grad, node):
        return zeros_like(node.inputs[0])


class ToDevice(TensorOp):
    """Copy to another device (differentiable)."""

    kind = "opaque"

    def __init__(self, device):
        self.device = device

    def index_map(self, idx, in_shape, out_shape):
        return idx

    def compute(self, a):
        return a.to(self.device) if hasattr(a, "to") else a

    def gradient(self, out_grad, node):
        return to_device(out_grad, node.inputs[0].device)


# ---- function forms --------------------------------------------------------------------
def reshape(a, shape):
    return Reshape(shape)(a)


def permute(a, axes):
    return Permute(axes)(a)


def transpose(a, axes=None):
    return Transpose(axes)(a)


def broadcast_to(a, shape):
    return BroadcastTo(shape)(a)


def flip(a, axes):
    return Flip(axes)(a)


def dilate(a, axes, dilation):
    return Dilate(axes, dilation)(a)


def undilate(a, axes, dilation):
    return UnDilate(axes, dilation)(a)


def to_device(a, device):
    return ToDevice(device)(a)


__all__ = [
    "Reshape", "Permute", "Transpose", "BroadcastTo", "GetItem", "UnSlice", "Flip", "Dilate",
    "UnDilate", "Detach", "ToDevice", "View", "linear_index", "unravel_index", "reshape", "permute", "transpose", "broadcast_to",
    "flip", "dilate", "undilate", "to_device", "sum_to_shape",
]
