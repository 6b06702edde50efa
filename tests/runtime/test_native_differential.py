"""Differential test of the native executor: random graphs of primitives (odd shapes of 1-4
axes, broadcasting, views, guarded elementwise ops, reductions, 2-D and batched MatMul)
built as IR text, run through fusion, schedule, memory_plan and NativeExecutor, and
compared with the reference interpreter (1e-5 normwise relative error per output, NaN and
Inf in the same positions; some examples feed NaN/Inf inputs)."""
from __future__ import annotations

from math import prod

import numpy as np
import pytest

pytest.importorskip("llvmlite")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import needle as ndl  # noqa: E402
from needle.backend_selection import BACKEND  # noqa: E402

if BACKEND != "nd":
    pytest.skip("the native executor runs on the nd backend", allow_module_level=True)

from needle.ir import parse_graph  # noqa: E402
from needle.passes import pipeline  # noqa: E402
from needle.runtime.interpreter import run_graph  # noqa: E402
from needle.runtime.native import NativeExecutor  # noqa: E402
from tests.numerics import assert_close  # noqa: E402

DIMS = (1, 3, 5, 7, 9, 11)
MAX_SIZE = 500   # elements per value: small graphs, many examples


def _t(shape):
    return "f32[" + ",".join(map(str, shape)) + "] cpu"


def _tuple(xs):
    return "(" + "".join(f"{x}, " for x in xs).rstrip(" ").rstrip(",") + ("," if len(xs) == 1 else "") + ")"


class Builder:
    def __init__(self, draw):
        self.draw = draw
        self.lines: list[str] = []
        self.n = 0
        self.shapes: dict[int, tuple] = {}
        self.inputs: list[tuple] = []      # shapes of the graph inputs, in order
        self.exact: set[int] = set()       # values that are inputs or views of inputs (bit-exact)
        self.vals: list[int] = []          # the pool that ops draw from

    def add(self, rhs, shape, pool=True, exact=False):
        shape = tuple(shape)
        self.lines.append(f"  %{self.n} = {rhs} : {_t(shape)}")
        self.shapes[self.n] = shape
        if exact:
            self.exact.add(self.n)
        if pool:
            self.vals.append(self.n)
        self.n += 1
        return self.n - 1

    def inp(self, shape, pool=True):
        self.inputs.append(tuple(shape))
        return self.add(f'input() {{name="x{len(self.inputs) - 1}", role="arg"}}', shape, pool, exact=True)

    def pick(self, pred=lambda v: True):
        cands = [v for v in self.vals if pred(v)]
        return self.draw(st.sampled_from(cands)) if cands else None

    def like(self, shape):
        """A value of `shape`: an existing one, a broadcast of a smaller input, or a new input."""
        how = self.draw(st.sampled_from(["pool", "pool", "broadcast", "input"]))
        if how == "pool":
            v = self.pick(lambda v: self.shapes[v] == tuple(shape))
            if v is not None:
                return v
        if how == "broadcast" and len(shape) >= 1:
            lead = self.draw(st.integers(0, len(shape)))
            small = [1 if self.draw(st.booleans()) else d for d in shape[lead:]]
            src = self.inp(small, pool=False)
            return self.add(f"BroadcastTo(%{src}) {{shape={_tuple(shape)}}}", shape, exact=True)
        return self.inp(shape)

    # ---- ops ------------------------------------------------------------------------------
    def unary(self, a):
        s = self.shapes[a]
        op = self.draw(st.sampled_from(["Negate", "Tanh", "Exp", "Log", "AddScalar", "MulScalar", "DivScalar",
                                        "PowerScalar", "PowerScalarF", "Sqrt", "Detach", "ReLU", "Sigmoid"]))
        if op == "Exp":
            return self.add(f"Exp(%{self.add(f'Tanh(%{a})', s)})", s)
        if op == "Log":
            sq = self.add(f"EWiseMul(%{a}, %{a})", s)
            return self.add(f"Log(%{self.add(f'AddScalar(%{sq}) {{scalar=1.0}}', s)})", s)
        if op in ("Sqrt", "PowerScalarF"):
            sq = self.add(f"EWiseMul(%{a}, %{a})", s)
            pos = self.add(f"AddScalar(%{sq}) {{scalar=0.25}}", s)
            p = "0.5" if op == "Sqrt" else self.draw(st.sampled_from(["1.7", "-0.5", "0.3"]))
            return self.add(f"PowerScalar(%{pos}) {{scalar={p}}}", s)
        if op == "PowerScalar":
            p = self.draw(st.sampled_from([2, 3, 0, -2]))
            if p < 0:
                sq = self.add(f"EWiseMul(%{a}, %{a})", s)
                a = self.add(f"AddScalar(%{sq}) {{scalar=1.0}}", s)
            return self.add(f"PowerScalar(%{a}) {{scalar={p}}}", s)
        attrs = {"AddScalar": " {scalar=0.5}", "MulScalar": " {scalar=-1.5}", "DivScalar": " {scalar=4.0}"}
        return self.add(f"{op}(%{a}){attrs.get(op, '')}", s)

    def binary(self, a):
        s = self.shapes[a]
        b = self.like(s)
        op = self.draw(st.sampled_from(["EWiseAdd", "EWiseMul", "EWiseDiv", "EWisePow", "Compare", "Where"]))
        if op == "EWiseDiv":
            sq = self.add(f"EWiseMul(%{b}, %{b})", s)
            b = self.add(f"AddScalar(%{sq}) {{scalar=1.0}}", s)
        if op == "EWisePow":  # positive base, bounded exponent
            sq = self.add(f"EWiseMul(%{a}, %{a})", s)
            a = self.add(f"AddScalar(%{sq}) {{scalar=0.5}}", s)
            b = self.add(f"Tanh(%{b})", s)
        if op in ("Compare", "Where"):
            # conditions on exact values only (inputs and their views): no rounding flips
            c = self.pick(lambda v: v in self.exact and self.shapes[v] == s)
            if c is None:
                c = self.inp(s)
            cmp = self.draw(st.sampled_from(["eq", "ne", "gt", "ge", "lt", "le"]))
            other = self.pick(lambda v: v in self.exact and self.shapes[v] == s and v != c)
            rhs = f"Compare(%{c}, %{other}) {{cmp=\"{cmp}\"}}" if other is not None and self.draw(st.booleans()) \
                else f"Compare(%{c}) {{cmp=\"{cmp}\", scalar=0.0}}"
            cond = self.add(rhs, s, exact=True)
            if op == "Compare":
                return cond
            return self.add(f"Where(%{cond}, %{a}, %{b})", s)
        return self.add(f"{op}(%{a}, %{b})", s)

    def view(self, a):
        s = self.shapes[a]
        nd = len(s)
        ex = a in self.exact
        kinds = ["reshape", "getitem", "broadcast"] + (["transpose", "permute"] if nd >= 2 else [])
        kind = self.draw(st.sampled_from(kinds))
        if kind == "transpose":
            if self.draw(st.booleans()):
                return self.add(f"Transpose(%{a}) {{axes=None}}", s[:-2] + (s[-1], s[-2]), exact=ex)
            i, j = self.draw(st.sampled_from([(i, j) for i in range(nd) for j in range(nd) if i < j]))
            out = list(s)
            out[i], out[j] = out[j], out[i]
            return self.add(f"Transpose(%{a}) {{axes=({i}, {j})}}", out, exact=ex)
        if kind == "permute":
            perm = tuple(self.draw(st.permutations(range(nd))))
            return self.add(f"Permute(%{a}) {{axes={_tuple(perm)}}}", [s[p] for p in perm], exact=ex)
        if kind == "getitem":
            slices, out = [], []
            for d in s:
                start = self.draw(st.integers(0, min(2, d - 1)))
                stop = self.draw(st.integers(max(start + 1, d - 2), d))
                step = self.draw(st.sampled_from([1, 1, 2, 3]))
                slices.append((start, stop, step))
                out.append((stop - start + step - 1) // step)
            return self.add(f"GetItem(%{a}) {{slices={_tuple([_tuple(x) for x in slices])}}}", out, exact=ex)
        if kind == "broadcast":
            if prod(s) * 3 > MAX_SIZE or nd >= 4:
                return a
            # a new leading axis, and size-1 axes expanded
            new = [self.draw(st.sampled_from([3, 5]))] if self.draw(st.booleans()) else []
            out = tuple(new + [self.draw(st.sampled_from([3, 5])) if d == 1 else d for d in s])
            if prod(out) > MAX_SIZE or out == s:
                return a
            return self.add(f"BroadcastTo(%{a}) {{shape={_tuple(out)}}}", out, exact=ex)
        # reshape: flatten, merge two adjacent axes, split an axis, or insert/drop unit axes
        how = self.draw(st.sampled_from(["flatten", "merge", "split", "unit"]))
        if how == "flatten" or nd == 0:
            out = (prod(s),)
        elif how == "merge" and nd >= 2:
            k = self.draw(st.integers(0, nd - 2))
            out = s[:k] + (s[k] * s[k + 1],) + s[k + 2:]
        elif how == "split" and nd < 4 and any(d in (9, 15, 21, 25, 35, 49) for d in s):
            k = next(i for i, d in enumerate(s) if d in (9, 15, 21, 25, 35, 49))
            f = next(f for f in (3, 5, 7) if s[k] % f == 0)
            out = s[:k] + (f, s[k] // f) + s[k + 1:]
        else:
            out = tuple(d for d in s if d != 1)
            if out == s and nd < 4:
                k = self.draw(st.integers(0, nd))
                out = s[:k] + (1,) + s[k:]
        return self.add(f"Reshape(%{a}) {{shape={_tuple(out)}}}", out, exact=ex)

    def reduce(self, a):
        s = self.shapes[a]
        nd = len(s)
        op = self.draw(st.sampled_from(["Summation", "Max"]))
        if nd == 0:
            return a
        axes = self.draw(st.sampled_from(["None"] + [_tuple(c) for c in _axis_sets(nd)]))
        ax = range(nd) if axes == "None" else eval(axes)
        out = tuple(d for k, d in enumerate(s) if k not in ax)
        return self.add(f"{op}(%{a}) {{axes={axes}}}", out)

    def matmul(self, a):
        s = self.shapes[a]
        if len(s) < 2:
            if len(s) == 0:
                return a
            a = self.add(f"Reshape(%{a}) {{shape={_tuple((1,) + s)}}}", (1,) + s, exact=a in self.exact)
            s = (1,) + s
        k = s[-1]
        n = self.draw(st.sampled_from(DIMS))
        batch = s[:-2]
        form = self.draw(st.sampled_from(["2d", "same", "bcast", "partial", "trans", "left"]))
        if form == "left":  # a new left operand (m, k') @ a when a is 2-D: the value as the right operand
            if len(s) != 2:
                form = "2d"
            else:
                m = self.draw(st.sampled_from(DIMS))
                lhs = self.like((m, s[0]))
                return self.add(f"MatMul(%{lhs}, %{a})", (m, s[1]))
        if form == "same" and batch:
            b = self.like(batch + (k, n))
        elif form == "bcast" and batch:
            b = self.like((1,) * len(batch) + (k, n))
        elif form == "partial" and batch:  # some batch axes broadcast, or fewer batch axes
            lead = tuple(1 if self.draw(st.booleans()) else d for d in batch)[self.draw(st.integers(0, len(batch))):]
            b = self.like(lead + (k, n))
        elif form == "trans":
            w = self.like(batch + (n, k))
            b = self.add(f"Transpose(%{w}) {{axes=None}}", batch + (k, n), exact=w in self.exact)
        else:
            b = self.like((k, n))
        return self.add(f"MatMul(%{a}, %{b})", batch + (s[-2], n))


def _axis_sets(nd):
    out = [(k,) for k in range(nd)]
    if nd >= 2:
        out += [(0, nd - 1)]
    if nd >= 3:
        out += [(1, 2), (0, 1)]
    return out


@st.composite
def random_graph(draw):
    """(IR text, input shapes, whether the inputs get a few NaN/Inf values)."""
    specials = draw(st.sampled_from([False, False, False, True]))
    b = Builder(draw)
    nd = draw(st.integers(1, 4))
    shape = []
    for _ in range(nd):
        d = draw(st.sampled_from(DIMS + (3, 5)))
        if prod(shape) * d <= MAX_SIZE // 2:
            shape.append(d)
    shape = tuple(shape) or (7,)
    for _ in range(draw(st.integers(1, 2))):
        b.inp(shape)
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["unary", "unary", "binary", "binary", "binary", "view", "view", "view",
                                     "reduce", "matmul", "matmul"]))
        a = b.vals[-1]  # mostly chains (fusion, epilogues), sometimes any earlier value
        if prod(b.shapes[a]) > MAX_SIZE or draw(st.integers(0, 2)) == 0:
            a = b.pick(lambda v: prod(b.shapes[v]) <= MAX_SIZE)
        if kind == "matmul" and prod(b.shapes[a]) > MAX_SIZE // 2:
            kind = "unary"
        getattr(b, kind)(a)
    last = b.vals[-1]
    outs = [last]
    for _ in range(draw(st.integers(0, 2))):
        outs.append(draw(st.sampled_from(b.vals)))
    text = "graph @d {\n" + "\n".join(b.lines) + "\n  return " + ", ".join(f"%{o}" for o in outs) + "\n}\n"
    return text, b.inputs, specials


def run_case(text, shapes, seed, specials):
    rng = np.random.default_rng(seed)
    # inputs of one sign and away from zero: float32 sums in a different order (8-lane
    # vector partials vs the interpreter's) then agree to 1e-5 relative; normal inputs make
    # some sums cancel to ~0, where any reordering shows as a large relative error
    arrays = [rng.uniform(0.5, 1.5, s).astype(np.float32) for s in shapes]
    if specials:
        for a in arrays:
            flat = a.reshape(-1)
            for v in rng.choice([np.nan, np.inf, -np.inf], size=rng.integers(1, 3)):
                flat[rng.integers(flat.size)] = v
    g = parse_graph(text)
    g2, plan = pipeline.run(g, "native", names=pipeline.KERNEL_PASSES)
    ex = NativeExecutor(g2, plan.fusion, plan.schedule, plan.memory)
    with np.errstate(all="ignore"):
        want = run_graph(g, [ndl.backend_ndarray.array(a) for a in arrays])
    inputs = [ndl.backend_ndarray.array(a) for a in arrays]
    got = ex(inputs)
    assert len(got) == len(want)
    for k, (a, e) in enumerate(zip(got, want)):
        assert_close(a, e, what=f"output {k}\n{text}")
    for x, a in zip(inputs, arrays):  # inputs are read, never written
        np.testing.assert_array_equal(x.numpy(), a)
    got2 = ex(inputs)   # the program runs again on the same arena
    for k, (a, e) in enumerate(zip(got2, want)):
        assert_close(a, e, what=f"output {k} (second call)\n{text}")
    return ex


KNOWN_LOWERING_GAPS = ("elementwise kernel outputs of different sizes",
                       "is read at an index other than its loop's")


def unknown_callbacks(ex) -> list:
    """Callbacks (interpreter fallbacks; results are still checked) other than the known
    gaps, each with a strict xfail in test_native.py: an elementwise group holding a value and
    a view of it of another shape (test_returns_elementwise_value_and_its_view_without_callback),
    and a reduce group returning a transpose of a square value
    (test_transposed_square_reduce_outputs_without_callback)."""
    from needle.codegen import LoweringError, compile_kernel

    unknown = []
    for name, sub in ex.built.callbacks:
        try:
            compile_kernel(sub)
            unknown.append(f"{name}: lowers, yet ran as a callback")
        except LoweringError as e:
            if not any(k in str(e) for k in KNOWN_LOWERING_GAPS):
                unknown.append(f"{name}: {e}")
    return unknown


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_graph(), st.integers(0, 2**31 - 1))
def test_native_matches_interpreter(case, seed):
    text, shapes, specials = case
    ex = run_case(text, shapes, seed, specials)
    unknown = unknown_callbacks(ex)
    assert not unknown, (unknown, text)
