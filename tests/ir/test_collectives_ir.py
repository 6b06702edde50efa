"""The collectives in the IR: text form round trip, the verifier's rules (their `infer`), the
autodiff pass's adjoint collectives (text IR in, pass, text IR out), and that no pass folds,
merges or drops them."""
from __future__ import annotations

import re
from textwrap import dedent

import pytest

import needle.distributed  # noqa: F401  (registers the collective ops)
from needle.ir.parser import parse_graph
from needle.ir.printer import print_graph
from needle.ir.verifier import IRVerifyError, verify
from needle.passes import PassContext, PassManager


def ir(text: str):
    return parse_graph(dedent(text))


def run(names, graph):
    ctx = PassContext(verify=True, dump_dir="")
    ctx.pass_limit = None
    return PassManager.from_names(list(names)).run(graph, ctx)


COLLECTIVES = """
    graph @f {
      %0 = input() {name="x", role="arg"} : f32[4,3] cpu
      %1 = AllReduce(%0) {op="mean", root=-1} : f32[4,3] cpu  # m.py:1
      %2 = Broadcast(%1) {src=1} : f32[4,3] cpu  # m.py:2
      %3 = AllGather(%2) {world_size=2} : f32[8,3] cpu  # m.py:3
      %4 = ReduceScatter(%3) {world_size=2} : f32[4,3] cpu  # m.py:4
      return %4
    }"""


def test_text_form_round_trips_and_verifies():
    graph = ir(COLLECTIVES)
    verify(graph)
    assert print_graph(parse_graph(print_graph(graph))) == print_graph(graph)


@pytest.mark.parametrize("line,problem", [
    ('%1 = AllGather(%0) {world_size=2} : f32[4,3] cpu', "gives shape (8, 3)"),
    ('%1 = ReduceScatter(%0) {world_size=3} : f32[1,3] cpu', "divisible by the world size 3"),
    ('%1 = AllReduce(%0) {op="prod", root=-1} : f32[4,3] cpu', "op must be one of"),
])
def test_verifier_rejects_wrong_collectives(line, problem):
    graph = ir(f"""
        graph @f {{
          %0 = input() {{name="x", role="arg"}} : f32[4,3] cpu
          {line}
          return %1
        }}""")
    with pytest.raises(IRVerifyError, match=re.escape(problem)):
        verify(graph)


def test_autodiff_emits_the_adjoint_collectives():
    """d/dx sum(all_gather(all_reduce_mean(x))): the cotangent goes back through
    reduce_scatter (all_gather's adjoint), then all_reduce mean (its own adjoint)."""
    before = ir("""
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[2,3] cpu
          %1 = AllReduce(%0) {op="mean", root=-1} : f32[2,3] cpu  # m.py:1
          %2 = AllGather(%1) {world_size=2} : f32[4,3] cpu  # m.py:2
          %3 = Summation(%2) {axes=None} : f32[] cpu  # m.py:3
          %4 = grad(%3, %0) {seeded=False} : (f32[2,3] cpu)  # m.py:4
          %5 = TupleGetItem(%4) {index=0} : f32[2,3] cpu  # m.py:4
          return %5
        }""")
    after = print_graph(run(["decompose", "autodiff", "decompose_rest", "simplify"], before))
    body = [line.split(" = ", 1)[1].split(" #")[0] for line in after.splitlines() if " = " in line]
    ops = [b.split("(")[0] for b in body]
    assert ops.count("ReduceScatter") == 1 and ops.count("AllReduce") == 1, after
    assert ops.index("ReduceScatter") < ops.index("AllReduce"), after
    assert 'AllReduce(%' in after and '{op="mean", root=-1}' in after
    assert "AllGather" not in ops, "the forward all_gather is dead once only the gradient is returned"


def test_no_pass_merges_or_folds_collectives():
    """Two all_reduces of one value stay two (each is a collective every rank must run), and
    an all_reduce of a constant is not evaluated at compile time."""
    graph = ir("""
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[3] cpu
          %1 = AllReduce(%0) {op="sum", root=-1} : f32[3] cpu  # m.py:1
          %2 = AllReduce(%0) {op="sum", root=-1} : f32[3] cpu  # m.py:2
          %3 = const() {value=2.0} : f32[3] cpu  # m.py:3
          %4 = AllReduce(%3) {op="sum", root=-1} : f32[3] cpu  # m.py:3
          %5 = EWiseAdd(%1, %2) : f32[3] cpu  # m.py:4
          %6 = EWiseAdd(%5, %4) : f32[3] cpu  # m.py:4
          return %6
        }""")
    out = print_graph(run(["simplify"], graph))
    assert out.count("AllReduce(") == 3, out
