"""Many programs run in worker processes, so that a crash or a hang is a reported finding."""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import tempfile
import time
from multiprocessing.connection import wait
from typing import Callable, Iterable, Optional

import numpy as np

import needle

from .generate import generate
from .run import Result, run_seed


def _worker(conn) -> None:
    needle.set_num_threads(1)
    np.seterr(all="ignore")  # NaN and Inf are what the programs are about
    while True:
        seed = conn.recv()
        if seed is None:
            return
        conn.send(dataclasses.asdict(run_seed(seed)))


def fuzz(seeds: Iterable[int], jobs: int = 2, timeout: float = 60.0, executor: Optional[str] = None,
         on_result: Optional[Callable[[Result], None]] = None) -> list[Result]:
    """Run the programs of `seeds` in `jobs` worker processes; results in seed order.

    Each worker runs programs one at a time; one that dies (a crash) or runs past `timeout`
    seconds is replaced and its program reported. Workers use a fresh NEEDLE_CACHE_DIR,
    the IR verifier (NEEDLE_VERIFY=1), one thread, and NEEDLE_EXECUTOR=`executor` when given.
    """
    ctx = multiprocessing.get_context("spawn")
    cache = tempfile.TemporaryDirectory(prefix="needle-fuzz-cache-")
    env = {"NEEDLE_CACHE_DIR": cache.name, "NEEDLE_VERIFY": "1", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1"}
    if executor:
        env["NEEDLE_EXECUTOR"] = executor
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # spawned workers inherit the environment at start
    pending = list(seeds)[::-1]
    results: dict[int, Result] = {}
    busy: dict = {}  # connection -> (process, seed, deadline)
    idle: list = []

    def start():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child,), daemon=True)
        proc.start()
        child.close()
        idle.append((parent, proc))

    def finish(result: Result) -> None:
        results[result.seed] = result
        if on_result:
            on_result(result)

    try:
        for _ in range(max(1, min(jobs, len(pending)))):
            start()
        while pending or busy:
            while idle and pending:
                conn, proc = idle.pop()
                seed = pending.pop()
                conn.send(seed)
                busy[conn] = (proc, seed, time.monotonic() + timeout)
            ready = wait(list(busy), timeout=max(0.0, min(d for _, _, d in busy.values()) - time.monotonic()))
            for conn in ready:
                proc, seed, _ = busy.pop(conn)
                try:
                    finish(Result(**conn.recv()))
                    idle.append((conn, proc))
                except (EOFError, OSError):
                    proc.join(5)
                    finish(Result(seed, "crash", f"worker died (exit code {proc.exitcode})", generate(seed)))
                    start()
            for conn, (proc, seed, deadline) in list(busy.items()):
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.join()
                    del busy[conn]
                    finish(Result(seed, "timeout", f"no result after {timeout:g} s", generate(seed)))
                    start()
        for conn, _ in idle:
            conn.send(None)
        for _, proc in idle:
            proc.join(10)
    finally:
        for conn, (proc, _, _) in busy.items():
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        cache.cleanup()
    return [results[s] for s in sorted(results)]
