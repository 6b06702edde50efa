"""Algebraic identities: local rewrites that remove work without changing any value.

    MulScalar(x, 1), DivScalar(x, 1), PowerScalar(x, 1), AddScalar(x, -0.0) -> x
    (not AddScalar(x, 0): it turns -0.0 into 0.0; every rewrite keeps NaN, Inf and -0.0)
    Negate(Negate(x))                                                       -> x
    Reshape(x) to x's own shape                                             -> x
    Reshape(Reshape(x))                                                     -> Reshape(x)
    Permute/Transpose that moves no axis                                    -> x
    Permute/Transpose of Permute/Transpose composing to the identity        -> x
    Permute(Permute(x))                                                     -> Permute(x)
    BroadcastTo(x) to x's own shape                                         -> x
    BroadcastTo(BroadcastTo(x))                                             -> BroadcastTo(x)
    Summation(x, axes=())                                                   -> x
    BroadcastTo(c) of a const with one element                             -> const c (a scalar
                                                            value fills any shape: no big literal)
    EWiseMul(x, c), EWiseMul(c, x) with c a const of one repeated value    -> MulScalar(x, c)
    EWiseAdd(x, c), EWiseAdd(c, x)                                         -> AddScalar(x, c)
    EWiseDiv(x, c)                                                         -> DivScalar(x, c)
    (and then MulScalar 1 / DivScalar 1 / AddScalar -0.0 vanish)
    Detach(x), once no grad request is left in the graph                   -> x

A replaced node's users (and graph outputs) read the replacement; a node rewritten into a new
node keeps its id and source location. Producers left without users are DCE's business.
"""
from __future__ import annotations

from math import copysign, prod
from typing import Callable, Optional, Union

from ..errors import OpError
from ..ir.graph import Node, make_attrs
from ..ir.op_table import op_from_node
from ..ops.registry import op_names
from ..ops.shape import Permute
from .fold import uniform_value
from .manager import Pass, PassResult
from .rewrite import replace_node, rewrite

Get = Callable[[int], Node]
Result = Union[None, int, Node]

#: ScalarOp name -> the scalar that makes it the identity for every float, NaN, Inf and -0.0
#: included: x + 0.0 is not (it turns -0.0 into 0.0), x + (-0.0) is
_NEUTRAL_SCALAR = {"MulScalar": 1.0, "DivScalar": 1.0, "PowerScalar": 1.0, "AddScalar": -0.0}


def _shape(node: Node) -> tuple:
    return tuple(node.type.shape)


def _scalar_identity(node: Node, get: Get) -> Result:
    scalar = node.attr("scalar")
    neutral = _NEUTRAL_SCALAR[node.op]
    if (isinstance(scalar, (int, float)) and not isinstance(scalar, bool)
            and scalar == neutral and copysign(1.0, scalar) == copysign(1.0, neutral)):
        return node.inputs[0]
    return None


def _involution(node: Node, get: Get) -> Result:
    """op(op(x)) -> x."""
    inner = get(node.inputs[0])
    return inner.inputs[0] if inner.op == node.op else None


def _reshape(node: Node, get: Get) -> Result:
    inner = get(node.inputs[0])
    if _shape(node) == _shape(inner):
        return inner.id
    if inner.op == node.op:  # reshape of reshape: one reshape of the innermost input
        return replace_node(node, inputs=inner.inputs, attrs=make_attrs({"shape": _shape(node)}))
    return None


def _permutation(node: Node, ndim: int) -> Optional[tuple[int, ...]]:
    """The axis permutation a permuting view (Permute, Transpose: `permutation` on the op)
    applies to an ndim-d input; None when it cannot apply."""
    try:
        return tuple(op_from_node(node.op, node.attr_dict).permutation(ndim))
    except OpError:
        return None


def _permute(node: Node, get: Get) -> Result:
    inner = get(node.inputs[0])
    ndim = len(_shape(node))
    perm = _permutation(node, ndim)
    if perm is None:
        return None
    if perm == tuple(range(ndim)):
        return inner.id
    inner_perm = _permutation(inner, ndim) if inner.op in PERMUTING else None
    if inner_perm is None:
        return None
    combined = tuple(inner_perm[p] for p in perm)  # out axis i reads x axis inner[perm[i]]
    if combined == tuple(range(ndim)):
        return inner.inputs[0]
    if node.op == inner.op == PERMUTE:  # two swaps stay two Transposes (a GEMM reads each as a flag)
        return replace_node(node, inputs=inner.inputs, attrs=make_attrs({"axes": combined}))
    return None


def _broadcast(node: Node, get: Get) -> Result:
    inner = get(node.inputs[0])
    shape = _shape(node)
    if shape == _shape(inner):
        return inner.id
    if inner.op == node.op:
        return replace_node(node, inputs=inner.inputs, attrs=make_attrs({"shape": shape}))
    if inner.op == "const" and prod(_shape(inner)) == 1:
        return replace_node(node, op="const", inputs=(),
                            attrs=make_attrs({"value": uniform_value(inner)}))
    return None


#: binary op -> (scalar op, whether the const may be the first operand)
_SCALAR_FORM = {"EWiseMul": ("MulScalar", True), "EWiseAdd": ("AddScalar", True),
                "EWiseDiv": ("DivScalar", False)}


def _binary_with_const(node: Node, get: Get) -> Result:
    """x (op) c, c a const holding one repeated float: the scalar op (one input fewer)."""
    scalar_op, commutes = _SCALAR_FORM[node.op]
    a, b = (get(i) for i in node.inputs)
    for x, c in ((a, b), (b, a)) if commutes else ((a, b),):
        value = uniform_value(c)
        if isinstance(value, float) and x.type == node.type:
            return replace_node(node, op=scalar_op, inputs=(x.id,),
                                attrs=make_attrs({"scalar": value}))
    return None


def _summation(node: Node, get: Get) -> Result:
    axes = node.attr("axes")
    if axes is not None and not isinstance(axes, int) and len(axes) == 0:
        return node.inputs[0]
    return None


#: the permuting views (their op declares `permutation`), and the general one
PERMUTING = op_names(lambda cls: hasattr(cls, "permutation"))
PERMUTE = Permute.__name__
#: ops that only stop gradients (the output is the input, not differentiable): identities
#: once no grad request is left
GRADIENT_STOPS = op_names(lambda cls: cls.aliases_input and not cls.differentiable)

RULES: dict[str, Callable[[Node, Get], Result]] = {
    **{op: _scalar_identity for op in _NEUTRAL_SCALAR},
    "Negate": _involution,
    "Reshape": _reshape,
    **{op: _permute for op in PERMUTING},
    "BroadcastTo": _broadcast,
    "Summation": _summation,
    **{op: _binary_with_const for op in _SCALAR_FORM},
}


class AlgebraicSimplification(Pass):
    name = "algebraic"

    def run(self, graph, ctx):
        counts: dict[str, int] = {}

        differentiating = any(n.op == "grad" for n in graph.nodes)

        def rule(node, get):
            if node.op in GRADIENT_STOPS and not differentiating:
                counts[node.op] = counts.get(node.op, 0) + 1
                return node.inputs[0]
            fn = RULES.get(node.op)
            out = fn(node, get) if fn is not None else None
            if out is not None:
                counts[node.op] = counts.get(node.op, 0) + 1
            return out

        new, rewritten = rewrite(graph, rule, self.name)
        return PassResult(new, rewritten > 0, {"rewritten": rewritten, "by_op": counts})
