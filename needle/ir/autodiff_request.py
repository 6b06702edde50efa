"""`loss.backward()` inside a trace: a `grad` node, a request to the autodiff pass."""
from __future__ import annotations

from typing import Optional



def request_gradients(loss, out_grad: Optional[object] = None) -> None:
    """Append `grad(%loss, %wrt..., [%seed])` and set each wrt leaf's `.grad` to its slot.

    The wrt set is every traced leaf that requires grad and that `loss` depends on (the
    graph inputs standing for parameters, closed-over tensors or differentiated arguments),
    in the order autograd's topological sort meets them. Tensors lifted from outside the
    trace also get `.grad`, and the compiled function writes the real gradient there after
    each call.
    """
    from ..autograd import Tensor, TensorTuple, find_topo_sort
    from .. import ops

    builder = loss._trace.builder
    leaves = [v for v in find_topo_sort([loss]) if v.requires_grad and v._trace is not None
              and (v.op is None or isinstance(v.op, ops.Detach))]
    inputs = [loss._trace.node_id] + [v._trace.node_id for v in leaves]
    seeded = out_grad is not None
    if seeded:
        seed = out_grad if out_grad._trace is not None else builder.lift(out_grad)
        inputs.append(seed._trace.node_id)
    types = tuple(v._trace.type for v in leaves)
    node_id = builder.add("grad", inputs, {"seeded": seeded}, types)
    grads = builder.traced(TensorTuple, node_id, types)
    grads.inputs = [loss] + leaves  # so an outer request finds the variables through this one
    externals = {id(proxy): external for external, proxy in builder.lifted.values()}
    for i, leaf in enumerate(leaves):
        g = ops.tuple_get_item(grads, i)
        leaf.grad = g
        external = externals.get(id(leaf))
        if external is not None:
            external.grad = g  # read by opt.step() later in the trace; restored afterwards
            builder.grad_targets.append((external, g))
