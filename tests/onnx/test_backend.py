"""needle.onnx.backend: ONNX's backend interface (prepare, run_model, run_node, supports_device)."""
from __future__ import annotations

import numpy as np
from onnx import helper
from onnx.backend.base import Backend

from needle.onnx import backend
from tests.onnx.test_import import _ort, cnn


def test_interface():
    assert issubclass(backend.NeedleBackend, Backend)
    assert backend.supports_device("CPU")
    out = backend.run_node(helper.make_node("Less", ["a", "b"], ["y"]),
                           [np.array([-1.0, 2.0], np.float32), np.zeros(2, np.float32)])
    assert out.y.dtype == np.bool_ and out.y.tolist() == [True, False]


def test_prepare_and_run_model():
    model = cnn(batch=2)
    x = np.random.default_rng(1).standard_normal((2, 3, 17, 17)).astype(np.float32)
    rep = backend.prepare(model)
    np.testing.assert_allclose(rep.run([x])[0], _ort(model, x=x), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(backend.run_model(model, {"x": x}).y, _ort(model, x=x), rtol=1e-4, atol=1e-6)
