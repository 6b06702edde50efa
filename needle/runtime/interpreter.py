"""The reference interpreter: runs a graph node by node with each op's eager kernel.

It is the correctness oracle for compiled code: every node is evaluated by the same
`compute` that eager mode uses, rebuilt from the node's IR attributes.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..backend_selection import BACKEND, array_api
from ..errors import OpError
from ..ir.graph import Graph, Node, TensorType
from ..ops.registry import op_from_node
from .. import backend_selection


def _device(type_: TensorType):
    if BACKEND == "np":
        return None

    return getattr(backend_selection, type_.device)()


def const_array(node: Node):
    """The backend array of a `const` node (a scalar fill or nested literal values)."""
    value = node.attr("value")
    t = node.type
    if isinstance(value, (int, float)):
        return array_api.full(t.shape, float(value), dtype=t.dtype, device=_device(t))
    arr = np.array(value, dtype=np.float32 if BACKEND == "nd" else t.dtype).reshape(t.shape)
    return array_api.array(arr, device=_device(t)) if BACKEND == "nd" else arr


def run_graph(graph: Graph, inputs: Sequence[Any]) -> list:
    """Evaluate `graph` on backend arrays bound to its `input` nodes (in order)."""
    inputs = list(inputs)
    input_nodes = graph.inputs
    if len(inputs) != len(input_nodes):
        raise ValueError(f"graph @{graph.name} takes {len(input_nodes)} inputs, got {len(inputs)}")
    env: dict[int, Any] = {}
    for node, value in zip(input_nodes, inputs):
        env[node.id] = value
    for node in graph.nodes:
        if node.op == "input":
            continue
        if node.op == "const":
            env[node.id] = const_array(node)
        elif node.op == "grad":
            raise RuntimeError(f"graph @{graph.name} still holds a grad request (%{node.id}): "
                               "run the autodiff pass first")
        else:
            op = op_from_node(node.op, node.attr_dict)
            try:
                env[node.id] = op.compute(*[env[i] for i in node.inputs])
            except OpError:
                raise
            except (ValueError, IndexError, TypeError) as e:  # eager's error type, naming the node
                where = f" (at {node.loc})" if node.loc else ""
                raise type(e)(f"{node.op}: {e} (node %{node.id}){where}") from e
    return [env[i] for i in graph.outputs]
