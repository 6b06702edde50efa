"""`loss.backward()` inside a trace: a `grad` node, a request to the autodiff pass."""
from __future__ import annotations

from typing import Optional, Sequence

from .. import ops, value_types
from ..backprop import find_topo_sort


def request_gradients(loss, out_grad: Optional[object] = None, targets: Sequence = ()) -> None:
    """Append `grad(%loss, %wrt..., [%seed])` and set each wrt value's `.grad` to its slot.

    The wrt set is every traced leaf that requires grad and that `loss` depends on (the
    graph inputs standing for parameters, closed-over tensors or differentiated arguments),
    in the order autograd's topological sort meets them, then the traced `targets` that are
    not among them (intermediate values whose `.grad` the caller reads, as eager's tape sets
    it on every node). Tensors lifted from outside the trace also get `.grad`, and the
    compiled function writes the real gradient there after each call.
    """
    builder = loss._trace.builder
    leaves = _differentiated_leaves(loss)
    known = {id(v) for v in leaves}
    leaves += [t for t in targets if t._trace is not None and t.requires_grad and id(t) not in known
               and not known.add(id(t))]
    if not leaves:  # eager's backward() sets no .grad either
        return
    inputs = [loss._trace.node_id] + [v._trace.node_id for v in leaves]
    seeded = out_grad is not None
    if seeded:
        seed = out_grad if out_grad._trace is not None else builder.lift(out_grad)
        inputs.append(seed._trace.node_id)
    types = tuple(v._trace.type for v in leaves)
    node_id = builder.add("grad", inputs, {"seeded": seeded}, types)
    grads = builder.traced(value_types.TensorTuple, node_id, types, requires_grad=True)  # as eager's (higher order)
    grads.inputs = [loss] + leaves  # so an outer request finds the variables through this one
    externals = {id(proxy): external for external, proxy in builder.lifted.values()}
    for i, leaf in enumerate(leaves):
        g = ops.tuple_get_item(grads, i)
        leaf.grad = g
        external = externals.get(id(leaf))
        if external is not None:
            external.grad = g  # read by opt.step() later in the trace; restored afterwards
            builder.grad_targets.append((external, g))


def _differentiated_leaves(loss) -> list:
    """The traced leaves requiring grad (inputs, or `.data` values: Detach) that gradients
    reach from `loss` as on eager's tape: not through a non-differentiable op (an eager
    comparison's result keeps no inputs), so that eager and compiled leave the same `.grad`s
    None; through an inner request's gradients to its loss and leaves."""
    def is_leaf(v) -> bool:  # not an op result, nor an inner request's gradients
        return isinstance(v.op, ops.Detach) or (v.op is None and not v.inputs)

    order = find_topo_sort([loss])
    reached = {id(loss)}
    for v in reversed(order):  # every consumer before its inputs
        if id(v) in reached and not is_leaf(v) and getattr(v.op, "differentiable", True):
            reached.update(id(x) for x in v.inputs)
    return [v for v in order if id(v) in reached and v.requires_grad and v._trace is not None
            and is_leaf(v)]
