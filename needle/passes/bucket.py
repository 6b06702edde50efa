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

Buckets fill in the order the gradients are computed (their producers' order in the graph:
autodiff emits the last layer's gradient first, as PyTorch DDP fills its buckets in reverse
parameter order), up to `cap_bytes` each (`NEEDLE_BUCKET_CAP_MB`, default 25). A bucket also
closes when the next gradient is more than `GAP_SECONDS` of estimated work away (the ops'
`cost` between the two): unlike a bucket of a fixed size, a gradient followed by a long
stretch of backward pass (a language model's output layer) starts its all-reduce at once. A
member must not depend on the result of another member of its bucket (it could never start):
such an all-reduce opens a new bucket.
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

__all__ = ["BucketPass", "bucket_collectives", "bucket_members", "cap_bytes_from_env", "DEFAULT_CAP_BYTES"]

#: PyTorch DistributedDataParallel's default bucket_cap_mb
DEFAULT_CAP_BYTES = 25 << 20
#: a bucket also closes when the next gradient is this much estimated work away: its
#: all-reduce can run meanwhile (rates of one core, for the estimate only)
GAP_SECONDS, GAP_GFLOPS, GAP_GBS = 5e-3, 50.0, 10.0


def bucket_members(graph: Graph) -> dict[int, list[int]]:
    """Bucket -> the ids of its all-reduces, in graph order (what the schedule, the memory
    plan and the program builder read the pass's `bucket` attributes through)."""
    members: dict[int, list[int]] = {}
    for n in graph.nodes:
        b = n.attr("bucket", -1)
        if b >= 0:
            members.setdefault(b, []).append(n.id)
    return members


def _bucketable(node) -> bool:
    if not hasattr(OPS.get(node.op), "bucketable") or not isinstance(node.type, TensorType):
        return False
    return op_from_node(node.op, node.attr_dict).bucketable()


def bucket_collectives(graph: Graph, cap_bytes: int = DEFAULT_CAP_BYTES) -> tuple[Graph, int]:
    """The graph with its bucketable all-reduces assigned to buckets; the number of buckets."""
    position = {n.id: k for k, n in enumerate(graph.nodes)}
    members = [n for n in graph.nodes if _bucketable(n)]
    if not members:
        return graph, 0
    # above[v]: the members whose result value v depends on, one bit each
    bit = {n.id: 1 << k for k, n in enumerate(members)}
    above: dict[int, int] = {}
    for n in graph.nodes:
        deps = 0
        for i in n.inputs:
            deps |= above[i]
        above[n.id] = deps | bit.get(n.id, 0)
    work = _work_before(graph)
    assigned: dict[int, int] = {}
    bucket, filled, in_bucket, last = -1, 0, 0, 0.0
    for n in sorted(members, key=lambda n: (position[n.inputs[0]], position[n.id])):   # as gradients are made
        size = prod(n.type.shape) * np.dtype(n.type.dtype).itemsize
        ready = work[n.inputs[0]]
        if bucket < 0 or filled and filled + size > cap_bytes or ready - last > GAP_SECONDS \
                or above[n.inputs[0]] & in_bucket:
            bucket, filled, in_bucket = bucket + 1, 0, 0
        assigned[n.id] = bucket
        filled += size
        in_bucket |= bit[n.id]
        last = ready
    nodes = [replace_node(n, attrs=make_attrs({**n.attr_dict, "bucket": assigned[n.id]})) if n.id in assigned else n
             for n in graph.nodes]
    return graph.replace(nodes=nodes), bucket + 1


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


def _work_before(graph: Graph) -> dict[int, float]:
    """Estimated seconds of work from the start of the graph to each value, in graph order
    (the ops' `cost`: flops at GAP_GFLOPS, bytes at GAP_GBS)."""
    work, total = {}, 0.0
    for n in graph.nodes:
        if isinstance(n.type, TensorType) and n.op in OPS and all(isinstance(graph.node(i).type, TensorType)
                                                                  for i in n.inputs):
            cost = op_from_node(n.op, n.attr_dict).cost(n.type.shape, [graph.node(i).type.shape for i in n.inputs])
            total += cost.flops / (GAP_GFLOPS * 1e9) + cost.bytes / (GAP_GBS * 1e9)
        work[n.id] = total
    return work


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
