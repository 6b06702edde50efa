"""Non-blocking collectives in flight, moved along by a background thread.

MPICH advances a non-blocking collective only inside MPI calls: started and left alone, a
bucket's all-reduce would do its work in the final wait, and nothing would overlap the
backward pass. `track(requests)` hands requests to one daemon thread that tests them every
`POLL_SECONDS` (sleeping in between: it costs the compute threads almost nothing) until
they complete; `finish(requests, what)` takes them back and completes them on the calling
thread through `world.wait` (the timeout and the missing-rank report apply as to any wait).

The native executor releases the GIL while its kernels run, so the thread runs during a
compiled step. It needs MPI_THREAD_MULTIPLE (mpi4py's default); with a lower thread level
the requests simply progress in `finish`.
"""
from __future__ import annotations

import functools
import threading
import time
from typing import Any, Optional

from . import world

__all__ = ["track", "finish", "InFlight", "POLL_SECONDS"]

#: how often the thread tests the requests in flight
POLL_SECONDS = 0.0005


class InFlight:
    """A started request, when it started and when it was seen complete."""

    __slots__ = ("request", "started", "done")

    def __init__(self, request: Any):
        self.request = request
        self.started = time.perf_counter()
        self.done: Optional[float] = None


class _Poller:
    def __init__(self):
        self.lock = threading.Condition()
        self.flying: list[InFlight] = []
        self.thread = None

    def track(self, flying: list) -> None:
        with self.lock:
            self.flying += flying
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="needle-mpi-progress", daemon=True)
                self.thread.start()
            self.lock.notify()

    def finish(self, flying: list) -> None:
        with self.lock:   # the thread tests none of these once this returns
            self.flying = [f for f in self.flying if f not in flying]

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.flying:
                    self.lock.wait()
                for f in self.flying:
                    if f.request.Test():
                        f.done = time.perf_counter()
                self.flying = [f for f in self.flying if f.done is None]
            time.sleep(POLL_SECONDS)


_POLLER = _Poller()


@functools.cache
def _threaded() -> bool:
    from mpi4py import MPI  # requests exist only in a world of more than one

    return MPI.Query_thread() >= MPI.THREAD_MULTIPLE


def track(requests: list) -> list[InFlight]:
    """Progress `requests` in the background until `finish` takes them back."""
    flying = [InFlight(r) for r in requests]
    if flying and _threaded():
        _POLLER.track(flying)
    return flying


def finish(flying: list, what: str) -> None:
    """Complete what `track` returned, on this thread (bounded by NEEDLE_DIST_TIMEOUT), and
    count in `world.stats()` how long it was in flight and how long this waited for it."""
    start = time.perf_counter()
    _POLLER.finish(flying)
    for f in flying:
        # waited for even when the progress thread saw it complete (an MPI request that has
        # completed waits for nothing): every rank counts every bucket as one collective, which
        # the watchdog's report of the ranks behind compares across ranks
        world.wait(f.request, what)
        if f.done is None:
            f.done = time.perf_counter()
    world.count_overlap(sum(f.done - f.started for f in flying), time.perf_counter() - start)
