"""Eager dispatch overhead: a chain of small (8x8) ops, forward and backward.

    python benchmarks/bench_dispatch.py [--ops 1000] [--repeats 7]

Reports microseconds per op for the forward chain and for backward, next to PyTorch
eager measured in the same run when torch is installed.
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


def chain(x, w, n_ops: int):
    """n_ops ops alternating mul, add, tanh, matmul (the same mix for every framework)."""
    y = x
    for i in range(n_ops):
        k = i % 4
        if k == 0:
            y = y * 0.5
        elif k == 1:
            y = y + x
        elif k == 2:
            y = y.tanh()
        else:
            y = y @ w
    return y


def time_chain(x, w, n_ops: int, repeats: int):
    """Median seconds of the forward chain and of its backward (first run is warm-up)."""
    fwd, bwd = [], []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        y = chain(x, w, n_ops).sum()
        t1 = time.perf_counter()
        y.backward()
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
    return statistics.median(fwd[1:]), statistics.median(bwd[1:])


def time_needle(n_ops: int, repeats: int):
    x = ndl.Tensor(np.random.randn(8, 8).astype(np.float32))
    w = ndl.Tensor(np.random.randn(8, 8).astype(np.float32) * 0.3)
    return time_chain(x, w, n_ops, repeats)


def time_torch(n_ops: int, repeats: int):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    x = torch.randn(8, 8, requires_grad=True)
    w = (torch.randn(8, 8) * 0.3).requires_grad_()
    return time_chain(x, w, n_ops, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = [("needle " + ndl.BACKEND, time_needle(args.ops, args.repeats))]
    torch_times = time_torch(args.ops, args.repeats)
    if torch_times:
        rows.append(("torch eager", torch_times))
    print(f"{'framework':<14} {'fwd us/op':>10} {'bwd us/op':>10}")
    for name, (f, b) in rows:
        print(f"{name:<14} {f / args.ops * 1e6:>10.2f} {b / args.ops * 1e6:>10.2f}")
    if torch_times:
        print(f"ratio needle/torch forward: {rows[0][1][0] / torch_times[0]:.2f}x")


if __name__ == "__main__":
    main()
