"""The fusion pass: kernel counts on known graphs (GELU, softmax, layernorm, Linear+ReLU),
partition invariants, why-not reasons (cycles), the plan's text form, and the key
correctness check: running every group's subgraph on its own, chained in group order,
reproduces the whole graph's outputs exactly (reference interpreter)."""
from __future__ import annotations

from textwrap import dedent

import numpy as np

import needle as ndl
from needle import nn, ops, optim
from needle.ir import verify
from needle.ir.graph import Graph
from needle.ir.parser import parse_graph
from needle.passes import PassContext, PassManager, get_pass
from needle.passes.pipeline import ANALYSES, STAGES
from needle.passes.fusion import FusedGroup, FusionPlan, format_plan, format_why_not, plan_fusion
from needle.runtime.interpreter import const_array, run_graph


# ---- helpers ----------------------------------------------------------------------------
def final_graph(fn, *args) -> Graph:
    compiled = ndl.compile(fn)
    compiled(*args)
    return compiled.graphs[-1][1]


def fuse(graph: Graph) -> tuple[Graph, PassContext]:
    ctx = PassContext(verify=True, dump_dir="")
    ctx.pass_limit = None
    out = PassManager.from_names(["fusion"]).run(graph, ctx)
    return out, ctx


def T(*shape) -> ndl.Tensor:
    return ndl.Tensor(np.random.randn(*shape).astype(np.float32), dtype="float32")


def random_value(type_, rng):
    if isinstance(type_, tuple):
        raise TypeError("graph inputs are tensors")
    if type_.dtype.startswith("int") or type_.dtype == "bool":
        a = np.asarray(rng.randint(0, 2, size=type_.shape), dtype=np.float32)
    else:
        a = np.asarray(rng.randn(*type_.shape), dtype=np.float32)
    return ndl.Tensor(a, dtype="float32").realize_cached_data()


def to_numpy(a) -> np.ndarray:
    return np.asarray(a if isinstance(a, (np.ndarray, np.generic, float)) else a.numpy())


def check_partition(graph: Graph, plan: FusionPlan) -> None:
    """Every non-input/const node in exactly one group; inputs/outputs consistent."""
    seen: dict[int, int] = {}
    for g in plan.groups:
        assert g.node_ids, g
        for n in g.node_ids:
            assert n not in seen, f"%{n} in k{seen[n]} and k{g.id}"
            seen[n] = g.id
    work = {n.id for n in graph.nodes if n.op not in ("input", "const")}
    assert set(seen) == work
    users = graph.users()
    pos = {n.id: i for i, n in enumerate(graph.nodes)}
    for i, g in enumerate(plan.groups):
        assert g.id == i
        assert list(g.node_ids) == sorted(g.node_ids, key=pos.get)
        members = set(g.node_ids)
        ins = []
        for n in g.node_ids:
            for v in graph.node(n).inputs:
                if v not in members and v not in ins:
                    ins.append(v)
        assert list(g.inputs) == ins
        outs = [n for n in g.node_ids
                if n in graph.outputs or any(u not in members for u in users[n])]
        assert list(g.outputs) == outs
        for v in g.inputs:       # groups come in a topological order
            if v in seen:
                assert seen[v] < g.id
        if g.kind in ("reduce", "extern"):
            assert g.anchor in members
    for p, c, _ in plan.why_not:
        assert seen[p] != seen[c]


def check_chained(graph: Graph, plan: FusionPlan, seed: int = 0, given=None) -> None:
    """Run each group's subgraph alone, chained in group order: equals the whole graph.
    Inputs are random unless `given` ({input name: numpy array}) names them."""
    rng = np.random.RandomState(seed)
    given = given or {}
    args = [ndl.Tensor(np.asarray(given[n.attr("name")], dtype=np.float32),
                       dtype="float32").realize_cached_data()
            if n.attr("name") in given else random_value(n.type, rng) for n in graph.inputs]
    expected = run_graph(graph, args)
    env = {n.id: a for n, a in zip(graph.inputs, args)}
    for n in graph.nodes:
        if n.op == "const":
            env[n.id] = const_array(n)
    for g in plan.groups:
        sub = g.subgraph(graph)
        assert sub.name == f"{graph.name}.k{g.id}"
        assert [n.attr("name") for n in sub.inputs] == [f"in{i}" for i in range(len(g.inputs))]
        if not any(isinstance(graph.node(v).type, tuple) for v in g.inputs):
            verify(sub)
        for v, value in zip(g.outputs, run_graph(sub, [env[i] for i in g.inputs])):
            env[v] = value
    for v, want in zip(graph.outputs, expected):
        got = env[v]
        if isinstance(want, tuple):
            for a, b in zip(got, want):
                np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
        else:
            np.testing.assert_array_equal(to_numpy(got), to_numpy(want))


def plan_of(graph: Graph, given=None) -> FusionPlan:
    out, ctx = fuse(graph)
    assert out is graph                       # the graph itself is unchanged
    plan = ctx.analyses["fusion"]
    report = ctx.reports["fusion"]
    assert report["kernels"] == plan.kernels and report["fused_ops"] == plan.fused_ops
    check_partition(graph, plan)
    check_chained(graph, plan, given=given)
    return plan


# ---- the known graphs --------------------------------------------------------------------
def gelu(x):
    return x * 0.5 * (1 + ops.tanh(0.79788456 * (x + 0.044715 * x ** 3)))


def softmax(x):
    m = ops.max(x, axes=(1,)).reshape((x.shape[0], 1)).broadcast_to(x.shape)
    e = ops.exp(x - m)
    s = ops.summation(e, axes=(1,)).reshape((x.shape[0], 1)).broadcast_to(x.shape)
    return e / s


def layernorm(x, w, b):
    n = x.shape[1]
    mean = (ops.summation(x, axes=(1,)) / n).reshape((x.shape[0], 1)).broadcast_to(x.shape)
    xc = x - mean
    var = (ops.summation(xc ** 2, axes=(1,)) / n).reshape((x.shape[0], 1)).broadcast_to(x.shape)
    y = xc / (var + 1e-5) ** 0.5
    return y * w.reshape((1, n)).broadcast_to(x.shape) + b.reshape((1, n)).broadcast_to(x.shape)


def linear_relu(x, w, b):
    return ops.relu(x @ w + b.reshape((1, w.shape[1])).broadcast_to((x.shape[0], w.shape[1])))


def test_registered_after_simplify():
    assert get_pass("fusion").name == "fusion"
    assert STAGES.index("simplify") < STAGES.index("fusion") and ANALYSES[0] == "fusion"


def test_gelu_tanh_chain_is_one_kernel():
    g = final_graph(gelu, T(64, 32))
    plan = plan_of(g)
    assert plan.kernels == 1
    assert plan.groups[0].kind == "elementwise"
    assert plan.fused_ops == len(g.nodes) - 1


def test_softmax_rows_is_one_kernel():
    """max, exp-sum and divide run one after another over each row: a row chain."""
    g = final_graph(softmax, T(64, 32))
    plan = plan_of(g)
    assert plan.kernels == 1
    assert [gr.kind for gr in plan.groups] == ["reduce"]
    assert g.node(plan.groups[0].anchor).op == "Max"
    assert {g.node(n).op for n in plan.groups[0].node_ids} >= {"Max", "Summation", "Exp"}


def test_layernorm_is_one_kernel():
    g = final_graph(layernorm, T(64, 32), T(32), T(32))
    plan = plan_of(g)
    assert plan.kernels == 1
    assert sum(g.node(n).op == "Summation" for n in plan.groups[0].node_ids) == 2


def test_sibling_row_reductions_join_one_chain():
    """A softmax loss's row max, exp-sum and sum(z * onehot) all read the logits: one kernel
    reads each row once for all three."""
    g = ir("""
        graph @loss {
          %0 = input() {name="z", role="arg"} : f32[16,8] cpu
          %1 = input() {name="onehot", role="arg"} : f32[16,8] cpu
          %2 = Max(%0) {axes=(1,)} : f32[16] cpu
          %3 = Exp(%0) : f32[16,8] cpu
          %4 = Summation(%3) {axes=(1,)} : f32[16] cpu
          %5 = EWiseMul(%0, %1) : f32[16,8] cpu
          %6 = Summation(%5) {axes=(1,)} : f32[16] cpu
          return %2, %4, %6
        }
    """)
    plan = plan_of(g)
    assert plan.kernels == 1
    assert plan.groups[0].outputs == (2, 4, 6)


def test_gemm_takes_the_bias_before_a_reduction_takes_it():
    """z = x @ w + b read by a row max and by other kernels: the bias add is the GEMM's
    epilogue (its output is stored anyway), and the max reads z."""
    g = ir("""
        graph @logits {
          %0 = input() {name="x", role="arg"} : f32[16,4] cpu
          %1 = input() {name="w", role="param"} : f32[4,8] cpu
          %2 = input() {name="b", role="param"} : f32[16,8] cpu
          %3 = MatMul(%0, %1) : f32[16,8] cpu
          %4 = EWiseAdd(%3, %2) : f32[16,8] cpu
          %5 = Max(%4) {axes=(1,)} : f32[16] cpu
          %6 = Summation(%4) {axes=(0,)} : f32[8] cpu
          return %5, %6
        }
    """)
    plan = plan_of(g)
    assert plan.group_of(4) is plan.group_of(3)
    assert plan.group_of(5) is not plan.group_of(4)


def test_column_reductions_do_not_chain():
    """BatchNorm-style statistics (mean, then variance, over the batch axis) reduce outer
    axes: each is a kernel of its own."""
    g = ir("""
        graph @stats {
          %0 = input() {name="x", role="arg"} : f32[16,8] cpu
          %1 = Summation(%0) {axes=(0,)} : f32[8] cpu
          %2 = Reshape(%1) {shape=(1, 8)} : f32[1,8] cpu
          %3 = BroadcastTo(%2) {shape=(16, 8)} : f32[16,8] cpu
          %4 = EWiseAdd(%0, %3) : f32[16,8] cpu
          %5 = EWiseMul(%4, %4) : f32[16,8] cpu
          %6 = Summation(%5) {axes=(0,)} : f32[8] cpu
          return %6
        }
    """)
    plan = plan_of(g)
    assert plan.kernels == 2
    assert plan.why_not == [(1, 2, "reduce output feeds a reduction")]


def test_row_reductions_of_other_axes_or_shapes_do_not_chain():
    g = ir("""
        graph @mixed {
          %0 = input() {name="x", role="arg"} : f32[16,8] cpu
          %1 = Max(%0) {axes=(1,)} : f32[16] cpu
          %2 = Summation(%0) {axes=None} : f32[] cpu
          return %1, %2
        }
    """)
    plan = plan_of(g)
    assert plan.kernels == 2


def test_linear_bias_relu_is_gemm_plus_epilogue():
    g = final_graph(linear_relu, T(8, 32), T(32, 16), T(16))
    plan = plan_of(g)
    gemm = [gr for gr in plan.groups if gr.kind == "extern"]
    assert len(gemm) == 1 and g.node(gemm[0].anchor).op == "MatMul"
    assert plan.kernels <= 2
    # the epilogue (bias add, relu) lives in the GEMM group
    assert {g.node(n).op for n in gemm[0].node_ids} >= {"MatMul", "EWiseAdd", "Where"}


def ir(text: str) -> Graph:
    return parse_graph(dedent(text))


def test_diamond_fuses_without_cycles():
    g = ir("""
        graph @diamond {
          %0 = input() {name="x", role="arg"} : f32[4,8] cpu
          %1 = Exp(%0) : f32[4,8] cpu
          %2 = MulScalar(%1) {scalar=2.0} : f32[4,8] cpu
          %3 = Tanh(%1) : f32[4,8] cpu
          %4 = EWiseAdd(%2, %3) : f32[4,8] cpu
          %5 = Summation(%4) {axes=(1,)} : f32[4] cpu
          %6 = Log(%1) : f32[4,8] cpu
          return %5, %6
        }
    """)
    plan = plan_of(g)
    assert plan.kernels == 1
    assert plan.groups[0].kind == "reduce" and plan.groups[0].anchor == 5
    assert plan.groups[0].outputs == (5, 6)


def test_cycle_search_follows_groups_whose_nodes_are_far_apart():
    """A group's nodes need not be contiguous in graph order: k(%5 Gather ... %44 Where) feeds
    a late node of another group whose early node feeds the candidate, so pruning the cycle
    search by graph position missed a cycle (fuzzer seed 7304588: 'fusion produced a cycle')."""
    g = ir("""
          graph @program {
            %0 = input() {name="arg0", role="arg"} : f32[3,1] cpu
            %1 = input() {name="arg1", role="arg"} : f32[3,1,17] cpu
            %2 = input() {name="arg2", role="arg"} : f32[] cpu
            %3 = input() {name="arg3", role="arg"} : f32[9,4] cpu
            %4 = input() {name="p0", role="param"} : f32[2,17] cpu
            %5 = Gather(%4, %0) : f32[3,1,17] cpu
            %6 = Compare(%0) {cmp="lt", scalar=0.0} : f32[3,1] cpu
            %7 = Compare(%0) {cmp="ge", scalar=2.0} : f32[3,1] cpu
            %8 = EWiseAdd(%6, %7) : f32[3,1] cpu
            %9 = AddScalar(%0) {scalar=8388608.0} : f32[3,1] cpu
            %10 = AddScalar(%9) {scalar=-8388608.0} : f32[3,1] cpu
            %11 = Compare(%0, %10) {cmp="ne", scalar=None} : f32[3,1] cpu
            %12 = EWiseAdd(%8, %11) : f32[3,1] cpu
            %13 = Summation(%12) {axes=None} : f32[] cpu
            %14 = Compare(%5, %1) {cmp="gt", scalar=None} : f32[3,1,17] cpu
            %15 = Where(%14, %5, %1) : f32[3,1,17] cpu
            %16 = Split(%15) {axis=1} : (f32[3,17] cpu)
            %17 = TupleGetItem(%16) {index=0} : f32[3,17] cpu
            %18 = GetItem(%17) {slices=((0, 1, 1), (0, 17, 1))} : f32[1,17] cpu
            %19 = Reshape(%18) {shape=(17,)} : f32[17] cpu
            %20 = Summation(%19) {axes=(0,)} : f32[] cpu
            %30 = Summation(%3) {axes=(0, 1)} : f32[] cpu
            %31 = EWiseDiv(%30, %2) : f32[] cpu
            %32 = Negate(%30) : f32[] cpu
            %33 = EWiseMul(%32, %20) : f32[] cpu
            %34 = EWiseMul(%2, %2) : f32[] cpu
            %35 = EWiseDiv(%33, %34) : f32[] cpu
            %36 = Reshape(%31) {shape=(1,)} : f32[1] cpu
            %37 = BroadcastTo(%36) {shape=(17,)} : f32[17] cpu
            %38 = Reshape(%37) {shape=(1, 17)} : f32[1,17] cpu
            %39 = UnSlice(%38) {shape=(3, 17), slices=((0, 1, 1), (0, 17, 1))} : f32[3,17] cpu
            %40 = MakeTensorTuple(%39) : (f32[3,17] cpu)
            %42 = Stack(%40) {axis=1} : f32[3,1,17] cpu
            %43 = const() {value=0.0} : f32[3,1,17] cpu
            %44 = Where(%14, %42, %43) : f32[3,1,17] cpu
            %45 = Where(%14, %43, %42) : f32[3,1,17] cpu
            %46 = IndexAdd(%44, %0) {num_rows=2} : f32[2,17] cpu
            return %35, %46, %45, %35, %13
          }
    """)
    plan = plan_of(g, given={"arg0": np.array([[0.0], [1.0], [1.0]])})
    assert any(r == "would create a cycle" for _, _, r in plan.why_not)


def test_value_read_by_one_reduction_is_computed_inside_it():
    """z = x + b feeds a row max and, through z * w, a column sum: z * w is the sum's private
    prologue, computed in the sum's kernel (reading z), not stored by the max's kernel."""
    g = ir("""
        graph @loss {
          %0 = input() {name="x", role="arg"} : f32[4,8] cpu
          %1 = input() {name="b", role="param"} : f32[4,8] cpu
          %2 = input() {name="w", role="arg"} : f32[4,8] cpu
          %3 = EWiseAdd(%0, %1) : f32[4,8] cpu
          %4 = Max(%3) {axes=(1,)} : f32[4] cpu
          %5 = EWiseMul(%3, %2) : f32[4,8] cpu
          %6 = Summation(%5) {axes=(0,)} : f32[8] cpu
          %7 = Exp(%3) : f32[4,8] cpu
          return %4, %6, %7
        }
    """)
    plan = plan_of(g)
    assert plan.group_of(5) is plan.group_of(6)
    assert all(5 not in gr.outputs for gr in plan.groups)
    assert plan.kernels == 2


def test_merge_that_would_create_a_cycle_is_refused():
    g = ir("""
        graph @cycle {
          %0 = input() {name="x", role="arg"} : f32[4,4] cpu
          %1 = input() {name="w", role="param"} : f32[4,4] cpu
          %2 = Exp(%0) : f32[4,4] cpu
          %3 = MatMul(%2, %1) : f32[4,4] cpu
          %4 = EWiseMul(%2, %3) : f32[4,4] cpu
          return %4
        }
    """)
    plan = plan_of(g)
    assert (2, 4, "would create a cycle") in plan.why_not
    assert (2, 3, "extern takes no prologue") in plan.why_not
    assert plan.kernels == 2       # exp; GEMM with the multiply as its epilogue
    assert plan.group_of(4) is plan.group_of(3)


def test_opaque_and_tuple_ops_stay_alone():
    g = ir("""
        graph @tup {
          %0 = input() {name="x", role="arg"} : f32[4,6] cpu
          %1 = Exp(%0) : f32[4,6] cpu
          %2 = Split(%1) {axis=0} : (f32[6] cpu, f32[6] cpu, f32[6] cpu, f32[6] cpu)
          %3 = TupleGetItem(%2) {index=1} : f32[6] cpu
          %4 = Negate(%3) : f32[6] cpu
          return %4
        }
    """)
    plan = plan_of(g)
    assert (1, 2, "tuple op") in plan.why_not
    assert (3, 4, "tuple op") in plan.why_not
    assert plan.kernels == 2


def test_domain_mismatch_is_refused():
    g = ir("""
        graph @dom {
          %0 = input() {name="x", role="arg"} : f32[4,1] cpu
          %1 = Exp(%0) : f32[4,1] cpu
          %2 = BroadcastTo(%1) {shape=(4, 8)} : f32[4,8] cpu
          %3 = Tanh(%2) : f32[4,8] cpu
          return %1, %3
        }
    """)
    plan = plan_of(g)
    assert plan.kernels == 2
    assert any(r.startswith("shape mismatch") for _, _, r in plan.why_not)


def test_shared_view_of_an_input_is_recomputed_not_merged():
    g = ir("""
        graph @shared {
          %0 = input() {name="x", role="arg"} : f32[4,8] cpu
          %1 = input() {name="b", role="param"} : f32[8] cpu
          %2 = Reshape(%1) {shape=(1, 8)} : f32[1,8] cpu
          %3 = BroadcastTo(%2) {shape=(4, 8)} : f32[4,8] cpu
          %4 = EWiseAdd(%0, %3) : f32[4,8] cpu
          %5 = Summation(%4) {axes=(0,)} : f32[8] cpu
          %6 = EWiseMul(%0, %3) : f32[4,8] cpu
          %7 = Summation(%6) {axes=(1,)} : f32[4] cpu
          return %5, %7
        }
    """)
    plan = plan_of(g)
    assert plan.group_of(3).kind == "view"
    assert plan.kernels == 2


def test_transpose_feeding_a_gemm_stays_a_view():
    g = ir("""
        graph @tg {
          %0 = input() {name="x", role="arg"} : f32[4,8] cpu
          %1 = input() {name="w", role="param"} : f32[4,3] cpu
          %2 = Exp(%0) : f32[4,8] cpu
          %3 = Transpose(%2) {axes=None} : f32[8,4] cpu
          %4 = MatMul(%3, %1) : f32[8,3] cpu
          return %4
        }
    """)
    plan = plan_of(g)
    assert plan.group_of(3).kind == "view"
    assert (2, 3, "view of a GEMM operand stays a view") in plan.why_not
    assert plan.kernels == 2


def test_format_plan_text():
    g = ir("""
        graph @small {
          %0 = input() {name="x", role="arg"} : f32[4,8] cpu
          %1 = Exp(%0) : f32[4,8] cpu
          %2 = Summation(%1) {axes=(1,)} : f32[4] cpu
          %3 = Summation(%2) {axes=(0,)} : f32[] cpu
          %4 = Log(%3) : f32[] cpu
          return %4, %1
        }
    """)
    plan = plan_of(g)
    assert format_plan(plan, g) == (
        "k0 [reduce @2]: %1 %2 <- ins %0 -> outs %1 %2\n"
        "k1 [reduce @3]: %3 %4 <- ins %2 -> outs %4\n")
    assert format_why_not(plan, g) == (
        "why-not %2 Summation -> %3 Summation: reduce output feeds a reduction\n")
    assert format_plan(plan, g, why_not=True) == format_plan(plan, g) + format_why_not(plan, g)


def test_group_subgraph_is_standalone():
    g = final_graph(linear_relu, T(8, 32), T(32, 16), T(16))
    plan = plan_fusion(g)
    grp = next(gr for gr in plan.groups if gr.kind == "extern")
    sub = grp.subgraph(g)
    verify(sub)
    assert len(sub.inputs) == len(grp.inputs)
    assert [n.type for n in sub.inputs] == [g.node(v).type for v in grp.inputs]
    assert len(sub.outputs) == len(grp.outputs)
    assert isinstance(grp, FusedGroup)


# ---- a whole training step ----------------------------------------------------------------
def test_mlp_batchnorm_sgd_training_step():
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.SoftmaxLoss()

    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    x = T(8, 12)
    y = ndl.Tensor(np.random.randint(0, 5, size=(8,)).astype(np.float32), dtype="float32")
    g = final_graph(step, x, y)
    plan = plan_of(g)
    kinds = [gr.kind for gr in plan.groups]
    assert kinds.count("extern") >= 2          # forward and backward GEMMs
    assert plan.kernels < sum(1 for n in g.nodes if n.op not in ("input", "const"))
    assert plan.fused_ops > 0
