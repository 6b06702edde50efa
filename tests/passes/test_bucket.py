"""Gradient buckets: the bucket pass (text IR in, pass, text IR out, under the verifier), the
schedule's order for overlap, the memory plan's contiguous in-place blocks, and the native
program's one start and one wait per bucket, run in a world of one against the interpreter
(the multi-rank runs are in tests/distributed)."""
from __future__ import annotations

from textwrap import dedent

import numpy as np
import pytest

import needle.distributed  # noqa: F401  (registers the collective ops)
from needle.backend_selection import BACKEND
from needle.ir.parser import parse_graph
from needle.ir.printer import print_graph
from needle.passes import PassContext, PassManager, get_pass, pipeline
from needle.passes.bucket import DEFAULT_CAP_BYTES, BucketPass, cap_bytes_from_env
from needle.passes.memory_plan import check_plan
from tests import numerics

# three gradients (16 KB, 16 KB, 256 B) and their all-reduces in parameter order (as
# DistributedOptimizer traces them: the first layer's first), then the optimizer's reads
STEP = """
graph @step {
  %0 = input() {name="w1", role="arg"} : f32[64,64] cpu
  %1 = input() {name="w2", role="arg"} : f32[64,64] cpu
  %2 = input() {name="b2", role="arg"} : f32[64] cpu
  %3 = Exp(%2) : f32[64] cpu  # m.py:1
  %4 = MulScalar(%1) {scalar=3.0} : f32[64,64] cpu  # m.py:2
  %5 = MulScalar(%0) {scalar=2.0} : f32[64,64] cpu  # m.py:3
  %6 = AllReduce(%5) {op="sum", root=-1} : f32[64,64] cpu  # opt.py:1
  %7 = AllReduce(%4) {op="sum", root=-1} : f32[64,64] cpu  # opt.py:1
  %8 = AllReduce(%3) {op="sum", root=-1} : f32[64] cpu  # opt.py:1
  %9 = EWiseAdd(%0, %6) : f32[64,64] cpu  # opt.py:2
  %10 = EWiseAdd(%1, %7) : f32[64,64] cpu  # opt.py:2
  %11 = EWiseAdd(%2, %8) : f32[64] cpu  # opt.py:2
  return %9, %10, %11
}
"""

#: 20,000 bytes a bucket: w1's all-reduce alone, then w2's and b2's together; numbered in the
#: order their gradients are computed (b2's and w2's first)
STEP_BUCKETED = STEP.replace('%6 = AllReduce(%5) {op="sum", root=-1}', '%6 = AllReduce(%5) {bucket=1, op="sum", root=-1}') \
    .replace('%7 = AllReduce(%4) {op="sum", root=-1}', '%7 = AllReduce(%4) {bucket=0, op="sum", root=-1}') \
    .replace('%8 = AllReduce(%3) {op="sum", root=-1}', '%8 = AllReduce(%3) {bucket=0, op="sum", root=-1}')


def ir(text: str):
    return parse_graph(dedent(text))


def bucketed(text: str, cap: int = 20_000):
    ctx = PassContext(verify=True, dump_dir="")
    ctx.pass_limit = None
    return PassManager([BucketPass(cap)]).run(ir(text), ctx), ctx


def test_buckets_fill_in_trace_order_up_to_the_cap():
    out, ctx = bucketed(STEP)
    assert print_graph(out) == print_graph(ir(STEP_BUCKETED)), print_graph(out)
    assert ctx.reports["bucket"]["buckets"] == 2


def test_one_bucket_under_the_default_cap():
    out, _ = bucketed(STEP, DEFAULT_CAP_BYTES)
    assert {n.attr("bucket") for n in out.nodes if n.op == "AllReduce"} == {0}


def test_only_sums_over_all_ranks_are_bucketed():
    text = """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[4] cpu
          %1 = AllReduce(%0) {op="max", root=-1} : f32[4] cpu  # m.py:1
          %2 = AllReduce(%1) {op="mean", root=-1} : f32[4] cpu  # m.py:2
          %3 = AllReduce(%2) {op="sum", root=1} : f32[4] cpu  # m.py:3
          %4 = Broadcast(%3) {src=0} : f32[4] cpu  # m.py:4
          return %4
        }"""
    out, ctx = bucketed(text)
    assert print_graph(out) == print_graph(ir(text))
    assert ctx.reports["bucket"]["buckets"] == 0


def test_a_sum_that_reads_its_bucket_opens_a_new_one():
    """%3 reads %2's result: in one bucket it could never start (its bucket's all-reduce waits
    for it, and it waits for the all-reduce)."""
    text = """
        graph @f {
          %0 = input() {name="x", role="arg"} : f32[4] cpu
          %1 = Exp(%0) : f32[4] cpu  # m.py:1
          %2 = AllReduce(%1) {op="sum", root=-1} : f32[4] cpu  # m.py:2
          %3 = Log(%2) : f32[4] cpu  # m.py:3
          %4 = AllReduce(%3) {op="sum", root=-1} : f32[4] cpu  # m.py:4
          %5 = AllReduce(%0) {op="sum", root=-1} : f32[4] cpu  # m.py:5
          return %4, %5
        }"""
    out, _ = bucketed(text)
    buckets = {n.id: n.attr("bucket") for n in out.nodes if n.op == "AllReduce"}
    assert buckets[2] != buckets[4] and buckets[2] == buckets[5], buckets


def test_a_long_stretch_of_work_between_two_gradients_closes_the_bucket():
    """w2's gradient comes a 512x512x512 product (~5 ms of estimated work) after w1's: w1's
    all-reduce starts at once instead of waiting for w2's, however far below the cap."""
    text = """
        graph @f {
          %0 = input() {name="w1", role="arg"} : f32[8] cpu
          %1 = input() {name="w2", role="arg"} : f32[8] cpu
          %2 = input() {name="x", role="arg"} : f32[512,512] cpu
          %3 = MulScalar(%0) {scalar=2.0} : f32[8] cpu  # m.py:1
          %4 = MatMul(%2, %2) : f32[512,512] cpu  # m.py:2
          %5 = Summation(%4) {axes=(0,)} : f32[512] cpu  # m.py:3
          %6 = MulScalar(%1) {scalar=2.0} : f32[8] cpu  # m.py:4
          %7 = AllReduce(%3) {op="sum", root=-1} : f32[8] cpu  # opt.py:1
          %8 = AllReduce(%6) {op="sum", root=-1} : f32[8] cpu  # opt.py:1
          return %7, %8, %5
        }"""
    out, _ = bucketed(text, DEFAULT_CAP_BYTES)
    assert [n.attr("bucket") for n in out.nodes if n.op == "AllReduce"] == [0, 1]
    # without the product in between: one bucket
    near = text.replace("%4 = MatMul(%2, %2)", "%4 = Exp(%2)")
    out, _ = bucketed(near, DEFAULT_CAP_BYTES)
    assert [n.attr("bucket") for n in out.nodes if n.op == "AllReduce"] == [0, 0]


def test_cap_from_the_environment(monkeypatch):
    monkeypatch.setenv("NEEDLE_BUCKET_CAP_MB", "0.5")
    assert cap_bytes_from_env() == 1 << 19
    monkeypatch.setenv("NEEDLE_BUCKET_CAP_MB", "zero")
    with pytest.raises(ValueError, match="NEEDLE_BUCKET_CAP_MB must be a positive number"):
        cap_bytes_from_env()


def kernel_plan(graph):
    """fusion, schedule and memory_plan of `graph` (returned values outside the arena)."""
    ctx = PassContext(verify=True, dump_dir="")
    ctx.pass_limit = None
    PassManager([get_pass(n) for n in ("fusion", "schedule", "memory_plan")]).run(graph, ctx)
    return ctx.analyses["fusion"], ctx.analyses["schedule"], ctx.analyses["memory_plan"]


def test_schedule_starts_members_early_and_reads_results_after_their_bucket():
    graph = ir(STEP_BUCKETED)
    fusion, schedule, _ = kernel_plan(graph)
    group_of = {v: g.id for g in fusion.groups for v in g.node_ids}
    at = {v: schedule.order.index(group_of[v]) for v in group_of}
    assert at[8] == at[3] + 1 and at[7] == at[4] + 1 and at[6] == at[5] + 1, at   # each right after its gradient
    for reader in (10, 11):   # bucket 0's readers: after both of its members
        assert at[reader] > max(at[7], at[8]), at
    # readers last, the earlier bucket's first: %9 (bucket 1's reader) is graph-first among
    # them, yet it runs after the others, while bucket 1's all-reduce is in flight
    assert at[9] > max(at[10], at[11]) > at[6], at


def test_memory_plan_lays_each_bucket_out_in_place_and_back_to_back():
    graph = ir(STEP_BUCKETED)
    _, schedule, plan = kernel_plan(graph)
    check_plan(schedule, plan, graph)
    assert plan.inplace[6] == 5 and plan.inplace[7] == 4 and plan.inplace[8] == 3, plan.inplace
    for v in (3, 4, 5):
        assert plan.offsets[v] == plan.offsets[{3: 8, 4: 7, 5: 6}[v]]
    # bucket 0 in schedule order: b2's 256 bytes, then w2's 16 KB right after them
    off0, size0 = plan.buckets[0]
    assert (plan.offsets[8], plan.offsets[7], size0) == (off0, off0 + 256, 256 + 16384), plan.buckets
    assert plan.buckets[1] == (plan.offsets[6], 16384)


needs_native = pytest.mark.skipif(BACKEND != "nd", reason="the native executor runs on the nd backend")


@needs_native
def test_a_gradient_read_elsewhere_is_copied_into_its_bucket():
    """w1's gradient %5 is also returned: its all-reduce cannot overwrite it, so the program
    copies it into the bucket's block, and both values come out right."""
    from needle.codegen.cpu.steps import CopyStep

    pytest.importorskip("llvmlite")
    text = STEP.replace("return %9, %10, %11", "return %9, %10, %11, %5")
    ex, graph = native(text)
    assert sum(isinstance(s, CopyStep) for s in ex.steps) == 1
    check_against_interpreter(ex, graph, ir(text))


def native(text: str):
    from needle.runtime.native import NativeExecutor

    graph, plan = pipeline.run(ir(text), "native", names=pipeline.KERNEL_PASSES)
    return NativeExecutor(graph, plan.fusion, plan.schedule, plan.memory), graph


def check_against_interpreter(ex, graph, reference_graph) -> None:
    """Two calls on fresh random inputs: a world of one, where each all-reduce is the identity."""
    from needle.backend_ndarray import array_api, cpu

    rng = np.random.default_rng()
    for _ in range(2):
        arrays = [rng.standard_normal(n.type.shape).astype(np.float32) for n in graph.inputs]
        got = ex([array_api.array(a, device=cpu()) for a in arrays])
        for a, e in zip(got, numerics.reference(reference_graph, arrays)):
            numerics.assert_close(a.numpy(), e, 1e-6)


@needs_native
def test_native_program_starts_each_bucket_once_and_waits_before_its_readers():
    pytest.importorskip("llvmlite")
    from needle.codegen.cpu.steps import CollectiveStartStep, CollectiveWaitStep, CopyStep

    ex, graph = native(STEP)
    memory = pipeline.plan_kernels(graph).memory
    names = [getattr(s, "name", type(s).__name__) for s in ex.steps]
    assert names.count("bucket0.start") == 1 and names.count("bucket0.wait") == 1, names
    assert names.index("bucket0.start") < names.index("bucket0.wait")
    assert not any(isinstance(s, CopyStep) for s in ex.steps), names
    start = next(s for s in ex.steps if isinstance(s, CollectiveStartStep))
    assert start.sizes == (memory.buckets[0][1] // 4,)   # one span over the block
    assert sum(isinstance(s, CollectiveWaitStep) for s in ex.steps) == 1
    check_against_interpreter(ex, graph, ir(STEP))
