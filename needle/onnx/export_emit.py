"""The state of one export: ONNX nodes and initializers being written for a needle graph.

`Emitter` names every needle value's ONNX tensor (a tuple value: a tuple of names), adds
nodes and constant initializers, and builds shape tensors: static ones as int64
initializers, batch-dependent ones (`dynamic_batch`) from the first input's runtime batch.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..errors import NeedleError
from ..ir.graph import Graph, Node

#: a needle value's ONNX tensor name, or names for a tuple value
ValueName = Union[str, tuple]

#: ONNX element types of needle's dtypes
ONNX_DTYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE,
               "int32": TensorProto.INT32, "int64": TensorProto.INT64, "bool": TensorProto.BOOL}


class ExportError(NeedleError, ValueError):
    """A graph that cannot be written as ONNX (an op without an exporter, a dynamic shape)."""


def at_line(node: Node) -> str:
    """' (at file:line)' for a node with a source location, else ''."""
    return f" (at {node.loc.file}:{node.loc.line})" if node.loc is not None else ""


class Emitter:
    """Collects the ONNX nodes and initializers for `graph`. `batch_coeffs` maps
    (node id, attribute name or 'type') to per-dimension multiples of the batch size (0: a
    static dimension) for the shapes that depend on it; None exports static shapes."""

    def __init__(self, graph: Graph, opset: int, batch_coeffs: Optional[dict] = None,
                 batch_source: str = ""):
        self.graph = graph
        self.opset = opset
        self.batch_coeffs = batch_coeffs or {}
        self.batch_source = batch_source  # the graph input whose axis 0 is the batch
        self.nodes: list = []
        self.initializers: list = []
        self.values: dict[int, ValueName] = {}
        self._counter = 0
        self._consts: dict = {}
        self._batch: Optional[str] = None

    # ---- names and nodes ----------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._counter += 1
        return f"{hint}_{self._counter}"

    def inputs(self, node: Node) -> list:
        """The ONNX names of `node`'s inputs."""
        return [self.values[i] for i in node.inputs]

    def add(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> Any:
        """Append an ONNX node; its output name (a list of names when `n_out` > 1)."""
        outs = [self.fresh(op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.fresh("n"), **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value: Any, dtype: str = "float32") -> str:
        """An initializer holding `value` (cached: equal constants share one)."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.fresh("c")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, values: Sequence[int]) -> str:
        """A 1-d int64 initializer (axes, shapes, slice bounds)."""
        return self.const(list(values), "int64")

    # ---- attributes, static and batch-dependent -----------------------------------------
    def static(self, node: Node, name: str) -> Any:
        """Attribute `name` of `node`, which must not depend on the batch size."""
        if (node.id, name) in self.batch_coeffs:
            raise ExportError(f"dynamic_batch: attribute {name}={node.attr(name)!r} of {node.op}"
                              f"{at_line(node)} depends on the batch size; export it with a static batch")
        return node.attr(name)

    def shape(self, node: Node, name: str = "type") -> str:
        """An int64 shape tensor for `node`'s attribute `name` ('type': its own shape), with
        the batch-dependent dimensions computed from the runtime batch size."""
        dims = tuple(node.type.shape if name == "type" else node.attr(name))
        coeffs = self.batch_coeffs.get((node.id, name))
        if coeffs is None:
            return self.ints(dims)
        parts = [self.add("Mul", [self.batch(), self.ints([k])]) if k else self.ints([d])
                 for d, k in zip(dims, coeffs)]
        return self.add("Concat", parts, axis=0)

    def batch(self) -> str:
        """The runtime batch size as a 1-d int64 tensor of one element."""
        if self._batch is None:
            shape = self.add("Shape", [self.batch_source])
            self._batch = self.add("Slice", [shape, self.ints([0]), self.ints([1])])
        return self._batch
