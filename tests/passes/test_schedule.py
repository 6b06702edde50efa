"""The schedule pass: kernel order (topological, stable by each group's first node) and the
liveness of every planned value, on text-IR graphs and hand-built fusion plans."""
from __future__ import annotations

from textwrap import dedent

import pytest

from needle.ir.parser import parse_graph
from needle.ir.printer import print_graph
from needle.passes import PassContext, PassError, PassManager
from needle.passes.pipeline import ANALYSES, STAGES
from needle.passes.schedule import SingletonGroup, SingletonPlan, build_schedule, singleton_plan

DIAMOND = """
graph @diamond {
  %0 = input() {name="x", role="arg"} : f32[4,4] cpu
  %1 = const() {value=2.0} : f32[4,4] cpu
  %2 = Exp(%0) : f32[4,4] cpu
  %3 = EWiseMul(%2, %1) : f32[4,4] cpu
  %4 = Negate(%2) : f32[4,4] cpu
  %5 = EWiseAdd(%3, %4) : f32[4,4] cpu
  %6 = Summation(%5) {axes=None} : f32[] cpu
  return %6, %3
}
"""


def ir(text):
    return parse_graph(dedent(text))


def run(graph, plan=None):
    """The schedule pass given `plan` as the fusion analysis's result (default: one kernel per node)."""
    ctx = PassContext(verify=True, dump_dir="", analyses={"fusion": plan or singleton_plan(graph)})
    ctx.pass_limit = None
    out = PassManager.from_names(["schedule"]).run(graph, ctx)
    return out, ctx


def group(gid, nodes, kind="elementwise"):
    """A hand-made group; it declares only its last node as an output (the schedule finds
    the other escaping values itself)."""
    return SingletonGroup(gid, tuple(nodes), (), (nodes[-1],), kind, nodes[-1])


def test_registered_in_pipeline_order():
    assert STAGES.index("schedule") > STAGES.index("simplify") and ANALYSES.index("schedule") == 1


def test_singleton_order_and_liveness():
    g = ir(DIAMOND)
    out, ctx = run(g)
    assert print_graph(out) == print_graph(g)            # the graph is unchanged
    s = ctx.analyses["schedule"]
    assert s.order == [2, 3, 4, 5, 6]                    # no kernel for the input and the const
    assert s.end == 5
    # defined at the producer's index, last used at the last reader's; outputs live to the end
    assert s.live == {2: (0, 2), 3: (1, 5), 4: (2, 3), 5: (3, 4), 6: (4, 5)}
    assert 0 not in s.live and 1 not in s.live          # inputs and consts are not planned
    assert s.reads[5] == [3, 4] and s.writes[2] == [2]
    assert ctx.reports["schedule"] == {"kernels": 5, "buffers": 5, "longest_live": 4}


def test_fused_groups_hide_internal_values():
    g = ir(DIAMOND)
    plan = SingletonPlan((group("b", [4, 5]), group("a", [2, 3]), group("c", [6], "reduce")))
    _, ctx = run(g, plan)
    s = ctx.analyses["schedule"]
    assert s.order == ["a", "b", "c"]                    # stable: by each group's first node
    # %2 is read by group b, %3 is returned, %5 is read by c; %4 stays inside group b
    assert s.live == {2: (0, 1), 3: (0, 3), 5: (1, 2), 6: (2, 3)}


def test_topological_beats_first_position():
    # group x's first node (%1) comes first, but it reads %3 from group z: it runs last
    g = ir("""
    graph @g {
      %0 = input() {name="x", role="arg"} : f32[4] cpu
      %1 = Exp(%0) : f32[4] cpu
      %2 = Negate(%0) : f32[4] cpu
      %3 = EWiseAdd(%2, %2) : f32[4] cpu
      %4 = EWiseMul(%1, %3) : f32[4] cpu
      return %4
    }
    """)
    plan = SingletonPlan((group("x", [1, 4]), group("y", [2]), group("z", [3])))
    s = build_schedule(g, plan)
    assert s.order == ["y", "z", "x"]
    assert s.live == {2: (0, 1), 3: (1, 2), 4: (2, 3)}


def test_cycle_is_a_pass_error():
    g = ir("""
    graph @g {
      %0 = input() {name="x", role="arg"} : f32[4] cpu
      %1 = Exp(%0) : f32[4] cpu
      %2 = Negate(%1) : f32[4] cpu
      %3 = EWiseAdd(%2, %1) : f32[4] cpu
      return %3
    }
    """)
    plan = SingletonPlan((group("a", [1, 3]), group("b", [2])))
    with pytest.raises(PassError, match="cycle"):
        run(g, plan)


def test_node_missing_from_the_plan_is_a_pass_error():
    g = ir(DIAMOND)
    plan = SingletonPlan((group("a", [2, 3]), group("c", [6])))
    with pytest.raises(PassError, match="in no group"):
        run(g, plan)


def test_unused_value_lives_one_kernel():
    g = ir("""
    graph @g {
      %0 = input() {name="x", role="arg"} : f32[4] cpu
      %1 = Exp(%0) : f32[4] cpu
      %2 = Negate(%0) : f32[4] cpu
      return %2
    }
    """)
    s = build_schedule(g, singleton_plan(g))
    assert s.live == {1: (0, 0), 2: (1, 2)}
