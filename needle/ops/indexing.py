"""`tensor[index]`: ints, slices (any step) and one integer list, as numpy reads them."""
from __future__ import annotations

import numpy as np

from .. import value_types
from ..backend_selection import BACKEND
from .gather import gather
from .shape import GetItem, flip, permute, reshape


def get_item(a, index):
    """`a[index]` with ints, slices (any non-zero step) and at most one integer list (or 1-D
    integer numpy array), as numpy reads them: ints drop their axis; a negative step flips
    the axis and slices it; an integer list gathers along its axis."""
    shape = a.shape
    op = GetItem(())
    if not isinstance(index, tuple):
        index = (index,)
    if len(index) > len(shape):
        raise op.error(f"too many indices ({len(index)}) for a tensor of shape {shape}")
    slices, kept, flips, advanced, take = [], [], [], [], None
    for axis, dim in enumerate(shape):
        idx = index[axis] if axis < len(index) else slice(None)
        if isinstance(idx, slice):
            if idx.step is not None and int(idx.step) < 0:
                # a[start:stop:-k] is a slice with step k of the axis flipped
                start, stop, step = idx.indices(dim)
                flips.append(axis)
                slices.append((dim - 1 - start, dim - 1 - stop, -step))
            else:
                slices.append((idx.start, idx.stop, idx.step))
            kept.append(axis)
        elif isinstance(idx, list) or (isinstance(idx, np.ndarray) and idx.ndim > 0):
            ids = np.asarray(idx)
            if take is not None:
                raise op.error("only one integer-list index is supported")
            if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
                raise op.error(f"unsupported index {idx!r} (an integer list must be 1-D integers)")
            ids = ids.astype(np.int64)
            if ids.size and (ids.min() < -dim or ids.max() >= dim):
                raise IndexError(f"GetItem: index list {idx!r} is out of range for axis {axis} of size {dim}")
            take = (axis, ids % dim if dim else ids)
            slices.append((None, None, None))
            kept.append(axis)
            advanced.append(axis)
        elif isinstance(idx, int) or hasattr(idx, "__index__"):
            i = int(idx)
            if not -dim <= i < dim:
                raise IndexError(f"GetItem: index {i} is out of range for axis {axis} of size {dim}")
            i %= dim
            slices.append((i, i + 1, 1))
            advanced.append(axis)
        else:
            raise op.error(f"unsupported index {idx!r} (ints, slices and one integer list are supported)")
    if flips:
        a = flip(a, tuple(flips))
    out = GetItem(slices)(a)
    out_shape = [out.shape[k] for k in kept]
    if take is not None:
        out = _take_along(out, *take)
        pos = kept.index(take[0])
        out_shape[pos] = len(take[1])
        # numpy: when the advanced indices (ints and the list) are not adjacent, the list's
        # axis goes first
        if max(advanced) - min(advanced) + 1 != len(advanced) and pos != 0:
            out = reshape(out, tuple(out_shape)) if tuple(out_shape) != out.shape else out
            axes = (pos,) + tuple(i for i in range(len(out_shape)) if i != pos)
            return permute(out, axes)
    out_shape = tuple(out_shape)
    return reshape(out, out_shape) if out_shape != out.shape else out


def _take_along(a, axis: int, ids):
    """a's entries at integer positions `ids` along `axis` (Gather on that axis moved first)."""
    ids = value_types.Tensor(ids if BACKEND == "np" else ids.astype(np.float32), device=a.device, requires_grad=False)
    if axis == 0:
        return gather(a, ids)
    n = len(a.shape)
    perm = (axis,) + tuple(i for i in range(n) if i != axis)
    out = gather(permute(a, perm), ids)
    inverse = tuple(perm.index(i) for i in range(n))
    return permute(out, inverse)


__all__ = ["get_item"]
