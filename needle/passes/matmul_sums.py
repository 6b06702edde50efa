"""`matmul_sums`: a sum of matrix products becomes one product of concatenated operands.

    a_1 @ b_1 + a_2 @ b_2 + ... + a_T @ b_T  ==  concat(a_i, axis=1) @ concat(b_i, axis=0)

A weight used at every time step of a recurrent layer gets its gradient as such a sum:
T thin GEMMs (the inner dimension is the batch) become one GEMM over K = T * batch, which
runs near the BLAS's peak. The sum is a tree of `EWiseAdd` nodes (each inner add read only by
its parent); its `MatMul` leaves must be 2-D, of the sum's type and read only by the tree;
at least `MIN_TERMS` of them, thin enough that their concatenated operands are no larger
than the partial products they replace (`_thin`). When every left operand is a transpose
(`x_i^T @ g_i`, as autodiff makes them), the left side is `transpose(concat(x_i, axis=0))`
(a transposed GEMM operand over a contiguous stack) instead of a concat along axis 1. Other
leaves are added to the product. The products' order in the sum changes (float rounding).
"""
from __future__ import annotations

from ..ir.graph import Graph, Node, TensorType, make_attrs
from ..ops.elementwise import EWiseAdd
from ..ops.linalg import MatMul
from ..ops.shape import Transpose
from ..ops.tuple_ops import Concat, MakeTensorTuple
from .dce import live_ids
from .manager import Pass, PassResult

MIN_TERMS = 4
#: the ops of the pattern and of its rewrite
ADD, MATMUL, TRANSPOSE, CONCAT, TUPLE = (cls.__name__ for cls in (EWiseAdd, MatMul, Transpose, Concat,
                                                                  MakeTensorTuple))


def _tree(graph: Graph, users: dict, root: Node) -> tuple[list[Node], list[Node]]:
    """(inner add nodes, leaves) of the EWiseAdd tree under `root` (an inner node is read
    only by its parent; `users` counts the graph's outputs as users)."""
    inner, leaves, stack = [], [], [root]
    while stack:
        n = stack.pop()
        if n.op == ADD and n.type == root.type and (n is root or len(users[n.id]) == 1):
            inner.append(n)
            stack += [graph.node(i) for i in reversed(n.inputs)]
        else:
            leaves.append(n)
    return inner, leaves


def _is_2d_transpose(graph: Graph, node: Node) -> bool:
    return (node.op == TRANSPOSE and node.attr("axes") is None
            and len(graph.node(node.inputs[0]).type.shape) == 2)


def _thin(k: int, terms: int, t: TensorType) -> bool:
    """The concatenated operands (K x (M + N) floats, K the inner sizes' total) are no larger
    than the partial products the one GEMM saves writing and adding (2 T M N): thick terms
    each make a reasonable GEMM, and copying their operands every call costs more than it
    saves."""
    m, n = t.shape
    return k * (m + n) <= 2 * terms * m * n


def batch_matmul_sums(graph: Graph) -> tuple[Graph, int]:
    """The rewritten graph and the number of sums rewritten."""
    users = graph.users()
    for o in graph.outputs:  # a returned value is read outside the sum
        users[o] = users[o] + [-1]
    next_id = graph.next_id()
    replaced: dict[int, list[Node]] = {}   # root id -> the nodes that take its place
    dropped: set[int] = set()
    for root in graph.nodes:
        if root.op != ADD or root.id in dropped or not isinstance(root.type, TensorType):
            continue
        parent = users[root.id]
        if len(parent) == 1 and parent[0] >= 0 and graph.node(parent[0]).op == ADD \
                and graph.node(parent[0]).type == root.type:
            continue  # an inner node of a larger sum
        inner, leaves = _tree(graph, users, root)
        terms = [l for l in leaves if l.op == MATMUL and l.type == root.type and len(root.type.shape) == 2
                 and len(users[l.id]) == 1 and leaves.count(l) == 1]
        if len(terms) < MIN_TERMS:
            continue
        t, loc = root.type, root.loc
        lefts = [graph.node(m.inputs[0]) for m in terms]
        rights = [graph.node(m.inputs[1]) for m in terms]
        k = sum(r.type.shape[0] for r in rights)
        if not _thin(k, len(terms), t):
            continue
        new: list[Node] = []

        def add(op, inputs, typ, **attrs):
            nonlocal next_id
            node = Node(next_id, op, tuple(inputs), make_attrs(attrs), typ, loc)
            next_id += 1
            new.append(node)
            return node.id

        if all(_is_2d_transpose(graph, a) for a in lefts):
            xs = [graph.node(a.inputs[0]) for a in lefts]
            tup = add(TUPLE, [x.id for x in xs], tuple(x.type for x in xs))
            stacked = add(CONCAT, [tup], TensorType((k, t.shape[0]), t.dtype, t.device), axis=0)
            left = add(TRANSPOSE, [stacked], TensorType((t.shape[0], k), t.dtype, t.device), axes=None)
        else:
            tup = add(TUPLE, [a.id for a in lefts], tuple(a.type for a in lefts))
            left = add(CONCAT, [tup], TensorType((t.shape[0], k), t.dtype, t.device), axis=1)
        tup = add(TUPLE, [r.id for r in rights], tuple(r.type for r in rights))
        right = add(CONCAT, [tup], TensorType((k, t.shape[1]), t.dtype, t.device), axis=0)
        total = add(MATMUL, [left, right], t)
        for other in [l for l in leaves if l not in terms]:
            total = add(ADD, [total, other.id], t)
        last = new.pop()  # the sum keeps the root's id, so its users and outputs stay
        new.append(Node(root.id, last.op, last.inputs, last.attrs, t, loc))
        replaced[root.id] = new
        dropped |= {n.id for n in inner} | {m.id for m in terms}
    if not replaced:
        return graph, 0
    nodes: list[Node] = []
    for n in graph.nodes:
        if n.id in replaced:
            nodes += replaced[n.id]
        elif n.id not in dropped:
            nodes.append(n)
    out = graph.replace(nodes=nodes)
    live = live_ids(out)
    return out.replace(nodes=[n for n in out.nodes if n.id in live]), len(replaced)


class MatmulSums(Pass):
    name = "matmul_sums"

    def run(self, graph, ctx):
        out, count = batch_matmul_sums(graph)
        return PassResult(out, count > 0, {"rewritten": count})
