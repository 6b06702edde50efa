"""Lowering of the index-map ops (Flip, UnDilate, Dilate, UnSlice, TupleGetItem of Split /
MakeTensorTuple, Stack, Concat) into loop kernels, each feeding an elementwise op and a
reduction, against the reference interpreter on fresh random inputs (odd sizes, so vector
loops have tails; some inputs hold NaN/Inf). NEEDLE_TEST_SEED=<n> replays a run (the seed
is in every failure message)."""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("llvmlite")

from needle.backend_selection import BACKEND  # noqa: E402
from needle.codegen import compile_kernel  # noqa: E402
from needle.ir import parse_graph  # noqa: E402
from tests.numerics import assert_close, reference  # noqa: E402

SEED = int(os.environ.get("NEEDLE_TEST_SEED") or np.random.SeedSequence().entropy % 2**32)
RNG = np.random.default_rng(SEED)  # fresh inputs on every run


def check(actual, expected, tol=1e-5, text="", floors=None):
    assert len(actual) == len(expected)
    for k, (a, e) in enumerate(zip(actual, expected)):
        assert_close(a, e, tol, f"output {k} (NEEDLE_TEST_SEED={SEED})\n{text}",
                     floor=floors[k] if floors else 1e-30)


def _t(shape):
    return "f32[" + ",".join(map(str, shape)) + "] cpu"


class G:
    """IR text builder."""

    def __init__(self):
        self.lines, self.n, self.in_shapes = [], 0, []

    def inp(self, shape):
        self.in_shapes.append(tuple(shape))
        return self.add(f'input() {{name="x{len(self.in_shapes) - 1}", role="arg"}}', shape)

    def add(self, rhs, shape=None, type_text=None):
        self.lines.append(f"  %{self.n} = {rhs} : {type_text or _t(shape)}")
        self.n += 1
        return self.n - 1

    def tuple_(self, ids, shapes):
        return self.add(f"MakeTensorTuple({', '.join(f'%{i}' for i in ids)})",
                        type_text="(" + ", ".join(_t(s) for s in shapes) + ")")

    def text(self, outs):
        return ("graph @k {\n" + "\n".join(self.lines) + "\n  return "
                + ", ".join(f"%{o}" for o in outs) + "\n}\n")


def _inputs(shapes, specials):
    arrays = [RNG.standard_normal(s).astype(np.float32) for s in shapes]
    if specials:
        for a in arrays:
            flat = a.reshape(-1)
            k = RNG.choice(flat.size, size=min(3, flat.size), replace=False)
            flat[k[0]] = np.nan
            if len(k) > 1:
                flat[k[1]] = np.inf
            if len(k) > 2:
                flat[k[2]] = -np.inf
    return arrays


def run_both(text, shapes, specials=False):
    g = parse_graph(text)
    arrays = _inputs(shapes, specials)
    with np.errstate(all="ignore"):
        out = compile_kernel(g)(*arrays)
    # a sum's rounding scales with the sum of |terms| (the same graph on |inputs|), which
    # cancelling terms can make far larger than the sum itself
    scale = reference(g, [np.abs(a) for a in arrays])
    floors = [max(float(np.linalg.norm(s[np.isfinite(s)])) if g.node(o).op == "Summation" else 0.0, 1e-30)
              for o, s in zip(g.outputs, scale)]
    check(out, reference(g, arrays), text=text, floors=floors)
    return out


def check_consumers(build):
    """`build(G)` makes the view value (id, shape); it is checked feeding an elementwise op
    (returned with the view itself) and feeding a Summation over each axis, and a Max
    over all axes; with clean inputs and with NaN/Inf inputs."""
    g = G()
    v, shape = build(g)
    m = g.add(f"MulScalar(%{v}) {{scalar=-1.5}}", shape)
    e = g.add(f"Exp(%{g.add(f'Tanh(%{m})', shape)})", shape)
    for specials in (False, True):
        run_both(g.text([m, v, e]), g.in_shapes, specials)
    for ax in range(len(shape)):
        g = G()
        v, shape = build(g)
        m = g.add(f"MulScalar(%{v}) {{scalar=2.0}}", shape)
        rshape = shape[:ax] + shape[ax + 1:]
        r = g.add(f"Summation(%{m}) {{axes=({ax},)}}", rshape)
        for specials in (False, True):
            run_both(g.text([r]), g.in_shapes, specials)
            # the reduction's input also stored (full-domain output in the same loop)
            run_both(g.text([r, m]), g.in_shapes, specials)
    g = G()
    v, shape = build(g)
    r = g.add(f"Max(%{v}) {{axes=None}}", ())
    run_both(g.text([r]), g.in_shapes)


def _axes_text(axes):
    return "(" + "".join(f"{a}, " for a in axes).rstrip(" ") + ")"


# ---- Flip ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axes", [((11,), (0,)), ((5, 7), (0,)), ((5, 7), (1,)), ((5, 7), (0, 1)),
                                        ((3, 5, 9), (1,)), ((3, 5, 9), (0, 2)), ((3, 5, 9), (0, 1, 2)),
                                        ((3, 5, 9), (-1,))])
def test_flip(shape, axes):
    def build(g):
        x = g.inp(shape)
        return g.add(f"Flip(%{x}) {{axes={_axes_text(axes)}}}", shape), shape
    check_consumers(build)


# ---- UnDilate / Dilate --------------------------------------------------------------------
@pytest.mark.parametrize("shape,axes,dil", [((11,), (0,), 1), ((9, 11), (0,), 1), ((7, 9), (1,), 2),
                                            ((5, 7, 9), (0, 2), 1), ((5, 7, 9), (1, 2), 2),
                                            ((5, 7), (0, 1), 0)])
def test_undilate(shape, axes, dil):
    out = tuple(-(-d // (dil + 1)) if a in axes else d for a, d in enumerate(shape))

    def build(g):
        x = g.inp(shape)
        return g.add(f"UnDilate(%{x}) {{axes={_axes_text(axes)}, dilation={dil}}}", out), out
    check_consumers(build)


@pytest.mark.parametrize("shape,axes,dil", [((9,), (0,), 1), ((5, 7), (0,), 1), ((5, 7), (1,), 2),
                                            ((3, 5, 7), (0, 2), 1), ((3, 5, 7), (1, 2), 2),
                                            ((3, 5, 7), (0, 1, 2), 1), ((5, 7), (0, 1), 0)])
def test_dilate(shape, axes, dil):
    out = tuple(d * (dil + 1) if a in axes else d for a, d in enumerate(shape))

    def build(g):
        x = g.inp(shape)
        return g.add(f"Dilate(%{x}) {{axes={_axes_text(axes)}, dilation={dil}}}", out), out
    check_consumers(build)


# ---- UnSlice ------------------------------------------------------------------------------
def _slice_len(s):
    start, stop, step = s
    return max(0, (stop - start + step - 1) // step)


@pytest.mark.parametrize("shape,slices", [
    ((11,), ((2, 11, 2),)),
    ((9,), ((1, 8, 3),)),
    ((9,), ((0, 9, 1),)),
    ((7, 9), ((1, 6, 1), (0, 9, 2))),
    ((7, 9), ((0, 7, 2), (3, 8, 1))),
    ((7, 9), ((2, 3, 1), (1, 9, 2))),
    ((3, 5, 7), ((0, 3, 1), (1, 4, 2), (2, 7, 2))),
    ((3, 5, 7), ((1, 3, 1), (0, 5, 1), (0, 7, 3))),
])
def test_unslice(shape, slices):
    ins = tuple(_slice_len(s) for s in slices)

    def build(g):
        x = g.inp(ins)
        return g.add(f"UnSlice(%{x}) {{shape={shape!r}, slices={slices!r}}}".replace(",)", ",)"), shape), shape
    check_consumers(build)


# ---- TupleGetItem of Split and MakeTensorTuple ---------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5, 7), (5, 9)])
def test_split_items(shape):
    nd = len(shape)
    for axis in list(range(nd)) + [-1]:
        ax = axis % nd
        piece = shape[:ax] + shape[ax + 1:]
        parts = ", ".join([_t(piece)] * shape[ax])
        for items in ([0], [shape[ax] - 1], [shape[ax] // 2, 0, shape[ax] - 1]):
            def build(g):
                x = g.inp(shape)
                s = g.add(f"Split(%{x}) {{axis={axis}}}", type_text=f"({parts})")
                vals = [g.add(f"TupleGetItem(%{s}) {{index={k}}}", piece) for k in items]
                v = vals[0]
                for w in vals[1:]:
                    v = g.add(f"EWiseAdd(%{v}, %{w})", piece)
                return v, piece
            check_consumers(build)


def test_make_tuple_items():
    shapes = [(5, 7), (5, 7), (5, 7)]
    for k in range(3):
        def build(g):
            xs = [g.inp(s) for s in shapes]
            t = g.tuple_(xs, shapes)
            a = g.add(f"TupleGetItem(%{t}) {{index={k}}}", shapes[k])
            b = g.add(f"TupleGetItem(%{t}) {{index={(k + 1) % 3}}}", shapes[k])
            return g.add(f"EWiseMul(%{a}, %{b})", shapes[k]), shapes[k]
        check_consumers(build)


# ---- Stack / Concat -----------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_stack(n, axis):
    piece = (3, 7)
    out = list(piece)
    out.insert(axis % 3, n)
    out = tuple(out)

    def build(g):
        xs = [g.inp(piece) for _ in range(n)]
        t = g.tuple_(xs, [piece] * n)
        return g.add(f"Stack(%{t}) {{axis={axis}}}", out), out
    check_consumers(build)


def test_stack_1d_pieces():
    for n, axis in ((5, 0), (2, 1), (3, -1)):
        out = (n, 9) if axis % 2 == 0 else (9, n)

        def build(g):
            xs = [g.inp((9,)) for _ in range(n)]
            t = g.tuple_(xs, [(9,)] * n)
            return g.add(f"Stack(%{t}) {{axis={axis}}}", out), out
        check_consumers(build)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("lengths", [(3, 5), (1, 4, 6), (7, 2, 2)])
def test_concat(axis, lengths):
    base = [3, 5, 7]
    ax = axis % 3
    shapes = []
    for d in lengths:
        s = list(base)
        s[ax] = d
        shapes.append(tuple(s))
    out = list(base)
    out[ax] = sum(lengths)
    out = tuple(out)

    def build(g):
        xs = [g.inp(s) for s in shapes]
        t = g.tuple_(xs, shapes)
        return g.add(f"Concat(%{t}) {{axis={axis}}}", out), out
    check_consumers(build)


def test_concat_of_views():
    """Concat whose pieces are themselves index maps (a flip and a dilate of inputs)."""
    def build(g):
        x = g.inp((5, 3))
        y = g.inp((5, 2))
        f = g.add(f"Flip(%{x}) {{axes=(0, 1)}}", (5, 3))
        d = g.add(f"Dilate(%{y}) {{axes=(1,), dilation=2}}", (5, 6))
        t = g.tuple_([f, d, x], [(5, 3), (5, 6), (5, 3)])
        return g.add(f"Concat(%{t}) {{axis=1}}", (5, 12)), (5, 12)
    check_consumers(build)


def test_stack_of_split_items_and_unslice():
    """Stack(reversed Split items) is a flip; UnSlice of a Concat; chained index maps."""
    def build(g):
        x = g.inp((3, 5, 7))
        s = g.add(f"Split(%{x}) {{axis=1}}", type_text="(" + ", ".join([_t((3, 7))] * 5) + ")")
        items = [g.add(f"TupleGetItem(%{s}) {{index={k}}}", (3, 7)) for k in reversed(range(5))]
        t = g.tuple_(items, [(3, 7)] * 5)
        st = g.add(f"Stack(%{t}) {{axis=1}}", (3, 5, 7))
        return g.add(f"UnSlice(%{st}) {{shape=(5, 9, 7), slices=((1, 4, 1), (0, 9, 2), (0, 7, 1))}}",
                     (5, 9, 7)), (5, 9, 7)
    check_consumers(build)
