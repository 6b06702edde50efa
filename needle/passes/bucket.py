"""`bucket`: group a step's gradient all-reduces into buckets of about 25 MB (as PyTorch DDP).

An all-reduce whose op says it can be bucketed (`op.bucketable()`: an in-place sum over all
ranks) gets a `bucket` attribute, nothing else changes: the graph means the same on every
executor (the interpreter reduces each value on its own). The kernel passes and the native
executor read the attribute:

* the schedule starts a bucket member as soon as its input is ready, and every reader of a
  member's result waits for all the members of its bucket;
* the memory plan lays each bucket's members out back to back in the arena, each in place of
  the gradient it reduces when the gradient dies there, so the bucket is one span of memory;
* the native program starts one non-blocking all-reduce over that span when the bucket's last
  member is computed, and waits for it just before the first reader of any member's result,
  so communication overlaps the rest of the backward pass.

Buckets fill in the order the all-reduces were traced (one per parameter, so neighbouring
layers share a bucket), up to `cap_bytes` each (`NEEDLE_BUCKET_CAP_MB`, default 25), and are
numbered in the order their gradients are computed (autodiff emits the last layer's first). A member must not
depend on the result of another member of its bucket (it could never start): such an
all-reduce opens a new bucket.
"""
from __future__ import annotations

import os
from math import prod
from typing import Optional

import numpy as np

from ..ir.graph import Graph, TensorType, make_attrs
from ..ir.op_table import op_from_node
from ..ops import OPS
from .manager import Pass, PassResult, register_pass
from .rewrite import replace_node

__all__ = ["BucketPass", "bucket_collectives", "cap_bytes_from_env", "DEFAULT_CAP_BYTES"]

#: PyTorch DistributedDataParallel's default bucket_cap_mb
DEFAULT_CAP_BYTES = 25 << 20


def _bucketable(node) -> bool:
    if not hasattr(OPS.get(node.op), "bucketable") or not isinstance(node.type, TensorType):
        return False
    return op_from_node(node.op, node.attr_dict).bucketable()


def bucket_collectives(graph: Graph, cap_bytes: int = DEFAULT_CAP_BYTES) -> tuple[Graph, int]:
    """The graph with its bucketable all-reduces assigned to buckets; the number of buckets."""
    position = {n.id: k for k, n in enumerate(graph.nodes)}
    members = sorted((n for n in graph.nodes if _bucketable(n)), key=lambda n: (position[n.inputs[0]], position[n.id]))
    if not members:
        return graph, 0
    # after_bucket[v]: the highest bucket whose result value v depends on (-1: none)
    after_bucket: dict[int, int] = {}
    assigned: dict[int, int] = {}
    bucket, filled = -1, cap_bytes
    ranked = {n.id: k for k, n in enumerate(members)}
    for n in graph.nodes:   # graph order: a member's input is final before the member is seen
        if n.id in ranked:
            size = prod(n.type.shape) * np.dtype(n.type.dtype).itemsize
            depends = after_bucket.get(n.inputs[0], -1)
            if bucket < 0 or filled + size > cap_bytes and filled > 0 or depends >= bucket:
                bucket, filled = bucket + 1, 0
            assigned[n.id] = bucket
            filled += size
            after_bucket[n.id] = bucket
        else:
            after_bucket[n.id] = max((after_bucket.get(i, -1) for i in n.inputs), default=-1)
    # buckets were opened in graph order; number them in the order they fill (by gradient)
    order = {}
    for n in members:
        order.setdefault(assigned[n.id], len(order))
    nodes = [replace_node(n, attrs=make_attrs({**n.attr_dict, "bucket": order[assigned[n.id]]}))
             if n.id in assigned else n for n in graph.nodes]
    return graph.replace(nodes=nodes), len(order)


def cap_bytes_from_env() -> int:
    """NEEDLE_BUCKET_CAP_MB (megabytes, as PyTorch DDP's bucket_cap_mb) in bytes."""
    raw = os.environ.get("NEEDLE_BUCKET_CAP_MB")
    if raw is None:
        return DEFAULT_CAP_BYTES
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb > 0:
        raise ValueError(f"NEEDLE_BUCKET_CAP_MB must be a positive number of megabytes, got {raw!r}")
    return max(1, int(mb * (1 << 20)))


class BucketPass(Pass):
    """The `bucket` pass (see the module docstring); `cap_bytes` per bucket (None: from
    NEEDLE_BUCKET_CAP_MB when the pass runs)."""

    name = "bucket"

    def __init__(self, cap_bytes: Optional[int] = None):
        self.cap_bytes = cap_bytes

    def run(self, graph, ctx):
        out, buckets = bucket_collectives(graph, self.cap_bytes or cap_bytes_from_env())
        return PassResult(out, buckets > 0, {"buckets": buckets})


register_pass(BucketPass())
