"""SGD and Adam against numpy implementations; history, dtype, clipping, lr schedulers."""
import gc
import math

import numpy as np
import pytest

import needle as ndl
import needle.autograd as autograd
import needle.nn as nn
import needle.optim as optim


def _model():
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))


def _batch(seed):
    rs = np.random.RandomState(seed)
    return (ndl.Tensor(rs.randn(8, 5).astype("float32"), requires_grad=False),
            ndl.Tensor(rs.randint(0, 3, 8).astype("float32"), requires_grad=False))


def _grads(model, step):
    x, y = _batch(step)
    for p in model.parameters():
        p.grad = None
    nn.SoftmaxLoss()(model(x), y).backward()
    return [p.grad.numpy().astype(np.float64) for p in model.parameters()]


def _run(opt_factory, ref_update, steps=5):
    """Run the needle optimizer and a numpy reference on the same gradients, step by step."""
    np.random.seed(0)
    model = _model()
    opt = opt_factory(model.parameters())
    ref = [p.numpy().astype(np.float64) for p in model.parameters()]
    state = {}
    for step in range(steps):
        grads = _grads(model, step)
        before = [p.grad for p in model.parameters()]
        before_data = [g.numpy().copy() for g in before]
        # reference on the same gradients (the params coincide up to float32 rounding)
        ref = ref_update([p.numpy().astype(np.float64) for p in model.parameters()], grads, state, step + 1)
        opt.step()
        for p, r in zip(model.parameters(), ref):
            assert p.dtype == "float32"
            assert p.op is None and not p.inputs  # no autograd history
            np.testing.assert_allclose(p.numpy(), r, rtol=1e-5, atol=1e-6)
        for p, g, d in zip(model.parameters(), before, before_data):  # grads untouched
            assert p.grad is g
            np.testing.assert_array_equal(g.numpy(), d)
    return model, opt


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 0.0), (0.5, 0.01)])
def test_sgd_matches_numpy(momentum, wd):
    lr = 0.1

    def ref(params, grads, state, t):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g + wd * p
            u = momentum * state.get(i, 0) + (1 - momentum) * g
            state[i] = u
            out.append(p - lr * u)
        return out

    _run(lambda ps: optim.SGD(ps, lr=lr, momentum=momentum, weight_decay=wd), ref)


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adam_matches_numpy(wd):
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8

    def ref(params, grads, state, t):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g + wd * p
            m = b1 * state.get(("m", i), 0) + (1 - b1) * g
            v = b2 * state.get(("v", i), 0) + (1 - b2) * g * g
            state["m", i], state["v", i] = m, v
            mh, vh = m / (1 - b1 ** t), v / (1 - b2 ** t)
            out.append(p - lr * mh / (np.sqrt(vh) + eps))
        return out

    _, opt = _run(lambda ps: optim.Adam(ps, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd), ref)
    assert opt.t == 5


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9, weight_decay=0.01),
                                  lambda ps: optim.Adam(ps, lr=0.001, weight_decay=0.01)])
def test_tensor_count_bounded(make):
    np.random.seed(1)
    model = _model()
    opt = make(model.parameters())
    counts = []
    for step in range(30):
        x, y = _batch(step % 3)
        opt.reset_grad()
        assert all(p.grad is None for p in model.parameters())
        loss = nn.SoftmaxLoss()(model(x), y)
        loss.backward()
        opt.step()
        del loss, x, y
        if step in (5, 29):
            gc.collect()  # the tape has reference cycles (node.grad <-> gradient graph)
            counts.append(autograd.TENSOR_COUNTER)
    assert counts[1] <= counts[0], counts
    for p in model.parameters():
        assert p.dtype == "float32"


def test_step_skips_params_without_grad():
    p = nn.Parameter(ndl.init.ones(3))
    opt = optim.Adam([p], lr=0.1)
    opt.step()
    np.testing.assert_array_equal(p.numpy(), np.ones(3))


def test_clip_grad_norm():
    a = nn.Parameter(ndl.init.ones(2, 2))
    b = nn.Parameter(ndl.init.ones(3))
    ga = np.array([[3.0, 0.0], [0.0, 0.0]], dtype="float32")
    gb = np.array([0.0, 4.0, 0.0], dtype="float32")
    a.grad, b.grad = ndl.Tensor(ga), ndl.Tensor(gb)
    old = a.grad
    opt = optim.SGD([a, b], lr=1.0)
    norm = opt.clip_grad_norm(max_norm=0.25)
    assert isinstance(norm, ndl.Tensor) and norm.shape == () and float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(old.numpy(), ga)  # not modified in place
    np.testing.assert_allclose(a.grad.numpy(), ga * 0.05, rtol=1e-5)
    np.testing.assert_allclose(b.grad.numpy(), gb * 0.05, rtol=1e-5)
    assert a.grad.dtype == "float32"
    opt.clip_grad_norm(max_norm=10.0)  # below the limit: unchanged
    np.testing.assert_allclose(b.grad.numpy(), gb * 0.05, rtol=1e-5)


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9),
                                  lambda ps: optim.Adam(ps, lr=0.01)])
def test_optimizer_state_dict_round_trip(make):
    np.random.seed(2)
    m1 = _model()
    o1 = make(m1.parameters())
    for step in range(3):
        _grads(m1, step)
        o1.step()
    state = o1.state_dict()
    assert state["lr"] == o1.lr
    np.random.seed(3)
    m2 = _model()
    m2.load_state_dict(m1.state_dict())
    o2 = make(m2.parameters())
    o2.load_state_dict(state)
    for step in range(3, 5):
        _grads(m1, step)
        o1.step()
        _grads(m2, step)
        o2.step()
    for p, q in zip(m1.parameters(), m2.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-6, atol=1e-7)
    bad = o1.state_dict()
    key = "u" if "u" in bad else "m"
    bad[key][0] = np.zeros((1, 1))
    with pytest.raises(ValueError, match=r"\(1, 1\)"):
        o2.load_state_dict(bad)


# ---- lr schedulers -----------------------------------------------------------------------
def _lrs(sched, opt, n):
    out = [opt.lr]
    for _ in range(n):
        sched.step()
        assert sched.get_last_lr() == opt.lr
        out.append(opt.lr)
    return out


def test_step_lr():
    opt = optim.SGD([nn.Parameter(ndl.init.ones(1))], lr=1.0)
    sched = optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    np.testing.assert_allclose(_lrs(sched, opt, 7), [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25])


def test_cosine_annealing_lr():
    opt = optim.SGD([nn.Parameter(ndl.init.ones(1))], lr=0.1)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=0.01)
    expected = [0.01 + 0.09 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(5)]
    np.testing.assert_allclose(_lrs(sched, opt, 4), expected)


def test_linear_warmup():
    opt = optim.Adam([nn.Parameter(ndl.init.ones(1))], lr=0.2)
    sched = optim.lr_scheduler.LinearWarmup(opt, warmup_steps=4, start_factor=0.0)
    np.testing.assert_allclose(_lrs(sched, opt, 6), [0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    opt = optim.SGD([nn.Parameter(ndl.init.ones(1))], lr=1.0)
    sched = optim.lr_scheduler.LinearWarmup(opt, warmup_steps=2, start_factor=0.5)
    np.testing.assert_allclose(_lrs(sched, opt, 3), [0.5, 0.75, 1.0, 1.0])


def test_scheduler_changes_update_size():
    p = nn.Parameter(ndl.init.zeros(1))
    opt = optim.SGD([p], lr=1.0)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    deltas = []
    for _ in range(3):
        before = p.numpy().copy()
        p.grad = ndl.init.ones(1)
        opt.step()
        sched.step()
        deltas.append(float((before - p.numpy())[0]))
    np.testing.assert_allclose(deltas, [1.0, 0.1, 0.01], rtol=1e-5)


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.5, momentum=0.9),
                                  lambda ps: optim.Adam(ps, lr=0.05)])
def test_clip_and_step_compiled_equal_eager(make):
    """clip_grad_norm and the step count run the same ops eagerly and compiled."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    w0 = rng.standard_normal((4, 3)).astype(np.float32) * 3

    def run(compiled):
        w = nn.Parameter(ndl.Tensor(w0))
        opt = make([w])

        def step(xb):
            opt.reset_grad()
            loss = ((ndl.Tensor(xb) @ w) ** 2).sum()
            loss.backward()
            norm = opt.clip_grad_norm(max_norm=0.5)
            opt.step()
            return norm

        f = ndl.compile(step) if compiled else step
        norms = [float(f(x).numpy()) for _ in range(3)]
        return norms, w.numpy(), getattr(opt, "t", None)

    eager, compiled = run(False), run(True)
    np.testing.assert_allclose(compiled[0], eager[0], rtol=1e-5)
    np.testing.assert_allclose(compiled[1], eager[1], rtol=1e-5, atol=1e-6)
    assert compiled[2] == eager[2]
