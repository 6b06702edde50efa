"""Schedule transforms on the loop IR (needle.codegen.schedule): the C text they produce,
the requests they refuse, and numerical agreement of transformed kernels with the original
ones when compiled."""
from __future__ import annotations

import numpy as np
import pytest

from needle.codegen import lower, render_c
from needle.codegen.loop_ir import (AccInit, AccRef, AccUpdate, Binary, Buffer, FConst, For, IBin, ICmp,
                                    IConst, IVar, Load, LoopKernel, Select, Store, iadd, imul)
from needle.codegen.schedule import (ScheduleError, default_schedule, parallelize, reorder, split,
                                     strip_mine, tile, vectorize)
from needle.ir import parse_graph


# ---- kernels --------------------------------------------------------------------------------
def ew1(n=32, kind="vector"):
    """out0[i0] = in0[i0] * 2"""
    i = IVar("i0")
    return LoopKernel("kernel", (Buffer("in0", n, "in", (n,)), Buffer("out0", n, "out", (n,))),
                      (For("i0", n, kind, (Store("out0", i, Binary("mul", Load("in0", i), FConst(2.0))),)),))


def ew2(r=5, c=7, k0="parallel", k1="vector"):
    """out0[i0, i1] = in0[i0, i1] + in1[i1, i0] (in1 transposed, so the loops do not merge)"""
    i0, i1 = IVar("i0"), IVar("i1")
    rc = iadd(imul(i0, IConst(c)), i1)
    v = Binary("add", Load("in0", rc), Load("in1", iadd(imul(i1, IConst(r)), i0)))
    params = (Buffer("in0", r * c, "in", (r, c)), Buffer("in1", r * c, "in", (c, r)),
              Buffer("out0", r * c, "out", (r, c)))
    return LoopKernel("kernel", params, (For("i0", r, k0, (For("i1", c, k1, (Store("out0", rc, v),)),)),))


def graph(text):
    return parse_graph(text)


TRANSPOSE_ADD = """graph @k {
  %0 = input() {name="x", role="arg"} : f32[37,23] cpu
  %1 = input() {name="y", role="arg"} : f32[23,37] cpu
  %2 = Transpose(%1) {axes=None} : f32[37,23] cpu
  %3 = EWiseAdd(%0, %2) : f32[37,23] cpu
  %4 = Tanh(%3) : f32[37,23] cpu
  return %4
}"""
SOFTMAX = """graph @k {
  %0 = input() {name="x", role="arg"} : f32[37,23] cpu
  %1 = Exp(%0) : f32[37,23] cpu
  %2 = Summation(%1) {axes=(1,)} : f32[37] cpu
  %3 = Reshape(%2) {shape=(37, 1)} : f32[37,1] cpu
  %4 = BroadcastTo(%3) {shape=(37, 23)} : f32[37,23] cpu
  %5 = EWiseDiv(%1, %4) : f32[37,23] cpu
  return %5, %2
}"""
COLSUM = """graph @k {
  %0 = input() {name="x", role="arg"} : f32[37,23] cpu
  %1 = Summation(%0) {axes=(0,)} : f32[23] cpu
  %2 = MulScalar(%1) {scalar=0.5} : f32[23] cpu
  return %1, %2
}"""
GELU1 = """graph @k {
  %0 = input() {name="x", role="arg"} : f32[N] cpu
  %1 = MulScalar(%0) {scalar=0.79788456} : f32[N] cpu
  %2 = Tanh(%1) : f32[N] cpu
  %3 = AddScalar(%2) {scalar=1.0} : f32[N] cpu
  %4 = EWiseMul(%0, %3) : f32[N] cpu
  %5 = Exp(%4) : f32[N] cpu
  return %4, %5
}"""


def gelu1(n):
    return lower(graph(GELU1.replace("N", str(n))))


HEAD = ("void kernel(const float *restrict in0 /* {n}: {n} */, "
        "float *restrict out0 /* {n}: {n} */) {{\n")
HEAD2 = ("void kernel(const float *restrict in0 /* 35: 5x7 */, const float *restrict in1 /* 35: 7x5 */, "
         "float *restrict out0 /* 35: 5x7 */) {\n")


def c_text(head, body):
    return head + body + "}\n"


# ---- text tests -----------------------------------------------------------------------------
def test_vectorize_parallelize_default_schedule_text():
    k = ew2(k0="serial", k1="serial")
    want = c_text(HEAD2, """\
  for (int64_t i0 = 0; i0 < 5; i0++) {  // parallel
    for (int64_t i1 = 0; i1 < 7; i1++) {  // vector
      out0[((i0 * 7) + i1)] = (in0[((i0 * 7) + i1)] + in1[((i1 * 5) + i0)]);
    }
  }
""")
    assert render_c(parallelize(vectorize(k, "i1"), "i0")) == want
    assert render_c(default_schedule(k)) == want
    assert default_schedule(k) == ew2()
    assert render_c(default_schedule(k, parallel=False)) == want.replace("// parallel", "// serial")
    assert k == ew2(k0="serial", k1="serial")  # transforms return new kernels
    # a single loop is vectorised, not parallelised
    assert default_schedule(ew1(kind="serial")) == ew1()
    assert render_c(parallelize(ew1(), "i0")).count("// parallel") == 1


def test_split_without_tail_text():
    want = c_text(HEAD.format(n=32), """\
  for (int64_t i0o = 0; i0o < 4; i0o++) {  // serial
    for (int64_t i0i = 0; i0i < 8; i0i++) {  // vector
      out0[((i0o * 8) + i0i)] = (in0[((i0o * 8) + i0i)] * 2.0f);
    }
  }
""")
    assert render_c(split(ew1(32), "i0", 8)) == want


def test_split_with_tail_text():
    want = c_text(HEAD.format(n=37), """\
  for (int64_t i0o = 0; i0o < 4; i0o++) {  // serial
    for (int64_t i0i = 0; i0i < 8; i0i++) {  // vector
      out0[((i0o * 8) + i0i)] = (in0[((i0o * 8) + i0i)] * 2.0f);
    }
  }
  for (int64_t i0t = 0; i0t < 5; i0t++) {  // vector
    out0[(32 + i0t)] = (in0[(32 + i0t)] * 2.0f);
  }
""")
    assert render_c(split(ew1(37), "i0", 8)) == want
    named = split(ew1(37), "i0", 8, outer="a", inner="b", tail="c")
    assert render_c(named) == want.replace("i0o", "a").replace("i0i", "b").replace("i0t", "c")


def test_split_factor_edge_cases_text():
    # factor larger than the extent: only the tail loop, which is the whole loop (kind kept)
    assert render_c(split(ew1(5), "i0", 16)) == c_text(HEAD.format(n=5), """\
  for (int64_t i0t = 0; i0t < 5; i0t++) {  // vector
    out0[i0t] = (in0[i0t] * 2.0f);
  }
""")
    # factor 1: an inner loop of extent 1; factor = extent: an outer loop of extent 1
    assert render_c(split(ew1(3), "i0", 1)) == c_text(HEAD.format(n=3), """\
  for (int64_t i0o = 0; i0o < 3; i0o++) {  // serial
    for (int64_t i0i = 0; i0i < 1; i0i++) {  // vector
      out0[(i0o + i0i)] = (in0[(i0o + i0i)] * 2.0f);
    }
  }
""")
    assert render_c(split(ew1(3), "i0", 3)) == c_text(HEAD.format(n=3), """\
  for (int64_t i0o = 0; i0o < 1; i0o++) {  // serial
    for (int64_t i0i = 0; i0i < 3; i0i++) {  // vector
      out0[((i0o * 3) + i0i)] = (in0[((i0o * 3) + i0i)] * 2.0f);
    }
  }
""")


def test_split_parallel_outer_loop_text():
    assert render_c(split(ew2(), "i0", 2)) == c_text(HEAD2, """\
  for (int64_t i0o = 0; i0o < 2; i0o++) {  // parallel
    for (int64_t i0i = 0; i0i < 2; i0i++) {  // serial
      for (int64_t i1 = 0; i1 < 7; i1++) {  // vector
        out0[((((i0o * 2) + i0i) * 7) + i1)] = (in0[((((i0o * 2) + i0i) * 7) + i1)] + in1[((i1 * 5) + ((i0o * 2) + i0i))]);
      }
    }
  }
  for (int64_t i0t = 0; i0t < 1; i0t++) {  // serial
    for (int64_t i1 = 0; i1 < 7; i1++) {  // vector
      out0[(((4 + i0t) * 7) + i1)] = (in0[(((4 + i0t) * 7) + i1)] + in1[((i1 * 5) + (4 + i0t))]);
    }
  }
""")


def _masked_sum():
    """out0[0] = sum over i0 < 10 of (i0 < 3 ? in0[i0] : 0): an ICmp and an accumulator"""
    i = IVar("i0")
    return LoopKernel("kernel", (Buffer("in0", 10, "in", (10,)), Buffer("out0", 1, "out", (1,))), (
        AccInit("a", "sum"),
        For("i0", 10, "vector", (AccUpdate("a", "sum", Select(ICmp("lt", i, IConst(3)), Load("in0", i),
                                                               FConst(0.0))),)),
        Store("out0", IConst(0), AccRef("a"))))


def test_split_substitutes_icmp_and_accumulator_values():
    assert render_c(split(_masked_sum(), "i0", 4)) == """\
void kernel(const float *restrict in0 /* 10: 10 */, float *restrict out0 /* 1: 1 */) {
  float a = 0.0f;
  for (int64_t i0o = 0; i0o < 2; i0o++) {  // serial
    for (int64_t i0i = 0; i0i < 4; i0i++) {  // vector
      a += ((((i0o * 4) + i0i) < 3) ? in0[((i0o * 4) + i0i)] : 0.0f);
    }
  }
  for (int64_t i0t = 0; i0t < 2; i0t++) {  // vector
    a += (((8 + i0t) < 3) ? in0[(8 + i0t)] : 0.0f);
  }
  out0[0] = a;
}
"""


def test_reorder_text():
    want = c_text(HEAD2, """\
  for (int64_t i1 = 0; i1 < 7; i1++) {  // serial
    for (int64_t i0 = 0; i0 < 5; i0++) {  // parallel
      out0[((i0 * 7) + i1)] = (in0[((i0 * 7) + i1)] + in1[((i1 * 5) + i0)]);
    }
  }
""")
    assert render_c(reorder(ew2(), "i0", "i1")) == want
    # kinds travel with the loops (a vector loop moved outwards becomes serial); re-schedule
    k = parallelize(vectorize(reorder(ew2(), "i0", "i1"), "i0"), "i1")
    assert render_c(k) == want.replace("serial", "P").replace("parallel", "vector").replace("P", "parallel")
    assert reorder(reorder(ew2(k0="serial", k1="serial"), "i0", "i1"), "i1", "i0") == ew2(k0="serial", k1="serial")


COLSUM24 = COLSUM.replace("23", "24")


def test_strip_mine_text():
    """The column sums' three nests (zero, accumulate rows, scale) over blocks of 8 columns."""
    k = strip_mine(lower(graph(COLSUM24)), "i1", 8)
    want = ("void kernel(const float *restrict in0 /* 888: 37x24 */, float *restrict out0 /* 24: 24 */, "
            "float *restrict out1 /* 24: 24 */) {\n" + """\
  for (int64_t i1b = 0; i1b < 3; i1b++) {  // serial
    for (int64_t i1 = 0; i1 < 8; i1++) {  // vector
      out0[((i1b * 8) + i1)] = 0.0f;
    }
    for (int64_t i0 = 0; i0 < 37; i0++) {  // serial
      for (int64_t i1 = 0; i1 < 8; i1++) {  // vector
        out0[((i1b * 8) + i1)] = (out0[((i1b * 8) + i1)] + in0[(((i1b * 8) + i1) + (i0 * 24))]);
      }
    }
    for (int64_t i1 = 0; i1 < 8; i1++) {  // vector
      out1[((i1b * 8) + i1)] = (out0[((i1b * 8) + i1)] * 0.5f);
    }
  }
}
""")
    assert render_c(k) == want
    assert render_c(parallelize(k, "i1b")) == want.replace("i1b++) {  // serial", "i1b++) {  // parallel")


def test_tile_text():
    """5x7 tiled 2x3: full 2x3 tiles, the column tail (7 % 3) after them in each row block, the
    row tail (5 % 2) last with its columns unsplit."""
    assert render_c(tile(ew2(), "i0", "i1", 2, 3)) == c_text(HEAD2, """\
  for (int64_t i0o = 0; i0o < 2; i0o++) {  // parallel
    for (int64_t i1o = 0; i1o < 2; i1o++) {  // serial
      for (int64_t i0i = 0; i0i < 2; i0i++) {  // serial
        for (int64_t i1i = 0; i1i < 3; i1i++) {  // vector
          out0[((((i0o * 2) + i0i) * 7) + ((i1o * 3) + i1i))] = (in0[((((i0o * 2) + i0i) * 7) + ((i1o * 3) + i1i))] + in1[((((i1o * 3) + i1i) * 5) + ((i0o * 2) + i0i))]);
        }
      }
    }
    for (int64_t i0i = 0; i0i < 2; i0i++) {  // serial
      for (int64_t i1t = 0; i1t < 1; i1t++) {  // vector
        out0[((((i0o * 2) + i0i) * 7) + (6 + i1t))] = (in0[((((i0o * 2) + i0i) * 7) + (6 + i1t))] + in1[(((6 + i1t) * 5) + ((i0o * 2) + i0i))]);
      }
    }
  }
  for (int64_t i0t = 0; i0t < 1; i0t++) {  // serial
    for (int64_t i1 = 0; i1 < 7; i1++) {  // vector
      out0[(((4 + i0t) * 7) + i1)] = (in0[(((4 + i0t) * 7) + i1)] + in1[((i1 * 5) + (4 + i0t))]);
    }
  }
""")
    # dividing factors: one perfect 4-deep nest, still one top-level (parallel) loop
    k = tile(ew2(4, 6), "i0", "i1", 2, 3)
    assert len(k.body) == 1 and k.body[0].kind == "parallel"
    assert [(f.var, f.extent, f.kind) for f in _chain(k.body[0])] == [
        ("i0o", 2, "parallel"), ("i1o", 2, "serial"), ("i0i", 2, "serial"), ("i1i", 3, "vector")]


def _chain(f):
    out = [f]
    while len(f.body) == 1 and isinstance(f.body[0], For):
        f = f.body[0]
        out.append(f)
    return out


def _serial(stmts):
    return tuple(For(s.var, s.extent, "serial", _serial(s.body)) if isinstance(s, For) else s for s in stmts)


@pytest.mark.parametrize("text", [TRANSPOSE_ADD, SOFTMAX, COLSUM, GELU1.replace("N", "37")])
def test_default_schedule_is_what_lowering_does(text):
    k = lower(graph(text))
    assert default_schedule(k) == k
    serial = LoopKernel(k.name, k.params, _serial(k.body))
    assert serial != k and default_schedule(serial) == k


def test_default_schedule_leaves_unsafe_loops_serial():
    # a prefix sum reads the accumulator it updates (no vector lanes), and a loop that writes
    # one element from every iteration is not parallel
    i0, i1 = IVar("i0"), IVar("i1")
    k = LoopKernel("kernel", (Buffer("in0", 9, "in", (9,)), Buffer("out0", 9, "out", (9,))), (
        AccInit("a", "sum"),
        For("i0", 9, "serial", (AccUpdate("a", "sum", Load("in0", i0)), Store("out0", i0, AccRef("a"))))))
    assert default_schedule(k) == k
    k = LoopKernel("kernel", (Buffer("in0", 12, "in", (3, 4)), Buffer("out0", 4, "out", (4,))), (
        For("i0", 3, "serial", (For("i1", 4, "serial", (
            Store("out0", i1, Binary("add", Load("out0", i1), Load("in0", iadd(imul(i0, IConst(4)), i1)))),)),)),))
    assert [f.kind for f in _chain(default_schedule(k).body[0])] == ["serial", "vector"]


# ---- errors ---------------------------------------------------------------------------------
def _nested_same_name():
    i = IVar("i0")
    return LoopKernel("kernel", ew1().params, (For("i0", 4, "serial", (For("i0", 8, "serial", (
        Store("out0", i, Load("in0", i)),)),)),))


def _stencil():
    """out0[i0 + 1] = out0[i0] + in0[i0]"""
    i = IVar("i0")
    return LoopKernel("kernel", ew1(10).params, (For("i0", 9, "serial", (
        Store("out0", iadd(i, IConst(1)), Binary("add", Load("out0", i), Load("in0", i))),)),))


def _accumulate_into_one():
    """out0[0] = out0[0] + in0[i0]"""
    i = IVar("i0")
    return LoopKernel("kernel", ew1(10).params, (For("i0", 10, "serial", (
        Store("out0", IConst(0), Binary("add", Load("out0", IConst(0)), Load("in0", i))),)),))


def _prefix_sum():
    i = IVar("i0")
    return LoopKernel("kernel", ew1(10).params, (
        AccInit("a", "sum"),
        For("i0", 10, "serial", (AccUpdate("a", "sum", Load("in0", i)), Store("out0", i, AccRef("a"))))))


def _init_inside():
    i = IVar("i0")
    return LoopKernel("kernel", ew1(10).params, (For("i0", 10, "serial", (
        AccInit("a", "max"), AccUpdate("a", "max", Load("in0", i)), Store("out0", i, AccRef("a")))),))


def _two_store_indices():
    i = IVar("i0")
    return LoopKernel("kernel", ew1(10).params, (For("i0", 9, "serial", (
        Store("out0", i, Load("in0", i)), Store("out0", iadd(i, IConst(1)), Load("in0", i)))),))


def _non_affine_store():
    """out0[(i0 mod 5) * 2 + i0 div 5] = in0[i0] (a transpose: injective, but not provably so)"""
    i = IVar("i0")
    idx = iadd(imul(IBin("mod", i, IConst(5)), IConst(2)), IBin("div", i, IConst(5)))
    return LoopKernel("kernel", ew1(10).params, (For("i0", 10, "serial", (Store("out0", idx, Load("in0", i)),)),))


def _overlapping_rows():
    """out0[i0 + i1] for i1 < 3: rows overlap"""
    i0, i1 = IVar("i0"), IVar("i1")
    return LoopKernel("kernel", ew1(12).params, (For("i0", 8, "serial", (For("i1", 3, "serial", (
        Store("out0", iadd(i0, i1), Load("in0", i1)),)),)),))


ERRORS = [
    (lambda: vectorize(ew2(), "i9"), r"no loop 'i9' \(loops: i0, i1\)"),
    (lambda: vectorize(ew2(), 3), r"named by its variable"),
    (lambda: parallelize(ew2(), "x"), r"no loop 'x'"),
    (lambda: split(ew2(), "k", 2), r"no loop 'k'"),
    (lambda: vectorize(ew2(), "i0"), r"cannot vectorise loop 'i0': it is not innermost \(its body has loop 'i1'\)"),
    (lambda: vectorize(_nested_same_name(), "i0"), r"loop 'i0' contains another loop named 'i0'"),
    (lambda: parallelize(lower(graph(SOFTMAX)), "i1"),
     r"iterations of loop 'i1' are not independent: it updates accumulator acc2 initialised outside it"),
    (lambda: parallelize(_prefix_sum(), "i0"), r"updates accumulator a initialised outside it"),
    (lambda: parallelize(lower(graph(COLSUM)), "i0"), r"its writes to out0 may collide across iterations"),
    (lambda: parallelize(_overlapping_rows(), "i0"), r"its writes to out0 may collide across iterations"),
    (lambda: parallelize(_non_affine_store(), "i0"), r"writes out0 at an index that is not affine"),
    (lambda: parallelize(_stencil(), "i0"), r"reads out0 at another index than it writes it"),
    (lambda: parallelize(_two_store_indices(), "i0"), r"writes out0 at two different indices"),
    (lambda: vectorize(_stencil(), "i0"), r"reads out0 at another index than it writes it"),
    (lambda: vectorize(_two_store_indices(), "i0"), r"writes out0 at two different indices"),
    (lambda: vectorize(_accumulate_into_one(), "i0"), r"reads and writes out0 at an index that does not step"),
    (lambda: vectorize(_prefix_sum(), "i0"), r"reads accumulator a that it updates"),
    (lambda: vectorize(_init_inside(), "i0"), r"initialises accumulator a"),
    # column sums reordered: the reduced loop inside cannot take vector lanes
    (lambda: vectorize(reorder(lower(graph(COLSUM)), "i0", "i1"), "i0"),
     r"reads and writes out0 at an index that does not step with 'i0'"),
    (lambda: split(ew1(), "i0", 0), r"split factor must be an int >= 1, got 0"),
    (lambda: split(ew1(), "i0", -2), r"got -2"),
    (lambda: split(ew1(), "i0", 2.5), r"got 2.5"),
    (lambda: split(ew1(), "i0", True), r"got True"),
    (lambda: split(ew2(), "i1", 2, outer="i0"), r"already has a loop named 'i0'"),
    (lambda: split(ew2(), "i1", 2, outer="a", inner="a"), r"not distinct"),
    (lambda: split(ew2(), "i1", 2, inner="1x"), r"'1x' is not an identifier"),
    (lambda: reorder(ew2(), "i0", "i0"), r"the same loop 'i0'"),
    (lambda: reorder(ew2(), "i1", "i0"), r"loops 'i1' and 'i0' are not perfectly nested \(the body of 'i1' is: Store\)"),
    (lambda: reorder(ew2(), "i0", "zz"), r"no loop 'zz'"),
    (lambda: reorder(lower(graph(SOFTMAX)), "i0", "i1"), r"not perfectly nested \(the body of 'i0' is: AccInit, For 'i1'"),
    (lambda: tile(ew2(), "i1", "i0", 2, 2), r"not perfectly nested"),
    (lambda: tile(ew2(), "i0", "i0", 2, 2), r"the same loop"),
    (lambda: tile(ew2(), "i0", "i1", 2, 0), r"split factor must be an int >= 1"),
    (lambda: tile(ew2(), "i0", "q", 2, 2), r"no loop 'q'"),
    (lambda: tile(split(ew2(), "i1", 7, outer="i0o"), "i0", "i0o", 2, 2), r"already has a loop named 'i0o'"),
    (lambda: strip_mine(lower(graph(COLSUM)), "i1", 8), r"extents \[23\]: they must share one that 8 divides"),
    (lambda: strip_mine(lower(graph(SOFTMAX)), "i1", 1), r"a statement outside every loop 'i1' would run once per block"),
    (lambda: strip_mine(lower(graph(COLSUM)), "i1", 0), r"split factor must be an int >= 1"),
    (lambda: strip_mine(ew2(), "i1", 7, outer="i0"), r"already has a loop named 'i0'"),
    (lambda: parallelize(strip_mine(_overlapping_rows(), "i0", 4), "i0b"),
     r"its writes to out0 may collide across iterations"),
]


@pytest.mark.parametrize("call,message", ERRORS)
def test_schedule_errors(call, message):
    with pytest.raises(ScheduleError, match=message):
        call()


def test_schedule_error_is_value_error():
    assert issubclass(ScheduleError, ValueError)


# ---- numerical agreement --------------------------------------------------------------------
def _inputs(kernel, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(p.shape or (p.size,)).astype(np.float32) for p in kernel.inputs]


def _run(kernel, ins, chunks=None):
    """Outputs of the compiled kernel (prefilled with NaN, so unwritten elements show); with
    `chunks`, run through the `name_range` entry point over those ranges of the top-level
    loop, as the native executor's threads do."""
    import ctypes

    from needle.codegen import compile_loop_kernel
    k = compile_loop_kernel(kernel)
    outs = [np.full(p.shape or (p.size,), np.nan, dtype=np.float32) for p in kernel.outputs]
    addresses = [a.ctypes.data for a in ins + outs]
    if chunks is None:
        k.launch(addresses)
    else:
        fn = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int64, ctypes.c_int64)(k.range_address)
        args = (ctypes.c_void_p * len(addresses))(*addresses)
        for lo, hi in chunks:
            fn(args, lo, hi)
    return outs


def _agree(ref_kernel, kernel, rtol=1e-6, chunks=None):
    ins = _inputs(ref_kernel)
    want = _run(ref_kernel, ins)
    got = _run(kernel, ins, chunks)
    for g, w in zip(got, want):
        assert np.isfinite(w).all() and np.isfinite(g).all()
        np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-6)


FACTORS = [1, 3, 8, 16, 37, 40]


@pytest.mark.parametrize("n", [37, 100])
def test_split_vector_loop_numerics(n):
    k = gelu1(n)
    assert k.body[0].kind == "vector"
    for f in FACTORS:
        _agree(k, split(k, "i0", f))
    _agree(k, split(split(k, "i0", 16), "i0i", 8))  # split the inner loop again


def test_tile_numerics_odd_sizes():
    k = lower(graph(TRANSPOSE_ADD))  # 37x23, loops j0 (parallel) and j1 (vector)
    assert [(f.var, f.kind) for f in _chain(k.body[0])] == [("j0", "parallel"), ("j1", "vector")]
    for fa, fb in [(1, 1), (3, 8), (8, 3), (16, 16), (8, 16), (5, 7), (37, 23), (40, 30), (2, 50)]:
        _agree(k, tile(k, "j0", "j1", fa, fb))
    _agree(k, parallelize(vectorize(reorder(k, "j0", "j1"), "j0"), "j1"))
    _agree(k, split(split(k, "j0", 8), "j1", 3))
    _agree(ew2(), tile(ew2(), "i0", "i1", 2, 3))


def test_parallel_loop_after_transforms_runs_in_ranges():
    """Tiled / split kernels whose single top-level loop is parallel, run piecewise through
    `name_range` (the native executor's entry point): the same results."""
    from needle.codegen.llvm_render import range_extent
    k37, k36 = lower(graph(TRANSPOSE_ADD)), lower(graph(TRANSPOSE_ADD.replace("37", "36")))
    softmax = lower(graph(SOFTMAX))
    for ref, kernel in [(k37, tile(k37, "j0", "j1", 1, 8)), (k36, tile(k36, "j0", "j1", 4, 8)),
                        (softmax, split(softmax, "i1", 8))]:
        n = range_extent(kernel)
        assert n > 1 and len(kernel.body) == 1 and kernel.body[0].kind == "parallel"
        _agree(ref, kernel, rtol=1e-5, chunks=[(0, n // 3), (n // 3, n - 1), (n - 1, n)])


def test_strip_mined_column_sums_run_in_ranges():
    c = lower(graph(COLSUM24))
    for f in (1, 8, 24):
        k = parallelize(strip_mine(c, "i1", f, outer="b"), "b")
        n = 24 // f
        _agree(c, k, rtol=1e-5, chunks=[(0, n // 2), (n // 2, n)])


def test_large_column_reduction_lowers_to_parallel_column_blocks():
    """Lowering splits a column reduction of at least COLUMN_BLOCKS_MIN elements into
    parallel blocks of columns (a width of 8k dividing the columns, 8 blocks or more), and the
    kernel agrees with the serial nests when run in ranges; a column count with no such width
    stays serial."""
    from needle.codegen.llvm_render import range_extent
    from needle.codegen.lower import COLUMN_BLOCKS_MIN

    rows = COLUMN_BLOCKS_MIN // 256 + 3
    k = lower(graph(COLSUM.replace("37", str(rows)).replace("23", "256")))
    assert len(k.body) == 1 and k.body[0].var == "cb" and k.body[0].kind == "parallel"
    assert range_extent(k) == 8  # blocks of 32 columns
    ref = LoopKernel(k.name, k.params, strip_mine(k, "i1", 1).body)  # one block: the serial nests
    _agree(ref, k, rtol=1e-5, chunks=[(0, 3), (3, 8)])
    odd = lower(graph(COLSUM.replace("37", str(rows)).replace("23", "257")))
    assert [type(s).__name__ for s in odd.body] == ["For", "For", "For"]


def test_split_reduction_numerics():
    k = lower(graph(SOFTMAX))  # i0 parallel { acc; i1 vector (sum); i1 vector (divide); store }
    for f in FACTORS:
        _agree(k, split(k, "i1", f), rtol=1e-5)  # both passes over i1
    for f in (3, 8, 40):
        _agree(k, split(k, "i0", f))
    c = lower(graph(COLSUM))  # column sums: i0 (reduced) outside i1 (vector)
    for f in FACTORS:
        _agree(c, split(c, "i0", f), rtol=1e-5)
        _agree(c, split(c, "i1", f))
    _agree(c, reorder(c, "i0", "i1"), rtol=1e-5)
    _agree(c, tile(c, "i0", "i1", 8, 8), rtol=1e-5)
    _agree(_prefix_sum(), split(_prefix_sum(), "i0", 3), rtol=1e-5)
    for f in (1, 3, 4, 16):
        _agree(_masked_sum(), split(_masked_sum(), "i0", f), rtol=1e-5)


def test_elementwise_reshape_indices_simplified():
    """A (700, 1600) sum reshaped to (35, 20, 1600) (an LSTM's gates, by time step): the
    reshape's div/mod index arithmetic folds away over the loop ranges, so the nest merges
    into one contiguous, vectorised loop (it was a scalar loop of divisions)."""
    k = lower(graph("""graph @k {
  %0 = input() {name="b", role="arg"} : f32[1600] cpu
  %1 = input() {name="x", role="arg"} : f32[700,1600] cpu
  %2 = Reshape(%0) {shape=(1, 1600)} : f32[1,1600] cpu
  %3 = BroadcastTo(%2) {shape=(700, 1600)} : f32[700,1600] cpu
  %4 = EWiseAdd(%1, %3) : f32[700,1600] cpu
  %5 = Reshape(%4) {shape=(35, 20, 1600)} : f32[35,20,1600] cpu
  return %5
}"""))
    assert render_c(k) == """\
void kernel(const float *restrict in0 /* 1600: 1600 */, const float *restrict in1 /* 1120000: 700x1600 */, \
float *restrict out0 /* 1120000: 35x20x1600 */) {
  for (int64_t j0 = 0; j0 < 700; j0++) {  // parallel
    for (int64_t j1 = 0; j1 < 1600; j1++) {  // vector
      out0[(j1 + (j0 * 1600))] = (in1[((j0 * 1600) + j1)] + in0[j1]);
    }
  }
}
"""
