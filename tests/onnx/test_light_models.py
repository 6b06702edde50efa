"""The nine real models that ship with the onnx package (onnx/backend/test/data/light):
each loads, compiles and matches its reference output, on the input ONNX's test runner
generates for them (arange(n) / n in the input's shape; the weights are ConstantOfShape fills)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import needle.onnx

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
          "squeezenet", "vgg19", "zfnet512"]


def runner_input(shape) -> np.ndarray:
    """The input `onnx.backend.test.runner` makes for a light model (generate_dummy_data)."""
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


@pytest.mark.parametrize("name", MODELS)
def test_light_model_matches_reference(name):
    model = needle.onnx.load(os.path.join(LIGHT, f"light_{name}.onnx"))
    (input_name,) = model.input_names
    expected = numpy_helper.to_array(onnx.load_tensor(os.path.join(LIGHT, f"light_{name}_output_0.pb")))
    got = model(runner_input(model.function.input_shapes[input_name])).numpy()
    assert model.forward.stats["executor"] in ("native", "cuda")
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-7)
