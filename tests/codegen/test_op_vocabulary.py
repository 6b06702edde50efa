"""One op vocabulary for the loop IR, spelled by every target (issue 13).

`loop_ir.VOCABULARY` lists the unary, binary, compare, index and accumulate ops; the LLVM,
C and CUDA C renderers and the tests' GPU emulator each have one table keyed the same way.
Adding an op to the vocabulary without a spelling in every one of them fails here; so does
a spelling of an op the vocabulary does not have. The C-like renderers share one base
(`c_like.CLike`): literals, temporaries and the common statements are checked once here."""
from __future__ import annotations

import numpy as np
import pytest

from needle.codegen import loop_ir
from needle.codegen.c_like import CLike
from needle.codegen.c_render import C_OPS, CRenderer, render_c
from needle.codegen.cuda.render import CUDA_OPS, CudaRenderer, float_literal
from needle.codegen.llvm_render import LLVM_OPS
from needle.codegen.loop_ir import (ACC_COMBINE, ACC_IDENTITY, VOCABULARY, AccInit, AccRef, AccUpdate, Binary, Buffer,
                                    Cmp, FConst, For, ICmp, IConst, IVar, Load, LoopKernel, Op, Select, Store, Unary,
                                    vocabulary_gaps)
from tests.gpu_emulator.arith import OPS as EMULATOR_OPS

TARGETS = {"C": C_OPS, "CUDA C": CUDA_OPS, "LLVM": LLVM_OPS, "GPU emulator": EMULATOR_OPS}


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_spells_exactly_the_vocabulary(target):
    assert vocabulary_gaps(TARGETS[target], target) == []


def test_an_op_without_spellings_is_reported_for_every_target(monkeypatch):
    erf = Op("unary", "erf", "the error function")
    monkeypatch.setitem(VOCABULARY, "unary", {**VOCABULARY["unary"], "erf": erf})
    for target, table in TARGETS.items():
        assert vocabulary_gaps(table, target) == [f"{target}: no spelling of unary op 'erf'"]
    assert vocabulary_gaps({**C_OPS, "unary": {**C_OPS["unary"], "erf": "erff({})", "gelu": "g({})"}}) == [
        "renderer: unary op 'gelu' is not in the loop IR's vocabulary"]


def test_the_vocabulary_table():
    assert loop_ir.UNARY_OPS == ("neg", "exp", "log", "tanh", "sqrt", "sin", "cos")
    assert loop_ir.ACC_OPS == ("sum", "max") and loop_ir.INDEX_OPS == ("add", "mul", "div", "mod")
    for kind, ops in VOCABULARY.items():
        for name, op in ops.items():
            assert (op.kind, op.name) == (kind, name) and op.arity == loop_ir.KINDS[kind] and op.meaning
            assert (op.identity is not None) == (kind == "accumulate") == (op.combine is not None)
    with pytest.raises(ValueError, match="defined twice"):
        loop_ir._vocabulary(Op("unary", "neg", "-a"), Op("unary", "neg", "-a"))


@pytest.mark.parametrize("op", loop_ir.ACC_OPS)
def test_identity_and_combine_agree_with_the_targets(op):
    """The identity is neutral for the combine, and the emulator's accumulate op (as every
    target's, by the tests that compare them) computes ACC_COMBINE's value."""
    vals = np.array([-2.5, 0.0, 3.0, np.inf, -np.inf, np.nan], np.float32)
    combine = EMULATOR_OPS["accumulate"][op]
    np.testing.assert_array_equal(combine(np.float32(ACC_IDENTITY[op]), vals), vals)
    acc = AccRef("a")
    with np.errstate(invalid="ignore"):
        _combine_pairs(op, vals, acc, combine)


def _combine_pairs(op, vals, acc, combine):
    for a in vals:
        for v in vals:
            expr = ACC_COMBINE[op](acc, FConst(float(v)))
            want = _evaluate(expr, {"a": np.float32(a)})
            np.testing.assert_array_equal(combine(np.float32(a), np.float32(v)), want)


def _evaluate(e, accs):
    """A value expression with numpy, through the emulator's table."""
    if isinstance(e, FConst):
        return np.float32(e.value)
    if isinstance(e, AccRef):
        return accs[e.acc]
    if isinstance(e, Select):
        return _evaluate(e.a, accs) if _evaluate(e.cond, accs) else _evaluate(e.b, accs)
    kind = {Unary: "unary", Binary: "binary", Cmp: "compare"}[type(e)]
    return EMULATOR_OPS[kind][e.op](*(_evaluate(o, accs) for o in loop_ir.operands(e)))


# ---- the C-like base --------------------------------------------------------------------------
def test_literals():
    assert [CLike.float_literal(v) for v in (1.0, -0.5, 1e-05, float("inf"), float("-inf"))] == [
        "1.0f", "(-0.5f)", "1e-05f", "INFINITY", "(-INFINITY)"]
    assert CLike.float_literal(float("nan")) == "NAN"
    assert [float_literal(v) for v in (float("inf"), float("-inf"), -2.0)] == ["NDL_INF", "(-NDL_INF)", "(-2.0f)"]
    assert CRenderer().index(loop_ir.IBin("mul", IVar("i"), IConst(-3))) == "(i * (-3))"
    # a negated negative constant stays two tokens: (-(-0.5f)), never the decrement (--0.5f)
    assert CRenderer().expr(Unary("neg", FConst(-0.5)), "") == "(-(-0.5f))"


def _kernel(value, n=8):
    i = IVar("i0")
    return LoopKernel("k", (Buffer("in0", n, "in", (n,)), Buffer("out0", n, "out", (n,))),
                      (For("i0", n, "vector", (Store("out0", i, value(Load("in0", i))),)),))


def test_shared_and_deep_sub_expressions_become_temporaries():
    def value(x):
        s = Binary("add", x, FConst(1.0))
        return Select(Cmp("gt", s, FConst(0.0)), s, FConst(0.0))   # relu(x + 1): s used twice

    text = render_c(_kernel(value))
    assert "    const float t0 = (in0[i0] + 1.0f);\n    out0[i0] = ((t0 > 0.0f) ? t0 : 0.0f);\n" in text

    def deep(x):
        for _ in range(40):
            x = Unary("tanh", x)
        return x

    text = render_c(_kernel(deep))
    assert text.count("const float t") == 40 // CLike.MAX_NESTING
    assert all(line.count("tanh_poly") <= CLike.MAX_NESTING for line in text.splitlines())


def test_loads_are_repeated_in_c_and_bound_once_in_cuda():
    x = Load("in0", IVar("i"))
    value = Binary("mul", x, x)
    assert CRenderer().expr(value, "") == "(in0[i] * in0[i])"
    r = CudaRenderer("int")
    assert r.expr(value, "") == "(t0 * t0)" and r.lines == ["const float t0 = in0[i];"]


def test_the_common_statements_in_both_dialects():
    body = (AccInit("a", "max"),
            For("i", 4, "unrolled", (AccUpdate("a", "max", Load("in0", IVar("i"))),
                                     AccUpdate("s", "sum", AccRef("a")))))
    c, cuda = CRenderer(), CudaRenderer("int")
    c.body(body, "")
    cuda.body(body, "")
    assert c.lines == ["float a = (-INFINITY);", "#pragma unroll", "for (int64_t i = 0; i < 4; i++) {  // unrolled",
                       "  a = max_nan(a, in0[i]);", "  s += a;", "}"]
    assert cuda.lines == ["float a = (-NDL_INF);", "#pragma unroll", "for (int i = 0; i < 4; i++) {  // unrolled",
                          "  a = ndl_max_nan(a, in0[i]);", "  s += a;", "}"]


def test_a_select_on_an_index_condition_is_eager_in_c_and_lazy_in_cuda():
    i = IVar("i")
    value = Select(ICmp("lt", i, IConst(3)), Load("in0", i), FConst(0.0))
    assert CRenderer().expr(value, "") == "((i < 3) ? in0[i] : 0.0f)"
    r = CudaRenderer("int")
    assert r.expr(value, "") == "t0"
    assert r.lines == ["float t0;", "if (i < 3) {", "  t0 = in0[i];", "} else {", "  t0 = 0.0f;", "}"]


def test_an_unknown_node_is_an_error():
    with pytest.raises(TypeError, match="CRenderer: unknown statement"):
        CRenderer().stmt(object(), "")
    from needle.codegen.cuda.gpu_ir import Var
    with pytest.raises(TypeError, match="CRenderer: unknown value expression"):
        CRenderer().expr(Var("v"), "")
