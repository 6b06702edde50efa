"""Compiled equals eager on programs the differential fuzzer broke (issue 12): values and
gradients on random inputs, NaN/Inf and size-0 axes, the seed check of `backward(out_grad)`,
and the checks of ids in compiled code (one_hot, SoftmaxLoss, Embedding, gather)."""
from __future__ import annotations

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from needle.ir.graph import TensorType
from needle.ops import OPS
from needle.trace.tracer import GraphBuilder, tracing
from needle.passes.dce import DeadCodeElimination
from needle.runtime import run_graph
from tests.conftest import FLOAT

NAN, INF = np.nan, np.inf


def tensor(a, requires_grad=True) -> ndl.Tensor:
    return ndl.Tensor(np.asarray(a, dtype=FLOAT), dtype=None if ndl.BACKEND == "np" else "float32",
                      requires_grad=requires_grad)


def numpy_of(value) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float64)


def assert_same(compiled, eager, rtol=1e-5, atol=1e-6) -> None:
    """Equal up to float rounding, NaN at the same positions, Inf with the same signs."""
    for k, (c, e) in enumerate(zip(compiled, eager)):
        c, e = numpy_of(c), numpy_of(e)
        assert c.shape == e.shape, f"output {k}: shape {c.shape} != eager {e.shape}"
        np.testing.assert_allclose(c, e, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"output {k}")


def grads_of(fn):
    """A step: fn's value and the gradients of sum(fn) w.r.t. each argument."""
    def step(*xs):
        out = fn(*xs)
        out.sum().backward()
        return (out,) + tuple(x.grad for x in xs)
    return step


def compare_with_eager(fn, *arrays, **tol) -> None:
    eager = grads_of(fn)(*[tensor(a) for a in arrays])
    assert_same(ndl.compile(grads_of(fn))(*[tensor(a) for a in arrays]), eager, **tol)


# ---- 1. a gradient that reads no graph value -----------------------------------------------
def test_gradient_of_a_linear_function():
    def f(x):
        (x * 3.0).sum().backward()
        return x.grad

    x = np.random.randn(3, 4)
    assert_same([ndl.compile(f)(tensor(x))], [np.full((3, 4), 3.0)])


def test_gradients_of_linear_functions():
    def f(x, y):
        (x * 2.0 - y * 0.5 + 1.0).sum().backward()
        return x.grad, y.grad

    x, y = np.random.randn(2, 3), np.random.randn(2, 3)
    assert_same(ndl.compile(f)(tensor(x), tensor(y)), [np.full((2, 3), 2.0), np.full((2, 3), -0.5)])
    grad = ndl.compile(ndl.grad(lambda x: (x * 2.0).sum()))
    assert_same([grad(tensor(x))], [np.full((2, 3), 2.0)])


def test_a_leaf_read_only_by_a_comparison_gets_no_gradient():
    """Eager's tape keeps no inputs for a result that requires no grad (a comparison's), so
    backward() leaves p.grad None; compiled gave it zeros."""
    p = nn.Parameter(tensor(np.random.randn(2, 3)))

    def f(x):
        p.grad = None
        ((x < p) * x).sum().backward()
        return x.grad

    x = np.random.randn(2, 3)
    eager = f(tensor(x))
    assert p.grad is None
    assert_same([ndl.compile(f)(tensor(x))], [eager])
    assert p.grad is None

    def g(x):  # nothing requires grad: backward() is a no-op
        loss = (x < p).sum()
        loss.backward()
        return loss

    assert_same([ndl.compile(g)(tensor(x))], [g(tensor(x))])
    assert p.grad is None


def test_gradient_at_a_gradient():
    """The inner gradient requires no grad while traced; the outer request differentiates at
    it (fuzzer seed 0 once gave 0)."""
    def f(x):
        g = ndl.grad(lambda t: ndl.summation(ndl.exp(t)))(x)
        return ndl.grad(lambda t: ndl.summation(ndl.sigmoid(t) * t))(g)

    x = np.random.randn(3)
    assert_same([ndl.compile(f)(tensor(x, requires_grad=False))], [f(tensor(x, requires_grad=False))])


def test_backward_through_nested_gradients_reaches_the_input():
    """A traced gradient requires grad as eager's does, so backward() through ndl.grad of a
    gradient reaches x (compiled gave 3x^2, the inner request's, instead of 12x)."""
    def f(x):
        g1 = ndl.grad(lambda t: (t * t * t).sum())(x * 1.0)
        loss = ndl.grad(lambda t: (t * t).sum())(g1).sum()
        loss.backward()
        return loss, x.grad

    x = np.random.rand(3) + 0.5
    eager = f(tensor(x))
    np.testing.assert_allclose(numpy_of(eager[1]), 12 * x, rtol=1e-5)
    assert_same(ndl.compile(f)(tensor(x)), eager)


def test_gradient_at_a_quotient_of_scalars():
    """0-d values: the trace's constants read numpy scalars too (NEEDLE_BACKEND=np, seed 346)."""
    def f(x, y):
        return ndl.grad(lambda t: ndl.exp(t))(x / y)

    x, y = np.random.rand() + 0.5, np.random.rand() + 0.5
    assert_same([ndl.compile(f)(tensor(x, False), tensor(y, False))], [f(tensor(x, False), tensor(y, False))])


# ---- 2. stacks of size-0 tensors, then backward ----------------------------------------------
@pytest.mark.parametrize("shape,axis", [((0, 3), 0), ((0, 3), 1), ((0, 3), 2), ((3, 0), 2), ((0,), 1)])
@pytest.mark.parametrize("head", ["sum", "exp"])
def test_stack_of_size0_tensors_backward(shape, axis, head):
    def fn(a, b):
        s = ndl.stack([a, b], axis=axis)
        return s if head == "sum" else ndl.exp(s * 2.0)

    compare_with_eager(fn, np.zeros(shape), np.zeros(shape))


@pytest.mark.parametrize("fn", [lambda x: ndl.max(x, axes=(1,)), lambda x: ndl.max(x),
                                lambda x: ndl.logsumexp(x, axes=(1,)), ndl.ops.logsoftmax],
                         ids=["max1", "max", "logsumexp", "logsoftmax"])
def test_max_over_an_axis_of_size0_raises_like_eager(fn):
    """A maximum over no elements has no value: eager raises, so compiled raises too (at
    trace time, naming the op); it returned -inf."""
    for compiled in (False, True):
        with pytest.raises(ValueError, match="zero-size array to reduction operation maximum"):
            (ndl.compile(fn) if compiled else fn)(tensor(np.zeros((3, 0))))


def test_max_of_size0_rows_is_empty():
    x = np.zeros((0, 3))
    assert_same([ndl.compile(lambda x: ndl.max(x, axes=(1,)))(tensor(x))], [np.zeros(0)])


# ---- 3. NaN, Inf and -0.0 as eager computes them ---------------------------------------------
X = np.array([[NAN, INF, -INF, 0.0, -0.0, 1.5], [-2.0, 3.0, NAN, INF, 0.5, -INF]])
Y = np.array([[1.0, 0.0, 2.0, INF, -INF, NAN], [0.0, -1.0, NAN, 1.0, INF, 2.0]])

SPECIAL = {
    "relu": lambda x, y: ndl.relu(x) + y,
    "relu_times_y": lambda x, y: ndl.relu(x) * y,
    "relu_of_relu": lambda x, y: ndl.relu(ndl.relu(x) - y),
    "sigmoid": lambda x, y: ndl.sigmoid(x) + y,
    "x_times_0": lambda x, y: x * 0.0 + y,
    "x_minus_x": lambda x, y: x - x + y,
    "x_over_x": lambda x, y: x / x + y,
    "zero_times_inf": lambda x, y: (x * 0.0) * y,
    "div": lambda x, y: x / y,
    "max": lambda x, y: ndl.max(x, axes=(0,)) + ndl.max(y, axes=(0,)),
    "logsumexp": lambda x, y: ndl.logsumexp(x * y, axes=(1,)),
    "compare_where": lambda x, y: ndl.ops.where(x > 0.0, x, y) + (x >= y) * y,
    "pow2": lambda x, y: x ** 2 + y,
    "softmax_loss": lambda x, y: nn.SoftmaxLoss()(x * y, tensor([1.0, 2.0], requires_grad=False)),
}


@pytest.mark.parametrize("name", sorted(SPECIAL))
def test_nan_and_inf_like_eager(name):
    with np.errstate(all="ignore"):
        compare_with_eager(SPECIAL[name], X, Y, rtol=1e-4, atol=1e-5)


def test_relu_gradient_at_nan_is_zero():
    x = tensor([NAN, -1.0, 0.0, 2.0])
    assert_same([ndl.compile(ndl.grad(lambda x: ndl.relu(x).sum()))(x)], [[0.0, 0.0, 0.0, 1.0]])


def test_adding_zero_keeps_the_sign_of_zero():
    """x + 0.0 is +0.0 at x = -0.0 (1 / it is +inf): simplify must not drop the addition."""
    one_over = ndl.compile(lambda x: 1.0 / (x + 0.0))
    assert_same([one_over(tensor([-0.0, 2.0]))], [[INF, 0.5]])


# ---- 4. backward(out_grad) of the wrong shape ------------------------------------------------
def test_backward_seed_of_the_wrong_shape_raises():
    x = tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"out_grad has shape \(3,\).*shape \(2, 3\)"):
        (x * 2.0).backward(tensor(np.ones(3), requires_grad=False))
    assert x.grad is None

    def f(x, g):
        (x * 2.0).backward(g)
        return x.grad

    with pytest.raises(ValueError, match=r"out_grad has shape \(3,\).*shape \(2, 3\)"):
        ndl.compile(f)(x, tensor(np.ones(3), requires_grad=False))
    seed = np.random.randn(2, 3)
    assert_same([ndl.compile(f)(x, tensor(seed, requires_grad=False))], [2.0 * seed])


# ---- 5. ids checked in compiled code -----------------------------------------------------------
BAD_IDS = [1e6, -5.0, 2.5, NAN]


def _type(shape) -> TensorType:
    return TensorType(tuple(shape), "float64" if ndl.BACKEND == "np" else "float32", "cpu")


def _check_counts(fn, ids_list) -> tuple[list[float], str]:
    """Trace fn(ids) and run its check alone (as a graph output) on each ids array: the
    bad-id counts and the check's message."""
    shape = np.shape(ids_list[0])
    builder = GraphBuilder("f", birth=ndl.autograd._BIRTHS + 1)
    with tracing(builder):
        fn(builder.traced(ndl.Tensor, builder.add_input("ids", "arg", _type(shape)), _type(shape)))
    (node_id, message), = builder.checks
    graph = DeadCodeElimination().run(builder.graph([node_id]), None).graph  # the check alone
    return [float(numpy_of(run_graph(graph, [tensor(i).realize_cached_data()])[0]))
            for i in ids_list], message


@pytest.mark.parametrize("error,fn", [
    ("one_hot: ids", lambda ids: ndl.init.one_hot(4, ids)),
    ("Gather: indices", lambda ids: ndl.ops.gather(ndl.init.ones(4, 3), ids)),
    ("IndexAdd: indices", lambda ids: ndl.ops.index_add(ndl.init.ones(4, 3), ids, 4)),
])
def test_id_checks_count_bad_ids(error, fn):
    counts, message = _check_counts(fn, [[0, 1, 2, 3], [0, 4, 2.5, NAN], [-1, 0, 0, 0], [3, 1e6, -INF, 0]])
    assert counts == [0.0, 3.0, 1.0, 2.0]
    assert message.startswith(f"{error} must be integers in [0, 4) (at {__file__}:")


@pytest.mark.parametrize("bad", BAD_IDS)
def test_softmax_loss_with_bad_labels_raises(bad):
    loss_fn = nn.SoftmaxLoss()
    compiled = ndl.compile(lambda z, y: loss_fn(z, y))
    z = tensor(np.random.randn(2, 4))
    good = tensor([1.0, 3.0], requires_grad=False)
    assert_same([compiled(z, good)], [loss_fn(z, good)])
    with pytest.raises(ValueError, match=r"one_hot: ids must be integers in \[0, 4\) \(at .*test_compile_regressions"):
        compiled(z, tensor([1.0, bad], requires_grad=False))
    with pytest.raises(ValueError, match=r"one_hot: ids must be integers in \[0, 4\)"):
        loss_fn(z, tensor([1.0, bad], requires_grad=False))


@pytest.mark.parametrize("bad", BAD_IDS)
def test_embedding_with_bad_ids_raises(bad):
    emb = nn.Embedding(5, 3)
    compiled = ndl.compile(lambda ids: emb(ids).sum())
    good = tensor([[0.0, 4.0], [2.0, 2.0]], requires_grad=False)
    assert_same([compiled(good)], [emb(good).sum()])
    # the check's error (an IndexError like eager gather's); the interpreter (NEEDLE_BACKEND=np)
    # raises the eager kernel's first, of the same type
    with pytest.raises(IndexError, match=r"Gather: indices must be integers in \[0, 5\).*\(at .*test_compile_regressions"):
        compiled(tensor([[0.0, bad], [2.0, 2.0]], requires_grad=False))


def test_one_hot_of_a_closed_over_tensor_is_read_at_each_call():
    labels = tensor([1.0, 2.0], requires_grad=False)
    compiled = ndl.compile(lambda x: (ndl.init.one_hot(4, labels) * x).sum())
    x = tensor(np.arange(8.0).reshape(2, 4))
    assert_same([compiled(x)], [1.0 + 6.0])
    labels.data = tensor([0.0, 0.0], requires_grad=False)
    assert_same([compiled(x)], [0.0 + 4.0])


def test_power_minus_half_at_special_values():
    """x ** 0.5's gradient reads x ** -0.5, which lowered as 1 / sqrt(x): NaN at -inf and -inf
    at -0.0, where eager's pow gives 0 and +inf."""
    with np.errstate(all="ignore"):
        compare_with_eager(lambda x, y: x ** 0.5 + y, X, Y, rtol=1e-4, atol=1e-5)


def test_random_initializers_inside_compiled_functions_draw_at_every_call():
    """init.rand / init.randb inside @compile used to draw once at trace time and freeze their
    numbers into the graph; they now draw new numbers at every call."""
    x = ndl.Tensor(np.ones((64, 32), dtype=np.float32))

    @ndl.compile
    def uniform(x):
        return x * ndl.init.rand(*x.shape, low=-2.0, high=3.0)

    @ndl.compile
    def bernoulli(x):
        return x * ndl.init.randb(*x.shape, p=0.25)

    a, b = uniform(x).numpy(), uniform(x).numpy()
    assert not np.array_equal(a, b)
    assert a.min() >= -2.0 and a.max() < 3.0 and abs(a.mean() - 0.5) < 0.15
    m1, m2 = bernoulli(x).numpy(), bernoulli(x).numpy()
    assert not np.array_equal(m1, m2) and set(np.unique(m1)) <= {0.0, 1.0}
    assert abs(m1.mean() - 0.25) < 0.05


def test_randn_inside_a_compiled_function_draws_normals_at_every_call():
    @ndl.compile
    def f(x):
        return x * ndl.init.randn(*x.shape, mean=1.0, std=2.0)

    x = ndl.Tensor(np.ones((200, 100), dtype=np.float32))
    a, b = f(x).numpy(), f(x).numpy()
    assert not np.array_equal(a, b) and np.isfinite(a).all()
    assert abs(a.mean() - 1.0) < 0.05 and abs(a.std() - 2.0) < 0.05
    # a normal's tails: about 4.6% beyond two standard deviations
    assert 0.035 < np.mean(np.abs(a - 1.0) > 4.0) < 0.058


def test_vjp_that_emits_a_composite_compiles_under_the_verifier():
    """A gradient written with a composite (sigmoid) brings a composite back after autodiff;
    decompose_rest expands it, and the verifier (on in tests) must not reject the graph
    between the two."""
    from needle.ops import elementwise_op, scalar as S

    @elementwise_op("softplus_test")
    def softplus(a):
        return S.log(1.0 + S.exp(a))

    @softplus.defvjp
    def _(g, a):
        return g * ndl.sigmoid(a)

    try:
        x = ndl.Tensor(np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32), requires_grad=True)
        softplus(x).sum().backward()
        step = ndl.compile(lambda t: ndl.grad(lambda u: softplus(u).sum())(t))
        np.testing.assert_allclose(step(x).numpy(), x.grad.numpy(), rtol=1e-5, atol=1e-6)
    finally:
        OPS.pop("softplus_test", None)  # other tests list the registered ops


def test_state_reached_through_an_object_without_a_readable_instance_dict():
    """An object the trace reads attributes of may lack an instance __dict__ (a protobuf
    message, such as an imported ONNX model's): its reads go unrecorded, tracing goes on."""
    onnx = pytest.importorskip("onnx")
    w = ndl.Tensor(np.random.randn(3).astype(np.float32))

    class Holder:
        def __init__(self):
            self.model = onnx.ModelProto(doc_string="m")
            self.w = w

    holder = Holder()

    @ndl.compile
    def f(x):
        assert holder.model.doc_string == "m"
        return x * holder.w

    x = ndl.Tensor(np.random.randn(3).astype(np.float32))
    np.testing.assert_allclose(f(x).numpy(), x.numpy() * w.numpy(), rtol=1e-6)


def test_loop_of_three_polynomial_iterations_compiles(tmp_path):
    """Fuzzer seed 426209: LLVM 22's loop vectorizer never returned on a 3-trip loop storing
    log(exp(.) + 3) (the LLVM renderer now unrolls loops shorter than a vector). Run in a
    subprocess so that a hang fails the test instead of stalling the suite."""
    import subprocess
    import sys
    from pathlib import Path

    program = tmp_path / "program.py"
    program.write_text(
        "import numpy as np, needle as ndl\n"
        "def f(x):\n"
        "    v4 = ndl.logsoftmax(ndl.broadcast_to(x, (8, 3)))\n"
        "    return ndl.log(ndl.exp(ndl.add_scalar(v4, 2.0)) + 3.0)\n"
        "x = ndl.Tensor(np.random.randn(1).astype(np.float32))\n"
        "np.testing.assert_allclose(ndl.compile(f)(x).numpy(), f(x).numpy(), rtol=1e-5)\n"
        "print('ok')\n")
    root = Path(__file__).resolve().parents[2]
    env = {**__import__("os").environ, "NEEDLE_CACHE_DIR": "0", "PYTHONPATH": str(root)}
    run = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr
