"""PyTorch-style conveniences (issue 15): Module repr / named_parameters / named_modules /
num_parameters / apply / to, optim.AdamW (numpy reference; eager == compiled train_step),
DataLoader(drop_last, collate_fn), nn.Conv(padding=...) (numpy reference; eager == compiled).

Module.__repr__ is nested like PyTorch's; named_parameters() lists exactly what parameters()
lists, in the same order, with the state dict's dotted names. AdamW is PyTorch's: for each
parameter with a gradient, p -= lr*wd*p, then Adam's update on the raw gradient.
"""
import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
import needle.optim as optim
from needle.data import DataLoader, NDArrayDataset


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


# ---- Module conveniences -------------------------------------------------------------------
def test_repr_nested_like_pytorch():
    np.random.seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    assert repr(m) == ("Sequential(\n"
                       "  (0): Linear(in_features=4, out_features=3, bias=True)\n"
                       "  (1): ReLU()\n"
                       ")")
    deep = nn.Sequential(nn.Residual(nn.Sequential(nn.Linear(2, 2, bias=False), nn.Dropout(0.1))),
                         nn.LSTM(3, 4, num_layers=2), nn.BatchNorm1d(2))
    assert repr(deep) == ("Sequential(\n"
                          "  (0): Residual(\n"
                          "    (fn): Sequential(\n"
                          "      (0): Linear(in_features=2, out_features=2, bias=False)\n"
                          "      (1): Dropout(p=0.1)\n"
                          "    )\n"
                          "  )\n"
                          "  (1): LSTM(\n"
                          "    (lstm_cells): ModuleList(\n"
                          "      (0): LSTMCell(3, 4)\n"
                          "      (1): LSTMCell(4, 4)\n"
                          "    )\n"
                          "  )\n"
                          "  (2): BatchNorm1d(2, eps=1e-05, momentum=0.1)\n"
                          ")")
    assert repr(nn.Conv(3, 8, 3, stride=2)) == "Conv(3, 8, kernel_size=3, stride=2, padding=1, bias=True)"
    assert repr(nn.Identity()) == "Identity()"


def test_named_parameters_match_parameters_and_state_dict():
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Residual(nn.Linear(3, 3)),
                          nn.LSTM(3, 2))
    named = model.named_parameters()
    params = model.parameters()
    assert len(named) == len(params)
    assert all(p is q for (_, p), q in zip(named, params))
    assert [n for n, _ in named][:4] == ["modules.0.weight", "modules.0.bias", "modules.1.weight",
                                         "modules.1.bias"]
    state = model.state_dict()
    for name, p in named:  # the same names as the state dict (which adds the buffers)
        np.testing.assert_array_equal(state[name], p.numpy())
    assert "modules.1.running_mean" in state and "modules.1.running_mean" not in dict(named)


def test_named_parameters_keep_repeats_of_parameters():
    np.random.seed(0)
    lin = nn.Linear(2, 2)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(model.named_parameters()) == len(model.parameters()) == 4
    assert model.num_parameters() == 2 * 2 + 2  # a shared parameter counts once
    assert [n for n, _ in model.named_modules()] == ["", "modules.0", "modules.1"]


def test_named_modules_and_num_parameters():
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 2, bias=False)))
    names = [(n, type(m).__name__) for n, m in model.named_modules()]
    assert names == [("", "Sequential"), ("modules.0", "Linear"), ("modules.1", "Sequential"),
                     ("modules.1.modules.0", "ReLU"), ("modules.1.modules.1", "Linear")]
    assert model.num_parameters() == sum(int(np.prod(p.shape)) for p in model.parameters()) == 4 * 3 + 3 + 3 * 2
    assert [type(m).__name__ for m in model.children()] == ["Linear", "Sequential"]


def test_apply_children_first_then_self():
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Tanh()))
    seen = []
    assert model.apply(lambda m: seen.append(type(m).__name__)) is model
    assert seen == ["Linear", "ReLU", "Tanh", "Sequential", "Sequential"]

    def zero_bias(m):
        if isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.data = ndl.init.zeros(*m.bias.shape)

    model.apply(zero_bias)
    np.testing.assert_array_equal(model.modules[0].bias.numpy(), np.zeros((1, 2), np.float32))


def test_init_order_unchanged():
    """The new methods draw nothing: same RNG order and values as the course's modules."""
    np.random.seed(3)
    a = nn.Sequential(nn.Linear(3, 4), nn.Conv(2, 3, 3), nn.Conv(2, 3, 3, padding=0))
    np.random.seed(3)
    b = nn.Sequential(nn.Linear(3, 4), nn.Conv(2, 3, 3), nn.Conv(2, 3, 3))
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_to_device_moves_in_place():
    from needle.backend_selection import BACKEND

    np.random.seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    params = model.parameters()
    opt = optim.SGD(params, lr=0.1)
    before = {n: a.copy() for n, a in model.state_dict().items()}
    target = ndl.cpu_numpy() if BACKEND == "nd" else ndl.cpu()  # np backend: one device
    assert model.to(target) is model
    for p, q in zip(model.parameters(), params):
        assert p is q  # same objects: the optimizer still holds them
    for name, t in [(n, t) for n, t in model.named_parameters()] + [
            ("modules.1.running_mean", model.modules[1].running_mean)]:
        assert t.device == target
        np.testing.assert_array_equal(t.numpy(), before[name])
    x = ndl.Tensor(np.ones((4, 3), np.float32), device=target)
    loss = ndl.ops.summation(model(x))
    loss.backward()
    opt.step()
    assert all(p.device == target for p in model.parameters())
    model.to("cpu")
    assert all(p.device == ndl.cpu() for p in model.parameters())
    with pytest.raises(ValueError):
        model.to("no_such_device")


# ---- AdamW ------------------------------------------------------------------------------------
from tests.nn.test_optim import _batch, _model  # noqa: E402  (the same model and batches)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_matches_numpy(wd):
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    np.random.seed(0)
    model = _model()
    opt = optim.AdamW(model.parameters(), lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd)
    m = [0.0] * 4
    v = [0.0] * 4
    for t in range(1, 6):
        x, y = _batch(t)
        opt.reset_grad()
        nn.SoftmaxLoss()(model(x), y).backward()
        params = [p.numpy().astype(np.float64) for p in model.parameters()]
        grads = [p.grad.numpy().astype(np.float64) for p in model.parameters()]
        grad_copies = [p.grad.numpy().copy() for p in model.parameters()]
        opt.step()
        for i, (p, g) in enumerate(zip(params, grads)):
            p = p - lr * wd * p  # decoupled: before the Adam update, not added to g
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            want = p - lr * (m[i] / (1 - b1 ** t)) / (np.sqrt(v[i] / (1 - b2 ** t)) + eps)
            got = model.parameters()[i]
            assert got.dtype == "float32" and got.op is None
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
        for p, d in zip(model.parameters(), grad_copies):  # gradients untouched
            np.testing.assert_array_equal(p.grad.numpy(), d)
    assert opt.t == 5


def test_adamw_differs_from_adam_l2_and_equals_adam_without_decay():
    def run(make):
        np.random.seed(0)
        model = _model()
        opt = make(model.parameters())
        for t in range(3):
            x, y = _batch(t)
            opt.reset_grad()
            nn.SoftmaxLoss()(model(x), y).backward()
            opt.step()
        return [p.numpy() for p in model.parameters()]

    adam0 = run(lambda ps: optim.Adam(ps, lr=0.01))
    adamw0 = run(lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.0))
    for a, b in zip(adam0, adamw0):
        np.testing.assert_array_equal(a, b)
    adam = run(lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.1))
    adamw = run(lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1))
    assert max(np.abs(a - b).max() for a, b in zip(adam, adamw)) > 1e-5


def test_adamw_state_dict_round_trip():
    np.random.seed(0)
    model = _model()
    opt = optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.05)
    x, y = _batch(0)
    nn.SoftmaxLoss()(model(x), y).backward()
    opt.step()
    state = opt.state_dict()
    assert state["weight_decay"] == 0.05 and state["t"] == 1
    other = optim.AdamW(model.parameters())
    other.load_state_dict(state)
    assert other.weight_decay == 0.05 and other.lr == 0.02 and other.t == 1
    for i in state["m"]:
        np.testing.assert_array_equal(other.m[i].numpy(), state["m"][i])


def _train(compiled, opt_factory, steps=4, lrs=None):
    np.random.seed(0)
    model = _model()
    opt = opt_factory(model.parameters())
    step = optim.train_step(model, nn.SoftmaxLoss(), opt)
    fn = ndl.compile(step) if compiled else step
    losses = []
    for t in range(steps):
        if lrs is not None:
            opt.lr = lrs[t]
        x, y = _batch(t)
        losses.append(fn(x, y).numpy())
    return losses, [p.numpy() for p in model.parameters()], opt, fn


@pytest.mark.parametrize("executor", ["interp", "native"])
def test_adamw_compiled_train_step_matches_eager(executor, monkeypatch):
    from needle.backend_selection import BACKEND

    if executor == "native" and BACKEND != "nd":
        pytest.skip("the native executor runs on the nd backend")
    monkeypatch.setenv("NEEDLE_EXECUTOR", executor)
    make = lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1)  # noqa: E731
    lrs = [0.01, 0.02, 0.005, 0.01]  # lr is read at every call, as Adam's
    le, pe, oe, _ = _train(False, make, lrs=lrs)
    lc, pc, oc, fn = _train(True, make, lrs=lrs)
    for a, b in zip(lc, le):
        assert rel(a, b) < 1e-5
    for a, b in zip(pc, pe):
        assert rel(a, b) < 1e-5
    assert oc.t == oe.t == 4
    assert fn.stats["traces"] == 1 and fn.stats["executor"] == executor
    for i in oe.m:
        assert rel(oc.m[i].numpy(), oe.m[i].numpy()) < 1e-5
        assert rel(oc.v[i].numpy(), oe.v[i].numpy()) < 1e-5


def test_adamw_compiled_retraces_when_weight_decay_changes():
    np.random.seed(0)
    model = _model()
    opt = optim.AdamW(model.parameters(), weight_decay=0.1)
    fn = ndl.compile(optim.train_step(model, nn.SoftmaxLoss(), opt))
    x, y = _batch(0)
    fn(x, y)
    fn(x, y)
    opt.weight_decay = 0.5  # a Python constant of the graph (as Adam's): guarded
    fn(x, y)
    assert fn.stats["traces"] == 2


# ---- DataLoader -----------------------------------------------------------------------------
def _dataset(n=10):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = np.arange(n, dtype=np.float32)
    return NDArrayDataset(x, y)


def test_dataloader_defaults_unchanged():
    batches = list(DataLoader(_dataset(), batch_size=4))
    assert [b[1].numpy().tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(DataLoader(_dataset(), batch_size=4)) == 3


def test_dataloader_drop_last():
    dl = DataLoader(_dataset(), batch_size=4, drop_last=True)
    assert len(dl) == 2
    assert [b[1].numpy().tolist() for b in dl] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    exact = DataLoader(_dataset(8), batch_size=4, drop_last=True)
    assert len(exact) == 2 and len(list(exact)) == 2
    assert list(DataLoader(_dataset(3), batch_size=4, drop_last=True)) == []


def test_dataloader_drop_last_shuffle_same_rng():
    """drop_last draws the same single permutation of all N per pass."""
    np.random.seed(5)
    full = [b[1].numpy().tolist() for b in DataLoader(_dataset(), batch_size=4, shuffle=True)]
    np.random.seed(5)
    dropped = [b[1].numpy().tolist() for b in DataLoader(_dataset(), batch_size=4, shuffle=True,
                                                         drop_last=True)]
    assert dropped == full[:2]
    np.random.seed(5)
    np.random.permutation(10)
    after = np.random.rand()
    np.random.seed(5)
    list(DataLoader(_dataset(), batch_size=4, shuffle=True, drop_last=True))
    assert np.random.rand() == after


def test_dataloader_collate_fn():
    seen = []

    def collate(samples):
        seen.append(len(samples))
        xs, ys = zip(*samples)
        return {"x": np.stack(xs), "y": [float(v) for v in ys]}

    batches = list(DataLoader(_dataset(), batch_size=4, collate_fn=collate))
    assert seen == [4, 4, 2]
    assert batches[2]["y"] == [8.0, 9.0]
    np.testing.assert_array_equal(batches[0]["x"], np.arange(8, dtype=np.float32).reshape(4, 2))
    batches = list(DataLoader(_dataset(), batch_size=4, collate_fn=collate, drop_last=True))
    assert len(batches) == 2
    with pytest.raises(TypeError):
        DataLoader(_dataset(), collate_fn=3)


# ---- Conv padding ---------------------------------------------------------------------------
def _conv_ref(x, w, b, stride, pad):
    """NCHW numpy convolution with (k, k, cin, cout) weights."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    k = w.shape[0]
    oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((n, w.shape[3], oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride:i * stride + k, j * stride:j * stride + k]  # n c k k
            out[:, :, i, j] = np.einsum("ncij,ijco->no", patch, w)
    return out + b.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("k,stride,pad", [(3, 1, None), (3, 1, 0), (3, 2, 2), (5, 1, 1), (1, 1, 1), (4, 2, 0)])
def test_conv_padding_matches_numpy(k, stride, pad):
    np.random.seed(0)
    conv = nn.Conv(3, 4, k, stride=stride, padding=pad)
    assert conv.padding == ((k - 1) // 2 if pad is None else pad)
    x = np.random.RandomState(1).randn(2, 3, 9, 9).astype(np.float32)
    out = conv(ndl.Tensor(x, requires_grad=False)).numpy()
    want = _conv_ref(x, conv.weight.numpy(), conv.bias.numpy(), stride, conv.padding)
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


def test_conv_padding_rejects_bad_values():
    for bad in (-1, 1.5, "same", True):
        with pytest.raises(ValueError):
            nn.Conv(2, 2, 3, padding=bad)
    assert nn.Conv(2, 2, 3, padding=(2, 2)).padding == 2


@pytest.mark.parametrize("executor", ["interp", "native"])
@pytest.mark.parametrize("pad", [0, 2])
def test_conv_padding_compiled_matches_eager(pad, executor, monkeypatch):
    """Forward and backward of a padded Conv, compiled vs eager, on random inputs."""
    from needle.backend_selection import BACKEND

    if executor == "native" and BACKEND != "nd":
        pytest.skip("the native executor runs on the nd backend")
    monkeypatch.setenv("NEEDLE_EXECUTOR", executor)
    np.random.seed(0)
    conv = nn.Conv(3, 4, 3, stride=1, padding=pad)
    x = ndl.Tensor(np.random.RandomState(2).randn(2, 3, 7, 7).astype(np.float32), requires_grad=False)

    def f(x):
        out = conv(x)
        loss = ndl.ops.summation(out * out)
        loss.backward()
        return out

    eager = f(x).numpy()
    eager_grads = [p.grad.numpy().copy() for p in conv.parameters()]
    for p in conv.parameters():
        p.grad = None
    compiled = ndl.compile(f)(x).numpy()
    assert compiled.shape == eager.shape == (2, 4, 7 + 2 * pad - 2, 7 + 2 * pad - 2)
    assert rel(compiled, eager) < 1e-5
    for p, g in zip(conv.parameters(), eager_grads):
        assert rel(p.grad.numpy(), g) < 1e-5
