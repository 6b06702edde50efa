"""Text-IR tests of the simplify passes: input IR -> pass -> expected IR (verified after
every pass), plus numeric checks that folding and simplification keep every value."""
from __future__ import annotations

from textwrap import dedent

import numpy as np
import pytest

from needle.ir.graph import Graph
from needle.ir.parser import parse_graph
from needle.ir.printer import print_graph
from needle.passes import PASSES, PassContext, PassManager, get_pass
from needle.passes.pipeline import GRAPH_PASSES
from needle.passes.fold import MAX_FOLD_ELEMENTS, const_array, evaluate


def ir(text: str) -> Graph:
    return parse_graph(dedent(text))


def run(pass_name: str, graph: Graph) -> tuple[Graph, PassContext]:
    ctx = PassContext(verify=True, dump_dir="")
    ctx.pass_limit = None  # whatever NEEDLE_PASS_LIMIT says
    out = PassManager.from_names([pass_name]).run(graph, ctx)
    return out, ctx


def check(pass_name: str, before: str, after: str) -> PassContext:
    """Run the pass on `before`; the result must print exactly as `after`."""
    out, ctx = run(pass_name, ir(before))
    assert print_graph(out) == print_graph(ir(after)), print_graph(out)
    return ctx


def unchanged(pass_name: str, text: str) -> PassContext:
    graph = ir(text)
    out, ctx = run(pass_name, graph)
    assert print_graph(out) == print_graph(graph)
    return ctx


def interpret(graph: Graph, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A small numpy interpreter (each op's own kernel, as folding uses) for value checks."""
    env: dict[int, np.ndarray] = {}
    for node in graph.nodes:
        if node.op == "input":
            env[node.id] = inputs[node.attr("name")]
        elif node.op == "const":
            env[node.id] = const_array(node)
        else:
            env[node.id] = evaluate(node, [env[i] for i in node.inputs])
    return [env[o] for o in graph.outputs]


def same_values(before: Graph, after: Graph, rtol=1e-6):
    rng = np.random.default_rng(0)
    inputs = {n.attr("name"): rng.standard_normal(n.type.shape).astype(np.float32) for n in before.inputs}
    for a, b in zip(interpret(before, inputs), interpret(after, inputs)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6)


def test_registered():
    assert GRAPH_PASSES[-1] == "simplify"
    assert {"dce", "cse", "fold", "algebraic", "simplify"} <= set(PASSES)
    assert get_pass("dce").name == "dce"


# ---- DCE ------------------------------------------------------------------------------
def test_dce_removes_dead_nodes_keeps_inputs():
    ctx = check("dce", """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[2,3] cpu
          %1 = input() {name="unused", role="arg"} : f32[4] cpu
          %2 = Exp(%0) : f32[2,3] cpu  # m.py:1
          %3 = Log(%2) : f32[2,3] cpu  # m.py:2
          %4 = Tanh(%0) : f32[2,3] cpu  # m.py:3
          return %4
        }""", """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[2,3] cpu
          %1 = input() {name="unused", role="arg"} : f32[4] cpu
          %4 = Tanh(%0) : f32[2,3] cpu  # m.py:3
          return %4
        }""")
    assert ctx.reports["dce"] == {"removed": 2}


def test_dce_no_change():
    ctx = unchanged("dce", """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[2] cpu
          %1 = Exp(%0) : f32[2] cpu
          return %1, %0
        }""")
    assert ctx.reports["dce"] == {"removed": 0}


# ---- CSE ------------------------------------------------------------------------------
def test_cse_merges_equal_nodes_and_their_users():
    ctx = check("cse", """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[2,3] cpu
          %1 = Exp(%0) : f32[2,3] cpu  # m.py:1
          %2 = Exp(%0) : f32[2,3] cpu  # m.py:2
          %3 = MulScalar(%1) {scalar=2.0} : f32[2,3] cpu  # m.py:3
          %4 = MulScalar(%2) {scalar=2.0} : f32[2,3] cpu  # m.py:4
          %5 = EWiseAdd(%3, %4) : f32[2,3] cpu  # m.py:5
          return %5, %4
        }""", """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[2,3] cpu
          %1 = Exp(%0) : f32[2,3] cpu  # m.py:1
          %3 = MulScalar(%1) {scalar=2.0} : f32[2,3] cpu  # m.py:3
          %5 = EWiseAdd(%3, %3) : f32[2,3] cpu  # m.py:5
          return %5, %3
        }""")
    assert ctx.reports["cse"] == {"merged": 2}


def test_cse_merges_equal_consts():
    check("cse", """
        graph @f {
          %0 = const() {value=(1.0, 2.0)} : f32[2] cpu
          %1 = const() {value=(1.0, 2.0)} : f32[2] cpu
          %2 = EWiseAdd(%0, %1) : f32[2] cpu
          return %2
        }""", """
        graph @f {
          %0 = const() {value=(1.0, 2.0)} : f32[2] cpu
          %2 = EWiseAdd(%0, %0) : f32[2] cpu
          return %2
        }""")


def test_cse_keeps_different_attrs_inputs_types_and_inputs():
    unchanged("cse", """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[2,3] cpu
          %1 = input() {name="y", role="arg"} : f32[2,3] cpu
          %2 = MulScalar(%0) {scalar=2.0} : f32[2,3] cpu
          %3 = MulScalar(%0) {scalar=3.0} : f32[2,3] cpu
          %4 = MulScalar(%1) {scalar=2.0} : f32[2,3] cpu
          %5 = Summation(%0) {axes=(0,)} : f32[3] cpu
          %6 = Summation(%0) {axes=(1,)} : f32[2] cpu
          %7 = const() {value=0.0} : f32[] cpu
          %8 = const() {value=-0.0} : f32[] cpu
          return %2, %3, %4, %5, %6, %7, %8
        }""")


# ---- constant folding -----------------------------------------------------------------
def test_fold_binary_of_consts():
    ctx = check("fold", """
        graph @f {
          %0 = const() {value=((1.0, 2.0), (3.0, 4.0))} : f32[2,2] cpu
          %1 = const() {value=((10.0, 20.0), (30.0, 40.0))} : f32[2,2] cpu
          %2 = EWiseAdd(%0, %1) : f32[2,2] cpu  # m.py:7
          return %2
        }""", """
        graph @f {
          %0 = const() {value=((1.0, 2.0), (3.0, 4.0))} : f32[2,2] cpu
          %1 = const() {value=((10.0, 20.0), (30.0, 40.0))} : f32[2,2] cpu
          %2 = const() {value=((11.0, 22.0), (33.0, 44.0))} : f32[2,2] cpu  # m.py:7
          return %2
        }""")
    assert ctx.reports["fold"] == {"folded": 1}


def test_fold_chain_and_reduction_to_scalar():
    check("fold", """
        graph @f {
          %0 = const() {value=((1.0, 2.0), (3.0, 4.0))} : f32[2,2] cpu
          %1 = MulScalar(%0) {scalar=0.5} : f32[2,2] cpu
          %2 = Transpose(%1) {axes=None} : f32[2,2] cpu
          %3 = Summation(%2) {axes=None} : f32[] cpu
          return %2, %3
        }""", """
        graph @f {
          %0 = const() {value=((1.0, 2.0), (3.0, 4.0))} : f32[2,2] cpu
          %1 = const() {value=((0.5, 1.0), (1.5, 2.0))} : f32[2,2] cpu
          %2 = const() {value=((0.5, 1.5), (1.0, 2.0))} : f32[2,2] cpu
          %3 = const() {value=5.0} : f32[] cpu
          return %2, %3
        }""")


def test_fold_matches_numpy():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((4, 5)).astype(np.float32)
    lit = lambda x: repr(tuple(tuple(float(v) for v in row) for row in x))  # noqa: E731
    out, _ = run("fold", ir(f"""
        graph @f {{
          %0 = const() {{value={lit(a)}}} : f32[3,4] cpu
          %1 = const() {{value={lit(b)}}} : f32[4,5] cpu
          %2 = MatMul(%0, %1) : f32[3,5] cpu
          %3 = Exp(%2) : f32[3,5] cpu
          %4 = Summation(%3) {{axes=(1,)}} : f32[3] cpu
          %5 = Log(%4) : f32[3] cpu
          return %3, %5
        }}"""))
    assert [out.node(i).op for i in out.outputs] == ["const", "const"]
    np.testing.assert_allclose(const_array(out.node(3)), np.exp(a @ b), rtol=1e-5)
    np.testing.assert_allclose(const_array(out.node(5)), np.log(np.exp(a @ b).sum(1)), rtol=1e-5)


def test_fold_does_not_fire_on_non_const_input():
    ctx = unchanged("fold", """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[2] cpu
          %1 = const() {value=(1.0, 2.0)} : f32[2] cpu
          %2 = EWiseAdd(%0, %1) : f32[2] cpu
          %3 = Exp(%2) : f32[2] cpu
          return %3
        }""")
    assert ctx.reports["fold"] == {"folded": 0}


def test_fold_does_not_create_huge_constants():
    n = MAX_FOLD_ELEMENTS // 2 + 1
    ctx = unchanged("fold", f"""
        graph @f {{
          %0 = const() {{value=(1.0, 2.0)}} : f32[2] cpu
          %1 = BroadcastTo(%0) {{shape=({n}, 2)}} : f32[{n},2] cpu
          %2 = Exp(%1) : f32[{n},2] cpu
          return %2
        }}""")
    assert ctx.reports["fold"] == {"folded": 0}


def test_fold_uniform_results_to_scalar_fill_consts_of_any_size():
    n = MAX_FOLD_ELEMENTS * 4
    check("fold", f"""
        graph @f {{
          %0 = const() {{value=2.0}} : f32[] cpu
          %1 = BroadcastTo(%0) {{shape=({n}, 2)}} : f32[{n},2] cpu
          %2 = Exp(%1) : f32[{n},2] cpu
          %3 = const() {{value=((1.0, 1.0), (1.0, 1.0))}} : f32[2,2] cpu
          %4 = AddScalar(%3) {{scalar=-1.0}} : f32[2,2] cpu
          %5 = Negate(%4) : f32[2,2] cpu
          return %2, %5
        }}""", f"""
        graph @f {{
          %0 = const() {{value=2.0}} : f32[] cpu
          %1 = const() {{value=2.0}} : f32[{n},2] cpu
          %2 = const() {{value={float(np.exp(np.float32(2.0)))!r}}} : f32[{n},2] cpu
          %3 = const() {{value=((1.0, 1.0), (1.0, 1.0))}} : f32[2,2] cpu
          %4 = const() {{value=0.0}} : f32[2,2] cpu
          %5 = const() {{value=-0.0}} : f32[2,2] cpu
          return %2, %5
        }}""")


def test_fold_scalar_fill_const():
    check("fold", """
        graph @f {
          %0 = const() {value=2.0} : f32[2] cpu
          %1 = Negate(%0) : f32[2] cpu
          return %1
        }""", """
        graph @f {
          %0 = const() {value=2.0} : f32[2] cpu
          %1 = const() {value=-2.0} : f32[2] cpu
          return %1
        }""")


def test_size0_literal_consts():
    """A size-0 const's literal `()` (whatever its shape) is read as an array of the const's
    shape (folding and the scalar-op rewrite failed to broadcast (0,) to it); a folded size-0
    value is a scalar fill (0.0)."""
    check("simplify", """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[0,2,3] cpu
          %1 = const() {value=()} : f32[0,2,3] cpu
          %2 = Exp(%1) : f32[0,2,3] cpu
          %3 = EWiseMul(%2, %0) : f32[0,2,3] cpu
          %4 = EWiseAdd(%3, %1) : f32[0,2,3] cpu
          return %4
        }""", """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[0,2,3] cpu
          %1 = const() {value=()} : f32[0,2,3] cpu
          %3 = MulScalar(%0) {scalar=0.0} : f32[0,2,3] cpu
          %4 = EWiseAdd(%3, %1) : f32[0,2,3] cpu
          return %4
        }""")
    assert const_array(ir("""
        graph @f {
          %0 = const() {value=()} : f32[0,2,3] cpu
          return %0
        }""").nodes[0]).shape == (0, 2, 3)


# ---- algebraic identities -------------------------------------------------------------
HEADER = """graph @f {
          %0 = input() {name="x", role="arg"} : f32[2,3,4] cpu
"""


def alg(body: str, ret: str) -> str:
    return HEADER + body + f"\n          return {ret}\n        }}"


@pytest.mark.parametrize("op,scalar", [("MulScalar", "1"), ("MulScalar", "1.0"), ("AddScalar", "-0.0"),
                                       ("DivScalar", "1.0"), ("PowerScalar", "1")])
def test_neutral_scalar_ops_vanish(op, scalar):
    ctx = check("algebraic", alg(f"""
          %1 = {op}(%0) {{scalar={scalar}}} : f32[2,3,4] cpu
          %2 = Exp(%1) : f32[2,3,4] cpu""", "%2, %1"), alg("""
          %2 = Exp(%0) : f32[2,3,4] cpu""", "%2, %0"))
    assert ctx.reports["algebraic"]["rewritten"] == 1


@pytest.mark.parametrize("op,scalar", [("MulScalar", "2.0"), ("AddScalar", "1.0"), ("DivScalar", "0.5"),
                                       ("PowerScalar", "2"), ("MulScalar", "0.0"), ("AddScalar", "0"),
                                       ("AddScalar", "0.0")])
def test_other_scalars_stay(op, scalar):
    """x * 0 is not 0 (NaN, Inf) and x + 0 is not x (it turns -0.0 into 0.0)."""
    unchanged("algebraic", alg(f"""
          %1 = {op}(%0) {{scalar={scalar}}} : f32[2,3,4] cpu""", "%1"))


def test_double_negation():
    check("algebraic", alg("""
          %1 = Negate(%0) : f32[2,3,4] cpu
          %2 = Negate(%1) : f32[2,3,4] cpu
          %3 = Negate(%2) : f32[2,3,4] cpu
          %4 = Negate(%3) : f32[2,3,4] cpu""", "%4, %3"), alg("""
          %1 = Negate(%0) : f32[2,3,4] cpu
          %3 = Negate(%0) : f32[2,3,4] cpu""", "%0, %3"))


def test_reshape_identity_and_reshape_of_reshape():
    check("algebraic", alg("""
          %1 = Reshape(%0) {shape=(2, 3, 4)} : f32[2,3,4] cpu
          %2 = Reshape(%1) {shape=(6, 4)} : f32[6,4] cpu  # m.py:2
          %3 = Reshape(%2) {shape=(24,)} : f32[24] cpu  # m.py:3
          %4 = Reshape(%3) {shape=(2, 3, 4)} : f32[2,3,4] cpu  # m.py:4""", "%3, %4"), alg("""
          %2 = Reshape(%0) {shape=(6, 4)} : f32[6,4] cpu  # m.py:2
          %3 = Reshape(%0) {shape=(24,)} : f32[24] cpu  # m.py:3""", "%3, %0"))


def test_reshape_to_another_shape_stays():
    unchanged("algebraic", alg("""
          %1 = Reshape(%0) {shape=(6, 4)} : f32[6,4] cpu
          %2 = Exp(%1) : f32[6,4] cpu
          %3 = Reshape(%2) {shape=(24,)} : f32[24] cpu""", "%3"))


def test_transpose_of_same_transpose():
    check("algebraic", alg("""
          %1 = Transpose(%0) {axes=None} : f32[2,4,3] cpu
          %2 = Transpose(%1) {axes=None} : f32[2,3,4] cpu
          %3 = Transpose(%0) {axes=(0, 2)} : f32[4,3,2] cpu
          %4 = Transpose(%3) {axes=(2, 0)} : f32[2,3,4] cpu""", "%2, %4"), alg("""
          %1 = Transpose(%0) {axes=None} : f32[2,4,3] cpu
          %3 = Transpose(%0) {axes=(0, 2)} : f32[4,3,2] cpu""", "%0, %0"))


def test_transpose_with_unequal_axes_stays():
    unchanged("algebraic", alg("""
          %1 = Transpose(%0) {axes=(0, 1)} : f32[3,2,4] cpu
          %2 = Transpose(%1) {axes=(1, 2)} : f32[3,4,2] cpu""", "%2"))


def test_permute_of_permute():
    check("algebraic", alg("""
          %1 = Permute(%0) {axes=(1, 2, 0)} : f32[3,4,2] cpu
          %2 = Permute(%1) {axes=(1, 2, 0)} : f32[4,2,3] cpu  # m.py:2
          %3 = Permute(%2) {axes=(1, 2, 0)} : f32[2,3,4] cpu
          %4 = Permute(%0) {axes=(0, 1, 2)} : f32[2,3,4] cpu""", "%2, %3, %4"), alg("""
          %1 = Permute(%0) {axes=(1, 2, 0)} : f32[3,4,2] cpu
          %2 = Permute(%0) {axes=(2, 0, 1)} : f32[4,2,3] cpu  # m.py:2""", "%2, %0, %0"))


def test_broadcast_identity_and_broadcast_of_broadcast():
    check("algebraic", """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[1,4] cpu
          %1 = BroadcastTo(%0) {shape=(1, 4)} : f32[1,4] cpu
          %2 = BroadcastTo(%1) {shape=(3, 4)} : f32[3,4] cpu
          %3 = BroadcastTo(%2) {shape=(2, 3, 4)} : f32[2,3,4] cpu  # m.py:3
          return %3
        }""", """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[1,4] cpu
          %2 = BroadcastTo(%0) {shape=(3, 4)} : f32[3,4] cpu
          %3 = BroadcastTo(%0) {shape=(2, 3, 4)} : f32[2,3,4] cpu  # m.py:3
          return %3
        }""")


def test_broadcast_of_scalar_const():
    n = MAX_FOLD_ELEMENTS * 10
    check("algebraic", f"""
        graph @f {{
          %0 = const() {{value=1.5}} : f32[] cpu
          %1 = BroadcastTo(%0) {{shape=(2, 3)}} : f32[2,3] cpu  # m.py:1
          %2 = const() {{value=((2.0,),)}} : f32[1,1] cpu
          %3 = BroadcastTo(%2) {{shape=(2, 2)}} : f32[2,2] cpu
          %4 = BroadcastTo(%0) {{shape=({n},)}} : f32[{n}] cpu
          return %1, %3, %4
        }}""", f"""
        graph @f {{
          %0 = const() {{value=1.5}} : f32[] cpu
          %1 = const() {{value=1.5}} : f32[2,3] cpu  # m.py:1
          %2 = const() {{value=((2.0,),)}} : f32[1,1] cpu
          %3 = const() {{value=2.0}} : f32[2,2] cpu
          %4 = const() {{value=1.5}} : f32[{n}] cpu
          return %1, %3, %4
        }}""")


def test_binary_with_uniform_const_becomes_scalar_op():
    check("algebraic", """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[2,2] cpu
          %1 = const() {value=0.125} : f32[2,2] cpu
          %2 = EWiseMul(%1, %0) : f32[2,2] cpu  # m.py:2
          %3 = EWiseAdd(%2, %1) : f32[2,2] cpu  # m.py:3
          %4 = EWiseDiv(%3, %1) : f32[2,2] cpu  # m.py:4
          %5 = EWiseDiv(%1, %4) : f32[2,2] cpu  # m.py:5
          %6 = const() {value=1.0} : f32[2,2] cpu
          %7 = EWiseMul(%5, %6) : f32[2,2] cpu  # m.py:7
          return %7
        }""", """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[2,2] cpu
          %1 = const() {value=0.125} : f32[2,2] cpu
          %2 = MulScalar(%0) {scalar=0.125} : f32[2,2] cpu  # m.py:2
          %3 = AddScalar(%2) {scalar=0.125} : f32[2,2] cpu  # m.py:3
          %4 = DivScalar(%3) {scalar=0.125} : f32[2,2] cpu  # m.py:4
          %5 = EWiseDiv(%1, %4) : f32[2,2] cpu  # m.py:5
          %6 = const() {value=1.0} : f32[2,2] cpu
          return %5
        }""")


def test_binary_with_nonuniform_const_stays():
    unchanged("algebraic", """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[2] cpu
          %1 = const() {value=(1.0, 2.0)} : f32[2] cpu
          %2 = EWiseMul(%0, %1) : f32[2] cpu
          %3 = EWiseAdd(%1, %2) : f32[2] cpu
          return %3
        }""")


def test_broadcast_to_another_shape_stays():
    unchanged("algebraic", """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[1,4] cpu
          %1 = const() {value=(1.0, 2.0)} : f32[2] cpu
          %2 = BroadcastTo(%0) {shape=(3, 4)} : f32[3,4] cpu
          %3 = BroadcastTo(%1) {shape=(3, 2)} : f32[3,2] cpu
          return %2, %3
        }""")


def test_summation_over_no_axes():
    check("algebraic", alg("""
          %1 = Summation(%0) {axes=()} : f32[2,3,4] cpu
          %2 = Summation(%0) {axes=(1,)} : f32[2,4] cpu
          %3 = Summation(%0) {axes=None} : f32[] cpu""", "%1, %2, %3"), alg("""
          %2 = Summation(%0) {axes=(1,)} : f32[2,4] cpu
          %3 = Summation(%0) {axes=None} : f32[] cpu""", "%0, %2, %3"))


# ---- simplify: the fixed point --------------------------------------------------------
MIXED = """
    graph @f {
      %0 = input() {name="x", role="arg"} : f32[2,3] cpu
      %1 = input() {name="w", role="param"} : f32[3,2] cpu
      %2 = const() {value=2.0} : f32[] cpu
      %3 = BroadcastTo(%2) {shape=(2, 3)} : f32[2,3] cpu
      %4 = Negate(%0) : f32[2,3] cpu
      %5 = Negate(%4) : f32[2,3] cpu  # m.py:5
      %6 = MulScalar(%5) {scalar=1.0} : f32[2,3] cpu
      %7 = EWiseMul(%6, %3) : f32[2,3] cpu  # m.py:7
      %8 = EWiseMul(%0, %3) : f32[2,3] cpu  # m.py:8
      %9 = Reshape(%8) {shape=(3, 2)} : f32[3,2] cpu
      %10 = Reshape(%9) {shape=(2, 3)} : f32[2,3] cpu
      %11 = EWiseAdd(%7, %10) : f32[2,3] cpu  # m.py:11
      %12 = Transpose(%1) {axes=None} : f32[2,3] cpu
      %13 = Transpose(%12) {axes=None} : f32[3,2] cpu
      %14 = MatMul(%11, %13) : f32[2,2] cpu  # m.py:14
      %15 = AddScalar(%14) {scalar=-0.0} : f32[2,2] cpu
      %16 = Exp(%15) : f32[2,2] cpu
      return %16
    }"""


def test_simplify_reaches_fixed_point():
    before = ir(MIXED)
    ctx = check("simplify", MIXED, """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[2,3] cpu
          %1 = input() {name="w", role="param"} : f32[3,2] cpu
          %7 = MulScalar(%0) {scalar=2.0} : f32[2,3] cpu  # m.py:7
          %11 = EWiseAdd(%7, %7) : f32[2,3] cpu  # m.py:11
          %14 = MatMul(%11, %1) : f32[2,2] cpu  # m.py:14
          %16 = Exp(%14) : f32[2,2] cpu
          return %16
        }""")
    report = ctx.reports["simplify"]
    assert report["rounds"] >= 2 and report["dce"]["removed"] > 0 and report["cse"]["merged"] == 1
    out, _ = run("simplify", before)
    same_values(before, out)
    again, ctx2 = run("simplify", out)
    assert again == out and ctx2.reports["simplify"]["rounds"] == 1


def test_simplify_keeps_values_of_folded_graph():
    text = """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[3] cpu
          %1 = const() {value=(0.5, -1.0, 2.0)} : f32[3] cpu
          %2 = Exp(%1) : f32[3] cpu
          %3 = PowerScalar(%2) {scalar=2} : f32[3] cpu
          %4 = EWiseDiv(%0, %3) : f32[3] cpu
          %5 = DivScalar(%4) {scalar=1} : f32[3] cpu
          %6 = Summation(%5) {axes=()} : f32[3] cpu
          return %6
        }"""
    before = ir(text)
    out, ctx = run("simplify", before)
    assert [n.op for n in out.nodes] == ["input", "const", "EWiseDiv"]
    same_values(before, out)
    x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    expected = x / np.exp(np.array([0.5, -1.0, 2.0], dtype=np.float32)) ** 2
    np.testing.assert_allclose(interpret(out, {"x": x})[0], expected, rtol=1e-6)


def test_passes_do_not_mutate_input():
    before = ir(MIXED)
    text = print_graph(before)
    for name in ("dce", "cse", "fold", "algebraic", "simplify"):
        run(name, before)
    assert print_graph(before) == text


def test_view_rewrites_keep_values():
    before = ir(alg("""
          %1 = Permute(%0) {axes=(1, 2, 0)} : f32[3,4,2] cpu
          %2 = Permute(%1) {axes=(2, 0, 1)} : f32[2,3,4] cpu
          %3 = Permute(%2) {axes=(2, 1, 0)} : f32[4,3,2] cpu
          %4 = Permute(%3) {axes=(1, 0, 2)} : f32[3,4,2] cpu
          %5 = Transpose(%4) {axes=(-1, 0)} : f32[2,4,3] cpu
          %6 = Transpose(%5) {axes=(0, 2)} : f32[3,4,2] cpu
          %7 = Reshape(%6) {shape=(-1, 2)} : f32[12,2] cpu
          %8 = Reshape(%7) {shape=(4, 6)} : f32[4,6] cpu
          %9 = Reshape(%8) {shape=(1, 4, 6)} : f32[1,4,6] cpu
          %10 = BroadcastTo(%9) {shape=(3, 4, 6)} : f32[3,4,6] cpu
          %11 = BroadcastTo(%10) {shape=(2, 3, 4, 6)} : f32[2,3,4,6] cpu""", "%4, %6, %11"))
    out, ctx = run("simplify", before)
    assert len(out) < len(before)
    same_values(before, out, rtol=0)


def test_detach_vanishes_once_no_grad_request_is_left():
    check("algebraic", alg("""
          %1 = Detach(%0) : f32[2,3,4] cpu
          %2 = Negate(%1) : f32[2,3,4] cpu""", "%2"), alg("""
          %2 = Negate(%0) : f32[2,3,4] cpu""", "%2"))


def test_detach_stays_while_a_grad_request_needs_it():
    unchanged("algebraic", alg("""
          %1 = Detach(%0) : f32[2,3,4] cpu
          %2 = EWiseMul(%1, %0) : f32[2,3,4] cpu
          %3 = Summation(%2) {axes=None} : f32[] cpu
          %4 = grad(%3, %0) {seeded=False} : (f32[2,3,4] cpu)""", "%4"))
