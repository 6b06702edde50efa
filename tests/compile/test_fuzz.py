"""The differential fuzzer of `needle.compile` (needle/testing/fuzz/) on a fixed seed range."""
import os

import numpy as np

from needle.testing.fuzz import fuzz, generate, run_source
from needle.testing.fuzz.compare import compare, watching_ties
from needle.cli.fuzz_compile import report

SEEDS = range(400)


def test_generate_is_deterministic():
    assert generate(7) == generate(7) != generate(8)
    compile(generate(7), "<fuzz>", "exec")


def test_compare_flags_values_and_nonfinite_positions():
    e = np.array([1.0, np.nan, 3.0], dtype=np.float32)
    assert compare("o", e, e + np.float32(1e-6), []) is None
    assert "differ" in compare("o", e, np.array([1.0, np.nan, 3.1], dtype=np.float32), [])
    assert "non-finite" in compare("o", e, np.array([1.0, 0.0, 3.0], dtype=np.float32), [])
    # a large spread of the perturbed eager runs (cancellation) widens the tolerance there
    assert compare("o", e, np.array([1.0, np.nan, 3.1], dtype=np.float32),
                    [np.array([1.0, np.nan, 3.05], dtype=np.float32)]) is None


TIE_PROGRAM = """
import needle as ndl
INPUTS = {'x0': ((64,), 'float', False)}

def program(x0):
    return (x0 < ndl.log(ndl.exp(x0))) * 1.0
"""


def test_a_mismatch_decided_by_a_near_tie_is_not_a_finding():
    """x < log(exp(x)) is decided by rounding (compiled may differ: no finding); comparisons
    of a value with itself or of values far apart are not ties."""
    import needle as ndl

    assert run_source(TIE_PROGRAM).category == "ok"
    x = ndl.Tensor(np.random.randn(64).astype(np.float32))
    ties: list = []
    with watching_ties(ties):
        (x < x).numpy(), (x < x + 10.0).numpy(), (x > 100.0).numpy()
    assert ties == []
    with watching_ties(ties):
        (x < ndl.log(ndl.exp(x))).numpy()
    assert ties == ["lt"]


def test_fuzz_fixed_seeds():
    """Programs of SEEDS agree eagerly and compiled (values, gradients, NaN/Inf positions)."""
    results = fuzz(SEEDS, jobs=min(2, os.cpu_count() or 1), timeout=120)
    findings = [r for r in results if r.category != "ok"]
    if findings:
        import io

        text = io.StringIO()
        report(findings, out=text)
        raise AssertionError(f"{len(findings)} of {len(results)} programs disagree:\n{text.getvalue()}")
