"""ONNX's node test cases (generated from the `onnx` package's case definitions, nothing
downloaded) for the ops needle imports, run through `needle.onnx.backend`."""
from __future__ import annotations

import functools
import warnings

import numpy as np
import onnx

from needle.onnx import supported_ops
from needle.onnx.backend import NeedleBackend

#: element types of a case's inputs: float32 data, and int/bool inputs folded at import
_INPUT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL}
_OUTPUT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL, onnx.TensorProto.INT64}


def _elem(v: onnx.ValueInfoProto) -> int:
    return v.type.tensor_type.elem_type


def eligible(case) -> bool:
    """A case of supported ops only, on float32 data (at least one float32 input)."""
    graph = case.model.graph
    supported = set(supported_ops())
    return (all(n.op_type in supported and n.domain in ("", "ai.onnx") for n in graph.node)
            and all(_elem(v) in _INPUT_TYPES for v in graph.input)
            and any(_elem(v) == onnx.TensorProto.FLOAT for v in graph.input)
            and all(_elem(v) in _OUTPUT_TYPES for v in graph.output)
            and all(v.type.HasField("tensor_type") for v in list(graph.input) + list(graph.output)))


@functools.cache
def cases() -> dict:
    """The eligible cases by name."""
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {c.name: c for c in collect_testcases(None) if c.model is not None and eligible(c)}


def run_case(case, compiled: bool) -> None:
    """Every data set of `case` through the backend, compared with ONNX's expected outputs
    (the case's own rtol and atol, at least 1e-3 and 1e-5)."""
    rep = NeedleBackend.prepare(case.model, compiled=compiled)
    for inputs, expected in case.data_sets:
        outputs = rep.run([np.asarray(a) for a in inputs])
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected):
            want = np.asarray(want)
            assert got.shape == want.shape, f"shape {got.shape}, expected {want.shape}"
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                       rtol=max(case.rtol, 1e-3), atol=max(case.atol, 1e-5))
