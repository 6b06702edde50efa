"""needle-train under MPI (`mpiexec -n N needle-train ...` or `needle-train --nproc N ...`):
the world, each rank's share of the data, sums over ranks, and the launcher."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Sequence

import numpy as np

import needle as ndl
import needle.distributed as dist
from needle.cli.train_options import without_options

__all__ = ["world", "shard", "sum_over_ranks", "launch"]


def world() -> tuple[int, int]:
    """(rank, world size), joining the MPI world under mpiexec (a world of one otherwise)."""
    dist.init()
    return dist.rank(), dist.world_size()


def shard(n: int) -> slice:
    """This rank's contiguous share of n items: every rank gets n // world_size of them (the
    few left over are not used, so that every rank runs the same number of steps)."""
    each = n // dist.world_size()
    return slice(dist.rank() * each, (dist.rank() + 1) * each)


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """The elementwise sums of `values` over all ranks (float64 precision is not needed:
    the sums are of per-rank loss totals and counts)."""
    total = dist.all_reduce(ndl.Tensor(np.asarray(values, dtype=np.float32)), "sum")
    return [float(v) for v in total.numpy()]


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run needle-train with `argv` on `nproc` ranks through mpiexec; its exit code."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = here if os.path.exists(here) else shutil.which("mpiexec")
    if mpiexec is None:
        raise FileNotFoundError("--nproc needs mpiexec: pip install 'needle[distributed]' (mpi4py and the "
                                "mpich wheel, which brings mpiexec)")
    command = [mpiexec, "-n", str(nproc), sys.executable, "-m", "needle.cli.train", *without_options(argv, ("--nproc",))]
    return subprocess.call(command)
