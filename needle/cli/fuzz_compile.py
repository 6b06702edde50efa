"""Differential fuzzer of `needle.compile`: random programs, eager vs compiled.

    python -m needle.cli.fuzz_compile --n 5000 [--seed S] [--jobs J] [--timeout T] [--executor E]
    python -m needle.cli.fuzz_compile --replay SEED      # rerun one program, print everything
    python -m needle.cli.fuzz_compile --source FILE      # run a (hand-minimised) program file
    python -m needle.cli.fuzz_compile --replay SEED --minimize   # and shrink it, failing alike

Prints the count of each outcome, then every finding with its seed and source, then the
distinct failure classes (each with its shortest program). Exits 1 on any finding.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from needle.testing.fuzz import CATEGORIES, Result, failure_class, fuzz, generate, minimize, run_source  # noqa: E402


def report(results: list[Result], out=sys.stdout) -> int:
    """Print the findings among `results`, then the classes; returns how many findings."""
    findings = [r for r in results if r.category != "ok"]
    for r in findings:
        print(f"\n=== seed {r.seed}: {r.category} ===\n{r.detail.rstrip()}\n--- program ---\n{r.source}", file=out)
    classes: dict[str, list[Result]] = {}
    for r in findings:
        classes.setdefault(failure_class(r), []).append(r)
    if classes:
        print("\ndistinct failure classes (count, shortest program's seed):", file=out)
    for name, members in sorted(classes.items(), key=lambda kv: -len(kv[1])):
        shortest = min(members, key=lambda r: len(r.source))
        print(f"  {len(members):5d}  seed {shortest.seed:<7d} {name}", file=out)
    return len(findings)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="number of programs (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per program (default 60)")
    parser.add_argument("--executor", help="NEEDLE_EXECUTOR for the workers (default: needle's default)")
    parser.add_argument("--replay", type=int, metavar="SEED", help="rerun one seed in this process")
    parser.add_argument("--source", metavar="FILE", help="run one program file in this process")
    parser.add_argument("--minimize", action="store_true",
                        help="with --replay/--source: also print a smallest program failing alike")
    args = parser.parse_args(argv)

    if args.replay is not None or args.source:
        if args.executor:
            os.environ["NEEDLE_EXECUTOR"] = args.executor
        os.environ.setdefault("NEEDLE_VERIFY", "1")
        if args.source:
            with open(args.source) as f:
                source, seed = f.read(), args.seed
        else:
            source, seed = generate(args.replay), args.replay
        result = run_source(source, seed)
        print(f"{source}\n=== seed {seed}: {result.category} ({result.seconds:.2f} s) ===")
        if result.eager_error:
            print(f"eager and compiled both raised: {result.eager_error}")
        print(result.detail.rstrip())
        if args.minimize and result.category != "ok":
            small = minimize(source, seed, log=lambda m: print(m, file=sys.stderr))
            print(f"=== minimized ===\n{small}\n=== {failure_class(run_source(small, seed))}")
        return 0 if result.category == "ok" else 1

    start = time.perf_counter()
    done = []

    def progress(result: Result) -> None:
        done.append(result)
        if len(done) % 100 == 0:
            print(f"  {len(done)}/{args.n} programs, {sum(r.category != 'ok' for r in done)} findings",
                  file=sys.stderr, flush=True)

    results = fuzz(range(args.seed, args.seed + args.n), jobs=args.jobs, timeout=args.timeout,
                   executor=args.executor, on_result=progress)
    counts = {c: sum(r.category == c for r in results) for c in CATEGORIES}
    invalid = sum(bool(r.eager_error) for r in results)
    ties = sum(r.category == "ok" and r.detail.startswith("near tie") for r in results)
    findings = report(results)
    print(f"\nfuzz_compile: {len(results)} programs (seeds {args.seed}..{args.seed + args.n - 1}), "
          f"executor {args.executor or os.environ.get('NEEDLE_EXECUTOR') or 'default'}, "
          f"{time.perf_counter() - start:.0f} s")
    print("  " + ", ".join(f"{c} {counts[c]}" for c in CATEGORIES)
          + f"  (of the ok, {invalid} raise the same exception eagerly and compiled, "
          f"{ties} differ only after a near tie at a comparison)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
