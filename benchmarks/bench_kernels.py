"""GELU-tanh chain on 16M floats (WORKLOADS M2): compiled kernel vs numpy vs needle eager.

    python benchmarks/bench_kernels.py [--n 16777216] [--reps 10]

Prints median ms, GB/s (8 bytes per element: one read, one write) and ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import needle as ndl  # noqa: E402
from needle.codegen import compile_kernel  # noqa: E402
from needle.compile import compiled_functions  # noqa: E402


def gelu(x):
    return x * 0.5 * (1 + ndl.ops.tanh(0.79788456 * (x + 0.044715 * x ** 3)))


def gelu_np(x):
    return x * 0.5 * (1 + np.tanh(0.79788456 * (x + 0.044715 * x ** 3)))


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    n = args.n
    x = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    cgelu = ndl.compile(gelu)
    cgelu(ndl.Tensor(x[:8].copy()))  # trace a small one to get the graph shape-generic text
    cgelu(ndl.Tensor(x))
    graph = compiled_functions()[-1].entries()[-1][1]["final"]
    t = time.perf_counter()
    kernel = compile_kernel(graph)
    compile_s = time.perf_counter() - t
    xt = ndl.Tensor(x)
    rows = [("needle compiled kernel", median_ms(lambda: kernel(x), args.reps)),
            ("numpy", median_ms(lambda: gelu_np(x), args.reps)),
            ("needle eager", median_ms(lambda: gelu(xt).numpy(), args.reps))]
    gb = 8 * n / 1e9
    print(f"GELU chain, n={n} float32 ({gb * 1e3:.0f} MB read+write); kernel compile {compile_s * 1e3:.0f} ms")
    base = rows[0][1]
    for name, ms in rows:
        print(f"  {name:24s} {ms:8.2f} ms  {gb / ms * 1e3:6.2f} GB/s  x{ms / base:5.2f} vs compiled")
    return rows


if __name__ == "__main__":
    main()
