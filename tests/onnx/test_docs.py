"""docs/onnx.md lists exactly the ONNX ops the importer converts."""
from __future__ import annotations

import os

from needle.onnx.registry import op_table

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs", "onnx.md")


def test_supported_op_table_is_current():
    with open(DOCS) as f:
        assert op_table() in f.read(), "regenerate the table of docs/onnx.md with needle.onnx.registry.op_table()"
