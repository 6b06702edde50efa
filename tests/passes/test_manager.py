"""The pass manager: timings, reports, snapshots, verification (and the invariants passes
ensure), IR dumps (also on failure), NEEDLE_PASS_LIMIT bisection, errors naming the pass, node
and user line, analyses handing typed results to the analyses that require them, and the
registry."""
from __future__ import annotations

import dataclasses
import os
from textwrap import dedent

import pytest

from needle.ir.graph import Graph, TensorType
from needle.ir.parser import parse_graph
from needle.ir.printer import print_graph
from needle.passes import manager
from needle.passes import (
    Analysis, FunctionPass, Pass, PassContext, PassError, PassManager, PassResult, get_pass, register_pass,
)

TEXT = """
    graph @f {
      %0 = input() {name="x", role="arg"} : f32[2,3] cpu
      %1 = Exp(%0) : f32[2,3] cpu  # model.py:10
      %2 = Exp(%0) : f32[2,3] cpu  # model.py:11
      %3 = EWiseAdd(%1, %2) : f32[2,3] cpu  # model.py:12
      %4 = Negate(%3) : f32[2,3] cpu  # model.py:13
      %5 = Log(%3) : f32[2,3] cpu  # model.py:14
      return %4
    }"""


@pytest.fixture
def graph() -> Graph:
    return parse_graph(dedent(TEXT))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("NEEDLE_VERIFY", "NEEDLE_DUMP_IR", "NEEDLE_PASS_LIMIT"):
        monkeypatch.delenv(name, raising=False)


class Boom(Pass):
    """Fails on the first Negate node, pointing at it."""

    name = "boom"

    def run(self, graph, ctx):
        node = next(n for n in graph.nodes if n.op == "Negate")
        raise self.error("cannot handle this negation", node)


class Crash(Pass):
    name = "crash"

    def run(self, graph, ctx):
        raise KeyError("missing")


class BreakTypes(Pass):
    """Produces an ill-typed graph (the verifier must catch it)."""

    name = "break_types"

    def run(self, graph, ctx):
        nodes = [dataclasses.replace(n, type=TensorType((7,))) if n.op == "Negate" else n
                 for n in graph.nodes]
        return PassResult(graph.replace(nodes=nodes), True, {})


def test_timings_reports_snapshots(graph):
    ctx = PassContext(verify=True)
    out = PassManager.from_names(["cse", "dce"]).run(graph, ctx)
    assert set(ctx.timings) == {"cse", "dce"} and all(t >= 0 for t in ctx.timings.values())
    assert ctx.reports == {"cse": {"merged": 1}, "dce": {"removed": 1}}
    assert ctx.snapshots["input"] is graph and ctx.snapshots["dce"] is out
    assert [n.op for n in ctx.snapshots["cse"]] == ["input", "Exp", "EWiseAdd", "Negate", "Log"]
    assert [n.op for n in out] == ["input", "Exp", "EWiseAdd", "Negate"]


def test_context_reads_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NEEDLE_VERIFY", "1")
    monkeypatch.setenv("NEEDLE_DUMP_IR", str(tmp_path))
    monkeypatch.setenv("NEEDLE_PASS_LIMIT", "3")
    ctx = PassContext()
    assert ctx.verify and ctx.dump_dir == str(tmp_path) and ctx.pass_limit == 3
    monkeypatch.setenv("NEEDLE_PASS_LIMIT", "x")
    with pytest.raises(ValueError, match="NEEDLE_PASS_LIMIT"):
        PassContext()
    monkeypatch.delenv("NEEDLE_PASS_LIMIT")
    monkeypatch.delenv("NEEDLE_VERIFY")
    ctx = PassContext(verify=False, dump_dir="")
    assert not ctx.verify and not ctx.dump_dir and ctx.pass_limit is None


def test_dump_numbered_files(monkeypatch, tmp_path, graph):
    monkeypatch.setenv("NEEDLE_DUMP_IR", str(tmp_path / "dumps"))
    out = PassManager.from_names(["cse", "dce"]).run(graph, PassContext(verify=True))
    files = sorted(os.listdir(tmp_path / "dumps"))
    assert files == ["00-input.ir", "01-cse.ir", "02-dce.ir"]
    assert (tmp_path / "dumps" / "00-input.ir").read_text() == print_graph(graph)
    assert (tmp_path / "dumps" / "02-dce.ir").read_text() == print_graph(out)
    assert parse_graph((tmp_path / "dumps" / "01-cse.ir").read_text()) is not None


def test_dumps_written_when_a_pass_fails(monkeypatch, tmp_path, graph):
    monkeypatch.setenv("NEEDLE_DUMP_IR", str(tmp_path))
    passes = [get_pass("cse"), Boom(), get_pass("dce")]
    with pytest.raises(PassError) as info:
        PassManager(passes).run(graph, PassContext(verify=True))
    assert sorted(os.listdir(tmp_path)) == ["00-input.ir", "01-cse.ir", "02-boom.FAILED.ir"]
    failed = (tmp_path / "02-boom.FAILED.ir").read_text()
    assert failed.startswith("# FAILED: pass 'boom' failed")
    assert "cannot handle this negation" in failed.splitlines()[0]
    # the failing pass's input follows the comment header, and parses back
    assert print_graph(parse_graph(failed)) == (tmp_path / "01-cse.ir").read_text()
    assert info.value.pass_name == "boom"


def test_pass_error_names_pass_node_and_location(graph):
    with pytest.raises(PassError) as info:
        PassManager([Boom()]).run(graph, PassContext())
    e = info.value
    assert str(e) == "pass 'boom' failed at %4 = Negate (model.py:13): cannot handle this negation"
    assert e.node.id == 4 and str(e.loc) == "model.py:13"


def test_other_errors_are_wrapped(tmp_path, graph):
    ctx = PassContext(dump_dir=str(tmp_path))
    with pytest.raises(PassError, match=r"pass 'crash' failed: KeyError: 'missing'") as info:
        PassManager([get_pass("dce"), Crash()]).run(graph, ctx)
    assert isinstance(info.value.__cause__, KeyError) and isinstance(info.value, RuntimeError)
    assert "02-crash.FAILED.ir" in os.listdir(tmp_path)


def test_verifier_runs_after_each_pass(tmp_path, graph):
    ctx = PassContext(verify=True, dump_dir=str(tmp_path))
    with pytest.raises(PassError, match=r"pass 'break_types' failed at %4 = Negate \(model.py:13\): "
                                        r"the IR after the pass fails verification"):
        PassManager([BreakTypes(), get_pass("dce")]).run(graph, ctx)
    failed = (tmp_path / "01-break_types.FAILED.ir").read_text()
    assert "f32[7] cpu" in failed  # the rejected output is what gets dumped
    # without verification the broken graph goes through
    PassManager([BreakTypes()]).run(graph, PassContext(verify=False))


def test_pass_limit_stops_early(monkeypatch, tmp_path, graph):
    monkeypatch.setenv("NEEDLE_PASS_LIMIT", "1")
    monkeypatch.setenv("NEEDLE_DUMP_IR", str(tmp_path))
    ctx = PassContext(verify=True)
    out = PassManager.from_names(["cse", "dce", "algebraic"]).run(graph, ctx)
    assert list(ctx.timings) == ["cse"] and ctx.skipped == ["dce", "algebraic"]
    assert out is ctx.snapshots["cse"] and "dce" not in ctx.snapshots
    assert sorted(os.listdir(tmp_path)) == ["00-input.ir", "01-cse.ir"]
    ctx = PassContext(pass_limit=0)
    assert PassManager.from_names(["cse"]).run(graph, ctx) is graph and ctx.skipped == ["cse"]


def test_function_pass(graph):
    calls = []

    def strip_logs(g, ctx):
        calls.append(ctx.verify)
        return g.replace(nodes=[n for n in g.nodes if n.op != "Log"])

    ctx = PassContext(verify=True)
    out = PassManager([FunctionPass("strip_logs", strip_logs)]).run(graph, ctx)
    assert calls == [True] and "Log" not in [n.op for n in out]


class CountOps(Analysis):
    """A typed result: the number of non-input nodes."""

    name = "count"

    def analyze(self, graph):
        return len([n for n in graph.nodes if n.op != "input"])

    def summary(self, count):
        return {"count": count}


class Double(Analysis):
    name = "double"
    requires = ("count",)

    def analyze(self, graph, count):
        return 2 * count


def test_analyses_hand_typed_results_to_the_analyses_that_require_them(graph):
    ctx = PassContext(verify=True)
    out = PassManager([CountOps(), Double()]).run(graph, ctx)
    assert out is graph and ctx.analyses == {"count": 5, "double": 10}
    assert ctx.reports == {"count": {"count": 5}, "double": {}}
    ctx = PassContext(analyses={"count": 7})  # a result given up front, e.g. a hand-made plan
    PassManager([Double()]).run(graph, ctx)
    assert ctx.analyses["double"] == 14


def test_a_missing_analysis_is_an_error_not_computed(graph):
    with pytest.raises(PassError, match="pass 'double' failed: needs the result of the 'count' analysis.*"
                                        "run 'count' before 'double'"):
        PassManager([Double()]).run(graph, PassContext())
    # a pass that changes the graph drops the analyses of the old one
    with pytest.raises(PassError, match="needs the result of the 'count' analysis"):
        PassManager([CountOps(), get_pass("cse"), Double()]).run(graph, PassContext())
    ctx = PassContext()
    PassManager([CountOps(), get_pass("dce"), Double()]).run(parse_graph("graph @g {\n  %0 = input() "
                                                                         '{name="x", role="arg"} : f32[2] cpu\n'
                                                                         "  return %0\n}\n"), ctx)
    assert ctx.analyses == {"count": 0, "double": 0}  # dce changed nothing: the count still holds


def test_invariants_ensured_by_earlier_passes_are_verified_after_later_ones(graph):
    grad = parse_graph(dedent("""
        graph @g {
          %0 = input() {name="x", role="arg"} : f32[3] cpu
          %1 = Summation(%0) {axes=None} : f32[] cpu
          %2 = grad(%1, %0) : (f32[3] cpu)
          return %1, %2
        }"""))
    promise = FunctionPass("promise", lambda g, ctx: g, ensures=("no_grad",))
    PassManager([get_pass("dce")]).run(grad, PassContext(verify=True))  # no invariant: fine
    with pytest.raises(PassError, match="pass 'promise' failed.*grad node remains"):
        PassManager([promise]).run(grad, PassContext(verify=True))
    # a later pass breaking an earlier pass's promise is caught after it
    add_grad = FunctionPass("add_grad", lambda g, ctx: grad)
    PassManager([add_grad]).run(graph, PassContext(verify=True))
    with pytest.raises(PassError, match="pass 'add_grad' failed.*grad node remains"):
        PassManager([FunctionPass("promise", lambda g, ctx: g, ensures=("no_grad",)), add_grad]).run(
            graph, PassContext(verify=True))


def test_registry(monkeypatch):
    monkeypatch.setattr(manager, "PASSES", dict(manager.PASSES))
    assert {"decompose", "autodiff", "simplify", "dce", "fusion"} <= set(manager.PASSES)
    extra = register_pass(FunctionPass("extra", lambda g, ctx: g))
    assert get_pass("extra") is extra and PassManager.from_names(["extra", "dce"]).names == ["extra", "dce"]
    with pytest.raises(KeyError, match="unknown pass 'nope'"):
        get_pass("nope")
    with pytest.raises(ValueError):
        register_pass(FunctionPass("", lambda g, ctx: g))
