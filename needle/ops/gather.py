"""gather/take along axis 0 (embedding lookup) and its transpose, index_add (scatter-add)."""
from __future__ import annotations

import numpy as np

from ..backend_selection import array_api
from ..trace import tracer
from .elementwise import compare
from .reduce import summation
from .registry import TensorOp, zeros_like


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
        values, indices = node.inputs
        return Gather()(out_grad, indices), zeros_like(indices)


def check_ids(ids, n: int, error: str) -> None:
    """In a trace, check that every id is an integer in [0, n), as eager kernels do.

    Appends a scalar graph value counting the bad ids (negative, >= n, fractional or NaN) to
    the builder's `checks`, with `error` (the text eager mode raises) and the user's line;
    the compiled function raises it after a call where the count is non-zero."""
    builder = tracer.ACTIVE
    ids = ids if tracer.is_traced(ids) else builder.lift(ids)
    bad = compare(ids, 0.0, "lt") + compare(ids, float(n), "ge")
    if np.dtype(ids.dtype).kind == "f":
        # an id in [0, 2^mantissa) plus 2^mantissa rounds to an integer; subtracting it back
        # gives the id itself only when it was an integer (and never when it is NaN)
        magic = 2.0 ** np.finfo(ids.dtype).nmant
        bad = bad + compare(ids, (ids + magic) - magic, "ne")
    count = summation(bad)
    loc = builder.nodes[count._trace.node_id].loc
    builder.checks.append((count._trace.node_id, error + (f" (at {loc})" if loc is not None else "")))


def gather(a, indices):
    """a[indices] along axis 0 (indices: a Tensor of integer ids, any shape)."""
    out = Gather()(a, indices)
    if out._trace is not None:
        check_ids(indices, a.shape[0], f"Gather: indices must be integers in [0, {a.shape[0]})")
    return out


take = gather


def index_add(values, indices, num_rows: int):
    out = IndexAdd(num_rows)(values, indices)
    if out._trace is not None:
        check_ids(indices, num_rows, f"IndexAdd: indices must be integers in [0, {num_rows})")
    return out


__all__ = ["Gather", "IndexAdd", "gather", "take", "index_add", "check_ids"]
