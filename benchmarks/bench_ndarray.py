"""Benchmark: needle cpu() NDArray kernels against numpy in the same run.

    python benchmarks/bench_ndarray.py [--repeat 15] [--quick] [--threads N]

Prints median timings after warm-up: matmul GFLOP/s, elementwise GB/s
(bytes read + written) and reductions GB/s (bytes read), with ratio =
needle throughput / numpy throughput (>= 1 means needle is as fast or faster).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from needle.backend_ndarray import ndarray as nda  # noqa: E402

nd = nda


def median_time(fn, repeat, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_times(f_nd, f_np, repeat, warmup=3):
    """Median times of f_nd and f_np, measured alternately so both see the same machine load."""
    for _ in range(warmup):
        f_nd()
        f_np()
    t_nd, t_np = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f_nd()
        t1 = time.perf_counter()
        f_np()
        t2 = time.perf_counter()
        t_nd.append(t1 - t0)
        t_np.append(t2 - t1)
    return statistics.median(t_nd), statistics.median(t_np)


def row(name, unit, work, f_nd, f_np, repeat):
    t_nd, t_np = paired_times(f_nd, f_np, repeat)
    v_nd, v_np = work / t_nd / 1e9, work / t_np / 1e9
    print(f"{name:<28} {v_nd:>10.2f} {v_np:>10.2f}  {unit:<7} {v_nd / v_np:>6.2f}")
    return v_nd / v_np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    ap.add_argument("--threads", type=int, default=0, help="needle cpu threads (default: all cores)")
    args = ap.parse_args()
    rep = args.repeat
    dev = nd.cpu()
    if args.threads and nd.CPU_BACKEND_COMPILED:
        dev.set_num_threads(args.threads)
    print(f"device {dev}  compiled={nd.CPU_BACKEND_COMPILED}  blas={nd.BLAS_LOADED}  "
          f"threads={dev.get_num_threads() if nd.CPU_BACKEND_COMPILED else 1}  numpy {np.__version__}")
    print(f"{'benchmark':<28} {'needle':>10} {'numpy':>10}  {'unit':<7} {'ratio':>6}")
    ratios = {}
    rng = np.random.default_rng(0)

    # matmul
    n = 256 if args.quick else 1024
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    a, b = nd.array(A, device=dev), nd.array(B, device=dev)
    flops = 2.0 * n ** 3
    ratios["matmul"] = row(f"matmul {n}^3", "GFLOP/s", flops, lambda: a @ b, lambda: A @ B, rep)
    if n % 8 == 0:
        t = median_time(lambda: nd.matmul_tiled(a, b), max(3, rep // 3), warmup=1)
        print(f"{'  (matmul_tiled kernel)':<28} {flops / t / 1e9:>10.2f}")

    # elementwise on 4M floats
    size = (1 << 18) if args.quick else (1 << 22)
    X = rng.standard_normal(size, dtype=np.float32)
    Y = rng.standard_normal(size, dtype=np.float32)
    P = np.abs(X) + np.float32(0.1)
    x, y, p = nd.array(X, device=dev), nd.array(Y, device=dev), nd.array(P, device=dev)
    fb = 4.0 * size
    cases = [
        ("add", lambda: x + y, lambda: X + Y, 3),
        ("mul", lambda: x * y, lambda: X * Y, 3),
        ("add_scalar", lambda: x + 1.5, lambda: X + np.float32(1.5), 2),
        ("maximum", lambda: x.maximum(y), lambda: np.maximum(X, Y), 3),
        ("exp", lambda: x.exp(), lambda: np.exp(X), 2),
        ("log", lambda: p.log(), lambda: np.log(P), 2),
        ("tanh", lambda: x.tanh(), lambda: np.tanh(X), 2),
    ]
    for name, f_nd, f_np, nbuf in cases:
        ratios[name] = row(f"{name} {size}", "GB/s", fb * nbuf, f_nd, f_np, rep)

    # reductions
    ratios["sum_all"] = row(f"sum all {size}", "GB/s", fb, lambda: x.sum(), lambda: X.sum(), rep)
    ratios["max_all"] = row(f"max all {size}", "GB/s", fb, lambda: x.max(), lambda: X.max(), rep)
    m = 512 if args.quick else 2048
    M = rng.standard_normal((m, m), dtype=np.float32)
    mm = nd.array(M, device=dev)
    mb = 4.0 * m * m
    ratios["sum_axis1"] = row(f"sum axis=1 ({m},{m})", "GB/s", mb, lambda: mm.sum(axis=1), lambda: M.sum(axis=1), rep)
    ratios["max_axis1"] = row(f"max axis=1 ({m},{m})", "GB/s", mb, lambda: mm.max(axis=1), lambda: M.max(axis=1), rep)
    ratios["sum_axis0"] = row(f"sum axis=0 ({m},{m})", "GB/s", mb, lambda: mm.sum(axis=0), lambda: M.sum(axis=0), rep)

    targets = {"matmul": 0.7}
    fails = [k for k, r in ratios.items() if k != "sum_axis0" and r < targets.get(k, 0.8)]
    print("targets (matmul >= 0.7, elementwise/reductions >= 0.8):", "all met" if not fails else f"missed {fails}")


if __name__ == "__main__":
    main()
