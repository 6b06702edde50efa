"""The memory_plan pass: hand-built graphs with the offsets worked out by hand, in-place reuse
along elementwise chains, views, tuples, alignment, an independent checker that must catch
broken plans, and real training steps (arena <= 60% of the unplanned total)."""
from __future__ import annotations

import dataclasses
from textwrap import dedent

import numpy as np
import pytest

from needle.ir.parser import parse_graph
from needle.passes import PassContext, PassManager, get_pass
from needle.passes.memory_plan import MemoryPlanPass, PlanError, _fit, check_plan, plan_memory
from needle.passes.pipeline import KERNEL_PASSES
from needle.passes.schedule import SingletonGroup, SingletonPlan, build_schedule, singleton_plan


def ir(text):
    return parse_graph(dedent(text))


def run(graph, fusion_plan=None, verify=True, fuse=False, outputs_in_arena=True):
    """Schedule and plan the memory of `graph` (one kernel per node, unless a fusion plan is
    given or `fuse`; returned values in the arena, unless said otherwise); check the plan."""
    analyses = {} if fuse else {"fusion": fusion_plan or singleton_plan(graph)}
    ctx = PassContext(verify=verify, dump_dir="", analyses=analyses)
    ctx.pass_limit = None
    passes = [get_pass("fusion")] * fuse + [get_pass("schedule"), MemoryPlanPass(outputs_in_arena=outputs_in_arena)]
    PassManager(passes).run(graph, ctx)
    schedule, plan = ctx.analyses["schedule"], ctx.analyses["memory_plan"]
    check_plan(schedule, plan, graph)
    return schedule, plan, ctx


# %1 256 B live (0,2); %2 32 B (1,4); %3 256 B (2,3); %4 32 B (3,4); %5 32 B (4,5)
MIXED = """
graph @mixed {
  %0 = input() {name="x", role="arg"} : f32[8,8] cpu
  %1 = MatMul(%0, %0) : f32[8,8] cpu
  %2 = Summation(%1) {axes=(1,)} : f32[8] cpu
  %3 = MatMul(%1, %0) : f32[8,8] cpu
  %4 = Summation(%3) {axes=(1,)} : f32[8] cpu
  %5 = EWiseAdd(%2, %4) : f32[8] cpu
  return %5
}
"""


def test_hand_built_offsets():
    schedule, plan, ctx = run(ir(MIXED))
    assert schedule.live == {1: (0, 2), 2: (1, 4), 3: (2, 3), 4: (3, 4), 5: (4, 5)}
    # %5 = %2 + %4 is elementwise and %2 dies there: %5 takes %2's slot (live (1, 5) together)
    assert plan.inplace == {5: 2}
    # largest first: %1 at 0; %3 (overlaps %1 at kernel 2) above it at 256; the %2/%5 slot
    # overlaps both: 512; %4 (3,4) overlaps %3 and the %2 slot, not %1: the gap at 0
    assert plan.offsets == {1: 0, 3: 256, 2: 512, 5: 512, 4: 0}
    assert plan.sizes == {1: 256, 2: 32, 3: 256, 4: 32, 5: 32}
    assert plan.arena_bytes == 576
    assert plan.unplanned_bytes == 608
    report = ctx.reports["memory_plan"]
    assert report["arena_bytes"] == 576 and report["unplanned_bytes"] == 608
    assert report["ratio"] == round(576 / 608, 4)


def test_returned_values_live_outside_the_arena_by_default():
    schedule, plan, ctx = run(ir(MIXED), outputs_in_arena=False)
    assert plan.outputs == {5: 32} and 5 not in plan.sizes and 5 not in plan.offsets
    assert plan.inplace == {}                             # %5 has no arena slot to take
    assert plan.offsets == {1: 0, 3: 256, 2: 512, 4: 0}
    assert plan.arena_bytes == 576 and plan.unplanned_bytes == 576
    assert ctx.reports["memory_plan"]["output_bytes"] == 32
    with pytest.raises(PlanError, match="not a returned value"):
        check_plan(schedule, broken(plan, outputs={**plan.outputs, 4: 32},
                                    sizes={k: v for k, v in plan.sizes.items() if k != 4}))


def test_best_fit_takes_the_smallest_gap():
    busy = [(128, 192), (256, 320)]                 # gaps [0,128) and [192,256)
    assert _fit(busy, 64, "best_fit") == 192
    assert _fit(busy, 64, "first_fit") == 0
    assert _fit(busy, 128, "best_fit") == 0
    assert _fit(busy, 192, "best_fit") == 320       # no gap fits: on top
    assert _fit([], 64, "best_fit") == 0


def test_alignment_rounds_small_buffers():
    g = ir("""
    graph @small {
      %0 = input() {name="x", role="arg"} : f32[3] cpu
      %1 = Exp(%0) : f32[3] cpu
      %2 = Negate(%0) : f32[3] cpu
      %3 = EWiseAdd(%1, %0) : f32[3] cpu
      %4 = EWiseAdd(%2, %0) : f32[3] cpu
      return %3, %4
    }
    """)
    _, plan, _ = run(g)
    assert plan.sizes == {1: 12, 2: 12, 3: 12, 4: 12}
    assert all(o % 64 == 0 for o in plan.offsets.values())
    assert plan.inplace == {3: 1, 4: 2}
    assert sorted({plan.offsets[1], plan.offsets[2]}) == [0, 64]
    assert plan.arena_bytes == 128


def test_cuda_buffers_align_to_256():
    g = ir("""
    graph @gpu {
      %0 = input() {name="x", role="arg"} : f32[3] cuda
      %1 = MatMul(%0, %0) : f32[] cuda
      %2 = Exp(%0) : f32[3] cuda
      return %1, %2
    }
    """)
    _, plan, _ = run(g, verify=False)
    assert plan.alignment == 256
    assert sorted(plan.offsets.values()) == [0, 256] and plan.arena_bytes == 512


def chain(n, size=(64, 64)):
    dims = ",".join(map(str, size))
    lines = [f'  %0 = input() {{name="x", role="arg"}} : f32[{dims}] cpu']
    ops = ["Exp", "Negate", "Tanh", "Log"]
    for i in range(1, n + 1):
        if i % 3 == 0:
            lines.append(f"  %{i} = EWiseAdd(%{i - 1}, %0) : f32[{dims}] cpu")
        elif i % 5 == 0:
            lines.append(f"  %{i} = MulScalar(%{i - 1}) {{scalar=0.5}} : f32[{dims}] cpu")
        else:
            lines.append(f"  %{i} = {ops[i % 4]}(%{i - 1}) : f32[{dims}] cpu")
    return ir("graph @chain {\n" + "\n".join(lines) + f"\n  return %{n}\n}}\n")


def test_elementwise_chain_runs_in_one_buffer():
    g = chain(30)
    _, plan, _ = run(g)
    assert len(plan.inplace) == 29
    assert set(plan.offsets.values()) == {0}
    assert plan.arena_bytes == 64 * 64 * 4
    assert plan.unplanned_bytes == 30 * 64 * 64 * 4


def test_elementwise_chain_with_a_kept_value_uses_two_buffers():
    # y = chain(x); z = y * y ...; the kept %1 blocks in-place once, the rest still reuses
    g = ir("""
    graph @g {
      %0 = input() {name="x", role="arg"} : f32[32] cpu
      %1 = Exp(%0) : f32[32] cpu
      %2 = Negate(%1) : f32[32] cpu
      %3 = Tanh(%2) : f32[32] cpu
      %4 = EWiseMul(%3, %3) : f32[32] cpu
      %5 = EWiseAdd(%4, %1) : f32[32] cpu
      %6 = Log(%5) : f32[32] cpu
      return %6
    }
    """)
    _, plan, _ = run(g)
    assert plan.inplace == {3: 2, 4: 3, 5: 4, 6: 5}
    assert plan.offsets[2] != plan.offsets[1]
    assert plan.arena_bytes == 2 * 128


def test_no_inplace_when_the_input_lives_on_or_the_kernel_is_not_elementwise():
    g = ir("""
    graph @g {
      %0 = input() {name="x", role="arg"} : f32[4,4] cpu
      %1 = Exp(%0) : f32[4,4] cpu
      %2 = Negate(%1) : f32[4,4] cpu
      %3 = MatMul(%2, %1) : f32[4,4] cpu
      %4 = Transpose(%3) {axes=(0, 1)} : f32[4,4] cpu
      %5 = Compare(%4, %4) {mode="le"} : bool[4,4] cpu
      return %5
    }
    """)
    _, plan, _ = run(g, verify=False)
    # %2 reads %1, which MatMul still needs; MatMul and Transpose are not elementwise;
    # Compare's bool output is smaller than its input
    assert plan.inplace == {}


def test_no_inplace_through_a_view_in_the_same_group():
    g = ir("""
    graph @g {
      %0 = input() {name="x", role="arg"} : f32[4,4] cpu
      %1 = Exp(%0) : f32[4,4] cpu
      %2 = Transpose(%1) {axes=(0, 1)} : f32[4,4] cpu
      %3 = EWiseAdd(%2, %1) : f32[4,4] cpu
      return %3
    }
    """)
    plan_ = SingletonPlan((SingletonGroup("a", (1,), (0,), (1,), "elementwise", 1),
                           SingletonGroup("b", (2, 3), (1,), (3,), "injective", 3)))
    schedule, plan, _ = run(g, plan_)
    assert plan.inplace == {}
    assert plan.offsets[1] != plan.offsets[3]


def test_reshape_of_a_buffer_is_a_view():
    g = ir("""
    graph @g {
      %0 = input() {name="x", role="arg"} : f32[4,4] cpu
      %1 = Exp(%0) : f32[4,4] cpu
      %2 = Reshape(%1) {shape=(16,)} : f32[16] cpu
      %3 = Reshape(%0) {shape=(16,)} : f32[16] cpu
      %4 = MatMul(%0, %0) : f32[4,4] cpu
      %5 = Summation(%2) {axes=None} : f32[] cpu
      %6 = EWiseAdd(%3, %2) : f32[16] cpu
      return %6, %5, %4
    }
    """)
    schedule, plan, _ = run(g)
    # views own no bytes: %2 reads %1's buffer, %3 only the graph input
    assert plan.aliases == {2: (1,), 3: ()}
    assert 2 not in plan.sizes and 3 not in plan.sizes and 2 not in plan.offsets
    # %1 is alive until its view's last use (kernel 5, %6), so MatMul's %4 (kernel 3) may
    # not take its bytes; a view is never taken in place
    assert plan.offsets[4] != plan.offsets[1]
    assert plan.inplace == {}
    assert plan.unplanned_bytes == sum(plan.sizes.values()) == 64 + 64 + 4 + 64


TUPLES = """
graph @g {
  %0 = input() {name="x", role="arg"} : f32[3,5] cpu
  %1 = Exp(%0) : f32[3,5] cpu
  %2 = Split(%1) {axis=0} : (f32[5] cpu, f32[5] cpu, f32[5] cpu)
  %3 = TupleGetItem(%2) {index=2} : f32[5] cpu
  %4 = Negate(%3) : f32[5] cpu
  %5 = Exp(%0) : f32[3,5] cpu
  return %4, %5
}
"""


def test_tuple_ops_are_views():
    schedule, plan, _ = run(ir(TUPLES))
    assert plan.aliases == {2: (1,), 3: (1,)}
    assert set(plan.sizes) == {1, 4, 5}
    # %1 lives until %4 reads its slice (kernel 3): %5 (kernel 4) may take its bytes
    assert schedule.live[1] == (0, 1)
    assert plan.offsets[5] == plan.offsets[1]


def test_tuple_made_by_a_working_kernel_is_one_buffer():
    g = ir(TUPLES)
    groups = (SingletonGroup(0, (1, 2), (0,), (2,), "opaque", 2),   # a kernel making a tuple
              SingletonGroup(1, (3,), (2,), (3,), "view", 3),
              SingletonGroup(2, (4,), (3,), (4,), "elementwise", 4),
              SingletonGroup(3, (5,), (0,), (5,), "elementwise", 5))
    schedule, plan, _ = run(g, SingletonPlan(groups))
    assert plan.sizes[2] == 3 * 64
    off = plan.offsets[2]
    assert plan.tuple_elements[2] == [(off, 20), (off + 64, 20), (off + 128, 20)]
    assert plan.aliases == {3: (2,)}


# ---- the checker catches broken plans --------------------------------------------------
def broken(plan, **changes):
    return dataclasses.replace(plan, **{k: (dict(v) if isinstance(v, dict) else v) for k, v in changes.items()})


def test_checker_catches_broken_plans():
    g = ir(MIXED)
    schedule = build_schedule(g, singleton_plan(g))
    plan = plan_memory(g, schedule, singleton_plan(g), outputs_in_arena=True)
    check_plan(schedule, plan, g)
    with pytest.raises(PlanError, match="overlap"):       # %3 onto %1 while both live
        check_plan(schedule, broken(plan, offsets={**plan.offsets, 3: 0}))
    with pytest.raises(PlanError, match="overlap"):       # partly overlapping addresses
        check_plan(schedule, broken(plan, offsets={**plan.offsets, 2: 192, 5: 192}))
    with pytest.raises(PlanError, match="aligned"):
        check_plan(schedule, broken(plan, offsets={**plan.offsets, 4: 8}))
    with pytest.raises(PlanError, match="exceeds the arena"):
        check_plan(schedule, broken(plan, arena_bytes=512))
    with pytest.raises(PlanError, match="no buffer"):
        check_plan(schedule, broken(plan, sizes={k: v for k, v in plan.sizes.items() if k != 4}))
    with pytest.raises(PlanError, match="overlap"):       # an in-place claim that is not one
        check_plan(schedule, broken(plan, inplace={5: 2, 4: 2}, offsets={**plan.offsets, 4: 512}))
    with pytest.raises(PlanError, match="unplanned_bytes"):
        check_plan(schedule, broken(plan, unplanned_bytes=1))
    with pytest.raises(PlanError, match="type needs"):
        check_plan(schedule, broken(plan, sizes={**plan.sizes, 1: 64}), g)
    # without the in-place record, %2 and %5 sharing a slot at kernel 4 is a conflict
    with pytest.raises(PlanError, match="overlap"):
        check_plan(schedule, broken(plan, inplace={}))


def test_checker_catches_a_dead_view_base():
    g = ir("""
    graph @g {
      %0 = input() {name="x", role="arg"} : f32[16] cpu
      %1 = Exp(%0) : f32[16] cpu
      %2 = Reshape(%1) {shape=(4, 4)} : f32[4,4] cpu
      %3 = MatMul(%0, %0) : f32[] cpu
      %4 = MatMul(%2, %2) : f32[4,4] cpu
      return %4, %3
    }
    """)
    schedule = build_schedule(g, singleton_plan(g))
    plan = plan_memory(g, schedule, singleton_plan(g), outputs_in_arena=True)
    check_plan(schedule, plan, g)
    assert plan.aliases == {2: (1,)}
    # %3 (live 2..end) placed on %1, whose view %2 is read at kernel 3: caught
    with pytest.raises(PlanError, match="overlap"):
        check_plan(schedule, broken(plan, offsets={**plan.offsets, 3: plan.offsets[1]}))
    # a view that forgets its base
    with pytest.raises(PlanError, match="not among its bases"):
        check_plan(schedule, broken(plan, aliases={2: ()}))


# ---- real training steps -----------------------------------------------------------------
def traced_step(model, x, y, opt_cls, **kw):
    import needle as ndl
    import needle.nn as nn

    opt = opt_cls(model.parameters(), **kw)
    loss_fn = nn.SoftmaxLoss()
    step = ndl.optim.train_step(model, loss_fn, opt)

    fn = ndl.compile(step)
    fn(ndl.Tensor(x.astype(np.float32), requires_grad=False),
       ndl.Tensor(y.astype(np.float32), requires_grad=False))
    (_, stages), = fn.entries()
    return stages["final"]


def mlpresnet(rng):
    import needle.optim as optim
    from needle.apps.mlp_resnet import MLPResNet

    model = MLPResNet(784, hidden_dim=100, num_blocks=3, num_classes=10, drop_prob=0.0)
    return traced_step(model, rng.randn(100, 784), rng.randint(0, 10, 100), optim.SGD,
                       lr=0.01, momentum=0.9)


def resnet9(rng):
    import needle.optim as optim
    from needle.apps.models import ResNet9

    return traced_step(ResNet9(), rng.randn(8, 3, 32, 32), rng.randint(0, 10, 8), optim.SGD,
                       lr=0.01, momentum=0.9)


def transformer_lm(rng):
    import needle.nn as nn
    import needle.optim as optim
    from needle.apps.models import LanguageModel

    model = LanguageModel(32, 100, 32, num_layers=2, seq_model="transformer", seq_len=16)
    model.seq_model = nn.Transformer(32, 32, 2, num_head=4, dim_head=8, dropout=0.0, causal=True)
    return traced_step(model, rng.randint(0, 100, (16, 4)), rng.randint(0, 100, 64), optim.Adam, lr=1e-3)


@pytest.mark.parametrize("make", [mlpresnet, resnet9, transformer_lm])
def test_training_step_arena(make):
    graph = make(np.random.RandomState(0))
    schedule, plan, ctx = run(graph, verify=False, fuse=True, outputs_in_arena=False)
    assert len(schedule.order) > 10 and plan.unplanned_bytes > 0
    ratio = plan.arena_bytes / plan.unplanned_bytes
    print(f"{make.__name__}: arena {plan.arena_bytes} / unplanned "
          f"{plan.unplanned_bytes} = {ratio:.3f}, {len(plan.sizes)} buffers, "
          f"{len(plan.inplace)} in place, {len(plan.aliases)} views, peak live "
          f"{peak_live_bytes(schedule, plan)}, returned {sum(plan.outputs.values())}")
    assert ratio <= 0.6
    # best-fit and first-fit both give sound plans
    for strategy in ("best_fit", "first_fit"):
        other = plan_memory(graph, schedule, ctx.analyses["fusion"], strategy=strategy,
                            outputs_in_arena=True)
        check_plan(schedule, other, graph)
    # the arena never needs less than the bytes live at the busiest kernel
    assert plan.arena_bytes >= peak_live_bytes(schedule, plan)


def peak_live_bytes(schedule, plan):
    spans = {v: list(schedule.live[v]) for v in plan.sizes}
    for view, bases in plan.aliases.items():
        for b in bases:
            if b in spans:
                spans[b][1] = max(spans[b][1], schedule.live[view][1])
    return max(sum(plan.sizes[v] for v, (s, e) in spans.items() if s <= k <= e and
                   not (v in plan.inplace and s == k))   # an in-place output shares its input's bytes
               for k in range(schedule.end + 1))


def test_in_the_kernel_pipeline_after_schedule():
    assert KERNEL_PASSES.index("memory_plan") == KERNEL_PASSES.index("schedule") + 1
