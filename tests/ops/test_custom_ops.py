"""Custom elementwise ops (`needle.ops.elementwise_op`): one formula, eager, interpreted,
compiled (LLVM and C), fused, differentiated, and rendered as CUDA C."""
from __future__ import annotations

import numpy as np
import pytest

import needle as ndl
from needle.cli.needle_ir import main as needle_ir
from needle.codegen.cuda import build_program, render_program
from needle.codegen.cuda.build import compile_object, find_nvcc
from needle.errors import OpError
from needle.ops import OPS, elementwise_op, scalar as S
from tests.conftest import BACKEND, FLOAT, numeric_grads, tensor


def define_ops():
    """(softsign, blend): one unary op with a VJP, one ternary op without."""
    @elementwise_op("softsign")
    def softsign(x):
        return x / (1.0 + S.abs(x))

    @softsign.defvjp
    def _(out_grad, x):
        return out_grad / (1.0 + ndl.abs(x)) ** 2

    @elementwise_op("blend")
    def blend(a, b, t):
        """t*a + (1-t)*b, clamped at 0 where a > b, and more of the vocabulary."""
        mixed = t * a + (1.0 - t) * b
        return S.where(a > b, S.maximum(mixed, 0.0), S.minimum(mixed, S.sqrt(S.abs(b)) + S.cos(t) ** 2))

    return softsign, blend


@pytest.fixture(scope="module", autouse=True)
def custom_ops():
    """The ops, registered for this module's tests only (docs/ops.md lists the built-in ones)."""
    global softsign, blend
    softsign, blend = define_ops()
    yield
    for name in ("softsign", "blend", "twice"):
        OPS.pop(name, None)


def softsign_np(x):
    return x / (1.0 + np.abs(x))


def blend_np(a, b, t):
    mixed = t * a + (1.0 - t) * b
    return np.where(a > b, np.maximum(mixed, 0.0), np.minimum(mixed, np.sqrt(np.abs(b)) + np.cos(t) ** 2))


def rnd(*shape):
    return np.random.randn(*shape).astype(np.float32)


def test_eager_matches_numpy():
    x = rnd(4, 5)
    np.testing.assert_allclose(softsign(tensor(x)).numpy(), softsign_np(x), rtol=1e-6, atol=1e-6)


def test_several_inputs_broadcast():
    a, b, t = rnd(3, 1, 5), rnd(4, 5), rnd(5)
    out = blend(tensor(a), tensor(b), tensor(t))
    assert out.shape == (3, 4, 5)
    np.testing.assert_allclose(out.numpy(), blend_np(a, b, t), rtol=1e-5, atol=1e-5)


def test_compiled_matches_eager_in_one_kernel():
    x, y = rnd(6, 7), rnd(7)

    def f(a, b):
        return ndl.exp(softsign(a * 2.0)) + softsign(b)

    cf = ndl.compile(f)
    got = cf(tensor(x), tensor(y))
    np.testing.assert_allclose(got.numpy(), f(tensor(x), tensor(y)).numpy(), rtol=1e-5, atol=1e-6)
    assert cf.stats["kernels"] == 1 or BACKEND == "np"   # kernels are float32 (np tests run float64)
    assert "softsign(" in cf.ir("final")


def test_compiled_three_inputs_matches_eager():
    a, b, t = rnd(3, 1, 5), rnd(4, 5), rnd(5)
    cf = ndl.compile(lambda a, b, t: blend(a, b, t) * 3.0)
    got = cf(tensor(a), tensor(b), tensor(t))
    np.testing.assert_allclose(got.numpy(), blend_np(a, b, t) * 3.0, rtol=1e-5, atol=1e-5)


def test_gradient_against_finite_differences_eager_and_compiled():
    x = np.asarray(rnd(3, 4), FLOAT)
    x[np.abs(x) < 0.1] += 0.3   # away from the kink of |x|
    w = np.random.randn(3, 4)

    def objective(a):
        return (softsign(a) * tensor(w, requires_grad=False)).sum()

    expected = numeric_grads(softsign, [x], w)[0]
    tol = 1e-5 if BACKEND == "np" else 2e-2
    t = tensor(x)
    objective(t).backward()
    np.testing.assert_allclose(t.grad.numpy(), expected, rtol=tol, atol=tol)
    got = ndl.compile(ndl.grad(objective))(tensor(x))
    got = got[0] if isinstance(got, (tuple, list)) else got
    np.testing.assert_allclose(got.numpy(), expected, rtol=tol, atol=tol)


def test_missing_vjp_and_wrong_arity_are_errors_naming_the_op():
    @elementwise_op("twice")
    def twice(x):
        return x * 2.0

    t = tensor(rnd(3))
    with pytest.raises(OpError, match="twice.*defvjp"):
        twice(t).sum().backward()
    with pytest.raises(OpError, match="twice.*takes 1 tensor"):
        twice(t, t)
    with pytest.raises(ValueError, match="built-in"):
        elementwise_op("Exp")(lambda x: x)
    with pytest.raises(TypeError, match="constant exponent"):
        S.Arg(0) ** S.Arg(1)
    with pytest.raises(TypeError, match="no truth value"):
        bool(S.Arg(0) > 0)


def test_needle_ir_shows_the_op_and_its_c(tmp_path, capsys, monkeypatch):
    script = tmp_path / "script.py"
    script.write_text(
        "import numpy as np\nimport needle as ndl\nfrom tests.ops.test_custom_ops import define_ops\n"
        "softsign, _ = define_ops()\n"
        "f = ndl.compile(lambda x: softsign(x) * 2.0)\n"
        "f(ndl.Tensor(np.ones((4, 8), 'float32')))\n")
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parents[2]))
    assert needle_ir([str(script)]) == 0
    assert "softsign(%" in capsys.readouterr().out
    assert needle_ir(["--format", "c", str(script)]) == 0
    assert "(0.0f - in0[j0])" in capsys.readouterr().out   # |x| in the fused kernel's C
    assert needle_ir(["--format", "cuda", str(script)]) == 0
    assert "(0.0f - t0)" in capsys.readouterr().out


def test_cuda_c_renders_emulates_and_compiles():
    from tests.codegen.test_cuda_codegen import emulate

    x = rnd(33, 65)
    prog, _ = emulate(lambda a: softsign(a) * ndl.tanh(a), x)
    assert sorted(r.how for r in prog.groups if r.how != "view") == ["lowered"]
    text = render_program(prog)
    assert text.count("__global__") == 1
    if find_nvcc() is None:
        pytest.skip("no nvcc")
    compile_object(text)


def test_build_program_keeps_the_custom_op_in_one_group():
    from tests.codegen.test_cuda_codegen import graph_of

    g = graph_of(lambda a, b: softsign(a + b) * 2.0, rnd(8, 8), rnd(8, 8))
    assert any(n.op == "softsign" for n in g.nodes)
    assert len([r for r in build_program(g).groups if r.how != "view"]) == 1
