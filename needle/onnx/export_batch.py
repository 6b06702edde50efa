"""Which shapes of a traced graph depend on the batch size (`export(..., dynamic_batch=True)`).

The function is traced at two batch sizes b1 < b2 (every Tensor argument's axis 0 is the
batch). The two graphs must have the same nodes; an integer of an attribute (or of a node's
shape) that differs between them must be k * batch at both sizes, and is then computed
from the runtime batch in the exported model. Anything else that changes with the batch
(a graph of another structure, a constant's values, a non-proportional size) is an error.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..autograd import Tensor
from ..ir.graph import Graph, Node
from .export_emit import ExportError, at_line

#: (node id, attribute name or 'type') -> per-integer multiples of the batch, or None when
#: the value changes with the batch but not as a multiple of it
BatchCoeffs = dict


def with_batch(args: tuple, size: int) -> tuple:
    """`args` with every Tensor's axis 0 resized to `size` (rows repeated cyclically)."""
    def resize(a):
        if not isinstance(a, Tensor):
            return a
        data = a.numpy()
        if data.ndim == 0:
            raise ExportError("dynamic_batch: a scalar Tensor argument has no batch axis")
        return Tensor(np.take(data, np.arange(size) % data.shape[0], axis=0), dtype=data.dtype,
                      device=a.device, requires_grad=False)
    return tuple(resize(a) for a in args)


def batch_coefficients(g1: Graph, g2: Graph, b1: int, b2: int) -> BatchCoeffs:
    """Compare the graphs traced at batch sizes b1 and b2 (see the module docstring)."""
    if [n.op for n in g1.nodes] != [n.op for n in g2.nodes]:
        first = next((a for a, b in zip(g1.nodes, g2.nodes) if a.op != b.op), g1.nodes[-1])
        raise ExportError(f"dynamic_batch: the traced graph changes with the batch size ({len(g1.nodes)} "
                          f"nodes at batch {b1}, {len(g2.nodes)} at batch {b2}; first difference: "
                          f"{first.op}{at_line(first)}), e.g. a loop over axis 0; export with a static batch")
    coeffs: BatchCoeffs = {}
    for a, b in zip(g1.nodes, g2.nodes):
        pairs = [(name, value, b.attr(name)) for name, value in a.attrs if name not in ("name", "role")]
        if not a.is_tuple:
            pairs.append(("type", a.type.shape, b.type.shape))
        for name, v1, v2 in pairs:
            if v1 != v2:
                coeffs[(a.id, name)] = _multiples(v1, v2, b1, b2)
                if a.op == "const" and name == "value":
                    raise ExportError(f"dynamic_batch: the constant{at_line(a)} changes with the batch size")
    return coeffs


def _multiples(v1: Any, v2: Any, b1: int, b2: int) -> Optional[tuple]:
    """Per integer of a flat int tuple: k where v1 = k*b1 and v2 = k*b2 (0 where they are
    equal); None when the values are not such tuples."""
    if not (isinstance(v1, tuple) and isinstance(v2, tuple) and len(v1) == len(v2)
            and all(isinstance(x, int) for x in v1 + v2)):
        return None
    out = []
    for x, y in zip(v1, v2):
        if x == y:
            out.append(0)
        elif x % b1 == 0 and x // b1 * b2 == y:
            out.append(x // b1)
        else:
            return None
    return tuple(out)


def batch_dims(node: Node, coeffs: BatchCoeffs) -> list:
    """`node`'s shape for a graph input or output: an int, or a name for a batch-dependent
    dimension ('batch', or 'batch*k')."""
    ks = coeffs.get((node.id, "type")) or (0,) * len(node.type.shape)
    return [d if k == 0 else ("batch" if k == 1 else f"batch*{k}") for d, k in zip(node.type.shape, ks)]
