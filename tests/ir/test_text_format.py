"""The IR text format: print -> parse -> print is the identity; parse errors name the line."""
import math

import pytest

from needle.ir import (
    DTYPE_LONG, Graph, IRParseError, Node, SourceLoc, TensorType, make_attrs, parse_graph,
    parse_graphs, parse_type, parse_value, print_graph, to_dot, verify,
)
from needle.ops import OPS

from .samples import ALL, ELEMENTWISE, ODDS, SHAPES, TUPLES


@pytest.mark.parametrize("text", ALL, ids=["elementwise", "shapes", "tuples"])
def test_round_trip_text(text):
    g = parse_graph(text)
    assert print_graph(g) == text
    assert str(g) == text
    assert parse_graph(print_graph(g)) == g
    verify(g)


def test_samples_cover_the_registry_ops():
    used = {line.split("=", 1)[1].split("(")[0].strip()
            for text in ALL for line in text.splitlines() if line.strip().startswith("%")}
    expected = {
        "EWiseAdd", "EWiseMul", "EWiseDiv", "EWisePow", "AddScalar", "MulScalar", "DivScalar",
        "PowerScalar", "Negate", "Log", "Exp", "Tanh", "Compare", "Where", "Summation", "Max",
        "Argmax", "Reshape", "Permute", "Transpose", "BroadcastTo", "GetItem", "UnSlice", "Flip",
        "Dilate", "UnDilate", "ToDevice", "Gather", "IndexAdd", "MakeTensorTuple", "TupleGetItem",
        "Stack", "Split", "Concat", "MatMul", "Conv", "ReLU", "Sigmoid", "LogSumExp", "LogSoftmax",
        "input", "const", "grad"}
    assert expected <= used
    assert expected - {"input", "const", "grad"} <= set(OPS)


def test_parsed_structure():
    g = parse_graph(TUPLES)
    assert g.name == "tuples_and_linalg"
    split = g.node(1)
    assert split.op == "Split" and split.inputs == (0,) and split.attrs == (("axis", 0),)
    assert split.type == (TensorType((4,)),) * 3
    assert split.loc == SourceLoc("model.py", 20)
    assert g.node(6).type == (TensorType((4,)),)
    assert g.node(7).type == ()
    assert g.node(11).attr_dict == {"padding": 1, "stride": 2}
    assert g.node(15).attr("value") == ((1.0, -2.5), (3, 4e-10))
    assert isinstance(g.node(15).attr("value")[1][0], int)
    assert g.node(16).attr("value") == (((True,), (False,)),)
    assert g.node(16).type.dtype == "bool"
    assert g.outputs == (11, 12, 15, 16, 17, 18)
    s = parse_graph(SHAPES)
    assert s.node(16).type == TensorType((5,), "int64", "cpu")
    assert s.node(20).type == TensorType((), "float64", "cpu")
    assert s.node(3).attr("axes") is None
    assert s.node(12).type == TensorType(())


def test_float_attrs_round_trip_exactly():
    g = parse_graph(ELEMENTWISE)
    scalars = [n.attr("scalar") for n in g if n.op.endswith("Scalar")]
    assert -0.5 in scalars and 1e-07 in scalars and 1.5e+300 in scalars and 0.1 in scalars
    assert math.inf in scalars and -math.inf in scalars
    assert -2.5e-320 in scalars  # subnormal
    assert isinstance(g.node(8).attr("scalar"), int)
    for value in [0.1, 1 / 3, -0.0, 5e-324, 1.7976931348623157e308, 1e22, 123456789.125, -7.0]:
        assert parse_value(repr(value)) == value
        assert math.copysign(1, parse_value(repr(value))) == math.copysign(1, value)


def test_nan_round_trips_as_text():
    text = ELEMENTWISE.replace("{scalar=0.1}", "{scalar=nan}")
    g = parse_graph(text)
    assert math.isnan(g.node(23).attr("scalar"))
    assert print_graph(g) == text


def test_values():
    for text, value in [("None", None), ("True", True), ("False", False), ("()", ()),
                        ("(1,)", (1,)), ("(1, (2, 3.5))", (1, (2, 3.5))), ('"a b"', "a b"),
                        ("'single'", "single"), ("-3", -3), ("-inf", -math.inf), ("1e+20", 1e20)]:
        assert parse_value(text) == value
    for bad in ["(1, 2", "abc", "1 2", '"open', "[1]"]:
        with pytest.raises(IRParseError):
            parse_value(bad)


def test_types():
    assert parse_type("f32[] cpu") == TensorType(())
    assert parse_type("i32[1,2,3] cuda") == TensorType((1, 2, 3), "int32", "cuda")
    assert parse_type("float16[2] cpu") == TensorType((2,), "float16", "cpu")
    assert parse_type("(f32[1] cpu, (i64[] cpu))") == (TensorType((1,)), (TensorType((), "int64"),))
    assert set(DTYPE_LONG) >= {"f32", "f64", "i64", "i32", "bool"}
    for bad in ["f32[2,] cpu", "f32[2]", "f32[2]cpu", "f32 cpu", "(f32[] cpu", "f32[-1] cpu"]:
        with pytest.raises(IRParseError):
            parse_type(bad)


def test_odd_names_strings_ids_and_locations():
    graphs = parse_graphs(ODDS)
    assert [g.name for g in graphs] == ["<lambda>", "Model.forward"]
    assert graphs[0].nodes == () and graphs[0].outputs == ()
    g = graphs[1]
    assert g.node(7).attr("name") == 'we"ird\\ name\n\t\x01é'
    assert g.node(7).loc == SourceLoc("/tmp/dir with space/f.py", 120)
    assert g.outputs == (3, 7, 3)
    assert "".join(print_graph(x) for x in graphs) == ODDS
    verify(g)


def test_locs_false_and_comments():
    g = parse_graph(TUPLES)
    bare = print_graph(g, locs=False)
    assert "#" not in bare
    assert all(n.loc is None for n in parse_graph(bare))
    commented = "# a test case\n\n" + TUPLES.replace("  %2 =", "  # a comment line\n\n  %2 =")
    assert parse_graph(commented) == g


def test_attrs_are_sorted_when_parsed():
    text = ('graph @g {\n  %0 = input() {role="arg", name="x"} : f32[2] cpu\n  return %0\n}\n')
    g = parse_graph(text)
    assert g.node(0).attrs == (("name", "x"), ("role", "arg"))
    assert print_graph(g) == text.replace('{role="arg", name="x"}', '{name="x", role="arg"}')


def _build_mlp(depth=3, batch=8, width=16, loc=True):
    """An MLP forward + loss graph built programmatically, with hand-computed types."""
    nodes, f = [], lambda *s: TensorType(tuple(s))

    def add(op, inputs, attrs, type_):
        node_id = len(nodes)
        nodes.append(Node(node_id, op, tuple(inputs), make_attrs(attrs), type_,
                          SourceLoc("mlp.py", 10 + node_id) if loc and op != "input" else None))
        return node_id

    x = add("input", (), {"name": "x", "role": "arg"}, f(batch, width))
    h = x
    for i in range(depth):
        w = add("input", (), {"name": f"layers.{i}.weight", "role": "param"}, f(width, width))
        b = add("input", (), {"name": f"layers.{i}.bias", "role": "param"}, f(1, width))
        h = add("MatMul", (h, w), {}, f(batch, width))
        bb = add("BroadcastTo", (b,), {"shape": [batch, width]}, f(batch, width))
        h = add("EWiseAdd", (h, bb), {}, f(batch, width))
        h = add("ReLU", (h,), {}, f(batch, width))
    s = add("Summation", (h,), {"axes": (1,)}, f(batch))
    loss = add("DivScalar", (add("Summation", (s,), {"axes": None}, f()),), {"scalar": float(batch)}, f())
    wrt = tuple(n.id for n in nodes if n.op == "input" and n.attr("role") == "param")
    g = add("grad", (loss,) + wrt, {}, tuple(nodes[i].type for i in wrt))
    return Graph("mlp", tuple(nodes), (loss, g))


def test_programmatic_graph_round_trips_and_verifies():
    g = _build_mlp()
    verify(g)
    text = print_graph(g)
    assert parse_graph(text) == g
    assert print_graph(parse_graph(text)) == text
    assert "%3 = MatMul(%0, %1) : f32[8,16] cpu  # mlp.py:13" in text
    assert "BroadcastTo(%2) {shape=(8, 16)}" in text
    nolocs = parse_graph(print_graph(g, locs=False))
    assert nolocs == Graph(g.name, tuple(Node(n.id, n.op, n.inputs, n.attrs, n.type) for n in g), g.outputs)


def test_numpy_scalars_in_attrs_print_as_python_literals():
    import numpy as np

    node = Node(0, "const", (), make_attrs({"value": [np.float32(0.5), np.int64(2)]}), TensorType((2,)))
    g = Graph("np", (node,), (0,))
    assert "{value=(0.5, 2)}" in print_graph(g)
    bad = Graph("bad", (Node(0, "const", (), (("value", object()),), TensorType(())),), (0,))
    with pytest.raises(TypeError, match="no IR literal"):
        print_graph(bad)


@pytest.mark.parametrize("text, line, expected", [
    ("grph @g {\n  return\n}\n", 1, "graph @<name> {"),
    ("graph @g {\n  %0 = input() : f32[] cpu\n  %1 = Exp(%0 : f32[] cpu\n  return %1\n}\n", 3, "',' or ')'"),
    ("graph @g {\n  %0 = input() : f32[] cpu\n  %1 Exp(%0) : f32[] cpu\n  return %1\n}\n", 3, "'='"),
    ("graph @g {\n  %0 = input() : f32[] cpu\n  %1 = Exp(%0)\n  return %1\n}\n", 3, "':'"),
    ("graph @g {\n  %0 = input() : f32[2, cpu\n  return %0\n}\n", 2, "dimension"),
    ("graph @g {\n  %0 = input() {name=} : f32[] cpu\n  return %0\n}\n", 2, "a value"),
    ("graph @g {\n  %0 = input() {name=\"x\" role=\"arg\"} : f32[] cpu\n  return %0\n}\n", 2, "',' or '}'"),
    ("graph @g {\n  %0 = input() {a=1, a=2} : f32[] cpu\n  return %0\n}\n", 2, "given twice"),
    ("graph @g {\n  %0 = input() : f32[] cpu  # nowhere\n  return %0\n}\n", 2, "file:line"),
    ("graph @g {\n  %0 = input() : f32[] cpu extra\n  return %0\n}\n", 2, "'# file:line'"),
    ("graph @g {\n  %0 = input() : f32[] cpu\n  return %0 %0\n}\n", 3, "','"),
    ("graph @g {\n  %0 = input() : f32[] cpu\n}\n", 3, "'return"),
    ("graph @g {\n  %0 = input() : f32[] cpu\n  return %0\n  %1 = Exp(%0) : f32[] cpu\n}\n", 4, "'}'"),
    ("graph @g {\n  %0 = input() : f32[] cpu\n", 3, "missing"),
    ("graph @g {\n  x = input() : f32[] cpu\n  return\n}\n", 2, "%<id>"),
])
def test_parse_errors_name_the_line(text, line, expected):
    with pytest.raises(IRParseError) as info:
        parse_graph(text)
    assert info.value.line == line
    assert f"line {line}:" in str(info.value)
    assert expected in str(info.value)


def test_parse_graph_wants_exactly_one():
    with pytest.raises(IRParseError, match="exactly one graph, found 2"):
        parse_graph(ODDS)
    with pytest.raises(IRParseError, match="found 0"):
        parse_graph("# nothing\n")


def test_dot_contains_every_node_and_edge():
    for text in ALL:
        g = parse_graph(text)
        dot = to_dot(g)
        assert dot.startswith("digraph ") and dot.rstrip().endswith("}")
        for n in g:
            assert f"  n{n.id} [label=\"%{n.id} = {n.op}" in dot
            for i in n.inputs:
                assert f"  n{i} -> n{n.id}" in dot
        for i in g.outputs:
            assert f"  n{i} -> ret" in dot
    dot = to_dot(parse_graph(SHAPES))
    assert 'input x (arg)' in dot and "shape=ellipse" in dot and "data.py:1" in dot
    assert "data.py:1" not in to_dot(parse_graph(SHAPES), locs=False)
    odd = to_dot(parse_graphs(ODDS)[1])
    assert '\\"ird' in odd  # quotes escaped inside labels


def test_dot_renders_with_graphviz_when_available(tmp_path):
    import shutil
    import subprocess

    if shutil.which("dot") is None:
        pytest.skip("graphviz not installed")
    path = tmp_path / "g.dot"
    path.write_text(to_dot(parse_graph(TUPLES)))
    subprocess.run(["dot", "-Tsvg", str(path), "-o", str(tmp_path / "g.svg")], check=True)


def test_docs_example_parses_verifies_and_round_trips():
    import os
    import re

    docs = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "ir.md")
    blocks = re.findall(r"```text\n(graph @.*?\n}\n)```", open(docs).read(), re.S)
    assert blocks
    for text in blocks:
        g = parse_graph(text)
        verify(g)
        assert print_graph(g) == text
