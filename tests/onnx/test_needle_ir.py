"""`needle-ir model.onnx` shows the IR of an imported ONNX model like a traced script's."""
from __future__ import annotations

import os

import onnx

from needle.cli.needle_ir import main

MODEL = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_squeezenet.onnx")


def test_needle_ir_shows_an_onnx_model(capsys):
    assert main(["--after", "decompose", MODEL]) == 0
    out = capsys.readouterr().out
    assert "# needle-ir: squeezenet_old" in out and "after decompose" in out and "Conv(" in out
