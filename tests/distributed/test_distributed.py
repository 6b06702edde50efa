"""needle.distributed: collectives, data-parallel equivalence and faults under `mpiexec`
(2 and 3 ranks on loopback, oversubscribed on small machines), and the world of one."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import needle as ndl
import needle.distributed as dist
from needle import nn

ROOT = Path(__file__).resolve().parents[2]
MPIEXEC = shutil.which("mpiexec")
try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False

needs_mpi = pytest.mark.skipif(MPIEXEC is None or not HAVE_MPI4PY,
                               reason="needs mpi4py and mpiexec (pip install 'needle[distributed]')")


def mpirun(n: int, case: str, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", NEEDLE_NUM_THREADS="1", **env)
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, "-m", "tests.distributed.workers", case],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess, n: int) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    # ranks' lines may interleave mid-line in mpiexec's forwarded output
    assert sorted(int(r) for r in re.findall(r"OK rank (\d+)", result.stdout)) == list(range(n)), result.stdout


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_collectives_and_their_gradients_match_numpy(n):
    assert_ok(mpirun(n, "collectives"), n)


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_n_ranks_train_like_one_rank_with_the_whole_batch(n):
    """MLP and LSTM LM, SGD-momentum and Adam, eager and compiled: 5 steps."""
    assert_ok(mpirun(n, "equivalence"), n)


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_gradient_buckets_reduce_in_place_and_train_like_eager(n):
    assert_ok(mpirun(n, "buckets", NEEDLE_BUCKET_CAP_MB="0.0002"), n)


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_sync_batchnorm_trains_like_one_rank_with_the_whole_batch(n):
    assert_ok(mpirun(n, "sync_batchnorm"), n)


@needs_mpi
def test_a_rank_that_raises_stops_every_rank_quickly():
    start = time.monotonic()
    result = mpirun(2, "raises", timeout=60)
    assert result.returncode != 0
    assert time.monotonic() - start < 30
    assert "rank 1 of 2 failed" in result.stderr and "deliberate failure on rank 1" in result.stderr


@needs_mpi
def test_a_stalled_collective_times_out_naming_the_missing_rank():
    start = time.monotonic()
    result = mpirun(3, "stalls", timeout=60, NEEDLE_DIST_TIMEOUT="2")
    assert result.returncode != 0
    assert time.monotonic() - start < 30
    assert re.search(r"CollectiveTimeout: rank [01]: all_reduce\(sum\) of shape \(3,\) waited 2 s", result.stderr)
    assert "ranks that had not reached it: 2" in result.stderr


@needs_mpi
def test_ranks_that_trace_different_graphs_get_a_clear_error():
    result = mpirun(2, "mismatch", timeout=60)
    assert result.returncode != 0
    assert "traced a different graph on rank(s) 1 than on rank 0" in result.stderr, result.stderr
    assert "GraphMismatch" in result.stderr


# ---- a world of one (no mpiexec) ---------------------------------------------------------------

def test_world_of_one_collectives_are_the_identity():
    dist.init()
    assert (dist.rank(), dist.world_size(), dist.local_rank()) == (0, 1, 0)
    x = ndl.Tensor(np.random.randn(3, 2).astype(np.float32))
    for y in (dist.all_reduce(x), dist.all_reduce(x, "mean"), dist.all_reduce(x, "max"), dist.broadcast(x),
              dist.all_gather(x), dist.reduce_scatter(x)):
        np.testing.assert_array_equal(y.numpy(), x.numpy())
    dist.barrier()
    with pytest.raises(ValueError, match="src=1 is not a rank"):
        dist.broadcast(x, 1)
    with pytest.raises(ValueError, match="op must be one of"):
        dist.all_reduce(x, "prod")


def test_every_finished_bucket_counts_as_one_collective():
    """A rank names the ranks behind it by comparing counts of collectives reached, so every
    rank counts every gradient bucket once, whether the progress thread saw its request
    complete or the wait completed it."""
    from needle.distributed import pending

    class Request:
        def __init__(self, done: bool):
            self.done = done

        def Test(self):
            return self.done

        def Wait(self):
            self.done = True

    dist.init()
    flying = [pending.InFlight(Request(done)) for done in (True, False)]
    flying[0].done = time.perf_counter()   # seen complete by the progress thread
    before = dist.stats()["collectives"]
    pending.finish(flying, "test buckets")
    assert dist.stats()["collectives"] == before + 2
    assert all(f.request.done and f.done is not None for f in flying)


def test_distributed_optimizer_of_one_rank_is_the_optimizer():
    np.random.seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    plain = ndl.optim.Adam(a.parameters(), lr=0.1)
    wrapped = dist.DistributedOptimizer(ndl.optim.Adam(b.parameters(), lr=0.1))
    assert isinstance(wrapped, ndl.optim.Adam)
    x = ndl.Tensor(np.random.randn(5, 4).astype(np.float32))
    for model, opt in ((a, plain), (b, wrapped)):
        for _ in range(3):
            opt.reset_grad()
            (model(x) ** 2).sum().backward()
            opt.step()
    np.testing.assert_allclose(b.weight.numpy(), a.weight.numpy(), rtol=1e-6)
    wrapped.lr = 0.5   # state is shared with the wrapped optimizer
    assert wrapped.lr == 0.5


@pytest.mark.parametrize("n_items,ranks,drop_last", [(10, 3, False), (10, 3, True), (12, 4, False), (5, 1, False)])
def test_distributed_sampler_shares_are_disjoint_even_and_cover_the_epoch(n_items, ranks, drop_last):
    ds = ndl.data.NDArrayDataset(np.arange(n_items, dtype=np.float32).reshape(-1, 1))
    samplers = [ndl.data.DistributedSampler(ds, ranks, r, seed=3, drop_last=drop_last) for r in range(ranks)]
    for epoch in range(2):
        shares = [list(s) for s in samplers]
        assert len({len(s) for s in shares}) == 1
        together = sum(shares, [])
        if drop_last:
            assert len(set(together)) == len(together) == n_items // ranks * ranks
        else:
            assert set(together) == set(range(n_items))
            assert len(together) == -(-n_items // ranks) * ranks
        assert all(len(s) == len(samplers[0]) for s in shares)
    first = [list(ndl.data.DistributedSampler(ds, ranks, 0, seed=3)) for _ in range(2)]
    assert first[0] == first[1], "same seed and epoch, same order on every run"


def test_distributed_sampler_epochs_differ_and_set_epoch_replays():
    ds = ndl.data.NDArrayDataset(np.arange(50, dtype=np.float32).reshape(-1, 1))
    s = ndl.data.DistributedSampler(ds, 2, 1)
    e0, e1 = list(s), list(s)
    assert e0 != e1
    s.set_epoch(0)
    assert list(s) == e0


def test_dataloader_batches_follow_the_sampler():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    ds = ndl.data.NDArrayDataset(x)
    sampler = ndl.data.DistributedSampler(ds, 2, 0, shuffle=False)
    loader = ndl.data.DataLoader(ds, batch_size=2, sampler=sampler)
    assert len(loader) == 3
    got = np.concatenate([b[0].numpy() for b in loader])
    np.testing.assert_array_equal(got, x[[0, 2, 4, 6, 8]])
    with pytest.raises(ValueError, match="either shuffle=True or a sampler"):
        ndl.data.DataLoader(ds, batch_size=2, shuffle=True, sampler=sampler)
