"""needle.onnx.load against onnxruntime on fresh random inputs (a small CNN, a transformer
block with shape computations), input_shapes, and the import errors: every unsupported node
listed at once, dynamic shapes, malformed and truncated files, external data outside the
model's folder, huge declared sizes."""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import needle as ndl
import needle.onnx
from needle.onnx import InvalidModelError, UnsupportedModelError

rng = np.random.default_rng(0)


def _init(name, *shape, scale=0.3):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _ints(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "m", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _io(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def cnn(batch="N"):
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], group=2, kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
        helper.make_node("AveragePool", ["c2"], ["a2"], kernel_shape=[2, 2], ceil_mode=1),
        helper.make_node("GlobalAveragePool", ["a2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    inits = [_init("w1", 8, 3, 3, 3), _init("b1", 8), _init("s", 8), _init("bb", 8), _init("m", 8),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "v"),
             _init("w2", 8, 4, 3, 3), _init("wf", 10, 8), _init("bf", 10)]
    return _model(nodes, [_io("x", [batch, 3, 17, 17])], [_io("y", [batch, 10])], inits)


def transformer_block(seq=6, dim=8):
    """Self-attention with shapes computed in the graph (Shape, Gather, Concat, Reshape)."""
    heads = 2
    nodes = [
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Gather", ["xs", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "heads_shape"], ["qshape"], axis=0),
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("Reshape", ["q", "qshape"], ["q4"]),
        helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["q4"], ["kh"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["qh", "kh"], ["att"]),
        helper.make_node("Div", ["att", "scale"], ["atts"]),
        helper.make_node("Softmax", ["atts"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "qh"], ["o"]),
        helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ot", "xs"], ["o3"]),
        helper.make_node("Add", ["x", "o3"], ["res"]),
        helper.make_node("LayerNormalization", ["res", "g", "b"], ["ln"], axis=-1),
        helper.make_node("MatMul", ["ln", "w1"], ["h"]),
        helper.make_node("Gelu", ["h"], ["gh"]),
        helper.make_node("ReduceMean", ["gh", "axis_last"], ["y"], keepdims=0),
    ]
    inits = [_ints("zero", 0), _ints("axis0", [0]), _ints("heads_shape", [seq, heads, dim // heads]),
             _ints("axis_last", [-1]), _init("wq", dim, dim), _init("g", dim), _init("b", dim),
             _init("w1", dim, 16), numpy_helper.from_array(np.float32(np.sqrt(dim // heads)), "scale")]
    return _model(nodes, [_io("x", [2, seq, dim])], [_io("y", [2, seq])], inits, opset=20)


def _ort(model, **feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


@pytest.mark.parametrize("batch", [1, 8])
def test_cnn_matches_onnxruntime(batch):
    model = cnn()
    imported = needle.onnx.load(model, input_shapes={"x": [batch, 3, 17, 17]})
    x = rng.standard_normal((batch, 3, 17, 17)).astype(np.float32)
    got = imported(x)
    assert isinstance(got, ndl.Tensor) and imported.forward.stats["executor"] in ("native", "cuda")
    np.testing.assert_allclose(got.numpy(), _ort(model, x=x), rtol=1e-4, atol=1e-6)
    x2 = rng.standard_normal((batch, 3, 17, 17)).astype(np.float32)   # no recompile for new values
    np.testing.assert_allclose(imported(ndl.Tensor(x2)).numpy(), _ort(model, x=x2), rtol=1e-4, atol=1e-6)


def test_transformer_block_matches_onnxruntime():
    model = transformer_block()
    imported = needle.onnx.load(model.SerializeToString())
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    np.testing.assert_allclose(imported(x=x).numpy(), _ort(model, x=x), rtol=1e-4, atol=1e-5)
    assert "Shape" not in imported.ir("final")  # shape computations were folded at import


def test_unsupported_nodes_are_listed_together():
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("NonZero", ["a"], ["b"], name="nz"),
             helper.make_node("Pad", ["x", "pads"], ["c"], mode="wrap", name="pad"),
             helper.make_node("Reshape", ["x", "b"], ["y"], name="dyn")]
    model = _model(nodes, [_io("x", [2, 3])], [_io("y", [2, 3])], [_ints("pads", [0, 1, 0, 1])], opset=19)
    with pytest.raises(UnsupportedModelError) as err:
        needle.onnx.load(model)
    message = str(err.value)
    assert len(err.value.problems) == 3
    for part in ("'nz' (NonZero, opset 19)", "'pad' (Pad, opset 19): mode='wrap'", "'dyn' (Reshape, opset 19)"):
        assert part in message


def test_dynamic_input_shape_needs_input_shapes():
    with pytest.raises(UnsupportedModelError, match=r"dynamic shape \[.N., 3, 17, 17\] \(give input_shapes\)"):
        needle.onnx.load(cnn())
    assert needle.onnx.load(cnn(), input_shapes=[[2, 3, 17, 17]]).input_names == ["x"]


def test_malformed_and_truncated_files(tmp_path):
    data = cnn(batch=1).SerializeToString()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.onnx").write_bytes(b"\xff\x00not a model" * 10)
    for name in ("truncated.onnx", "garbage.onnx"):
        with pytest.raises(InvalidModelError, match="not .*ONNX model|checker"):
            needle.onnx.load(str(tmp_path / name))
    with pytest.raises(InvalidModelError, match="no such ONNX file"):
        needle.onnx.load(str(tmp_path / "missing.onnx"))


def test_external_data_outside_the_model_folder(tmp_path):
    model = cnn(batch=1)
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"\0" * 4096)
    w = next(t for t in model.graph.initializer if t.name == "wf")
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "320")):
        w.external_data.add(key=key, value=value)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "m.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(InvalidModelError, match="outside the model's folder"):
        needle.onnx.load(str(folder / "m.onnx"))


@pytest.mark.parametrize("offset,length", [("zero", "320"), ("0", "-5"), ("0", "1e3")])
def test_external_data_with_bad_offset_or_length(tmp_path, offset, length):
    """Offsets and lengths that are not non-negative integers: a clear error, not a ValueError."""
    model = cnn(batch=1)
    (tmp_path / "w.bin").write_bytes(b"\0" * 4096)
    w = next(t for t in model.graph.initializer if t.name == "wf")
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", offset), ("length", length)):
        w.external_data.add(key=key, value=value)
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(InvalidModelError, match="external data"):
        needle.onnx.load(str(tmp_path / "m.onnx"))


def test_huge_declared_sizes():
    big = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 12], raw_data=b"\0" * 16)
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])], [_io("x", [1, 1])], [_io("y", [1, 1])], [big])
    with pytest.raises(InvalidModelError, match="exceed the limit"):
        needle.onnx.load(model)
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_io("x", [1 << 30, 1 << 10])], [_io("y", [1 << 30, 1 << 10])], [])
    with pytest.raises(InvalidModelError, match="over the limit"):
        needle.onnx.load(model)


def test_unsupported_op_on_values_known_at_import_is_folded():
    """An op without a converter (Mod) computing on a static shape is folded at import."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Mod", ["s", "two"], ["m"]),
             helper.make_node("Add", ["x", "m"], ["y"])]
    model = _model(nodes, [_io("x", [3, 2])], [_io("y", [3, 2])], [_ints("two", [2])])
    x = rng.standard_normal((3, 2)).astype(np.float32)
    np.testing.assert_allclose(needle.onnx.load(model)(x).numpy(), x + np.array([1, 0], np.float32))


def test_windows_fold_as_a_balanced_tree():
    """A pool's windows (and variadic Max/Min/Sum) combine pairwise, then pairs of pairs: the
    fused kernel's chains of dependent ops are log2(n) long."""
    from needle.onnx.tensor_ops import fold
    assert fold(lambda a, b: f"({a}{b})", list("abcdefghi")) == "((((ab)(cd))((ef)(gh)))i)"
    assert fold(lambda a, b: f"({a}{b})", ["a"]) == "a"


@pytest.mark.parametrize("pool,attrs", [("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2]}),
                                        ("AveragePool", {"kernel_shape": [2, 2], "pads": [1, 1, 0, 0]}),
                                        ("GlobalMaxPool", {})])
def test_pool_of_a_channel_concat_pools_each_piece(pool, attrs):
    """A pool of a channel Concat (a SqueezeNet fire module's output) pools each piece and
    concatenates the pooled pieces, which the 1x1 conv after reads one GEMM each: nothing is
    copied into a concat buffer, and the output matches onnxruntime's."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["x", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Concat", ["r1", "r2"], ["cat"], axis=1),
             helper.make_node(pool, ["cat"], ["p"], **attrs),
             helper.make_node("Conv", ["p", "w3"], ["y"])]
    inits = [_init("w1", 5, 4, 1, 1), _init("b1", 5), _init("w2", 7, 4, 3, 3), _init("b2", 7), _init("w3", 6, 12, 1, 1)]
    model = _model(nodes, [_io("x", [2, 4, 11, 11])], [_io("y", None)], inits)
    model = onnx.shape_inference.infer_shapes(model)
    imported = needle.onnx.load(model)
    x = rng.standard_normal((2, 4, 11, 11)).astype(np.float32)
    np.testing.assert_allclose(imported(x).numpy(), _ort(model, x=x), rtol=1e-4, atol=1e-5)
    if imported.forward.stats["executor"] == "native":   # no row copy of pieces into a concat buffer
        from needle.codegen.cpu.steps import CopyStep
        runner = next(iter(imported.forward._cache.values())).runner
        assert not any(isinstance(step, CopyStep) for step in runner.steps)


def test_numpy_inputs_reuse_one_buffer_safely():
    """numpy inputs are copied into one buffer per input, call after call: earlier results
    keep their values, a Tensor input is read where it is, and calls from several threads
    each see their own input."""
    import threading

    model = cnn()
    imported = needle.onnx.load(model, input_shapes={"x": [2, 3, 17, 17]})
    xs = [rng.standard_normal((2, 3, 17, 17)).astype(np.float32) for _ in range(4)]
    want = [_ort(model, x=x) for x in xs]
    first = imported(xs[0])
    second = imported(xs[1].astype(np.float64))   # converted to float32 on the way in
    third = imported(ndl.Tensor(xs[2]))
    for got, w in zip((first, second, third), want):
        np.testing.assert_allclose(got.numpy(), w, rtol=1e-4, atol=1e-6)
    results = []

    def call(k):
        for _ in range(20):
            results.append((k, imported(xs[k]).numpy()))
    threads = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 80
    for k, got in results:
        np.testing.assert_allclose(got, want[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("op", ["Identity", "Flatten"])
def test_an_output_that_is_the_input_keeps_its_values(op, compiled):
    """A model returning its input (or a view of it) gives results that later calls with
    other numpy data leave alone, compiled or eager."""
    from needle.onnx.importer import ImportedModel

    model = _model([helper.make_node(op, ["x"], ["y"])], [_io("x", [2, 3])], [_io("y", None)], [])
    imported = ImportedModel(model, compiled=compiled)
    first = imported(np.ones((2, 3), np.float32))
    imported(np.full((2, 3), 2.0, np.float32))
    np.testing.assert_array_equal(first.numpy().reshape(2, 3), np.ones((2, 3), np.float32))
