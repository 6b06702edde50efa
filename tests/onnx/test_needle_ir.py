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


def test_onnx_ops_are_located_at_their_nodes(capsys):
    """Each op of an imported model carries its ONNX node (the file, op type, name and place
    in the graph) as its source location, which the text IR prints and parses back."""
    from needle.ir import parse_graph

    assert main(["--after", "input", MODEL]) == 0
    text = capsys.readouterr().out
    graph = parse_graph(text[text.index("graph @"):])
    model = onnx.load(MODEL)
    located = [n for n in graph.nodes if n.loc is not None]
    assert located and all(n.loc.file.startswith("light_squeezenet.onnx (") for n in located)
    for n in located:
        node = model.graph.node[n.loc.line - 1]
        assert n.loc.file == f"light_squeezenet.onnx ({node.op_type} {node.name!r})"
    assert {model.graph.node[n.loc.line - 1].op_type for n in located if n.op == "Conv"} == {"Conv"}
