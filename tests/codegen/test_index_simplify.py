"""The lowering's index simplifier (needle.codegen.lower.simplify): div/mod by constants
folded over the loop ranges. Known rewrites as text, then random index expressions checked
point by point against the unsimplified ones over every value of their loop variables."""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from needle.codegen.c_render import c_index
from needle.codegen.loop_ir import IBin, IConst, IVar, iadd, idiv, imod, imul
from needle.codegen.lower import _eval, simplify

SEED = int(os.environ.get("NEEDLE_TEST_SEED") or np.random.SeedSequence().entropy % 2**32)

i0, i1 = IVar("i0"), IVar("i1")


def lin(*terms, const=0):
    out = IConst(const)
    for c, v in terms:
        out = iadd(out, imul(v, IConst(c)))
    return out


@pytest.mark.parametrize("expr,ranges,want", [
    # a reshape read within its range: (1600*i0 + i1) div 1600 = i0, mod 1600 = i1
    (imod(idiv(lin((1600, i0), (1, i1)), 1600), 700), {"i0": 700, "i1": 1600}, "i0"),
    (imod(lin((1600, i0), (1, i1)), 1600), {"i0": 700, "i1": 1600}, "i1"),
    # a Stack's piece index: the multiples of 400 leave the division, the mod drops them
    (imod(idiv(lin((1, i1), (1600, i0)), 400), 4), {"i0": 20, "i1": 1600}, "(i1 / 400)"),
    (imod(lin((1, i1), (1600, i0)), 400), {"i0": 20, "i1": 1600}, "(i1 % 400)"),
    (idiv(lin((1, i1), (1600, i0), const=800), 400), {"i0": 20, "i1": 1600},
     "(((i0 * 4) + (i1 / 400)) + 2)"),
    # nothing to fold: the rest is the whole expression
    (idiv(lin((3, i0), (1, i1)), 7), {"i0": 5, "i1": 5}, "(((i0 * 3) + i1) / 7)"),
])
def test_known_rewrites(expr, ranges, want):
    got = simplify(expr, ranges)
    assert c_index(got) == want
    assert_same(expr, got, ranges)


def assert_same(expr, got, ranges):
    names = sorted(ranges)
    for point in itertools.product(*(range(ranges[n]) for n in names)):
        env = dict(zip(names, point))
        assert _eval(got, env) == _eval(expr, env), (c_index(expr), c_index(got), env)


def random_expr(rng, depth):
    """A non-negative index expression over i0, i1, i2: affine terms, possibly wrapped in
    div/mod by small constants and combined again."""
    terms = [(int(rng.integers(0, 13)), IVar(f"i{k}")) for k in range(3)]
    e = lin(*terms, const=int(rng.integers(0, 9)))
    if depth > 0:
        e = iadd(e, imul(random_expr(rng, depth - 1), IConst(int(rng.integers(1, 9)))))
    c = int(rng.choice([2, 3, 4, 6, 8, 12, 16]))
    kind = rng.integers(0, 3)
    return idiv(e, c) if kind == 0 else imod(e, c) if kind == 1 else e


def test_random_expressions_keep_their_values():
    rng = np.random.default_rng(SEED)
    for _ in range(300):
        ranges = {f"i{k}": int(rng.integers(1, 7)) for k in range(3)}
        expr = random_expr(rng, int(rng.integers(0, 3)))
        assert_same(expr, simplify(expr, ranges), ranges)
    assert isinstance(simplify(IBin("div", i0, IConst(1)), {}), IVar)
