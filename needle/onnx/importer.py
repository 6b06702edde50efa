"""ONNX import: a model becomes a function of Tensors, compiled with `@needle.compile`.

Each node is converted by its entry in the converter table (`registry.CONVERTERS`) into
needle ops; a node whose inputs are all known at import (initializers, constants, shape
computations of static shapes) is folded with numpy instead (ONNX's reference
implementation of the op). Everything unsupported is found before anything runs.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ..autograd import Tensor
from ..compile import compile as ndl_compile
from ..ir.types import SourceLoc
from ..trace import tracer
from . import layout, ops_math, ops_nn, ops_shape  # noqa: F401  (fill the converter table)
from .checks import ModelSource, read_model
from .errors import OnnxError, UnsupportedModelError
from .registry import CONVERTERS, NodeInput, Nhwc, describe, node_attrs, to_tensor

#: the ONNX opsets whose semantics the converters follow (default domain)
OPSETS = range(7, onnx.defs.onnx_opset_version() + 1)
#: element types of runtime inputs: floats, and ints and bools carried as float32
INPUT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL}
#: ops that make their constants themselves (ConstantOfShape's are zero-strided)
_OWN_CONSTANTS = {"Constant", "ConstantOfShape"}
#: ops whose outputs are known at import even from a runtime input (its static shape)
_SHAPE_OPS = {"Shape", "Size"}
#: ops that compute each channel from that channel alone: of a channel Concat, they run on
#: each piece and concatenate the results, which a 1x1 conv then reads piece by piece (one
#: GEMM each) where a pool's windows would read a copy of the whole concat
_PER_CHANNEL = {"MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool"}
_EXACT_IDS = 2 ** 24


def model_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim]


class OnnxFunction:
    """The model's graph as a Python function of its runtime inputs (Tensors) returning its
    outputs (Tensors); `static` inputs are fixed arrays folded at import. It has no
    `__dict__`: a compiled function closing over it guards it by identity and does not walk
    its protobufs for tensors. Traced, each node's ops carry the node as their source
    location: `label (OpType 'name'):k` for the k-th node (1-based) of the model's graph."""

    __slots__ = ("model", "opset", "constants", "input_names", "output_names", "input_shapes", "input_types",
                 "folded", "label")

    def __init__(self, model: onnx.ModelProto, input_shapes=None, static: Optional[dict] = None,
                 label: Optional[str] = None):
        self.model, self.opset = model, model_opset(model)
        self.label = label or f"{model.graph.name or 'model'}.onnx"
        graph = model.graph
        self.constants: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.constants.update({k: np.asarray(v) for k, v in (static or {}).items()})
        declared = [v for v in graph.input if v.name not in self.constants]
        self.input_names = [v.name for v in declared]
        self.output_names = [v.name for v in graph.output]
        overrides = _overrides(input_shapes, self.input_names)
        self.input_shapes = {v.name: overrides.get(v.name, _dims(v)) for v in declared}
        self.input_types = {v.name: v.type.tensor_type.elem_type for v in declared}
        known = _known_at_import(graph, set(self.constants))
        problems = self._problems(known)
        if problems:
            raise UnsupportedModelError(problems)
        self.input_shapes = {k: tuple(int(d) for d in s) for k, s in self.input_shapes.items()}
        #: {BatchNormalization node index: index of the Conv folded into it}
        self.folded = ops_nn.conv_batch_norm_pairs(graph, known)

    def _problems(self, known: set) -> list[str]:
        """Every unsupported op, attribute, dtype and dynamic shape of the model."""
        problems = []
        if self.opset not in OPSETS:
            problems.append(f"opset {self.opset} (supported: {OPSETS.start}-{OPSETS.stop - 1})")
        for name, shape in self.input_shapes.items():
            if self.input_types[name] not in INPUT_TYPES:
                problems.append(f"input {name!r}: element type "
                                f"{helper.tensor_dtype_to_string(self.input_types[name])} is not supported")
            if any(not isinstance(d, int) for d in shape):
                problems.append(f"input {name!r}: dynamic shape {shape} (give input_shapes)")
        for node in self.model.graph.node:
            where = describe(node, self.opset)
            conv = CONVERTERS.get(node.op_type)
            if node.domain not in ("", "ai.onnx"):
                problems.append(f"{where}: domain {node.domain!r} is not supported")
            elif conv is None:
                if not (node.input and all(i in known for i in node.input if i)):  # else folded at import
                    problems.append(f"{where}: op type {node.op_type} is not supported")
            else:
                reason = conv.check(node, self.opset) if conv.check else None
                if reason:
                    problems.append(f"{where}: {reason}")
                for i in conv.static:
                    if i < len(node.input) and node.input[i] and node.input[i] not in known:
                        problems.append(f"{where}: input {i} ({node.input[i]!r}) is computed at run time "
                                        f"but must be known at import (a dynamic shape)")
        return problems

    def __call__(self, *tensors: Tensor) -> tuple:
        env: dict[str, Any] = dict(self.constants)
        env.update(zip(self.input_names, tensors))
        nodes = self.model.graph.node
        skipped = set(self.folded.values())
        concats: dict[str, tuple] = {}   # a channel Concat's output -> (its node, its pieces)
        builder = tracer.active()
        before = builder.loc_override if builder is not None else None
        try:
            for k, node in enumerate(nodes):
                if k in skipped:
                    continue
                if builder is not None:
                    builder.loc_override = self.location(k)
                if k in self.folded:  # a BatchNormalization: its Conv with folded weights
                    conv = nodes[self.folded[k]]
                    node, inputs = conv, ops_nn.fold_batch_norm([env[i] if i else None for i in conv.input],
                                                                [env[i] for i in node.input[1:5]],
                                                                node_attrs(node).get("epsilon", 1e-5))
                else:
                    inputs = [env[i] if i else None for i in node.input]
                if node.op_type in _PER_CHANNEL and node.input[0] in concats and len(node.output) == 1:
                    concat, pieces = concats[node.input[0]]
                    pieces = [self._convert(node, [p, *inputs[1:]])[0] for p in pieces]
                    outputs = self._convert(concat, pieces)
                    concats[node.output[0]] = (concat, pieces)
                else:
                    outputs = self._convert(node, inputs)
                    if _channel_concat(node, inputs):
                        concats[node.output[0]] = (node, inputs)
                env.update((name, v) for name, v in zip(nodes[k].output, outputs) if name)
        finally:
            if builder is not None:
                builder.loc_override = before
        return tuple(to_tensor(env[name]) for name in self.output_names)

    def location(self, k: int) -> SourceLoc:
        """The source location of the ops of node k: the model, the node's op type and name."""
        node = self.model.graph.node[k]
        name = f" {node.name!r}" if node.name else ""
        return SourceLoc(f"{self.label} ({node.op_type}{name})", k + 1)

    def _convert(self, node: onnx.NodeProto, inputs: list) -> list:
        constant = all(v is None or isinstance(v, np.ndarray) for v in inputs)
        if constant and inputs and node.op_type not in _OWN_CONSTANTS:
            return _fold(node, inputs, self.opset)
        n = NodeInput(node, self.opset, inputs, node_attrs(node))
        return layout.convert(node.op_type, CONVERTERS[node.op_type], n)


def _channel_concat(node: onnx.NodeProto, inputs: list) -> bool:
    """A Concat of 4-D runtime values (NCHW) along their channels."""
    return (node.op_type == "Concat" and all(isinstance(v, (Tensor, Nhwc)) and len(v.shape) == 4 for v in inputs)
            and node_attrs(node)["axis"] % 4 == 1)


def _known_at_import(graph: onnx.GraphProto, known: set) -> set:
    """The names of `graph` whose values are known at import, from the `known` ones."""
    for node in graph.node:
        if node.op_type in _SHAPE_OPS or all(i in known for i in node.input if i):
            known.update(node.output)
    return known


def _fold(node: onnx.NodeProto, inputs: list, opset: int) -> list:
    """The node's outputs computed with ONNX's reference implementation."""
    feeds = {name: v for name, v in zip(node.input, inputs) if name}
    graph = helper.make_graph(
        [node], "fold", [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                         for k, v in feeds.items()],
        [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in node.output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]
    except Exception as e:
        raise OnnxError(f"{describe(node, opset)}: folding its constant inputs failed: {e}") from None


def _overrides(input_shapes, names: Sequence[str]) -> dict:
    if input_shapes is None:
        return {}
    if isinstance(input_shapes, dict):
        unknown = set(input_shapes) - set(names)
        if unknown:
            raise OnnxError(f"input_shapes names unknown inputs {sorted(unknown)}; the inputs are {list(names)}")
        return {k: list(v) for k, v in input_shapes.items()}
    return {k: list(v) for k, v in zip(names, input_shapes)}


def as_input(value: Union[np.ndarray, Tensor, Any], name: str, shape: tuple, into: Optional[Tensor] = None) -> Tensor:
    """A runtime input as a float32 Tensor of its declared shape (ints as exact float ids): a
    Tensor as it is, other data copied into `into` (a compact cpu Tensor of that shape) when
    given, else into a new Tensor."""
    if isinstance(value, Tensor):
        arr_shape = tuple(value.shape)
    else:
        arr = np.asarray(value)
        if arr.dtype.kind in "iub" and arr.size and np.abs(arr).max() >= _EXACT_IDS:
            raise OnnxError(f"input {name!r}: integers of magnitude 2^24 or more are not exact as float32 ids")
        arr_shape = arr.shape
    if arr_shape != shape:
        raise OnnxError(f"input {name!r}: shape {arr_shape}, the model was imported for {shape}")
    if isinstance(value, Tensor):
        return value
    if into is not None:
        np.copyto(np.asarray(into.realize_cached_data()._handle).reshape(shape), arr, casting="unsafe")
        return into
    return Tensor(np.ascontiguousarray(arr, np.float32), requires_grad=False)  # (Tensor copies it)


class ImportedModel:
    """A compiled ONNX model: call it with numpy arrays or Tensors (positional in the model's
    input order, or by name); it returns a Tensor, or a tuple for several outputs."""

    def __init__(self, model: onnx.ModelProto, input_shapes=None, static: Optional[dict] = None,
                 compiled: bool = True, label: Optional[str] = None):
        self.function = OnnxFunction(model, input_shapes, static, label)
        fn = self.function

        def forward(*xs):
            return fn(*xs)

        forward.__name__ = forward.__qualname__ = _identifier(model.graph.name or "onnx_model")
        self.forward = ndl_compile(forward) if compiled else forward
        # per input, the cpu Tensor that numpy data is copied into, call after call: the
        # compiled program finds the same array at the same address (no allocation, no
        # checks), and its outputs are arrays of their own; None where the default device
        # is not needle's cpu, and without compiling (an eager Identity returns its input)
        self._inputs: dict = {} if compiled else dict.fromkeys(self.function.input_names)
        self._lock = threading.Lock()   # one call at a time writes the input buffers

    @property
    def input_names(self) -> list[str]:
        return self.function.input_names

    @property
    def output_names(self) -> list[str]:
        return self.function.output_names

    def __call__(self, *args, **kwargs):
        f = self.function
        if len(args) + len(kwargs) != len(f.input_names):
            raise OnnxError(f"the model takes {len(f.input_names)} inputs {f.input_names}, "
                            f"got {len(args) + len(kwargs)}")
        values = dict(zip(f.input_names, args))
        values.update(kwargs)
        missing = [k for k in f.input_names if k not in values]
        if missing:
            raise OnnxError(f"missing inputs {missing}")
        with self._lock:
            out = self.forward(*(as_input(values[k], k, f.input_shapes[k], self._buffer(k)) for k in f.input_names))
        return out[0] if len(out) == 1 else out

    def _buffer(self, name: str) -> Optional[Tensor]:
        """The Tensor numpy data for input `name` is copied into (see `_inputs`)."""
        if name not in self._inputs:
            buf = Tensor(np.zeros(self.function.input_shapes[name], np.float32), requires_grad=False)
            data = buf.realize_cached_data()
            cpu = getattr(data.device, "name", "") == "cpu" and hasattr(data, "_handle")
            self._inputs[name] = buf if cpu else None
        return self._inputs[name]

    def ir(self, stage: str = "final") -> str:
        """The IR at `stage`, as `CompiledFunction.ir` (call the model once first)."""
        return self.forward.ir(stage)


def _identifier(name: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return out if out and not out[0].isdigit() else "m_" + out


def load(source: ModelSource, input_shapes=None) -> ImportedModel:
    """The ONNX model at `source` (a path, bytes or ModelProto) as a compiled callable.

    `input_shapes` (a dict by input name, or a list in input order) overrides the declared
    input shapes: e.g. a batch of 8 for a model saved with batch 1, or sizes for dynamic
    dimensions. Raises `InvalidModelError` for an unreadable or unsafe file and
    `UnsupportedModelError` (listing every problem) before anything runs."""
    label = os.path.basename(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else None
    return ImportedModel(read_model(source), input_shapes, label=label)


def supported_ops() -> list[str]:
    """The ONNX op types the importer converts."""
    return sorted(CONVERTERS)


__all__ = ["load", "ImportedModel", "OnnxFunction", "supported_ops", "as_input"]
