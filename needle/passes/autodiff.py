"""autodiff: replace each `grad` request by the gradient subgraph (a graph transformation).

The pass re-traces the graph: every node is replayed as a traced needle Value (so the
usual autograd structure, `op` and `inputs`, is rebuilt), and at each `grad` node the
eager reverse-mode algorithm (`compute_gradient_of_variables`) runs on those traced
values. Because every op's VJP is written with needle ops, the VJPs emit graph nodes
instead of computing: eager `backward()` and this pass share one definition per op.
Emitted nodes carry the source location of the node they differentiate.

The input must be decomposed (the `decomposed` invariant: composites remain only where they
keep their custom VJP; the pipeline runs `decompose` first), else a `PassError` names the
first composite node. The output may hold composites (those kept, and those VJPs emit): the
pipeline's `decompose_rest` expands them.
"""
from __future__ import annotations

from ..ir.graph import Graph
from ..trace.tracer import GraphBuilder, tracing
from ..ir.verifier import IRVerifyError, check_invariants
from .manager import FunctionPass, PassError, register_pass
from .. import autograd, init, ops
from ..autograd import Tensor, TensorTuple
from ..autograd import compute_gradient_of_variables
from ..ops.registry import op_from_node


def autodiff(graph: Graph, ctx=None) -> Graph:
    """`graph` with every `grad` node expanded into forward-and-backward nodes."""
    if not any(n.op == "grad" for n in graph.nodes):
        return graph
    try:
        check_invariants(graph, ("decomposed",))
    except IRVerifyError as e:
        node = graph.node(e.node_id)
        raise PassError("autodiff", f"expects a decomposed graph, but {e.problem}; run the "
                        "decompose pass first", node) from None

    builder = GraphBuilder(graph.name, birth=autograd._BIRTHS + 1)
    env: dict = {}
    # values differentiated by some grad request must carry requires_grad from the start
    wrt_ids = set()
    for node in graph.nodes:
        if node.op == "grad":
            wrt_ids.update(node.inputs[1:-1] if node.attr("seeded", False) else node.inputs[1:])
    with tracing(builder):
        for node in graph.nodes:
            builder.loc_override = node.loc
            if node.op == "input":
                nid = builder.add_input(node.attr("name"), node.attr("role"), node.type)
                env[node.id] = builder.traced(Tensor, nid, node.type, requires_grad=True)
            elif node.op == "const":
                nid = builder.add("const", (), node.attr_dict, node.type)
                env[node.id] = builder.traced(Tensor, nid, node.type)
            elif node.op == "grad":
                env[node.id] = _expand_grad(node, env, builder, init, ops)
            else:
                cls = TensorTuple if node.is_tuple else Tensor
                value = op_from_node(node.op, node.attr_dict)(*[env[i] for i in node.inputs])
                if not isinstance(value, cls):
                    raise TypeError(f"autodiff: replaying %{node.id} = {node.op} gave {type(value).__name__}")
                if node.id in wrt_ids:
                    value.requires_grad = True
                env[node.id] = value
        builder.loc_override = None
    return builder.graph([env[i]._trace.node_id for i in graph.outputs])


def _expand_grad(node, env, builder, init, ops):
    """Gradients of the loss w.r.t. the wrt inputs of one `grad` node, as a traced tuple."""
    seeded = node.attr("seeded", False)
    loss = env[node.inputs[0]]
    wrt_ids = node.inputs[1:-1] if seeded else node.inputs[1:]
    wrt = [env[i] for i in wrt_ids]
    # a graph const: a gradient that reads no other graph value is still made of graph nodes
    # (computed eagerly, one of over 1024 elements became a const input that no call binds)
    seed = env[node.inputs[-1]] if seeded else builder.lift(init.ones(*loss.shape, dtype=loss.dtype,
                                                                          device=loss.device))
    for w in wrt:
        w.grad = None

    def locate(value):
        loc = builder.nodes[value._trace.node_id].loc if value._trace is not None else None
        builder.loc_override = loc or node.loc

    compute_gradient_of_variables(loss, seed, before_vjp=locate)
    builder.loc_override = node.loc
    grads = [w.grad if w.grad is not None else init.zeros(*w.shape, dtype=w.dtype, device=w.device)
             for w in wrt]
    if not grads:
        raise ValueError(f"autodiff: %{node.id} = grad has nothing to differentiate with respect to")
    # the zeros of a value the loss does not depend on are untraced
    return ops.make_tuple(*[g if g._trace is not None else builder.lift(g) for g in grads])


register_pass(FunctionPass("autodiff", autodiff, ensures=("no_grad",), breaks=("decomposed",)))
