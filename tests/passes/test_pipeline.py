"""The pipeline is declared once (needle/passes/pipeline.py): `@needle.compile` runs it,
`needle-ir` lists its stages, the verifier checks the invariants its passes ensure, and a pass
added to the declaration shows up in all three. NEEDLE_PASS_LIMIT cuts it on every executor."""
from __future__ import annotations

from textwrap import dedent

import numpy as np
import pytest

import needle as ndl
from needle.cli.needle_ir import pass_names as needle_ir_stages
from needle.ir.parser import parse_graph
from needle.ir.printer import print_graph
from needle.ir.verifier import INVARIANTS
from needle.passes import FunctionPass, PassContext, PassError, PassManager, manager, pipeline
from needle.passes.pipeline import (ANALYSES, EXECUTORS, GRAPH_PASSES, KERNEL_PASSES, STAGES, KernelPlan,
                                    invariants_after, pass_names, plan_kernels)


def step(x, w):
    loss = ndl.relu(x @ w).sum()
    loss.backward()
    return loss, w.grad


def compiled_stages(monkeypatch, executor: str) -> list:
    monkeypatch.setenv("NEEDLE_EXECUTOR", executor)
    monkeypatch.setenv("NEEDLE_CACHE_DIR", "0")
    w = ndl.Tensor(np.random.randn(4, 3).astype("float32"), requires_grad=True)
    f = ndl.compile(lambda x: step(x, w))
    f(ndl.Tensor(np.random.randn(5, 4).astype("float32")))
    (_, stages), = f.entries()
    return [s for s in stages if s != "final"]


def test_declaration():
    assert STAGES == ("input", *GRAPH_PASSES, *KERNEL_PASSES)
    assert set(ANALYSES) <= set(KERNEL_PASSES) and set(EXECUTORS) == {"native", "kernels", "interp", "cuda"}
    assert pass_names("interp") == GRAPH_PASSES and pass_names("cuda") == GRAPH_PASSES + KERNEL_PASSES
    assert invariants_after("input") == set() and invariants_after("decompose") == {"decomposed"}
    assert invariants_after("autodiff") == {"no_grad"}  # its VJPs may emit composites: it breaks "decomposed"
    assert invariants_after("decompose_rest") == set(INVARIANTS)
    assert invariants_after("memory_plan") == set(INVARIANTS)
    with pytest.raises(ValueError, match="fusion: not in the interp pipeline"):
        pipeline.pipeline("interp", ["fusion"])
    with pytest.raises(ValueError, match="unknown executor"):
        pass_names("gpu")


@pytest.mark.parametrize("executor", ["native", "kernels", "interp"])
def test_compile_needle_ir_and_verifier_read_the_declaration(monkeypatch, executor):
    assert needle_ir_stages() == list(STAGES)
    assert compiled_stages(monkeypatch, executor) == ["input", *pass_names(executor)]


def test_a_pass_added_to_the_declaration_reaches_compile_needle_ir_and_the_verifier(monkeypatch):
    tidy = FunctionPass("tidy", lambda g, ctx: g, ensures=("no_grad",))
    monkeypatch.setitem(manager.PASSES, "tidy", tidy)
    graph_passes = GRAPH_PASSES[:1] + ("tidy",) + GRAPH_PASSES[1:]
    monkeypatch.setattr(pipeline, "GRAPH_PASSES", graph_passes)
    monkeypatch.setattr(pipeline, "STAGES", ("input", *graph_passes, *KERNEL_PASSES))
    assert needle_ir_stages()[1:3] == ["decompose", "tidy"]
    assert invariants_after("tidy") == {"decomposed", "no_grad"}
    # tidy promises no grad node, but runs before autodiff: the verifier names it
    monkeypatch.setenv("NEEDLE_VERIFY", "1")
    with pytest.raises(PassError, match="pass 'tidy' failed.*grad node remains"):
        compiled_stages(monkeypatch, "native")
    monkeypatch.setattr(tidy, "ensures", ())
    assert compiled_stages(monkeypatch, "native")[1:3] == ["decompose", "tidy"]


@pytest.mark.parametrize("executor", ["native", "kernels", "interp"])
def test_pass_limit_on_every_executor(monkeypatch, executor):
    """Each cut of the pipeline runs (the skipped passes up to autodiff expand the grad
    request; without every analysis, the interpreter runs the graph) and equals eager."""
    x = ndl.Tensor(np.random.randn(5, 4).astype("float32"))
    w = ndl.Tensor(np.random.randn(4, 3).astype("float32"), requires_grad=True)
    expected = [t.numpy() for t in step(x, w)]
    monkeypatch.setenv("NEEDLE_EXECUTOR", executor)
    monkeypatch.setenv("NEEDLE_CACHE_DIR", "0")
    for limit in range(len(pass_names(executor)) + 1):
        monkeypatch.setenv("NEEDLE_PASS_LIMIT", str(limit))
        f = ndl.compile(lambda x: step(x, w))
        for got, want in zip(f(x), expected):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
        ran_analyses = limit == len(pass_names(executor)) and executor != "interp"
        assert (f.stats["executor"] != "interp") == ran_analyses, limit


def test_plan_kernels_is_the_targets_analyses():
    w = ndl.Tensor(np.random.randn(4, 3).astype("float32"), requires_grad=True)
    f = ndl.compile(lambda x: step(x, w))
    f(ndl.Tensor(np.random.randn(5, 4).astype("float32")))
    graph = f.graphs[-1][1]
    cpu, cuda = plan_kernels(graph), plan_kernels(graph, "cuda")
    assert isinstance(cpu, KernelPlan) and cpu.fusion.groups == cuda.fusion.groups
    assert (cpu.memory.alignment, cuda.memory.alignment) == (64, 256)


BIAS = """
    graph @f {
      %0 = input() {name="x", role="arg"} : f32[16,8] cpu
      %1 = input() {name="b", role="arg"} : f32[1,8] cpu
      %2 = BroadcastTo(%1) {shape=(16, 8)} : f32[16,8] cpu
      %3 = EWiseMul(%0, %2) : f32[16,8] cpu
      %4 = Summation(%3) {axes=(1,)} : f32[16] cpu
      %5 = EWiseAdd(%0, %2) : f32[16,8] cpu
      return %4, %5
    }"""


def test_kernel_passes_text_ir():
    """Input IR -> recompute, fusion, schedule, memory_plan -> expected IR and KernelPlan:
    recompute copies the cheap broadcast into its second reader; the analyses leave that
    graph as it is and hand their results on (the schedule orders the fusion plan's groups,
    the memory plan places the schedule's buffers)."""
    out, plan = pipeline.run(parse_graph(dedent(BIAS)), "native", names=KERNEL_PASSES)
    assert print_graph(out) == print_graph(parse_graph(dedent("""
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[16,8] cpu
          %1 = input() {name="b", role="arg"} : f32[1,8] cpu
          %2 = BroadcastTo(%1) {shape=(16, 8)} : f32[16,8] cpu
          %3 = EWiseMul(%0, %2) : f32[16,8] cpu
          %4 = Summation(%3) {axes=(1,)} : f32[16] cpu
          %6 = BroadcastTo(%1) {shape=(16, 8)} : f32[16,8] cpu
          %5 = EWiseAdd(%0, %6) : f32[16,8] cpu
          return %4, %5
        }""")))
    assert [(g.kind, g.node_ids) for g in plan.fusion.groups] == [("reduce", (2, 3, 4)), ("elementwise", (6, 5))]
    assert plan.schedule.order == [0, 1] and plan.schedule.live == {4: (0, 2), 5: (1, 2)}
    assert plan.memory.outputs == {4: 64, 5: 512} and plan.memory.arena_bytes == 0


@pytest.mark.parametrize("names,missing", [(["schedule"], "fusion"), (["memory_plan"], "fusion"),
                                           (["fusion", "memory_plan"], "schedule")])
def test_an_analysis_never_runs_another(names, missing):
    with pytest.raises(PassError, match=f"pass '{names[-1]}' failed: needs the result of the '{missing}' analysis"):
        PassManager.from_names(names).run(parse_graph(dedent(BIAS)), PassContext(dump_dir="", pass_limit=9))
