"""Differential fuzzing of `needle.compile` against eager execution.

`generate(seed)` writes a random program over the public API as Python source: a module
that defines `INPUTS` (name -> (shape, kind, requires_grad)), builds the parameters,
modules and global tensors (c0, ...) and floats (s0, ...) it uses, and defines
`def program(x0, ...)`. `run_source` executes it eagerly and under `needle.compile` (three
calls: two input sets, then a third after the parameters change and the globals are
rebound) and compares outputs, input gradients and Parameter gradients. `fuzz` runs many
seeds in a pool of worker processes, so a crash or a hang is reported as such.

Tolerances come from eager itself: every program also runs eagerly on inputs and
parameters perturbed by a few ulps, with every op's result perturbed alike (a model of the
compiled code's different rounding), and the spread of those results (how much rounding
noise the computation amplifies: cancellation, ties in max, discontinuities) widens the
float32 tolerance position by position. NaN and +-Inf positions must agree exactly, except
where the perturbed runs disagree with eager about them.

Modules: `generate` (the program generator), `compare` (the noise model and the comparison
of compiled with eager), `run` (one program run both ways and classified), `minimize`
(shrinking a failing program), `pool` (many seeds in worker processes).
"""
from .generate import generate
from .minimize import minimize
from .pool import fuzz
from .run import CATEGORIES, Result, failure_class, run_seed, run_source

__all__ = ["CATEGORIES", "Result", "failure_class", "fuzz", "generate", "minimize", "run_seed", "run_source"]
