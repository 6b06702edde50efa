"""The CPU program's gradient buckets: one non-blocking all-reduce per bucket, overlapped.

A mixin of `CpuBuilder` (program.py). The bucket pass (needle/passes/bucket.py) marks the
all-reduces of a bucket; the memory plan puts each member's result in place of the gradient
it reduces and the members back to back in one block (`plan.buckets`). Here:

* a member's group writes nothing when its result already holds its gradient (in place),
  else copies the gradient in;
* the last member's group (in schedule order) adds a `CollectiveStartStep` over the block
  (one span; or one span per member when the plan could not lay them out as one block);
* the first group that reads a member's result (through views too), or the end of the
  program, waits for the bucket first (`CollectiveWaitStep`). The schedule puts every reader
  after all of its bucket's members, so a start always precedes its wait.
"""
from __future__ import annotations

from math import prod

from ...ir.op_table import op_from_node
from ...passes.bucket import bucket_members
from .gemm import F32
from .steps import CollectiveStartStep, CollectiveWaitStep, Slot


class BucketSteps:
    """`CpuBuilder`'s bucketed all-reduces (see the module docstring)."""

    def init_buckets(self) -> None:
        self.bucket_members = bucket_members(self.graph)
        self.bucket_of = {v: b for b, members in self.bucket_members.items() for v in members}
        self.bucket_left = {b: len(members) for b, members in self.bucket_members.items()}
        self.bucket_started: list[int] = []    # started and not yet waited for, in start order

    def bucket_member(self, n) -> tuple[str, str]:
        """A member's group: its gradient into its result's memory; the start at the last."""
        b = self.bucket_of[n.id]
        out = self._out_slot(n.id)
        g = n.inputs[0]
        in_place = g in self.loc and self._place(self.loc[g]) == self._place(out)
        if not in_place:
            self._copy_into(g, out)
        self.bucket_left[b] -= 1
        if self.bucket_left[b]:
            return "bucket", f"bucket {b}: {'in place' if in_place else 'gradient copied in'}"
        slots, sizes = self._bucket_spans(b)
        op = op_from_node(n.op, n.attr_dict)
        self._emit(CollectiveStartStep(op, slots, sizes, b, f"bucket{b}.start"), tuple(self.bucket_members[b]),
                   tuple(self.bucket_members[b]), "host", f"bucket{b}.start")
        self.bucket_started.append(b)
        return "bucket", f"bucket {b}: starts its all-reduce of {sum(sizes) * F32} bytes in {len(slots)} span(s)"

    def _bucket_spans(self, b: int) -> tuple[tuple, tuple]:
        """(slots, floats) the bucket's all-reduce covers: the plan's block as one span when
        every member's result lives in it, else each member's buffer."""
        members = self.bucket_members[b]
        block = self.memory.buckets.get(b)
        if block is not None and all(self.homes.get(v) is not None and self.homes[v].space == "arena"
                                     and block[0] <= self.homes[v].offset < block[0] + block[1] for v in members):
            return (self._new_slot(Slot("arena", block[0]), block[1] // F32),), (block[1] // F32,)
        return tuple(self.loc[v] for v in members), tuple(prod(self._shape(v)) for v in members)

    def wait_for_buckets(self, group) -> None:
        """Before `group` (None: the end of the program), wait for the started buckets whose
        results it reads."""
        if not self.bucket_started:
            return
        if group is None:
            wanted = set(self.bucket_started)
        else:
            bases = {b for v in self.schedule.reads.get(group.id, ()) for b in self.memory.aliases.get(v, (v,))}
            wanted = {self.bucket_of[v] for v in bases if v in self.bucket_of}
        for b in [b for b in self.bucket_started if b in wanted]:
            self._emit(CollectiveWaitStep(b, f"bucket{b}.wait"), (), (), "host", f"bucket{b}.wait")
            self.bucket_started.remove(b)
