"""@needle.compile: traced graphs run on the reference interpreter and match eager mode."""
from __future__ import annotations

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from needle.trace.tracer import TraceError
from tests.conftest import close, tensor


def rand(*shape):
    return tensor(np.random.randn(*shape))


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


def test_forward_matches_eager_and_traces_once():
    w = rand(4, 3)

    @ndl.compile
    def f(x):
        return ndl.logsumexp(ndl.relu(x @ w), axes=(1,)) * 2.0

    for _ in range(3):
        x = rand(5, 4)
        close(f(x), ndl.logsumexp(ndl.relu(x @ w), axes=(1,)) * 2.0, rtol=1e-5, atol=1e-5)
    assert f.stats["traces"] == 1 and f.stats["cache_hits"] == 2


def test_new_shape_recompiles(capsys, monkeypatch):
    monkeypatch.setenv("NEEDLE_LOG", "recompile")
    f = ndl.compile(lambda x: (x * x).sum())
    f(rand(3, 2))
    f(rand(4, 2))
    assert f.stats["traces"] == 2
    assert "argument `x`, dim 0: 3 → 4" in capsys.readouterr().err


def test_parameters_are_inputs_read_at_call_time():
    lin = nn.Linear(3, 2)
    f = ndl.compile(lin)
    x = rand(4, 3)
    close(f(x), lin(x), rtol=1e-5, atol=1e-5)
    lin.weight.data = ndl.Tensor(lin.weight.numpy() * 3.0)
    close(f(x), lin(x), rtol=1e-5, atol=1e-5)
    assert f.stats["traces"] == 1
    assert "role=\"param\"" in f.ir("input")


def test_training_step_gradients_match_eager():
    np.random.seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Residual(nn.Sequential(nn.Linear(16, 16), nn.Tanh())),
                          nn.Linear(16, 4))
    loss_fn = nn.SoftmaxLoss()

    @ndl.compile
    def step(x, y):
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    for _ in range(2):
        x = rand(8, 6)
        y = tensor(np.random.randint(0, 4, size=8), requires_grad=False)
        loss_c = step(x, y).numpy()
        grads_c = [p.grad.numpy().copy() for p in model.parameters()]
        loss_e = loss_fn(model(x), y)
        loss_e.backward()
        assert rel_err(loss_c, loss_e.numpy()) < 1e-5
        total = np.sqrt(sum(float((p.grad.numpy().astype(np.float64) ** 2).sum()) for p in model.parameters()))
        for gc_, p in zip(grads_c, model.parameters()):
            assert np.linalg.norm(gc_ - p.grad.numpy()) / total < 1e-5
    assert step.stats["traces"] == 1
    assert "grad(" in step.ir("input") and "grad(" not in step.ir("autodiff")
    from needle.ir.parser import parse_graph
    from needle.ir.printer import print_graph

    for stage in ("input", "autodiff", "final"):
        text = step.ir(stage)
        assert print_graph(parse_graph(text)) == text


@pytest.mark.parametrize("fn", [
    lambda x: (x * x * x).sum(),
    lambda x: ndl.logsumexp(ndl.reshape(x, (2, 3)), axes=(1,)).sum(),
    lambda x: (ndl.tanh(x) * ndl.exp(x * 0.5)).sum(),
    lambda x: ndl.summation(ndl.reshape(x, (2, 3)) @ ndl.reshape(x, (3, 2))),
], ids=["cube", "logsumexp", "tanh_exp", "matmul"])
def test_autodiff_pass_matches_finite_differences_and_second_order(fn):
    x0 = np.random.randn(6)
    g = ndl.compile(ndl.grad(fn))
    got = g(tensor(x0)).numpy()
    eps = 1e-2
    fd = np.zeros(6)
    for j in range(6):
        p, m = x0.copy(), x0.copy()
        p[j] += eps
        m[j] -= eps
        fd[j] = (fn(tensor(p)).numpy() - fn(tensor(m)).numpy()) / (2 * eps)
    np.testing.assert_allclose(got, fd, rtol=2e-2, atol=2e-2)
    # gradient of (gradient . v) through two grad requests in one graph
    v = np.random.randn(6)
    hv = ndl.compile(ndl.grad(lambda x: (ndl.grad(fn)(x) * tensor(v, requires_grad=False)).sum()))
    eager = ndl.grad(lambda x: (ndl.grad(fn)(x) * tensor(v, requires_grad=False)).sum())
    np.testing.assert_allclose(hv(tensor(x0)).numpy(), eager(tensor(x0)).numpy(), rtol=1e-4, atol=1e-4)


def test_value_and_grad_eager_and_compiled():
    f = lambda a, b: (a * b).sum()  # noqa: E731
    a, b = rand(3), rand(3)
    value, (ga, gb) = ndl.value_and_grad(f, argnums=(0, 1))(a, b)
    close(ga, b.numpy())
    close(gb, a.numpy())
    cv, cg = ndl.compile(ndl.value_and_grad(f))(a, b)
    close(cv, value.numpy(), rtol=1e-5, atol=1e-5)
    close(cg, b.numpy())


def test_reading_a_traced_value_names_the_line():
    @ndl.compile
    def f(x):
        if x.sum() > 0:  # reading data inside a trace
            return x
        return -x

    with pytest.raises(TraceError, match=r"test_compile.py:\d+"):
        f(rand(3))


def test_shape_error_inside_compiled_function_names_op_and_line():
    @ndl.compile
    def f(x):
        return x @ rand(5, 2)

    with pytest.raises(ValueError, match=r"MatMul: .*\(3, 4\).*\(5, 2\).*test_compile.py:\d+"):
        f(rand(3, 4))


def test_batchnorm_running_statistics_are_graph_state():
    np.random.seed(3)
    bn_c, bn_e = nn.BatchNorm1d(4), nn.BatchNorm1d(4)
    f = ndl.compile(lambda x: bn_c(x).sum())
    for _ in range(3):
        x = rand(5, 4)
        close(f(x), bn_e(x).sum().numpy(), rtol=1e-5, atol=1e-5)
    close(bn_c.running_mean, bn_e.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    close(bn_c.running_var, bn_e.running_var.numpy(), rtol=1e-5, atol=1e-6)
    assert bn_c.running_mean._trace is None and f.stats["traces"] == 1
    bn_c.eval()
    bn_e.eval()
    x = rand(5, 4)
    close(f(x), bn_e(x).sum().numpy(), rtol=1e-5, atol=1e-5)
    assert f.stats["traces"] == 2  # the training flag is part of the signature


def test_learning_rate_is_read_at_every_call():
    np.random.seed(4)
    lin = nn.Linear(3, 2)
    opt = ndl.optim.SGD(lin.parameters(), lr=0.1)

    @ndl.compile
    def step(x):
        opt.reset_grad()
        loss = lin(x).sum()
        loss.backward()
        opt.step()
        return loss

    x = rand(4, 3)
    w0 = lin.weight.numpy().copy()
    step(x)
    g = lin.weight.grad.numpy()
    close(lin.weight, w0 - 0.1 * g, rtol=1e-5, atol=1e-6)
    opt.lr = 0.5
    w1 = lin.weight.numpy().copy()
    step(x)
    close(lin.weight, w1 - 0.5 * g, rtol=1e-5, atol=1e-6)
    assert step.stats["traces"] == 1
    assert 'role="hyper"' in step.ir("input")


def test_dropout_uses_a_counter_based_rng_in_compiled_mode():
    drop = nn.Dropout(0.5)
    f = ndl.compile(lambda x: drop(x))
    x = tensor(np.ones((200, 50)))
    from needle.ops.random import COMPILED_RNG

    start = COMPILED_RNG.counter
    a, b = f(x).numpy(), f(x).numpy()
    assert COMPILED_RNG.counter == start + 2 and f.stats["traces"] == 1
    for out in (a, b):
        assert set(np.unique(out)) <= {0.0, 2.0}
        assert abs((out == 0).mean() - 0.5) < 0.02
    assert (a != b).mean() > 0.3  # a fresh mask per call
    COMPILED_RNG.counter = start
    np.testing.assert_array_equal(f(x).numpy(), a)  # reproducible from the counter
    assert "RandomUniform" in f.ir("final")


def test_module_attribute_reassigned_is_read_at_call_time():
    lin = nn.Linear(3, 2)
    f = ndl.compile(lambda x: lin(x))
    x = rand(4, 3)
    f(x)
    lin.weight = nn.Parameter(rand(3, 2))
    close(f(x), lin(x).numpy(), rtol=1e-5, atol=1e-5)
    assert f.stats["traces"] == 1
    lin.weight = nn.Parameter(rand(3, 5))  # a new shape recompiles
    lin.bias = nn.Parameter(rand(1, 5))
    assert f(x).shape == (4, 5) and f.stats["traces"] == 2


class _Job:
    """A training job object holding the model and the optimizer (as needle-train does)."""

    def __init__(self):
        np.random.seed(5)
        self.model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        self.opt = ndl.optim.Adam(self.model.parameters(), lr=1e-2)
        self.loss_fn = nn.SoftmaxLoss()

    def step(self, x, y):
        self.opt.reset_grad()
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss


def test_compiled_bound_method_reaches_state_through_self():
    """State found through `self` (not the closure): Adam buffers are created before
    tracing, so every step matches eager, not only the first two."""
    rng = np.random.RandomState(0)
    data = [(rng.randn(10, 6), rng.randint(0, 3, 10)) for _ in range(4)]
    losses = []
    for compiled in (False, True):
        job = _Job()
        step = ndl.compile(job.step) if compiled else job.step
        losses.append([float(step(tensor(x), tensor(y, requires_grad=False)).numpy()) for x, y in data])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_state_created_inside_a_compiled_function_is_refused():
    cache = {}
    w = rand(3)

    @ndl.compile
    def f(x):
        cache["y"] = x * w
        return x.sum()

    with pytest.raises(TraceError, match="creates state"):
        f(rand(3))
    assert "y" not in cache


@pytest.mark.parametrize("limit", range(8))
def test_pass_limit_runs_on_every_executor_and_matches_eager(monkeypatch, limit):
    """NEEDLE_PASS_LIMIT=n (bisection) stops the pipeline after n passes; the graph still runs
    (on the interpreter when the kernel analyses were cut off) and equals eager."""
    monkeypatch.setenv("NEEDLE_PASS_LIMIT", str(limit))
    w = ndl.Tensor(np.random.randn(4, 3).astype("float32"), requires_grad=True)

    def f(x):
        loss = ndl.relu(x @ w).sum()
        loss.backward()
        return loss, w.grad

    x = rand(5, 4)
    expected = [t.numpy() for t in f(x)]
    got = ndl.compile(f)(x)
    for g, e in zip(got, expected):
        close(g, e, rtol=1e-5, atol=1e-5)
