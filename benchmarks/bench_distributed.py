"""needle.distributed on this machine: all-reduce bandwidth and data-parallel training steps.

    python benchmarks/bench_distributed.py [--ranks 2] [--only allreduce,T2,T4] [--repeats N]
    python benchmarks/bench_distributed.py --scaling-model [--latency-us 20] [--overlap 0.5]

1. All-reduce of float32 buffers from 4 KB to 64 MB on `--ranks` processes: needle's
   `all_reduce(Tensor)` (eager: output allocation and the MPI call) against mpi4py's raw
   `Allreduce` on the same memory (from the tensor's buffer into a new needle array, as
   all_reduce makes), same run, call by call in alternating order. Overhead = needle's
   median time / mpi4py's - 1. And a compiled training step's gradient bucket: the native
   executor's start and wait steps (`AllReduce.start` / `finish`, in place on needle's
   memory, moved along by the progress thread) against mpi4py's in-place `Allreduce`.
2. Compiled T2 (ResNet9, batch 128) and T4 (Transformer LM, batch 16) training steps of
   WORKLOADS.md: `--ranks` processes x 1 thread, each on batch/ranks, with
   DistributedOptimizer, against 1 process x `--ranks` threads on the whole batch. Also the
   time each rank's step waited for its gradient buckets (the bucketN.wait steps,
   needle.distributed.stats()): the slowest rank's wait (the least: the others also wait for
   it, which is compute skew between the ranks, not communication) against the raw blocking
   all-reduce time of all the gradient bytes in one buffer, hidden share = 1 - that / raw;
   and the same ranks running the same half-batch steps at the same time without any
   communication, whose step time the communicating step exceeds by the CPU time the
   shared-memory transfers take from the compute plus the skew.

Runs `mpiexec` itself (the workers are this file with --worker).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SIZES = [4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]


def _median_ms(call, repeats: int, comm) -> float:
    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    # every rank's median, the slowest wins (a collective is as fast as its last rank)
    return max(comm.allgather(statistics.median(times))) * 1e3


def _paired_medians_ms(first, second, repeats: int, comm) -> tuple[float, float]:
    """Median ms of `first` and of `second`, timed call by call in alternating order (the
    machine's drift hits both alike); each rank's median, the slowest rank's."""
    for _ in range(3):
        first(), second()
    times: tuple[list, list] = ([], [])
    for k in range(repeats):
        for which in ((0, 1) if k % 2 else (1, 0)):
            comm.Barrier()
            t = time.perf_counter()
            (first, second)[which]()
            times[which].append(time.perf_counter() - t)
    medians = comm.allgather([statistics.median(ts) for ts in times])
    return tuple(max(m[i] for m in medians) * 1e3 for i in range(2))


def worker_allreduce(repeats: int) -> list:
    import needle as ndl
    import needle.distributed as dist
    from mpi4py import MPI
    from needle.backend_ndarray import NDArray
    from needle.distributed.collectives import AllReduce

    dist.init()
    comm = MPI.COMM_WORLD
    bucket = AllReduce("sum", bucket=0)
    rows = []
    for nbytes in SIZES:
        n = nbytes // 4
        t = ndl.Tensor(np.random.default_rng(comm.rank).standard_normal(n).astype(np.float32))
        # mpi4py on the same memory, through the same messages (a needle buffer and MPI.FLOAT):
        # from the tensor's buffer into a new needle array each call, as all_reduce returns one
        # (which buffer MPI writes changes its speed here by up to 2x: a fixed numpy output is
        # not the same experiment)
        x = [t.realize_cached_data()._handle, MPI.FLOAT]

        def raw():
            result = NDArray.make((n,), device=ndl.cpu())
            comm.Allreduce(x, [result._handle, MPI.FLOAT])

        reps = repeats * 10 if nbytes >= (1 << 20) else repeats * 40
        raw_ms, needle_ms = _paired_medians_ms(raw, lambda: dist.all_reduce(t), reps, comm)
        # a compiled step's gradient bucket, in place on needle memory (zeros: repeated sums
        # stay finite): the native executor's start and wait steps against mpi4py's in-place
        # Allreduce on the same buffer
        held = NDArray(np.zeros(n, dtype=np.float32), device=ndl.cpu())
        span = np.asarray(held._handle)
        raw_in_place_ms, bucket_ms = _paired_medians_ms(
            lambda: comm.Allreduce(MPI.IN_PLACE, span), lambda: bucket.finish(bucket.start([span])), reps, comm)
        rows.append({"bytes": nbytes, "mpi4py_ms": raw_ms, "needle_ms": needle_ms,
                     "mpi4py_in_place_ms": raw_in_place_ms, "bucket_ms": bucket_ms})
    return rows


def worker_train(wid: str, ranks_mode: bool, repeats: int, communicate: bool = True) -> dict:
    import needle as ndl
    import needle.distributed as dist
    import needle.nn as nn
    import needle.optim as optim
    from bench_workloads import nd_model, train_batch

    dist.init()
    n = dist.world_size()
    model, opt = nd_model(wid)
    model.train()
    if n > 1 and communicate:
        opt = dist.DistributedOptimizer(opt)
    step = ndl.compile(optim.train_step(model, nn.SoftmaxLoss(), opt))
    x, y = train_batch(wid, quick=False)
    axis = 0 if wid == "T2" else 1
    share = x.shape[axis] // n
    r = dist.rank()
    xs = np.take(x, range(r * share, (r + 1) * share), axis=axis)
    ys = y.reshape(-1, x.shape[1])[:, r * share:(r + 1) * share].reshape(-1) if wid != "T2" else \
        y[r * share:(r + 1) * share]
    xt, yt = ndl.Tensor(xs.astype(np.float32)), ndl.Tensor(ys.astype(np.float32))
    comm = dist.comm()
    for _ in range(3):
        float(step(xt, yt).numpy())
    before = dist.stats()
    times = []
    for _ in range(repeats):
        if comm is not None:
            comm.Barrier()
        t = time.perf_counter()
        float(step(xt, yt).numpy())
        times.append(time.perf_counter() - t)
    after = dist.stats()
    grad_bytes = sum(int(np.prod(p.shape)) * 4 for p in model.parameters())
    result = {"step_ms": statistics.median(times) * 1e3, "grad_bytes": grad_bytes, "ranks": n}
    if comm is not None:
        result["step_ms"] = max(comm.allgather(result["step_ms"]))
    if comm is not None and communicate:
        from mpi4py import MPI

        flat = np.zeros(grad_bytes // 4, np.float32)
        out = np.empty_like(flat)
        per_step = {k: (after[k] - before[k]) / repeats * 1e3 for k in ("exposed_seconds", "in_flight_seconds")}
        # each rank's waits for its buckets: the least is the slowest rank's, whom the others
        # wait for (their extra is compute skew between the ranks, not communication)
        waits = comm.allgather((per_step["exposed_seconds"], per_step["in_flight_seconds"]))
        result["exposed_ms"], result["in_flight_ms"] = min(waits)
        result["max_waited_ms"] = max(waits)[0]
        from needle.codegen.cpu.steps import CollectiveStartStep

        runner = next(iter(step._cache.values())).runner
        result["buckets"] = sum(isinstance(s, CollectiveStartStep) for s in runner.steps)
        result["raw_allreduce_ms"] = _median_ms(lambda: comm.Allreduce(flat, out, op=MPI.SUM), 10, comm)
    return result


#: gradient bytes (float32) of the WORKLOADS.md models, and their compiled step times on one
#: 2-thread machine of this kind (docs/performance.md)
MODEL_STEPS = {"T2": (1_727_784, 15.4), "T4": (26_833_984, 186.0)}


def scaling_model(latency_us: float, overlap: float) -> None:
    """Print the ring all-reduce model: time = 2(N-1)/N * bytes / bandwidth + 2(N-1) * latency,
    and the step-time efficiency t / (t + (1 - overlap) * allreduce) of N machines each on
    one machine's batch (weak scaling)."""
    print(f"\nRing all-reduce model: latency {latency_us:g} us per hop, {100 * overlap:.0f}% of the "
          "all-reduce hidden behind the backward pass")
    machines = [2, 4, 8, 16, 32, 64]
    print("\n| step | link | " + " | ".join(f"N={n}" for n in machines) + " |")
    print("|---|---|" + "---|" * len(machines))
    for wid, (nbytes, step_ms) in MODEL_STEPS.items():
        for gbit in (10, 25, 100):
            cells = []
            for n in machines:
                ar_ms = (2 * (n - 1) / n * nbytes / (gbit * 1e9 / 8) + 2 * (n - 1) * latency_us * 1e-6) * 1e3
                eff = step_ms / (step_ms + (1 - overlap) * ar_ms)
                cells.append(f"{ar_ms:.1f} ms, {100 * eff:.0f}%")
            print(f"| {wid} ({nbytes / 1e6:.1f} MB, {step_ms:g} ms) | {gbit} Gb/s | " + " | ".join(cells) + " |")


def _run(command: list, env: dict) -> dict:
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][0]
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--only", default="allreduce,T2,T4")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--scaling-model", action="store_true",
                    help="print the ring all-reduce model for T2/T4 on 2-64 machines and exit")
    ap.add_argument("--latency-us", type=float, default=20.0, help="per-hop latency of the model (default 20 us)")
    ap.add_argument("--overlap", type=float, default=0.0, help="hidden share of the model's all-reduce (0-1)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ranks-mode", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-comm", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.scaling_model:
        scaling_model(args.latency_us, args.overlap)
        return
    if args.worker is not None:
        result = (worker_allreduce(args.repeats) if args.worker == "allreduce"
                  else worker_train(args.worker, args.ranks_mode, args.repeats, not args.no_comm))
        import needle.distributed as dist
        if dist.rank() == 0:
            print("RESULT " + json.dumps(result), flush=True)
        return
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("needs mpiexec: pip install 'needle[distributed]'")
    me = [sys.executable, os.path.abspath(__file__)]
    one_thread = dict(os.environ, NEEDLE_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    all_threads = dict(os.environ, NEEDLE_NUM_THREADS=str(args.ranks), OPENBLAS_NUM_THREADS=str(args.ranks))
    only = args.only.split(",")
    print(f"# bench_distributed: {args.ranks} ranks, {os.cpu_count()} cores, repeats {args.repeats}")
    if "allreduce" in only:
        rows = _run([mpiexec, "-n", str(args.ranks), *me, "--worker", "allreduce", "--repeats",
                     str(args.repeats)], one_thread)
        print("\n| message | mpi4py Allreduce ms | needle all_reduce ms | needle GB/s | overhead "
              "| mpi4py in place ms | needle bucket ms | overhead |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            size = f"{r['bytes'] >> 20} MB" if r["bytes"] >= 1 << 20 else f"{r['bytes'] >> 10} KB"
            print(f"| {size} | {r['mpi4py_ms']:.3f} | {r['needle_ms']:.3f} | "
                  f"{r['bytes'] / r['needle_ms'] / 1e6:.2f} | {100 * (r['needle_ms'] / r['mpi4py_ms'] - 1):+.1f}% | "
                  f"{r['mpi4py_in_place_ms']:.3f} | {r['bucket_ms']:.3f} | "
                  f"{100 * (r['bucket_ms'] / r['mpi4py_in_place_ms'] - 1):+.1f}% |")
    steps = [w for w in only if w.startswith("T")]
    if steps:
        print(f"\n| step | 1 rank x {args.ranks} threads ms | {args.ranks} ranks x 1 thread ms | speed-up | "
              "gradients MB | buckets | raw all-reduce ms | waited ms/step (slowest rank / others) | hidden | "
              "ranks without communication ms | step - that ms |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    for wid in steps:
        single = _run([*me, "--worker", wid, "--repeats", str(args.repeats)], all_threads)
        multi = _run([mpiexec, "-n", str(args.ranks), *me, "--worker", wid, "--ranks-mode", "--repeats",
                      str(args.repeats)], one_thread)
        alone = _run([mpiexec, "-n", str(args.ranks), *me, "--worker", wid, "--ranks-mode", "--no-comm",
                      "--repeats", str(args.repeats)], one_thread)
        hidden = min(1.0, max(0.0, 1 - multi["exposed_ms"] / multi["raw_allreduce_ms"]))
        print(f"| {wid} | {single['step_ms']:.1f} | {multi['step_ms']:.1f} | "
              f"{single['step_ms'] / multi['step_ms']:.2f}x | {multi['grad_bytes'] / 1e6:.1f} | {multi['buckets']} | "
              f"{multi['raw_allreduce_ms']:.2f} | {multi['exposed_ms']:.2f} / {multi['max_waited_ms']:.2f} | "
              f"{100 * hidden:.0f}% | {alone['step_ms']:.1f} | {multi['step_ms'] - alone['step_ms']:+.1f} |")


if __name__ == "__main__":
    main()
