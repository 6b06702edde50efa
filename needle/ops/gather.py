"""gather/take along axis 0 (embedding lookup) and its transpose, index_add (scatter-add)."""
from __future__ import annotations

from ..backend_selection import array_api
from .registry import TensorOp


class Gather(TensorOp):
    """Rows of `a` at integer-valued `indices`: shape indices.shape + a.shape[1:]."""

    kind = "injective"

    def infer(self, a, indices):
        if len(a.shape) < 1:
            raise self.error(f"needs an input with at least one axis, got shape {a.shape}")
        return tuple(indices.shape) + tuple(a.shape[1:]), a.dtype

    def compute(self, a, indices):
        return array_api.take(a, indices, axis=0)

    def gradient(self, out_grad, node):
        from .elementwise import zeros_like

        a, indices = node.inputs
        return IndexAdd(a.shape[0])(out_grad, indices), zeros_like(indices)


class IndexAdd(TensorOp):
    """Scatter-add: zeros (num_rows, ...) with values[i] added at row indices[i]."""

    kind = "opaque"

    def __init__(self, num_rows: int):
        self.num_rows = num_rows

    def infer(self, values, indices):
        k = len(indices.shape)
        if tuple(values.shape[:k]) != tuple(indices.shape):
            raise self.error(f"values of shape {values.shape} do not start with indices shape {indices.shape}")
        return (self.num_rows,) + tuple(values.shape[k:]), values.dtype

    def compute(self, values, indices):
        return array_api.index_add(indices, values, self.num_rows)

    def gradient(self, out_grad, node):
        from .elementwise import zeros_like

        values, indices = node.inputs
        return Gather()(out_grad, indices), zeros_like(indices)


def gather(a, indices):
    """a[indices] along axis 0 (indices: a Tensor of integer ids, any shape)."""
    return Gather()(a, indices)


take = gather


def index_add(values, indices, num_rows: int):
    return IndexAdd(num_rows)(values, indices)


__all__ = ["Gather", "IndexAdd", "gather", "take", "index_add"]
