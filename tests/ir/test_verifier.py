"""The IR verifier: SSA, ops, input roles, type consistency and the invariants the pipeline's
stages promise."""
import pytest

from needle.ir import (
    INVARIANTS, Graph, IRVerifyError, Node, SourceLoc, TensorType, check_invariants, make_attrs, parse_graph,
    verify,
)
from needle.passes.pipeline import invariants_after

from .samples import ALL
from .test_text_format import _build_mlp

HEAD = '''graph @train_step {
  %0 = input() {name="x", role="arg"} : f32[100,784] cpu
  %1 = input() {name="modules.1.weight", role="param"} : f32[784,100] cpu
'''


def _graph(body: str, ret: str = "return %2") -> Graph:
    return parse_graph(HEAD + body + f"  {ret}\n}}\n")


def _fails(g, *fragments, stage="input"):
    with pytest.raises(IRVerifyError) as info:
        verify(g, invariants_after(stage))
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return info.value


@pytest.mark.parametrize("text", ALL)
def test_samples_verify_at_trace(text):
    assert verify(parse_graph(text)) is None
    assert verify(parse_graph(text), invariants_after("input")) is None


def test_programmatic_graphs_verify():
    for depth in (1, 4):
        g = _build_mlp(depth=depth, batch=3, width=5)
        verify(g)
        verify(g, invariants_after("decompose"))  # ReLU keeps its custom VJP
        no_grad = Graph(g.name, g.nodes[:-1], g.outputs[:1])
        verify(no_grad, invariants_after("autodiff"))
        _fails(no_grad, "ReLU remains", stage="simplify")  # decompose_rest expands it


def test_matmul_with_wrong_shape_names_op_shapes_and_location():
    g = _graph("  %2 = MatMul(%0, %1) : f32[100,50] cpu  # train.py:12\n")
    err = _fails(g, "%2 = MatMul", "train.py:12", "(100, 100)", "(100, 50)", "f32[100,50] cpu")
    assert err.node_id == 2 and err.op == "MatMul" and err.loc == SourceLoc("train.py", 12)


def test_shape_inference_errors_are_reported():
    _fails(_graph("  %2 = MatMul(%1, %1) : f32[784,100] cpu  # a.py:3\n"),
           "%2 = MatMul (at a.py:3)", "cannot multiply shapes (784, 100) and (784, 100)")
    _fails(_graph("  %2 = EWiseAdd(%0, %1) : f32[100,784] cpu\n"), "EWiseAdd", "differ")
    _fails(_graph("  %2 = Summation(%0) {axes=(5,)} : f32[] cpu\n"), "axis 5 is out of range")
    _fails(_graph("  %2 = Transpose(%0) : f32[784,100] cpu\n"), "%2 = Transpose", "axes")  # missing attr


def test_use_before_def_and_undefined():
    g = _graph("  %2 = EWiseAdd(%0, %3) : f32[100,784] cpu\n  %3 = Exp(%0) : f32[100,784] cpu\n")
    _fails(g, "%2 = EWiseAdd", "%3 is used before its definition")
    _fails(_graph("  %2 = Exp(%9) : f32[100,784] cpu\n"), "%9 is never defined")
    _fails(_graph("  %2 = Exp(%0) : f32[100,784] cpu\n", "return %2, %7"), "output %7 is never defined")


def test_duplicate_ids():
    g = _graph("  %2 = Exp(%0) : f32[100,784] cpu\n  %2 = Log(%0) : f32[100,784] cpu\n")
    _fails(g, "%2 = Log", "%2 is defined twice")


def test_unknown_op():
    _fails(_graph("  %2 = Frobnicate(%0) : f32[100,784] cpu\n"), "unknown op 'Frobnicate'")


def test_input_checks():
    text = HEAD.replace('role="param"', 'role="weights"') + "  return %0\n}\n"
    _fails(parse_graph(text), "%1 = input", "role 'weights'", "arg, param")
    text = HEAD.replace('name="modules.1.weight", ', "") + "  return %0\n}\n"
    _fails(parse_graph(text), "%1 = input", "'name'")
    text = HEAD.replace('name="modules.1.weight"', 'name="x"') + "  return %0\n}\n"
    _fails(parse_graph(text), "%1 = input", "already used by %0")
    _fails(_graph('  %2 = input(%0) {name="y", role="arg"} : f32[100,784] cpu\n'), "takes no inputs")
    _fails(_graph('  %2 = input() {name="y", role="arg"} : (f32[1] cpu)\n'), "tensor type")


def test_const_checks():
    verify(_graph("  %2 = const() {value=((1.0, 2.0), (3.0, 4.0))} : f32[2,2] cpu\n"))
    verify(_graph("  %2 = const() {value=0.5} : f32[3,3] cpu\n"))  # a scalar fills the shape
    verify(_graph("  %2 = const() {value=()} : f32[0,3] cpu\n"))
    _fails(_graph("  %2 = const() {value=((1.0, 2.0),)} : f32[2,2] cpu\n"), "shape (1, 2)", "f32[2,2]")
    _fails(_graph("  %2 = const() {value=((1.0, 2.0), (3.0,))} : f32[2,2] cpu\n"), "ragged")
    _fails(_graph("  %2 = const() : f32[2,2] cpu\n"), "'value'")
    _fails(_graph('  %2 = const() {value=("a",)} : f32[1] cpu\n'), "not a number")


def test_dtype_device_and_tuple_mismatches():
    _fails(_graph("  %2 = Exp(%0) : f64[100,784] cpu\n"), "dtype float32", "f64[100,784] cpu")
    _fails(_graph("  %2 = Exp(%0) : f32[100,784] cuda\n"), "device cpu", "f32[100,784] cuda")
    verify(_graph('  %2 = ToDevice(%0) {device="cuda"} : f32[100,784] cuda\n'))
    _fails(_graph('  %2 = ToDevice(%0) {device="cuda"} : f32[100,784] cpu\n'), "ToDevice to 'cuda'")
    _fails(_graph("  %2 = Split(%1) {axis=1} : (f32[784] cpu, f32[784] cpu)\n"),
           "%2 = Split", "tuple of 100", "has 2")
    _fails(_graph("  %2 = Split(%0) {axis=0} : f32[784] cpu\n"), "tuple of 100 tensors")
    _fails(_graph("  %2 = Exp(%0) : (f32[100,784] cpu)\n"), "tuple type")
    _fails(_graph("  %2 = MakeTensorTuple(%0, %1) : (f32[100,784] cpu, f32[784,101] cpu)\n"),
           "item 1 has shape (784, 100)")
    _fails(_graph("  %2 = MakeTensorTuple(%0) : (f32[100,784] cpu)\n  %3 = Exp(%2) : f32[100,784] cpu\n",
                  "return %3"), "%3 = Exp", "(f32[100,784] cpu)")


def test_tuple_getitem_and_stack_check_their_tuples():
    body = "  %2 = MakeTensorTuple(%0, %0) : (f32[100,784] cpu, f32[100,784] cpu)\n"
    verify(_graph(body + "  %3 = TupleGetItem(%2) {index=1} : f32[100,784] cpu\n", "return %3"))
    verify(_graph(body + "  %3 = Stack(%2) {axis=0} : f32[2,100,784] cpu\n", "return %3"))
    verify(_graph(body + "  %3 = Concat(%2) {axis=1} : f32[100,1568] cpu\n", "return %3"))
    _fails(_graph(body + "  %3 = TupleGetItem(%2) {index=2} : f32[100,784] cpu\n", "return %3"),
           "%3 = TupleGetItem", "out of range")
    _fails(_graph(body + "  %3 = Stack(%2) {axis=0} : f32[100,2,784] cpu\n", "return %3"),
           "(2, 100, 784)", "f32[100,2,784]")


def test_grad_checks_and_stage_invariant():
    body = ("  %2 = MatMul(%0, %1) : f32[100,100] cpu\n"
            "  %3 = Summation(%2) {axes=None} : f32[] cpu  # train.py:14\n"
            "  %4 = grad(%3, %1) : (f32[784,100] cpu)  # train.py:15\n")
    g = _graph(body, "return %3, %4")
    verify(g)
    verify(g, invariants_after("decompose"))
    for stage in ("autodiff", "simplify", "fusion"):
        _fails(g, "%4 = grad (at train.py:15)", "grad node remains", stage=stage)
    _fails(_graph(body.replace("(f32[784,100] cpu)", "(f32[784,10] cpu)"), "return %4"),
           "grad is typed (f32[784,10] cpu)")
    _fails(_graph("  %2 = grad(%0) : ()\n"), "at least one input")


def test_unknown_invariant():
    with pytest.raises(ValueError, match="unknown invariant.*bogus"):
        verify(parse_graph(ALL[0]), "bogus")
    assert set(invariants_after("memory_plan")) == set(INVARIANTS)


def test_composite_invariants():
    """decomposed: only composites with a custom VJP remain (autodiff's precondition);
    primitive: none remains. check_invariants checks them alone."""
    body = ("  %2 = Sigmoid(%0) : f32[100,784] cpu  # m.py:3\n"
            "  %3 = ReLU(%0) : f32[100,784] cpu  # m.py:4\n")
    both = _graph(body, "return %2, %3")
    verify(both, ("no_grad",))
    _fails(both, "%2 = Sigmoid (at m.py:3)", "has no custom VJP", stage="decompose")
    relu = both.replace(nodes=both.nodes[:2] + both.nodes[3:], outputs=(3,))
    check_invariants(relu, ("decomposed",))
    with pytest.raises(IRVerifyError, match="%3 = ReLU .*composite op ReLU remains"):
        check_invariants(relu, ("primitive",))


def test_programmatic_errors_without_location():
    f = TensorType((2, 3))
    nodes = (Node(0, "input", (), make_attrs({"name": "a", "role": "arg"}), f),
             Node(1, "Exp", (0,), (), TensorType((3, 2))))
    err = _fails(Graph("g", nodes, (1,)), "graph @g: %1 = Exp: ", "(2, 3)", "f32[3,2]")
    assert err.loc is None
    _fails(Graph("g", (Node(0, "input", (), make_attrs({"name": "a", "role": "arg"}), TensorType((-1,))),), (0,)),
           "non-negative")


def test_input_kind_and_missing_attribute_messages():
    _fails(_graph("  %2 = MakeTensorTuple(%0) : (f32[100,784] cpu)\n  %3 = Exp(%2) : f32[100,784] cpu\n",
                  "return %3"), "%3 = Exp", "reads a tensor but got a tuple input")
    _fails(_graph("  %2 = Stack(%0) {axis=0} : f32[1] cpu\n"), "reads a tuple but got a tensor input")
    _fails(_graph("  %2 = Transpose(%0) : f32[784,100] cpu\n"), "missing its attribute 'axes'")
    _fails(_graph("  %2 = EWiseAdd(%0) : f32[100,784] cpu\n"), "%2 = EWiseAdd", "cannot infer")
