"""Activations stay in needle's NHWC conv layout through chains of convs, pools,
normalizations, concats and elementwise ops (needle/onnx/layout.py): the final IR permutes at
the graph's input and output only; a BatchNormalization after a conv is folded into its
weights; the results match onnxruntime."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import helper, numpy_helper

import needle.onnx
from tests.onnx.test_import import _init, _io, _model

rng = np.random.default_rng(1)


def residual_cnn():
    """Conv+BN+Relu, a residual Sum, a per-channel Mul by a constant, Clip, Concat of
    channels, both pools, a conv whose output feeds a transposing op, GlobalMaxPool."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Sum", ["c2", "r1"], ["res"]),
        helper.make_node("Mul", ["res", "per_channel"], ["scaled"]),
        helper.make_node("Clip", ["scaled", "lo", "hi"], ["clipped"]),
        helper.make_node("MaxPool", ["clipped"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["clipped"], ["p2"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("Concat", ["p1", "p2"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w3"], ["c3"], kernel_shape=[1, 1]),
        helper.make_node("Transpose", ["c3"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("GlobalMaxPool", ["t"], ["y"]),
    ]
    inits = [_init("w1", 6, 3, 3, 3), _init("s", 6), _init("bb", 6), _init("m", 6),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 6).astype(np.float32), "v"),
             _init("w2", 6, 6, 3, 3), _init("b2", 6), _init("per_channel", 1, 6, 1, 1),
             numpy_helper.from_array(np.float32(-0.5), "lo"), numpy_helper.from_array(np.float32(0.7), "hi"),
             _init("w3", 5, 12, 1, 1)]
    return _model(nodes, [_io("x", [2, 3, 9, 9])], [_io("y", [2, 5, 1, 1])], inits)


def test_cnn_chain_stays_nhwc_and_matches_onnxruntime():
    model = residual_cnn()
    imported = needle.onnx.load(model)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(imported(x).numpy(), want, rtol=1e-4, atol=1e-5)
    # the input's permute to NHWC, and the Transpose (merged with the permute back to NCHW)
    assert imported.ir("final").count("= Permute(") == 2
    assert imported.function.folded == {1: 0}  # the BatchNormalization folded into the first conv



def test_conv_bias_is_a_broadcast_of_its_channels():
    """A conv's bias and a per-channel constant stay constants of their channels, broadcast
    by a view in the graph: not constants as large as the conv's output (beyond constant
    folding's size limit), which the conv's fused epilogue would read from memory."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Mul", ["c", "per_channel"], ["m"]),
             helper.make_node("Relu", ["m"], ["y"])]
    model = _model(nodes, [_io("x", [2, 3, 31, 29])], [_io("y", [2, 7, 16, 15])],
                   [_init("w", 7, 3, 3, 3), _init("b", 7), _init("per_channel", 1, 7, 1, 1)])
    imported = needle.onnx.load(model)
    x = rng.standard_normal((2, 3, 31, 29)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(imported(x).numpy(), want, rtol=1e-4, atol=1e-5)
    ir = imported.ir("final")
    full = [line for line in ir.splitlines() if "[2,16,15,7]" in line and ("const(" in line or 'role="const"' in line)]
    assert all("value=(" not in line and "input(" not in line for line in full), full  # scalar fills only
    assert ir.count("= BroadcastTo(") == 2
