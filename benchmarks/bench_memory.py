"""Peak memory (RSS) of training steps: needle compiled vs PyTorch eager (WORKLOADS.md T1-T4).

    python benchmarks/bench_memory.py [--only T2,T4] [--steps 3]

Each variant runs in a fresh process: import, build the model and the step, run `--steps`
training steps, then read the process's peak resident set size (`ru_maxrss`). The table
gives that peak and the growth over the RSS measured right after the imports (the model,
its optimizer state, the activations and the runtime's buffers). PyTorch is skipped when
it is not installed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, resource, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import bench_workloads as bw
import numpy as np
if {variant!r} == "torch":
    import torch
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
base = rss_mb()
if {variant!r} == "torch":
    call = bw.torch_variant({wid!r}, False)
else:
    call, _ = bw.nd_variant({wid!r}, "native", False)
for _ in range({steps}):
    call()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"peak_mb": peak, "after_imports_mb": base}}))
"""


def measure(wid: str, variant: str, steps: int) -> dict:
    code = _CHILD.format(root=ROOT, bench=os.path.join(ROOT, "benchmarks"), wid=wid, variant=variant, steps=steps)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="T2,T4")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    try:
        import torch  # noqa: F401
        variants = ["needle", "torch"]
    except ImportError:
        variants = ["needle"]
    print("| id | variant | peak RSS MiB | growth over imports MiB |")
    print("|---|---|---|---|")
    for wid in [w.strip().upper() for w in args.only.split(",") if w.strip()]:
        for v in variants:
            name = "needle compiled (native)" if v == "needle" else "pytorch eager"
            try:
                r = measure(wid, v, args.steps)
            except RuntimeError as e:
                print(f"| {wid} | {name} | failed: {e} | |")
                continue
            print(f"| {wid} | {name} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['after_imports_mb']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
