"""`needle.onnx.export`: a needle model or function as an ONNX file.

The forward pass is traced the way `@needle.compile` traces it (modules in eval mode,
restored afterwards), the graph passes make it primitive (decompose, simplify), and each
needle op becomes one or a few ONNX nodes (`export_ops.EXPORTERS`). Tensor arguments are
the graph inputs; parameters and other tensors the function reads are initializers.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any, Callable, Iterator, Sequence, Union

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..autograd import Tensor
from ..compile import CompiledFunction, trace_graph
from ..guards import parameter_names
from ..ir.graph import Graph
from ..nn.nn_basic import named_tensors
from ..trace import state as trace_state
from .export_batch import batch_coefficients, batch_dims, with_batch
from .export_emit import ONNX_DTYPES, Emitter, ExportError, at_line
from .export_ops import EXPORTERS

__all__ = ["export", "ExportError", "MIN_OPSET"]

#: the oldest opset written (axes as inputs of ReduceSum, Split, Squeeze, Unsqueeze from 13;
#: Reshape's allowzero from 14)
MIN_OPSET = 14


def export(model_or_fn: Callable, example_args: Union[Any, Sequence[Any]], path: Union[str, os.PathLike],
           opset: int = 17, dynamic_batch: bool = False) -> onnx.ModelProto:
    """Trace `model_or_fn(*example_args)` and write it to `path` as an ONNX model (returned).

    `model_or_fn`: a Module, a function of Tensors, a `@needle.compile`d function or an
    imported ONNX model (`needle.onnx.load`). `example_args`: one argument or a tuple/list
    of them (Tensors or numpy arrays: the graph inputs, named after the function's
    parameters, or an imported model's `input_names`). The outputs are the returned
    Tensors, nested tuples flattened, named `output0`, `output1`, ... `dynamic_batch`: axis
    0 of every input and output is the symbolic dimension `batch`."""
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ExportError(f"opset {opset}: needle writes opsets {MIN_OPSET} to {onnx.defs.onnx_opset_version()}")
    args = tuple(example_args) if isinstance(example_args, (tuple, list)) else (example_args,)
    args = tuple(Tensor(a, requires_grad=False) if isinstance(a, np.ndarray) else a for a in args)
    fn = _traced_function(model_or_fn)
    names = getattr(model_or_fn, "input_names", None)
    if not isinstance(names, list) or len(names) != len(args):
        names = parameter_names(fn, len(args))
    with _eval_mode(fn, args):
        if dynamic_batch:
            b1 = max(_batch_size(args), 2)
            args = with_batch(args, b1)
            graph, bindings, n_out = _trace(fn, args)
            coeffs = batch_coefficients(graph, _trace(fn, with_batch(args, b1 + 1))[0], b1, b1 + 1)
        else:
            graph, bindings, n_out = _trace(fn, args)
            coeffs = None
    model = _to_onnx(graph, bindings, n_out, args, names, _tensor_names(fn, args), opset, coeffs)
    onnx.checker.check_model(model, full_check=True)
    _write_atomically(model, os.fspath(path))
    return model


def exportable_ops() -> list:
    """The needle ops with an ONNX exporter."""
    return sorted(EXPORTERS)


# ---- tracing ----------------------------------------------------------------------------
def _trace(fn: Callable, args: tuple) -> tuple[Graph, list, int]:
    """The primitive graph of fn(*args), its inputs' bindings, and how many outputs it returns."""
    def flat(*a):
        return tuple(_flatten(fn(*a)))

    flat.__qualname__ = getattr(fn, "__qualname__", "model")
    return trace_graph(flat, args)


def _flatten(value: Any) -> Iterator[Tensor]:
    """The Tensors of a returned value, nested tuples and lists flattened in order."""
    if isinstance(value, (tuple, list)):
        for v in value:
            yield from _flatten(v)
    elif isinstance(value, Tensor):
        yield value
    elif value is not None:
        raise ExportError(f"export: the function returns a {type(value).__name__}; return Tensors "
                          "(or nested tuples of them)")


def _traced_function(obj: Any) -> Callable:
    """The Python function to trace: a module's or model's `forward`, with a compiled
    function (`@needle.compile`, an imported ONNX model's forward) unwrapped."""
    fn = obj.forward if hasattr(obj, "forward") else obj
    return fn.fn if isinstance(fn, CompiledFunction) else fn


def _is_module(obj: Any) -> bool:
    return hasattr(obj, "forward") and hasattr(obj, "named_modules")


@contextlib.contextmanager
def _eval_mode(fn: Callable, args: tuple) -> Iterator[None]:
    """Every module `fn` reaches (its instance, closure, globals, arguments) in eval mode;
    each module's training flag is restored afterwards."""
    modules = {id(m): m for _, root in trace_state.roots(fn, args) if _is_module(root)
               for _, m in root.named_modules()}
    flags = [(m, m.training) for m in modules.values()]
    for m, _ in flags:
        m.training = False
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def _batch_size(args: tuple) -> int:
    tensors = [a for a in args if isinstance(a, Tensor)]
    if not tensors or not tensors[0].shape:
        raise ExportError("dynamic_batch needs a Tensor argument with a batch axis (axis 0)")
    return tensors[0].shape[0]


# ---- the ONNX model ---------------------------------------------------------------------
def _to_onnx(graph: Graph, bindings: list, n_out: int, args: tuple, names: list, tensor_names: dict,
             opset: int, coeffs) -> onnx.ModelProto:
    missing = [n for n in graph.nodes if n.op not in ("input", "const") and n.op not in EXPORTERS]
    if missing:
        listed = "\n".join(f"  {n.op}{at_line(n)}" for n in missing)
        raise ExportError(f"export: no ONNX exporter for {len(missing)} node(s) of {graph.name}:\n{listed}\n"
                          f"ops that export: {', '.join(exportable_ops())}")
    arg_nodes = [(n, b) for n, b in zip(graph.inputs, bindings) if b[0] == "arg"]
    e = Emitter(graph, opset, coeffs, batch_source=names[arg_nodes[0][1][1]] if arg_nodes else "")
    inputs = []
    for node, binding in zip(graph.inputs, bindings):
        if binding[0] == "arg":
            e.values[node.id] = names[binding[1]]
            inputs.append(_value_info(e.values[node.id], node, coeffs))
            continue
        value = _bound_value(binding, args)
        name = tensor_names.get(id(value), node.attr("name"))
        e.values[node.id] = name if name not in e.values.values() else node.attr("name")
        e.initializers.append(numpy_helper.from_array(
            np.asarray(value.numpy() if isinstance(value, Tensor) else value, dtype=node.type.dtype)
            .reshape(node.type.shape), e.values[node.id]))
    for node in graph.nodes:
        if node.op == "const":
            e.values[node.id] = _const(e, node)
        elif node.op != "input":
            e.values[node.id] = EXPORTERS[node.op](e, node)
    outputs = []
    for i, out in enumerate(graph.outputs[:n_out]):
        e.nodes.append(helper.make_node("Identity", [e.values[out]], [f"output{i}"], name=f"output{i}"))
        outputs.append(_value_info(f"output{i}", graph.node(out), coeffs))
    onnx_graph = helper.make_graph(e.nodes, graph.name, inputs, outputs, e.initializers)
    opsets = [helper.make_opsetid("", opset)]
    # the oldest IR version that holds the opset, so that older runtimes read the file too
    return helper.make_model(onnx_graph, producer_name="needle", opset_imports=opsets,
                             ir_version=helper.find_min_ir_version_for(opsets))


def _value_info(name: str, node, coeffs) -> onnx.ValueInfoProto:
    dims = batch_dims(node, coeffs or {})
    return helper.make_tensor_value_info(name, ONNX_DTYPES[node.type.dtype], dims)


def _bound_value(binding: tuple, args: tuple) -> Union[Tensor, np.ndarray]:
    """What a graph input bound to a parameter, state, constant or hyper-parameter holds now."""
    kind = binding[0]
    if kind == "hyper":
        return np.float32(getattr(binding[1], binding[2]))
    if kind == "const":
        value = binding[1]
        return value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    return trace_state.resolve_binding(binding, args, {})


def _tensor_names(fn: Callable, args: tuple) -> dict:
    """id(tensor) -> dotted name (`linear.weight`; a module reached from a function keeps
    its variable's name first) for the tensors of the modules `fn` reaches."""
    out: dict = {}
    for root_name, root in trace_state.roots(fn, args):
        if _is_module(root):
            prefix = "" if root_name == "self" else f"{root_name}."
            for name, t in named_tensors(root).items():
                out.setdefault(id(t), prefix + name)
    return out


def _const(e: Emitter, node) -> str:
    """A `const` node: its literal, or a scalar expanded to its shape."""
    value = np.asarray(node.attr("value"), dtype=node.type.dtype)
    if value.shape == tuple(node.type.shape):
        return e.const(value, node.type.dtype)
    return e.add("Expand", [e.const(value, node.type.dtype), e.shape(node)])


def _write_atomically(model: onnx.ModelProto, path: str) -> None:
    """Write the model to a temporary file next to `path`, then rename it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".needle-export-", suffix=".onnx", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
