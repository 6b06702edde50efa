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

import threading
import time
from . import world

__all__ = ["track", "finish", "POLL_SECONDS"]

#: how often the thread tests the requests in flight
POLL_SECONDS = 0.0005


class _Poller:
    def __init__(self):
        self.lock = threading.Condition()
        self.requests: list = []
        self.thread = None

    def track(self, requests: list) -> None:
        with self.lock:
            self.requests += requests
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="needle-mpi-progress", daemon=True)
                self.thread.start()
            self.lock.notify()

    def finish(self, requests: list) -> None:
        with self.lock:   # the thread tests no request of these once this returns
            ids = {id(r) for r in requests}
            self.requests = [r for r in self.requests if id(r) not in ids]

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.requests:
                    self.lock.wait()
                self.requests = [r for r in self.requests if not r.Test()]
            time.sleep(POLL_SECONDS)


_POLLER = _Poller()


def _threaded() -> bool:
    from mpi4py import MPI  # requests exist only in a world of more than one

    return MPI.Query_thread() >= MPI.THREAD_MULTIPLE


def track(requests: list) -> None:
    """Progress `requests` in the background until `finish` takes them back."""
    if requests and _threaded():
        _POLLER.track(requests)


def finish(requests: list, what: str) -> None:
    """Complete `requests` on this thread (bounded by NEEDLE_DIST_TIMEOUT)."""
    _POLLER.finish(requests)
    for r in requests:
        world.wait(r, what)

