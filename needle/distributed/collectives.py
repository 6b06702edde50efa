"""Collectives as needle ops: `AllReduce`, `Broadcast`, `AllGather`, `ReduceScatter`.

Each is a registry op like any other (needle/ops/registry.py): `infer` gives the output
type, `compute` runs the MPI collective on the arrays (eagerly, or as the compiled graph's
step), `gradient` is the adjoint collective, so eager `backward()`, the compiler's
autodiff pass and the IR printer/parser all read this one definition. No op records a
rank: every rank traces the same graph (a world-size attribute is recorded where the
shape depends on it), which is what the compiled step's graph fingerprint compares.

Semantics (SPMD: every rank calls the same collectives in the same order):
* all_reduce(x, op): the elementwise sum / mean / max over ranks, on every rank;
  with `root` set, the sum lands on that rank only and the others get zeros (the
  adjoint of broadcast);
* broadcast(x, src): `src`'s x on every rank;
* all_gather(x): the ranks' x concatenated along axis 0 in rank order (as Horovod);
* reduce_scatter(x): the sum over ranks, this rank's 1/N slice along axis 0 (the
  adjoint of all_gather).
"""
from __future__ import annotations

import functools

import numpy as np

from ..backend_selection import array_api
from ..ops.elementwise import compare
from ..ops.registry import TensorOp, op_names
from . import pending, world

__all__ = ["AllReduce", "Broadcast", "AllGather", "ReduceScatter", "all_reduce", "broadcast", "all_gather",
           "reduce_scatter", "REDUCE_OPS", "COLLECTIVE_OPS"]

REDUCE_OPS = ("sum", "mean", "max")


@functools.cache
def _mpi():
    """mpi4py's MPI module (only reached in a world of more than one, which has mpi4py)."""
    from mpi4py import MPI

    return MPI


def _message(array, comm):
    """An MPI message over a compact cpu NDArray's memory (its buffer, through the buffer
    protocol; in a world of one, a flat numpy view of it)."""
    handle = array._handle
    if comm is None:
        return np.asarray(handle)
    return [handle, _mpi().FLOAT]


def _floats(message) -> np.ndarray:
    """A flat float32 numpy view of a message (a numpy array, or [buffer, MPI.FLOAT])."""
    return message.reshape(-1) if isinstance(message, np.ndarray) else np.frombuffer(message[0], np.float32)


def _mpi_op(op: str):
    return _mpi().MAX if op == "max" else _mpi().SUM


class _Collective(TensorOp, abstract=True):
    """A collective computes on host float32 buffers: eagerly over the memory of needle's cpu
    arrays (their buffers) or over host copies (numpy arrays, other devices), and in a compiled
    step as the native program's host step over its buffers (`host_compute(outs, ins)`,
    numpy arrays); no copies on the cpu device either way."""

    kind = "opaque"
    pure = False        # never merged, folded or evaluated at compile time
    collective = True   # every rank must run it, in the same order

    def compute(self, a):
        comm = world.comm()
        if isinstance(a, np.ndarray) or a.device.name != "cpu":   # through host copies
            out = np.empty(self.out_shape(a), dtype=np.float32)
            host = a if isinstance(a, np.ndarray) else a.numpy()
            self._run(comm, np.ascontiguousarray(host, dtype=np.float32), out, tuple(a.shape))
            return out if isinstance(a, np.ndarray) else array_api.array(out, device=a.device)
        # needle's cpu arrays: MPI reads and writes their memory by address (an eager
        # collective's Python is its overhead over MPI: kept to these lines)
        a = a.compact()
        out = type(a).make(self.out_shape(a), device=a.device)
        self._run(comm, _message(a, comm), _message(out, comm), a.shape)
        return out

    def out_shape(self, a) -> tuple:
        return tuple(self.infer(a)[0])

    def host_compute(self, outs: list, ins: list) -> None:
        self._run(world.comm(), ins[0], outs[0], ins[0].shape)

    def _run(self, comm, send, recv, shape: tuple) -> None:
        if comm is None:
            _floats(recv)[...] = _floats(send)
        else:
            self.mpi(comm, send, recv, shape)

    def mpi(self, comm, send, recv, shape: tuple) -> None:
        """The collective over the world's ranks, from message `send` into `recv` (numpy arrays
        or `[buffer, MPI.FLOAT]`, see `_message`); `shape`: the input's."""
        raise NotImplementedError


class AllReduce(_Collective):
    """Elementwise reduction over ranks (see the module docstring).

    `bucket` (set by the `bucket` pass, needle/passes/bucket.py; -1: none) groups gradient
    sums that the native executor reduces together: one non-blocking in-place all-reduce
    over the bucket's memory (`start`), waited for before the first reader of a result."""

    bucket = -1

    def __init__(self, op: str = "sum", root: int = -1, bucket: int = -1):
        self.op = op
        self.root = int(root)
        if bucket >= 0:   # only a bucketed all-reduce shows the attribute in the IR
            self.bucket = int(bucket)
        self._check()

    def bucketable(self) -> bool:
        """A sum over all ranks, not in a bucket yet: one that can be reduced in place."""
        return self.op == "sum" and self.root < 0 and self.bucket < 0

    def start(self, spans: list) -> list:
        """Start summing each of `spans` (host float32 arrays) over the ranks, in place, with
        a background thread moving the requests along (needle/distributed/pending.py); what
        `finish` takes (nothing in a world of one)."""
        comm = world.comm()
        if comm is None:
            return []
        return pending.track([comm.Iallreduce(_mpi().IN_PLACE, span, op=_mpi().SUM) for span in spans])

    def finish(self, started: list) -> None:
        """Wait for what `start` started."""
        pending.finish(started, f"all_reduce of gradient bucket {self.bucket}")

    def _check(self) -> None:
        if self.op not in REDUCE_OPS:
            raise self.error(f"op must be one of {REDUCE_OPS}, got {self.op!r}")
        if self.root >= 0 and self.op != "sum":
            raise self.error(f"a root reduction is a sum, got op={self.op!r}")

    @classmethod
    def from_attrs(cls, attrs: dict) -> "AllReduce":
        op = super().from_attrs(attrs)
        op._check()
        return op

    # infer: Op's (the input's type), so eager calls skip validating

    def out_shape(self, a) -> tuple:
        return a.shape

    def mpi(self, comm, send, recv, shape):
        what = lambda: f"all_reduce({self.op}) of shape {shape}"  # noqa: E731 (formatted only for an error)
        if self.root >= 0:
            world.blocking(what, comm.Reduce, send, recv, op=_mpi_op("sum"), root=self.root)
            if comm.Get_rank() != self.root:
                _floats(recv)[...] = 0.0
        else:
            world.blocking(what, comm.Allreduce, send, recv, op=_mpi_op(self.op))
            if self.op == "mean":
                _floats(recv)[...] *= np.float32(1.0 / comm.Get_size())

    # VJPs build the adjoint ops themselves: a graph's collectives are for the world it was
    # traced in, whatever world differentiates it
    def gradient(self, out_grad, node):
        if self.op == "max":
            hit = compare(node.inputs[0], node, "eq")
            return AllReduce("sum")(out_grad) * hit / AllReduce("sum")(hit)
        if self.root >= 0:
            return Broadcast(self.root)(out_grad)
        return AllReduce(self.op)(out_grad)


class Broadcast(_Collective):
    """`src`'s tensor on every rank."""

    def __init__(self, src: int = 0):
        self.src = int(src)

    def mpi(self, comm, send, recv, shape):
        _floats(recv)[...] = _floats(send)
        world.blocking(f"broadcast(src={self.src}) of shape {shape}", comm.Bcast, recv, root=self.src)

    def gradient(self, out_grad, node):
        return AllReduce("sum", root=self.src)(out_grad)


class AllGather(_Collective):
    """The ranks' tensors concatenated along axis 0, in rank order."""

    def __init__(self, world_size: int = 1):
        self.world_size = int(world_size)

    def infer(self, a):
        if len(a.shape) == 0:
            raise self.error("all_gather needs a tensor with at least one axis, got a scalar")
        return (a.shape[0] * self.world_size,) + tuple(a.shape[1:]), a.dtype

    def mpi(self, comm, send, recv, shape):
        world.blocking(f"all_gather of shape {shape}", comm.Allgather, send, recv)

    def gradient(self, out_grad, node):
        return ReduceScatter(self.world_size)(out_grad)


class ReduceScatter(_Collective):
    """The sum over ranks, this rank's slice of axis 0 (axis 0 divides by the world size)."""

    def __init__(self, world_size: int = 1):
        self.world_size = int(world_size)

    def infer(self, a):
        if len(a.shape) == 0 or a.shape[0] % self.world_size:
            raise self.error(f"reduce_scatter needs axis 0 divisible by the world size {self.world_size}, "
                             f"got shape {tuple(a.shape)}")
        return (a.shape[0] // self.world_size,) + tuple(a.shape[1:]), a.dtype

    def mpi(self, comm, send, recv, shape):
        world.blocking(f"reduce_scatter of shape {shape}", comm.Reduce_scatter_block, send, recv, op=_mpi_op("sum"))

    def gradient(self, out_grad, node):
        return AllGather(self.world_size)(out_grad)


# In a world of one every collective is the identity, so none is recorded (eagerly or in a
# compiled graph): single-process scripts pay nothing for being written for N ranks.

#: the IR names of the collectives (a graph holding one is fingerprinted across ranks)
COLLECTIVE_OPS = op_names(lambda cls: getattr(cls, "collective", False))


def all_reduce(t, op: str = "sum"):
    """The elementwise `op` ("sum", "mean" or "max") of `t` over all ranks, on every rank.
    A mean is recorded as a sum times 1/world_size: the sum can join a gradient bucket and
    the scaling fuses into the sum's reader."""
    if op not in _ALL_REDUCES:
        AllReduce(op)   # raises the op's error
    n = world.world_size()
    if n == 1:
        return t
    return _ALL_REDUCES["sum"](t) * (1.0 / n) if op == "mean" else _ALL_REDUCES[op](t)


#: one instance per reduction: an eager all_reduce makes no op object per call
_ALL_REDUCES = {op: AllReduce(op) for op in REDUCE_OPS}


def broadcast(t, src: int = 0):
    """Rank `src`'s `t`, on every rank."""
    if not 0 <= src < world.world_size():
        raise ValueError(f"broadcast: src={src} is not a rank of this world of {world.world_size()}")
    return Broadcast(src)(t) if world.world_size() > 1 else t


def all_gather(t):
    """Every rank's `t`, concatenated along axis 0 in rank order."""
    return AllGather(world.world_size())(t) if world.world_size() > 1 else t


def reduce_scatter(t):
    """The sum of `t` over ranks; this rank's 1/world_size slice of axis 0."""
    return ReduceScatter(world.world_size())(t) if world.world_size() > 1 else t
