"""The recompute pass: text IR before/after (under the verifier), the cases it leaves alone,
values kept, and the fused kernels that stop storing the recomputed value."""
from __future__ import annotations

import numpy as np

from needle.passes.fusion import plan_fusion
from tests.numerics import assert_close, reference
from tests.passes.test_simplify import check, ir, run, unchanged

ONE_HOT = """
graph @g {
  %0 = input() {name="z", role="arg"} : f32[16,8] cpu
  %1 = input() {name="y", role="arg"} : f32[16] cpu
  %2 = input() {name="classes", role="arg"} : f32[1,8] cpu
  %3 = Reshape(%1) {shape=(16, 1)} : f32[16,1] cpu  # loss.py:1
  %4 = BroadcastTo(%3) {shape=(16, 8)} : f32[16,8] cpu  # loss.py:1
  %5 = BroadcastTo(%2) {shape=(16, 8)} : f32[16,8] cpu  # loss.py:1
  %6 = Compare(%4, %5) {cmp="eq", scalar=None} : f32[16,8] cpu  # loss.py:1
  %7 = EWiseMul(%0, %6) : f32[16,8] cpu  # loss.py:2
  %8 = Summation(%7) {axes=(1,)} : f32[16] cpu  # loss.py:2
  %9 = MulScalar(%6) {scalar=-0.25} : f32[16,8] cpu  # loss.py:3
  %10 = EWiseAdd(%0, %9) : f32[16,8] cpu  # loss.py:3
  return %8, %10
}
"""

# the mask %6 and its two broadcasts are copied for the second user; the reshape of y
# (as large as y itself) is not cheap and stays shared
ONE_HOT_AFTER = """
graph @g {
  %0 = input() {name="z", role="arg"} : f32[16,8] cpu
  %1 = input() {name="y", role="arg"} : f32[16] cpu
  %2 = input() {name="classes", role="arg"} : f32[1,8] cpu
  %3 = Reshape(%1) {shape=(16, 1)} : f32[16,1] cpu  # loss.py:1
  %4 = BroadcastTo(%3) {shape=(16, 8)} : f32[16,8] cpu  # loss.py:1
  %5 = BroadcastTo(%2) {shape=(16, 8)} : f32[16,8] cpu  # loss.py:1
  %6 = Compare(%4, %5) {cmp="eq", scalar=None} : f32[16,8] cpu  # loss.py:1
  %7 = EWiseMul(%0, %6) : f32[16,8] cpu  # loss.py:2
  %8 = Summation(%7) {axes=(1,)} : f32[16] cpu  # loss.py:2
  %12 = BroadcastTo(%2) {shape=(16, 8)} : f32[16,8] cpu  # loss.py:1
  %13 = BroadcastTo(%3) {shape=(16, 8)} : f32[16,8] cpu  # loss.py:1
  %11 = Compare(%13, %12) {cmp="eq", scalar=None} : f32[16,8] cpu  # loss.py:1
  %9 = MulScalar(%11) {scalar=-0.25} : f32[16,8] cpu  # loss.py:3
  %10 = EWiseAdd(%0, %9) : f32[16,8] cpu  # loss.py:3
  return %8, %10
}
"""


def same_values(before, after):
    rng = np.random.default_rng()
    inputs = [rng.integers(0, 8, n.type.shape).astype(np.float32) for n in before.inputs]
    for a, b in zip(reference(after, inputs), reference(before, inputs)):
        assert_close(a, b, 1e-6)


def test_one_hot_mask_is_copied_for_each_user():
    ctx = check("recompute", ONE_HOT, ONE_HOT_AFTER)
    assert ctx.reports["recompute"]["copies"] == 3
    same_values(ir(ONE_HOT), ir(ONE_HOT_AFTER))


def test_no_kernel_stores_the_mask_after_recompute():
    """The mask feeds a row sum and a column sum (two reductions: two kernels). Before, one
    kernel stores the mask and the other reads it back; after, each computes it from y and
    the classes, and no kernel writes a value of the mask's size other than the gradient."""
    text = ONE_HOT.replace("  return %8, %10", "  %11 = Summation(%10) {axes=(0,)} : f32[8] cpu\n  return %8, %11")

    def stored(graph):
        plan = plan_fusion(graph)
        return {graph.node(o).op for g in plan.groups if g.kind != "view" for o in g.outputs}

    assert "Compare" in stored(ir(text))
    after, _ = run("recompute", ir(text))
    assert "Compare" not in stored(after)
    same_values(ir(text), after)


def _graph(body: str, ret: str, z="f32[16,8]") -> str:
    return f"""
graph @g {{
  %0 = input() {{name="z", role="arg"}} : {z} cpu
  %1 = input() {{name="b", role="arg"}} : f32[1,8] cpu
{body}
  return {ret}
}}
"""


def test_value_reading_a_large_input_is_not_copied():
    """z + b reads all of z: storing it once is cheaper than reading z in each user."""
    unchanged("recompute", _graph(
        "  %2 = BroadcastTo(%1) {shape=(16, 8)} : f32[16,8] cpu\n"
        "  %3 = EWiseAdd(%0, %2) : f32[16,8] cpu\n"
        "  %4 = Exp(%3) : f32[16,8] cpu\n"
        "  %5 = Log(%3) : f32[16,8] cpu", "%4, %5"))


def test_returned_single_user_and_self_paired_values_are_not_copied():
    # returned: stored anyway
    unchanged("recompute", _graph(
        "  %2 = BroadcastTo(%1) {shape=(16, 8)} : f32[16,8] cpu\n"
        "  %3 = Exp(%2) : f32[16,8] cpu\n"
        "  %4 = EWiseAdd(%0, %3) : f32[16,8] cpu\n"
        "  %5 = EWiseMul(%0, %3) : f32[16,8] cpu", "%3, %4, %5"))
    # one user reading it twice (x * x)
    unchanged("recompute", _graph(
        "  %2 = BroadcastTo(%1) {shape=(16, 8)} : f32[16,8] cpu\n"
        "  %3 = Exp(%2) : f32[16,8] cpu\n"
        "  %4 = EWiseMul(%3, %3) : f32[16,8] cpu", "%4"))


def test_cone_larger_than_the_limit_is_not_copied():
    from needle.passes.recompute import MAX_CONE

    body = ["  %2 = BroadcastTo(%1) {shape=(16, 8)} : f32[16,8] cpu"]
    for k in range(MAX_CONE):
        body.append(f"  %{3 + k} = Exp(%{2 + k}) : f32[16,8] cpu")
    last = 2 + MAX_CONE
    body.append(f"  %{last + 1} = EWiseAdd(%0, %{last}) : f32[16,8] cpu")
    body.append(f"  %{last + 2} = EWiseMul(%0, %{last}) : f32[16,8] cpu")
    unchanged("recompute", _graph("\n".join(body), f"%{last + 1}, %{last + 2}"))
