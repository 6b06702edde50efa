"""`needle.onnx.export`: onnxruntime reproduces needle's eager outputs (within 1e-5 of the
output's norm) for the course models and for one function per exported op; dynamic batch;
the error for ops without an exporter; export -> `needle.onnx.load` round trips."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import needle as ndl  # noqa: E402
import needle.onnx  # noqa: E402
from needle import ops  # noqa: E402
from needle.apps.mlp_resnet import MLPResNet  # noqa: E402
from needle.apps.models import LanguageModel, ResNet9  # noqa: E402
from needle.onnx.export import ExportError, _flatten, _trace  # noqa: E402
from needle.onnx.export_ops import EXPORTERS  # noqa: E402

RTOL = 1e-5


def run_onnx(path, feeds: list) -> list:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: a for i, a in zip(session.get_inputs(), feeds)})


def eager(fn, feeds: list) -> list:
    return [t.numpy() for t in _flatten(fn(*[ndl.Tensor(a, requires_grad=False) for a in feeds]))]


def assert_close(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert np.linalg.norm(g - w) <= RTOL * np.linalg.norm(w) + 1e-7, np.abs(g - w).max()


def export_and_compare(fn, feeds: list, tmp_path, **kw) -> onnx.ModelProto:
    path = tmp_path / "model.onnx"
    model = needle.onnx.export(fn, feeds, path, **kw)
    assert_close(run_onnx(path, feeds), eager(fn, feeds))
    return model


def randn(*shape) -> np.ndarray:
    return np.random.randn(*shape).astype(np.float32)


def positive(*shape) -> np.ndarray:
    return (np.abs(np.random.randn(*shape)) + 0.5).astype(np.float32)


def ids(n: int, *shape) -> np.ndarray:
    return np.random.randint(0, n, shape).astype(np.float32)


# ---- the course models ------------------------------------------------------------------
def course_models():
    return {
        "mlp_resnet": (lambda: MLPResNet(20, 16, num_blocks=2), lambda b: [randn(b, 20)]),
        "resnet9": (ResNet9, lambda b: [randn(b, 3, 32, 32)]),
        "lstm_lm": (lambda: LanguageModel(8, 30, 12, num_layers=2, seq_model="lstm", seq_len=5),
                    lambda b: [ids(30, 5, b)]),
        "transformer_lm": (lambda: LanguageModel(8, 30, 12, num_layers=2, seq_model="transformer", seq_len=5),
                           lambda b: [ids(30, 5, b)]),
    }


@pytest.mark.parametrize("name", list(course_models()))
def test_course_model_matches_onnxruntime(name, tmp_path):
    make, inputs = course_models()[name]
    np.random.seed(0)
    model = make()
    assert model.training
    model_proto = needle.onnx.export(model, inputs(2), tmp_path / "m.onnx")
    assert model.training  # eval mode only while exporting
    onnx.checker.check_model(model_proto, full_check=True)
    assert [i.name for i in model_proto.graph.input] == ["x"]
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in model_proto.graph.initializer}
    for key, value in model.state_dict().items():  # parameters and buffers, by their state_dict names
        np.testing.assert_array_equal(initializers[key], value)
    model.eval()
    feeds = inputs(2)  # fresh inputs, not the example ones
    assert_close(run_onnx(tmp_path / "m.onnx", feeds), eager(model, feeds))


@pytest.mark.parametrize("name", ["mlp_resnet", "resnet9"])
def test_dynamic_batch_runs_at_another_batch_size(name, tmp_path):
    make, inputs = course_models()[name]
    np.random.seed(1)
    model = make()
    proto = needle.onnx.export(model, inputs(1), tmp_path / "m.onnx", dynamic_batch=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    model.eval()
    for batch in (3, 5):
        feeds = inputs(batch)
        assert_close(run_onnx(tmp_path / "m.onnx", feeds), eager(model, feeds))


def test_dynamic_batch_of_a_loop_over_axis_0_is_refused(tmp_path):
    lm = LanguageModel(8, 30, 12, seq_model="lstm", seq_len=4)
    with pytest.raises(ExportError, match="changes with the batch size"):
        needle.onnx.export(lm, [ids(30, 4, 2)], tmp_path / "m.onnx", dynamic_batch=True)
    assert not (tmp_path / "m.onnx").exists()


def test_dynamic_batch_of_a_batch_dependent_attribute_names_it(tmp_path):
    def mean_over_batch(x):
        return x.sum(axes=(0,)) / x.shape[0]

    with pytest.raises(ExportError, match=r"scalar=2 of DivScalar \(at .*test_export.py:\d+\) depends on the batch"):
        needle.onnx.export(mean_over_batch, [randn(1, 3)], tmp_path / "m.onnx", dynamic_batch=True)


# ---- one function per exporter ------------------------------------------------------------
W = randn(3, 3, 4, 5)
TABLE = randn(10, 6)

#: label -> (function, input makers, the needle ops it exercises)
OP_CASES = {
    "add": (lambda a, b: a + b, [randn, randn], {"EWiseAdd"}),
    "mul": (lambda a, b: a * b, [randn, randn], {"EWiseMul"}),
    "div": (lambda a, b: a / b, [randn, positive], {"EWiseDiv"}),
    "pow": (lambda a, b: a ** b, [positive, randn], {"EWisePow"}),
    "minimum": (lambda a, b: ops.minimum(a, b), [randn, randn], {"Minimum"}),
    "matmul": (lambda a, b: a @ b.reshape((6, 4)), [randn, randn], {"MatMul", "Reshape"}),
    "batched_matmul": (lambda a, b: a.reshape((2, 4, 3)) @ b.reshape((2, 3, 4)), [randn, randn], {"MatMul"}),
    "neg_exp_tanh": (lambda a: ops.tanh(ops.exp(-a)), [randn], {"Negate", "Exp", "Tanh"}),
    "log_sqrt": (lambda a: ops.log(a) + ops.sqrt(a), [positive], {"Log", "Sqrt"}),
    "sin_cos_abs": (lambda a: ops.sin(a) * ops.cos(abs(a)), [randn], {"Sin", "Cos", "Abs"}),
    "erf": (lambda a: ops.erf(a), [randn], {"Erf"}),
    "to_device": (lambda a: ops.to_device(a, ndl.cpu()) * 2.0, [randn], {"ToDevice"}),
    "scalars": (lambda a: (a + 1.5) * 2.0 / 3.0, [randn], {"AddScalar", "MulScalar", "DivScalar"}),
    "power_scalar": (lambda a: a ** 3 + a ** 0.5, [positive], {"PowerScalar"}),
    "compare": (lambda a, b: (a > b) + (a >= b) + (a < 0.2) + (a <= b) + ops.compare(a, b, "eq")
                + ops.compare(a, a * 1.0, "ne"), [randn, randn], {"Compare"}),
    "where": (lambda c, a, b: ops.where(c > 0, a, b), [randn, randn, randn], {"Where"}),
    "sum": (lambda a: a.sum(axes=(1,)) * 2.0 + a.sum().reshape((1,)), [randn], {"Summation"}),
    "max_min": (lambda a: a.max(axes=1) + ops.min(a, axes=(0,)).reshape((6, 1)).sum(), [randn],
                {"Max", "Min"}),
    "argmax": (lambda a: a.argmax(axis=1) + a.argmax().reshape((1,)), [randn], {"Argmax"}),
    "broadcast_to": (lambda a, b: a.reshape((4, 1)).broadcast_to((4, 6)) * b.reshape((1, 6)).broadcast_to((4, 6)),
                     [lambda *s: randn(4), lambda *s: randn(6)], {"BroadcastTo"}),
    "transpose": (lambda a: ops.transpose(a) + ops.transpose(a.reshape((2, 3, 4)), (0, 2)).reshape((6, 4)),
                  [randn], {"Transpose"}),
    "permute": (lambda a: ops.permute(a.reshape((2, 3, 4)), (2, 0, 1)), [randn], {"Permute"}),
    "get_item": (lambda a: a[1:4, ::2], [randn], {"GetItem"}),
    "flip": (lambda a: ops.flip(a, (0, 1)), [randn], {"Flip"}),
    "stack_concat": (lambda a, b: ops.concat([ops.stack([a, b], axis=1).reshape((4, 12)), a], axis=1), [randn, randn],
                     {"Stack", "Concat", "MakeTensorTuple"}),
    "split": (lambda a: ops.split(a, axis=1)[2] * ops.split(a, axis=1)[0], [randn], {"Split", "TupleGetItem"}),
    "gather": (lambda i: ops.gather(ndl.Tensor(TABLE), i), [lambda *s: ids(10, 3, 2)], {"Gather"}),
    "conv": (lambda x: ops.conv(x, ndl.Tensor(W), stride=2, padding=1), [lambda *s: randn(2, 7, 7, 4)], {"Conv"}),
}


@pytest.mark.parametrize("label", list(OP_CASES))
def test_op_matches_onnxruntime(label, tmp_path):
    fn, makers, _ = OP_CASES[label]
    np.random.seed(2)
    export_and_compare(fn, [make(4, 6) for make in makers], tmp_path)


@pytest.mark.parametrize("opset", [14, 18, 21])
def test_opsets(opset, tmp_path):
    fn = lambda a: a.max(axes=1) + ops.min(a, axes=(1,)) + a.sum(axes=1)  # noqa: E731
    model = export_and_compare(fn, [randn(4, 6)], tmp_path, opset=opset)
    assert model.opset_import[0].version == opset
    assert model.ir_version == onnx.helper.find_min_ir_version_for(model.opset_import)


def test_reshape_to_a_size_0_axis(tmp_path):
    export_and_compare(lambda a: a.reshape((0, 5)), [np.zeros((5, 0), np.float32)], tmp_path)


def test_every_exporter_has_a_case():
    """The cases exercise every exporter, and each case's graph holds the ops it names."""
    covered = set()
    for label, (fn, makers, names) in OP_CASES.items():
        graph = _trace(fn, tuple(ndl.Tensor(make(4, 6)) for make in makers))[0]
        assert names <= {n.op for n in graph.nodes}, label
        covered |= names
    assert covered == set(EXPORTERS)


def test_docs_list_the_exported_ops():
    text = (Path(__file__).resolve().parents[2] / "docs" / "onnx.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith("Exported ops:"))
    assert set(re.findall(r"`(\w+)`", line)) == set(EXPORTERS)


# ---- errors and files ---------------------------------------------------------------------
def test_op_without_exporter_lists_each_node_with_its_line(tmp_path):
    def fn(x):
        noise = ndl.init.rand(*x.shape)
        return ops.index_add(x * noise, ndl.Tensor(np.zeros(4, np.float32)), 3)  # line of IndexAdd

    with pytest.raises(ExportError) as err:
        needle.onnx.export(fn, [randn(4, 2)], tmp_path / "m.onnx")
    message = str(err.value)
    assert "no ONNX exporter for 2 node(s)" in message
    here = os.path.basename(__file__)
    line = fn.__code__.co_firstlineno
    assert "RandomUniform (at " in message and f"{here}:{line + 1}" in message
    assert "IndexAdd (at " in message and f"{here}:{line + 2}" in message
    assert not (tmp_path / "m.onnx").exists()


def test_bad_opset_and_non_tensor_output(tmp_path):
    with pytest.raises(ExportError, match="opset 9"):
        needle.onnx.export(lambda a: a, [randn(2)], tmp_path / "m.onnx", opset=9)
    with pytest.raises(ExportError, match="returns a str"):
        needle.onnx.export(lambda a: "no", [randn(2)], tmp_path / "m.onnx")


def test_export_replaces_the_file_atomically(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    needle.onnx.export(lambda a: a * 2.0, [randn(3)], path)
    onnx.checker.check_model(onnx.load(str(path)))
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


# ---- round trip through needle's importer -------------------------------------------------
@pytest.mark.parametrize("name", list(course_models()))
def test_round_trip_export_load(name, tmp_path):
    if not hasattr(needle.onnx, "load"):
        pytest.skip("needle.onnx.load does not exist yet")
    make, inputs = course_models()[name]
    np.random.seed(3)
    model = make()
    needle.onnx.export(model, inputs(2), tmp_path / "m.onnx")
    loaded = needle.onnx.load(str(tmp_path / "m.onnx"))
    model.eval()
    feeds = inputs(2)
    got = loaded(*feeds)
    got = [t.numpy() for t in (got if isinstance(got, (tuple, list)) else [got])]
    want = eager(model, feeds)
    assert_close(got, want)
    again = needle.onnx.export(loaded, inputs(2), tmp_path / "again.onnx")  # and the imported model back
    assert [i.name for i in again.graph.input] == ["x"]
    assert_close(run_onnx(tmp_path / "again.onnx", feeds), want)


def test_compiled_function_exports_its_python_function(tmp_path):
    export_and_compare(ndl.compile(lambda a, b: ops.tanh(a @ b)), [randn(3, 4), randn(4, 2)], tmp_path)
