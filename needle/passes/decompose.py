"""decompose: expand composite ops into primitives (`decompose` and `decompose_rest`).

A composite op class (`composite = True` in the registry: ReLU, Sigmoid, LogSumExp,
LogSoftmax, ...) defines `decompose(self, *inputs)`, the same function written with
primitive needle ops. The pass re-traces the graph, as `autodiff` does: every composite
node calls its op's `decompose` on traced inputs, so the primitive ops it uses emit graph
nodes; every other node (inputs, consts, `grad` requests, primitives) is copied through
unchanged with its inputs renumbered. Emitted nodes carry the source location of the
composite node they replace; graph inputs and outputs are kept. A decomposition that
itself uses composite ops is expanded again (up to `MAX_ROUNDS` rounds).

While `grad` requests remain, composites that keep their own (custom) VJP stay, for autodiff;
`grad` nodes stay `grad` nodes. The pipeline (`needle.passes.pipeline`) runs the pass twice:
`decompose` before autodiff (invariant after it: `decomposed`, what autodiff requires) and
`decompose_rest` after it, which expands what autodiff left: the composites kept for their
VJP and those the VJPs emitted (invariant: `primitive`). A `PassError` names a composite
node that cannot be expanded (also when its op class has no `decompose`).
"""
from __future__ import annotations

import dataclasses

from ..ir.graph import Graph, Node
from ..trace.tracer import GraphBuilder, tracing
from .manager import FunctionPass, PassError, PassResult, register_pass
from .. import autograd
from ..autograd import Tensor, TensorTuple
from ..ops.registry import OPS
from ..ops.registry import op_from_node

#: expansion rounds before giving up on decompositions that keep producing composites
MAX_ROUNDS = 8


def is_composite(node: Node, keep_custom_vjp: bool = False) -> bool:
    """True when `node` is a registry op whose class sets `composite = True` (and, with
    keep_custom_vjp, does not ask to keep its own VJP through autodiff)."""
    cls = OPS.get(node.op)
    return (cls is not None and getattr(cls, "composite", False)
            and not (keep_custom_vjp and getattr(cls, "custom_vjp", False)))


def decompose_graph(graph: Graph) -> tuple[Graph, dict]:
    """`graph` with composite nodes expanded into primitives, and counts by op.

    While the graph still holds `grad` requests, composites with `custom_vjp = True`
    (relu, logsumexp, logsoftmax: their own VJP is the one eager mode uses, numerically
    better or, for relu, right at NaN) are kept for autodiff, which expands them afterwards."""
    counts: dict[str, int] = {}
    keep = any(n.op == "grad" for n in graph.nodes)
    for _ in range(MAX_ROUNDS):
        if not any(is_composite(n, keep) for n in graph.nodes):
            return graph, counts
        graph = _expand_once(graph, counts, keep)
    left = [n for n in graph.nodes if is_composite(n, keep)]
    if left:
        raise PassError("decompose", f"composite ops remain after {MAX_ROUNDS} rounds of "
                        "expansion (a decomposition that keeps producing composites?)", left[0])
    return graph, counts


def _expand_once(graph: Graph, counts: dict, keep_custom_vjp: bool = False) -> Graph:
    builder = GraphBuilder(graph.name, birth=autograd._BIRTHS + 1)
    env: dict = {}  # old id -> traced value in the new graph
    with tracing(builder):
        for node in graph.nodes:
            builder.loc_override = node.loc
            if is_composite(node, keep_custom_vjp):
                op = op_from_node(node.op, node.attr_dict)
                if not callable(getattr(op, "decompose", None)):
                    raise PassError("decompose", f"composite op {node.op} has no decompose() "
                                    "method (define it with primitive ops)", node)
                start = len(builder.nodes)
                try:
                    value = op.decompose(*[env[i] for i in node.inputs])
                except PassError:
                    raise
                except Exception as e:  # name the node and the user's line
                    raise PassError("decompose", f"{node.op}.decompose failed: "
                                    f"{type(e).__name__}: {e}", node) from e
                _check_result(node, value, builder)
                for k in range(start, len(builder.nodes)):  # exactly the node's location
                    builder.nodes[k] = dataclasses.replace(builder.nodes[k], loc=node.loc)
                env[node.id] = value
                counts[node.op] = counts.get(node.op, 0) + 1
            else:  # copied through as is, inputs renumbered
                nid = builder.add(node.op, [_id(env[i]) for i in node.inputs], node.attr_dict,
                                  node.type, loc=node.loc)
                if node.loc is None:
                    builder.nodes[nid] = dataclasses.replace(builder.nodes[nid], loc=None)
                cls = TensorTuple if node.is_tuple else Tensor
                env[node.id] = builder.traced(cls, nid, node.type)
        builder.loc_override = None
    return builder.graph([_id(env[i]) for i in graph.outputs])


def _id(value) -> int:
    return value._trace.node_id


def _check_result(node: Node, value, builder: GraphBuilder) -> None:
    trace = getattr(value, "_trace", None)
    if trace is None or trace.builder is not builder:
        raise PassError("decompose", f"{node.op}.decompose did not return a traced value "
                        f"(got {type(value).__name__})", node)
    if trace.type != node.type:
        raise PassError("decompose", f"{node.op}.decompose gives type {trace.type}, "
                        f"but the node has type {node.type}", node)


def decompose(graph: Graph, ctx=None) -> PassResult:
    """The pass: every composite node replaced by its primitive decomposition."""
    out, counts = decompose_graph(graph)
    return PassResult(out, bool(counts), {"expanded": sum(counts.values()), "by_op": counts})


register_pass(FunctionPass("decompose", decompose, ensures=("decomposed",)))
register_pass(FunctionPass("decompose_rest", decompose, ensures=("decomposed", "primitive")))
