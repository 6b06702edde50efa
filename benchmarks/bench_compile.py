"""Compile time of a training step (WORKLOADS.md T1-T4), cold and from the disk cache.

    python benchmarks/bench_compile.py [--only T4] [--executor native] [--repeats 3]

Each measurement runs in a fresh process (nothing in memory): "cold" with an empty
NEEDLE_CACHE_DIR, then "warm" with the folder the cold run filled (compiled graphs and
kernel objects on disk). The time is `stats["compile_seconds"]` of the first call: trace,
passes (or the graph cache), kernel codegen (or the kernel cache) and executor build.
Prints one table row per workload: median cold and warm seconds over --repeats pairs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import bench_workloads as bw
call, fn = bw.nd_variant({wid!r}, {executor!r}, False)
call()
print(json.dumps({{"compile_seconds": fn.stats["compile_seconds"], "kernels": fn.stats.get("llvm_kernels", 0),
                  "graph_cache_hits": fn.stats.get("graph_cache_hits", 0)}}))
"""


def one(wid: str, executor: str, cache_dir: str) -> dict:
    code = _CHILD.format(root=ROOT, bench=os.path.join(ROOT, "benchmarks"), wid=wid, executor=executor)
    env = dict(os.environ, NEEDLE_CACHE_DIR=cache_dir, NEEDLE_EXECUTOR=executor)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="T4", help="comma-separated training workloads (default T4)")
    ap.add_argument("--executor", default="native", choices=["native", "kernels", "interp"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    print("| id | executor | cold s (median) | warm s (median) | LLVM kernels |")
    print("|---|---|---|---|---|")
    for wid in [w.strip().upper() for w in args.only.split(",") if w.strip()]:
        cold, warm, kernels = [], [], 0
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as d:
                c = one(wid, args.executor, d)
                w = one(wid, args.executor, d)
            assert w["graph_cache_hits"] == 1, "the warm run did not hit the graph cache"
            cold.append(c["compile_seconds"])
            warm.append(w["compile_seconds"])
            kernels = c["kernels"]
            print(f"  {wid}: cold {c['compile_seconds']:.2f} s, warm {w['compile_seconds']:.2f} s",
                  file=sys.stderr, flush=True)
        print(f"| {wid} | {args.executor} | {statistics.median(cold):.2f} | {statistics.median(warm):.2f} | {kernels} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
