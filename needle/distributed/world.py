"""The process world of data-parallel training: MPI through mpi4py (the MPICH wheel).

`init()` is idempotent. Outside `mpiexec` (or without mpi4py installed) the world is one
process, so a script written for N ranks runs unchanged on one. Inside `mpiexec`, `init`
also makes a rank that raises abort the whole job (`MPI_Abort`), after printing its
traceback under its rank number, so the other ranks never hang in a collective.

Each rank computes with its share of its machine's cores (cores / ranks on the machine)
unless NEEDLE_NUM_THREADS sets the threads.

Every collective blocks in MPI through `blocking(what, call)` (or `wait(request, what)`),
watched by a thread that aborts the job after `NEEDLE_DIST_TIMEOUT` seconds (default 300)
with a message naming the collective and the ranks that had not reached it.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable, Optional, Union

import numpy as np

from ..threads import set_num_threads

__all__ = ["init", "is_initialized", "under_mpiexec", "abort", "stats", "rank", "world_size", "local_rank", "barrier", "comm",
           "timeout_seconds", "blocking", "wait", "count_overlap"]


#: a rank that has waited this long in a collective publishes that it reached it (a rank that
#: times out names the ranks whose published count is behind its own)
PUBLISH_AFTER = 0.5
#: how often the watchdog looks at the collective this rank is blocked in
TICK_SECONDS = 0.25


class _World:
    """The initialised state: the communicator (None for a world of one) and counters."""

    def __init__(self, comm: Any):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.local_rank, self.local_size = _local_rank_and_size(comm)
        self.collectives = 0        # how many collectives this rank has started
        self.waiting: Any = None    # what names the collective blocked in (None: none)
        self.in_flight_seconds = 0.0   # non-blocking collectives (gradient buckets): started to complete
        self.exposed_seconds = 0.0     # ... and the part of it a rank spent waiting for them
        self.progress: Optional[_Progress] = None


_WORLD: Optional[_World] = None


def under_mpiexec() -> bool:
    """True in a process started by mpiexec (MPICH's Hydra, or another MPI's launcher)."""
    return any(k in os.environ for k in ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE",
                                         "HYDRA_CONTROL_FD", "PMI_FD"))


def _local_rank_and_size(comm) -> tuple[int, int]:
    """This rank among the ranks on its machine, and how many they are."""
    if comm is None:
        return 0, 1
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    return local.Get_rank(), local.Get_size()


def _share_the_cores(local_size: int) -> None:
    """Unless NEEDLE_NUM_THREADS says otherwise, each of the ranks on a machine computes with
    its share of the machine's cores (one thread per core each would oversubscribe them)."""
    if not os.environ.get("NEEDLE_NUM_THREADS"):
        set_num_threads(max(1, (os.cpu_count() or 1) // local_size))


def init() -> None:
    """Join the world (idempotent). A world of one outside `mpiexec`; inside it, needs mpi4py
    (`pip install needle[distributed]`)."""
    global _WORLD
    if _WORLD is not None:
        return
    if not under_mpiexec():
        _WORLD = _World(None)
        return
    try:
        from mpi4py import MPI  # optional dependency: only needed under mpiexec
    except ImportError as e:
        raise ImportError("needle.distributed under mpiexec needs mpi4py: pip install 'needle[distributed]'") from e
    comm = MPI.COMM_WORLD.Dup()
    timeout_seconds()   # a bad NEEDLE_DIST_TIMEOUT fails here, not in the first long wait
    _WORLD = _World(comm if comm.Get_size() > 1 else None)
    if _WORLD.comm is not None:
        if MPI.Query_thread() >= MPI.THREAD_MULTIPLE:   # the watchdog may call MPI beside a collective
            _WORLD.progress = _Progress(_WORLD.comm)
        _Watchdog(_WORLD)
        _install_abort_hook()
        _share_the_cores(_WORLD.local_size)


def is_initialized() -> bool:
    return _WORLD is not None


def _world() -> _World:
    init()
    return _WORLD


def rank() -> int:
    """This process's rank, 0 .. world_size() - 1."""
    return _world().rank


def world_size() -> int:
    """How many processes train together."""
    return (_WORLD or _world()).size


def local_rank() -> int:
    """This process's rank among the ranks on its machine."""
    return _world().local_rank


def comm() -> Any:
    """The mpi4py communicator, or None in a world of one."""
    return (_WORLD or _world()).comm


def barrier() -> None:
    """Wait until every rank reaches this point (bounded by NEEDLE_DIST_TIMEOUT)."""
    w = _world()
    if w.comm is not None:
        blocking("barrier", w.comm.Barrier)


def timeout_seconds() -> float:
    raw = os.environ.get("NEEDLE_DIST_TIMEOUT", "300")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"NEEDLE_DIST_TIMEOUT must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"NEEDLE_DIST_TIMEOUT must be positive, got {raw!r}")
    return value


def blocking(what: Union[str, Callable[[], str]], call: Callable, *args: Any, **kwargs: Any) -> Any:
    """`call(*args, **kwargs)`: a blocking MPI call (mpi4py releases the GIL in it) under the
    watchdog, which aborts the job if it has not returned after NEEDLE_DIST_TIMEOUT seconds
    (`what` names the collective in that message; a callable: formatted only then). No clock
    is read here: an eager collective's Python runs with caches its message just emptied."""
    w = _WORLD or _world()
    w.collectives += 1
    w.waiting = what   # the watchdog times how long collective number w.collectives keeps this
    try:
        return call(*args, **kwargs)
    finally:
        w.waiting = None


def wait(request: Any, what: Union[str, Callable[[], str]]) -> None:
    """Complete a non-blocking MPI request (under the watchdog, as `blocking`)."""
    blocking(what, request.Wait)


class _Watchdog:
    """A daemon thread that looks every TICK_SECONDS at the collective this rank is blocked
    in, if any (the same collective number at consecutive looks: the same wait). Past
    PUBLISH_AFTER it publishes this rank's count of collectives (`_Progress`); past
    NEEDLE_DIST_TIMEOUT it prints a CollectiveTimeout naming the collective and the ranks
    behind, and aborts the job."""

    def __init__(self, w: _World):
        self.world = w
        self.limit = timeout_seconds()
        self.tick = min(TICK_SECONDS, self.limit / 8)
        threading.Thread(target=self._run, name="needle-mpi-watchdog", daemon=True).start()

    def _run(self) -> None:
        w, seen, since, published = self.world, 0, 0.0, 0
        while True:
            time.sleep(self.tick)
            what, count = w.waiting, w.collectives
            if what is None:
                continue
            now = time.monotonic()
            if count != seen:   # a new wait
                seen, since = count, now
                continue
            if now - since > PUBLISH_AFTER and published < count and w.progress is not None:
                w.progress.publish(count)   # this rank has reached collective number `count`
                published = count
            if now - since > self.limit:
                missing = w.progress.behind(count) if w.progress is not None else "unknown"
                sys.stderr.write(
                    f"needle.distributed: CollectiveTimeout: rank {w.rank}: {what() if callable(what) else what} "
                    f"waited {self.limit:g} s (NEEDLE_DIST_TIMEOUT) for the other ranks; "
                    f"ranks that had not reached it: {missing}\n")
                abort(1)


class _Progress:
    """The count of collectives each rank has reached, in a one-sided MPI window on rank 0, so
    a rank that times out can name the ranks behind it without their help. A rank publishes
    only when it has waited PUBLISH_AFTER in a collective: fast collectives cost nothing,
    and a rank that never arrives keeps an older count than the ranks waiting for it."""

    def __init__(self, comm: Any):
        from mpi4py import MPI

        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.win = MPI.Win.Allocate(8 * self.size if self.rank == 0 else 0, disp_unit=8, comm=comm)
        if self.rank == 0:
            np.frombuffer(self.win.tomemory(), dtype=np.int64)[:] = 0
        self.win.Lock_all()
        self._count = np.zeros(1, dtype=np.int64)
        atexit.register(self.close)

    def publish(self, count: int) -> None:
        self._count[0] = count
        self.win.Rput(self._count, 0, target=self.rank).Wait()

    def behind(self, count: int, patience: float = 5.0) -> str:
        """The ranks whose count is below `count` (or "unknown" if rank 0's window does not answer)."""
        counts = np.zeros(self.size, dtype=np.int64)
        request = self.win.Rget(counts, 0)
        start = time.monotonic()
        while not request.Test():
            if time.monotonic() - start > patience:
                return "unknown (rank 0 does not answer)"
            time.sleep(1e-3)
        return ", ".join(str(r) for r in range(self.size) if counts[r] < count) or "none (all arrived late)"

    def close(self) -> None:
        if self.win is not None:
            self.win.Unlock_all()
            self.win.Free()
            self.win = None


def stats() -> dict:
    """This rank's collective counters: how many it started, and for the non-blocking ones
    (gradient buckets) the seconds they were in flight and the seconds of that it waited for
    them (the rest overlapped its compute)."""
    w = _world()
    return {"collectives": w.collectives, "in_flight_seconds": w.in_flight_seconds, "exposed_seconds": w.exposed_seconds}


def count_overlap(in_flight: float, exposed: float) -> None:
    """Count a finished non-blocking collective (needle/distributed/pending.py)."""
    w = _world()
    w.in_flight_seconds += in_flight
    w.exposed_seconds += exposed


def _install_abort_hook() -> None:
    """An uncaught exception on any rank prints its traceback and aborts every rank."""
    previous = sys.excepthook

    def abort_all(kind, value, tb):
        sys.stderr.write(f"needle.distributed: rank {rank()} of {world_size()} failed:\n")
        sys.stderr.write("".join(traceback.format_exception(kind, value, tb)))
        if previous not in (sys.__excepthook__, abort_all):
            previous(kind, value, tb)
        abort(1)

    sys.excepthook = abort_all


def abort(code: int) -> None:
    """End every rank of the job now with exit code `code` (after this rank's output is
    forwarded); a no-op in a world of one."""
    if _WORLD is None or _WORLD.comm is None:
        return
    from mpi4py import MPI

    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(0.5)   # let mpiexec forward the message before it kills the job
    MPI.COMM_WORLD.Abort(code)
