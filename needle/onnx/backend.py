"""ONNX's backend interface (`onnx.backend.base`) over needle's importer, so ONNX's backend
test runner (`onnx.backend.test`) and its node test cases run against needle.

Float inputs are the compiled function's runtime inputs; other inputs (int64 shapes, axes,
indices, bools) are folded into the imported graph at the first run with their values, one
import per distinct set of them. `prepare(model, compiled=False)` runs eagerly (each op
computing at once): the same conversion without compiling, for tiny test graphs.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import onnx
from onnx import helper
from onnx.backend.base import Backend, BackendRep, namedtupledict

from .checks import read_model
from .importer import ImportedModel

_RUNTIME_TYPES = {onnx.TensorProto.FLOAT}


class NeedleRep(BackendRep):
    """A prepared model: `run(inputs)` returns the outputs as numpy arrays of the declared types."""

    def __init__(self, model: onnx.ModelProto, compiled: bool = True):
        self.model, self.compiled = model, compiled
        inits = {t.name for t in model.graph.initializer}
        self.inputs = [v for v in model.graph.input if v.name not in inits]
        self._imports: dict = {}

    def run(self, inputs: Any, **kwargs) -> tuple:
        if isinstance(inputs, dict):
            values = [inputs[v.name] for v in self.inputs]
        elif isinstance(inputs, (list, tuple)):
            values = list(inputs)
        else:
            values = [inputs]
        values = [np.asarray(v) for v in values]
        runtime = {v.name: a for v, a in zip(self.inputs, values) if v.type.tensor_type.elem_type in _RUNTIME_TYPES}
        static = {v.name: a for v, a in zip(self.inputs, values) if v.name not in runtime}
        key = (tuple((k, a.shape) for k, a in runtime.items()),
               tuple((k, a.dtype.str, a.shape, a.tobytes()) for k, a in static.items()))
        if key not in self._imports:
            shapes = {k: a.shape for k, a in runtime.items()}
            self._imports[key] = ImportedModel(self.model, shapes, static, compiled=self.compiled)
        imported = self._imports[key]
        out = imported(*[runtime[k] for k in imported.input_names])
        out = out if isinstance(out, tuple) else (out,)
        types = [o.type.tensor_type.elem_type for o in self.model.graph.output]
        arrays = [_as_type(t.numpy(), ty) for t, ty in zip(out, types)]
        return namedtupledict("Outputs", [o.name for o in self.model.graph.output])(*arrays)


def _as_type(a: np.ndarray, elem_type: int) -> np.ndarray:
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    if dtype.kind in "iu":
        return np.rint(a).astype(dtype)
    return a.astype(dtype)


class NeedleBackend(Backend):
    """needle as an ONNX backend (CPU; CUDA where needle has a GPU)."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", compiled: bool = True, **kwargs) -> NeedleRep:
        super().prepare(model, device, **kwargs)
        return NeedleRep(read_model(model), compiled=compiled)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs) -> tuple:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Sequence[np.ndarray], device: str = "CPU",
                 outputs_info: Optional[Sequence[tuple]] = None, **kwargs) -> tuple:
        """One node on `inputs` (its outputs' types from ONNX's shape inference)."""
        super().run_node(node, inputs, device=device, outputs_info=outputs_info)
        arrays = [np.asarray(a) for a in inputs]
        graph_inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                        for name, a in zip(node.input, arrays) if name]
        graph_outputs = [helper.make_value_info(name, onnx.TypeProto()) for name in node.output]
        model = helper.make_model(helper.make_graph([node], "node", graph_inputs, graph_outputs))
        model = onnx.shape_inference.infer_shapes(model)  # the outputs' types and shapes
        return cls.prepare(model, device, **kwargs).run([a for name, a in zip(node.input, arrays) if name])

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper().startswith("CPU") or device.upper().startswith("CUDA")


prepare = NeedleBackend.prepare
run_model = NeedleBackend.run_model
run_node = NeedleBackend.run_node
supports_device = NeedleBackend.supports_device
