"""Binding semantics of @needle.compile: every value a traced function reads is a graph input
read at each call or part of the cache key compared by value; nothing goes stale."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from tests.conftest import close, tensor


def rand(*shape):
    return tensor(np.random.randn(*shape))


def test_tensor_keyword_argument_is_read_at_every_call():
    f = ndl.compile(lambda x, *, w: x * w)
    x = rand(3)
    for _ in range(3):
        w = rand(3)
        close(f(x, w=w), x * w)
    assert f.stats["traces"] == 1


def test_rebound_global_tensor_is_seen():
    global GLOBAL_W
    GLOBAL_W = rand(3)

    @ndl.compile
    def f(x):
        return x + GLOBAL_W

    x = rand(3)
    close(f(x), x + GLOBAL_W)
    GLOBAL_W = rand(3)  # same shape: read as a graph input, no retrace
    close(f(x), x + GLOBAL_W)
    assert f.stats["traces"] == 1
    GLOBAL_W = rand(1)  # another shape: recompiles
    close(f(x), x + GLOBAL_W)
    GLOBAL_W = 2.0      # another type: recompiles
    close(f(x), x + 2.0)
    assert f.stats["traces"] == 3


def test_rebound_closure_variable_is_seen():
    scale = 2.0
    w = rand(3)

    @ndl.compile
    def f(x):
        return x * w * scale

    x = rand(3)
    close(f(x), x * w * 2.0)
    scale, w = 5.0, rand(3)
    close(f(x), x * w * 5.0)


def test_global_scalar_change_recompiles_and_names_the_global(capsys, monkeypatch):
    global GLOBAL_SCALE
    monkeypatch.setenv("NEEDLE_LOG", "recompile")
    GLOBAL_SCALE = 2.0
    f = ndl.compile(lambda x: x * GLOBAL_SCALE)
    x = rand(3)
    close(f(x), x * 2.0)
    GLOBAL_SCALE = 3.0
    close(f(x), x * 3.0)
    assert "global `GLOBAL_SCALE`: 2.0 → 3.0" in capsys.readouterr().err
    GLOBAL_SCALE = 2.0  # the first graph is still cached: no third trace
    close(f(x), x * 2.0)
    assert f.stats["traces"] == 2


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = 2.0
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x) * self.scale


def test_module_scalar_attribute_read_while_tracing_is_guarded(capsys, monkeypatch):
    monkeypatch.setenv("NEEDLE_LOG", "recompile")
    m = Scaled()
    f = ndl.compile(m)
    x = rand(4, 3)
    close(f(x), m(x), rtol=1e-5, atol=1e-5)
    m.scale = 9.0
    close(f(x), m(x), rtol=1e-5, atol=1e-5)
    assert "self.scale: 2.0 → 9.0" in capsys.readouterr().err
    m.lin = nn.Linear(3, 3)  # a replaced submodule: its parameters are read
    close(f(x), m(x), rtol=1e-5, atol=1e-5)


def test_unread_attribute_change_does_not_recompile():
    m = Scaled()
    m.counter = 0
    f = ndl.compile(m)
    x = rand(4, 3)
    for i in range(3):
        m.counter = i
        f(x)
    assert f.stats["traces"] == 1


@pytest.mark.parametrize("first, second", [([2.0], [5.0]), (np.array([2.0]), np.array([5.0])),
                                           ((2.0,), (5.0,))])
def test_containers_are_keyed_by_content(first, second):
    f = ndl.compile(lambda x, c: x * float(c[0]))
    x = rand(3)
    close(f(x, first), x * 2.0)
    close(f(x, second), x * 5.0)
    arr = np.array([7.0])
    close(f(x, arr), x * 7.0)
    arr[0] = 8.0  # mutated in place: its content is the key
    close(f(x, arr), x * 8.0)


def test_true_one_and_one_point_zero_are_distinct():
    f = ndl.compile(lambda x, k: x * 2.0 if k is True else (x * 3.0 if isinstance(k, int) else x * 4.0))
    x = rand(3)
    close(f(x, True), x * 2.0)
    close(f(x, 1), x * 3.0)
    close(f(x, 1.0), x * 4.0)
    close(f(x, 0.0), x * 4.0)
    assert f.stats["traces"] == 4


def test_negative_zero_is_not_zero():
    f = ndl.compile(lambda x, c: ndl.ops.divide_scalar(x, c))
    x = tensor(np.ones(2))
    assert np.all(np.isposinf(f(x, 0.0).numpy()))
    assert np.all(np.isneginf(f(x, -0.0).numpy()))


def test_gradients_of_arguments_are_written_like_eager():
    @ndl.compile
    def f(x, y):
        loss = (x * y * 3.0).sum()
        loss.backward()
        return loss

    for _ in range(2):
        a, b = rand(4), rand(4)
        x, y = ndl.Tensor(a, requires_grad=True), ndl.Tensor(b, requires_grad=True)
        f(x, y)
        close(x.grad, b * 3.0)
        close(y.grad, a * 3.0)
        kx = ndl.Tensor(a, requires_grad=True)
        f(kx, y=ndl.Tensor(b))  # a keyword argument without requires_grad
        close(kx.grad, b * 3.0)


@pytest.mark.parametrize("after", ["scaled", "clipped_twice"])
def test_a_gradient_reassigned_after_backward_is_written_back(after):
    """`p.grad = f(p.grad)` after backward() (DistributedOptimizer's average, clipping): the
    compiled step left p.grad holding backward's value instead of the reassigned one."""
    w = nn.Parameter(np.random.randn(3, 4).astype(np.float32))

    def step(x):
        w.grad = None
        loss = ndl.summation(x @ w)
        loss.backward()
        w.grad = w.grad * 2.0
        if after == "clipped_twice":
            w.grad = w.grad - 0.5
        return loss

    compiled = ndl.compile(step)
    for _ in range(2):
        x = rand(2, 3)
        step(x)
        want = w.grad.numpy().copy()
        w.grad = None
        compiled(x)
        close(w.grad, want)


def test_the_same_tensor_twice_is_one_input():
    @ndl.compile
    def f(x, y):
        loss = (x * y).sum()
        loss.backward()
        return loss

    a = rand(4).numpy()
    x = ndl.Tensor(a, requires_grad=True)
    f(x, x)
    close(x.grad, 2 * a, rtol=1e-6, atol=1e-6)
    x2, y2 = ndl.Tensor(a, requires_grad=True), ndl.Tensor(a, requires_grad=True)
    f(x2, y2)
    close(x2.grad, a)
    assert f.stats["traces"] == 2


def test_recompile_log_names_argument_and_field(capsys, monkeypatch):
    monkeypatch.setenv("NEEDLE_LOG", "recompile")

    @ndl.compile
    def f(inputs, factor):
        return inputs * factor

    f(rand(3, 2), 2.0)
    f(rand(5, 2), 2.0)
    f(rand(5, 2), 3)
    err = capsys.readouterr().err
    assert "argument `inputs`, dim 0: 3 → 5" in err
    assert "argument `factor`: 2.0 → 3" in err


def test_in_process_cache_is_bounded(monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["needle.compile"], "CACHE_SIZE", 4)
    f = ndl.compile(lambda x: x + 1.0)
    for n in range(1, 10):
        x = rand(n)
        close(f(x), x + 1.0)
    assert len(f._cache) == 4


def test_threads_calling_a_program_with_a_callback_match_single_threaded():
    w = rand(64, 32)

    @ndl.compile
    def f(x):
        return ndl.ops.argmax(ndl.relu(x @ w), axis=1) + (x @ w).sum(axes=(1,))

    xs = [rand(128, 64) for _ in range(8)]
    expected = [f(x).numpy() for x in xs]
    wrong = []

    def work(k):
        for i in range(200):
            j = (i + k) % len(xs)
            if not np.array_equal(f(xs[j]).numpy(), expected[j]):
                wrong.append(j)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_a_trace_in_one_thread_does_not_capture_eager_ops_of_another():
    started, release = threading.Event(), threading.Event()
    eager = {}
    a = ndl.Tensor(np.ones(3, dtype="float32"))  # older than the trace: would be captured

    def other():
        started.wait()
        eager["value"] = (a * 2.0).numpy()  # would raise TraceError if captured
        release.set()

    @ndl.compile
    def f(x):
        started.set()
        release.wait(5)
        return x * 3.0

    t = threading.Thread(target=other)
    t.start()
    close(f(tensor(np.ones(3))), np.full(3, 3.0))
    t.join()
    close(eager["value"], np.full(3, 2.0))


@pytest.mark.parametrize("bad", [1e6, -5.0, 2.5, float("nan")])
def test_a_step_with_bad_labels_raises_like_eager_and_writes_nothing_back(bad):
    import needle.optim as optim

    model = nn.Linear(4, 3)
    opt = optim.SGD(model.parameters(), lr=0.1)
    step = ndl.compile(optim.train_step(model, nn.SoftmaxLoss(), opt))
    x = rand(5, 4)
    step(x, tensor(np.array([0, 1, 2, 1, 0])))
    before = [p.numpy().copy() for p in model.parameters()]
    labels = tensor(np.array([0, 1, bad, 1, 0]))
    with pytest.raises(ValueError, match=r"ids must be integers in \[0, 3\)"):
        optim.train_step(model, nn.SoftmaxLoss(), opt)(x, labels)  # eager
    with pytest.raises(ValueError, match=r"ids must be integers in \[0, 3\)"):
        step(x, labels)
    assert all(np.array_equal(b, p.numpy()) for b, p in zip(before, model.parameters()))


def test_value_and_grad_at_an_intermediate_value_matches_eager():
    def inner(v):
        return (v * v * v).sum()

    def program(x):
        y = ndl.exp(x) * 0.5  # not a leaf: eager's tape still sets its .grad
        value, g = ndl.value_and_grad(inner)(y)
        return value, g

    x = ndl.Tensor(np.random.randn(2, 3).astype("float32"), requires_grad=True)
    eager_value, eager_grad = program(x)
    value, g = ndl.compile(program)(x)
    close(value, eager_value, rtol=1e-5, atol=1e-5)
    close(g, eager_grad, rtol=1e-5, atol=1e-5)
    assert np.abs(g.numpy()).max() > 0


def test_a_module_made_inside_the_compiled_function_trains_like_eager():
    @ndl.compile
    def f(x):
        loss = nn.LayerNorm1d(6)(x).sum()
        loss.backward()
        return loss

    x = rand(3, 6)
    close(f(x), nn.LayerNorm1d(6)(x).sum(), rtol=1e-4, atol=1e-4)


def test_bad_gather_ids_raise_an_error_of_eager_s_type():
    emb = nn.Embedding(5, 3)
    f = ndl.compile(emb)
    f(tensor(np.array([[0, 4]])))
    bad = tensor(np.array([[0, 9]]))
    with pytest.raises(Exception) as eager:
        emb(bad)
    with pytest.raises(type(eager.value), match=r"indices must be integers in \[0, 5\)"):
        f(bad)


def test_unknown_log_topic_is_an_error_listing_the_valid_ones(monkeypatch):
    monkeypatch.setenv("NEEDLE_LOG", "recompile,recompiles")
    f = ndl.compile(lambda x: x * 2.0)
    with pytest.raises(ValueError, match="unknown recompiles; use any of recompile, native"):
        f(rand(2))


def test_tensor_reached_outside_any_name_is_state_not_arg():
    """A tensor the function reads that is neither an argument nor found under a global,
    closure or attribute name (here: through a bound dict.get) is still call-time state."""
    lookup = {"k": ndl.Tensor(np.ones(3, dtype=np.float32), requires_grad=True)}.get

    @ndl.compile
    def f(x):
        return (x + lookup("k")).sum()

    x = tensor(np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32))
    close(f(x), (x + lookup("k")).sum())
    inputs = [line for line in f.ir("input").splitlines() if "input()" in line]
    assert 'role="arg"' in inputs[0] and len(inputs) == 2
    assert 'role="state"' in inputs[1], inputs
