"""needle.nn basic modules and Conv: forward vs numpy, RNG order, finite-difference gradients."""
import math

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn

from .helpers import DTYPE, assert_close, check_grads, tensor


def _uniform(rs_shape, bound):
    return np.random.rand(*rs_shape) * 2 * bound - bound


# ---- Module machinery --------------------------------------------------------------------
class _Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.blocks = {"x": [nn.Dropout(0.5), nn.Linear(3, 3)], "y": (nn.BatchNorm1d(3),)}
        self.loose = nn.Parameter(ndl.init.ones(2))
        self.not_param = ndl.init.ones(2)


def test_module_parameters_children_train_eval():
    m = _Holder()
    params = m.parameters()
    expected = [m.a.weight, m.a.bias, m.blocks["x"][1].weight, m.blocks["x"][1].bias,
                m.blocks["y"][0].weight, m.blocks["y"][0].bias, m.loose]
    assert len(params) == len(expected) and all(p is q for p, q in zip(params, expected))
    assert all(isinstance(p, nn.Parameter) for p in params)
    children = m._children()
    assert m.a in children and m.blocks["x"][0] in children and m.blocks["y"][0] in children
    assert m.training and all(c.training for c in children)
    m.eval()
    assert not m.training and not any(c.training for c in children)
    m.train()
    assert m.training and all(c.training for c in children)


def test_simple_activations_and_containers():
    x = np.random.randn(4, 3, 2)
    xt = tensor(x)
    assert_close(nn.Identity()(xt), x)
    assert_close(nn.ReLU()(xt), np.maximum(x, 0))
    assert_close(nn.Tanh()(xt), np.tanh(x))
    assert_close(nn.Sigmoid()(xt), 1 / (1 + np.exp(-x)))
    assert nn.Flatten()(xt).shape == (4, 6)
    assert_close(nn.Flatten()(xt), x.reshape(4, 6))
    seq = nn.Sequential(nn.Tanh(), nn.ReLU())
    assert_close(seq(xt), np.maximum(np.tanh(x), 0))
    assert_close(nn.Residual(nn.Tanh())(xt), np.tanh(x) + x)


# ---- Linear ------------------------------------------------------------------------------
def test_linear_init_order_and_forward():
    np.random.seed(3)
    lin = nn.Linear(5, 7, dtype=DTYPE)
    np.random.seed(3)
    w = _uniform((5, 7), math.sqrt(2) * math.sqrt(3 / 5))
    b = _uniform((7, 1), math.sqrt(2) * math.sqrt(3 / 7)).reshape(1, 7)
    assert lin.weight.shape == (5, 7) and lin.bias.shape == (1, 7)
    assert_close(lin.weight, w, rtol=1e-6, atol=1e-6)
    assert_close(lin.bias, b, rtol=1e-6, atol=1e-6)
    x = np.random.randn(4, 5)
    assert_close(lin(tensor(x)), x @ lin.weight.numpy() + lin.bias.numpy())
    # extra leading axes
    x3 = np.random.randn(2, 3, 5)
    out = lin(tensor(x3))
    assert out.shape == (2, 3, 7)
    assert_close(out, x3 @ lin.weight.numpy() + lin.bias.numpy())
    # a 1-D bias replacement still broadcasts
    lin.bias = nn.Parameter(tensor(np.random.randn(7)))
    assert_close(lin(tensor(x)), x @ lin.weight.numpy() + lin.bias.numpy())
    # no bias: no second draw
    np.random.seed(1)
    nb = nn.Linear(3, 2, bias=False)
    assert nb.bias is None and len(nb.parameters()) == 1
    assert np.random.rand() == pytest.approx(_after_draws(1, [(3, 2)]))


def _after_draws(seed, shapes):
    np.random.seed(seed)
    for s in shapes:
        np.random.rand(*s)
    return np.random.rand()


def test_linear_grads():
    lin = nn.Linear(4, 3, dtype=DTYPE)
    x = tensor(np.random.randn(2, 3, 4), requires_grad=True)
    check_grads(lambda: lin(x), [lin.weight, lin.bias, x])


# ---- SoftmaxLoss -------------------------------------------------------------------------
@pytest.mark.parametrize("ydtype", ["int64", "uint8", "float32"])
def test_softmax_loss(ydtype):
    logits = np.random.randn(6, 5) * 3
    y = np.random.randint(0, 5, 6)
    z = logits - logits.max(1, keepdims=True)
    expected = np.mean(np.log(np.exp(z).sum(1)) + logits.max(1) - logits[np.arange(6), y])
    lt = tensor(logits, requires_grad=True)
    yt = ndl.Tensor(y.astype(ydtype), requires_grad=False)
    loss = nn.SoftmaxLoss()(lt, yt)
    assert_close(loss, expected)
    check_grads(lambda: nn.SoftmaxLoss()(lt, yt), [lt])


# ---- normalisation -----------------------------------------------------------------------
def _bn_ref(x, w, b, mean, var, eps):
    return w * (x - mean) / np.sqrt(var + eps) + b


def test_batchnorm1d_train_eval_running_stats():
    bn = nn.BatchNorm1d(4, eps=1e-5, momentum=0.2, dtype=DTYPE)
    assert bn.running_mean.shape == (4,) and bn.running_var.shape == (4,)
    assert not isinstance(bn.running_mean, nn.Parameter)
    bn.weight = nn.Parameter(tensor(np.random.rand(4) + 0.5))
    bn.bias = nn.Parameter(tensor(np.random.randn(4)))
    w, b = bn.weight.numpy(), bn.bias.numpy()
    rm, rv = np.zeros(4), np.ones(4)
    for _ in range(3):
        x = np.random.randn(8, 4) * 2 + 1
        out = bn(tensor(x))
        mean, var = x.mean(0), x.var(0)
        assert_close(out, _bn_ref(x, w, b, mean, var, 1e-5))
        rm = 0.8 * rm + 0.2 * mean
        rv = 0.8 * rv + 0.2 * var
        assert_close(bn.running_mean, rm)
        assert_close(bn.running_var, rv)
    bn.eval()
    x = np.random.randn(5, 4)
    assert_close(bn(tensor(x)), _bn_ref(x, w, b, rm, rv, 1e-5))
    assert_close(bn.running_mean, rm)


def test_batchnorm1d_grads():
    bn = nn.BatchNorm1d(3, dtype=DTYPE)
    bn.weight = nn.Parameter(tensor(np.random.rand(3) + 0.5))
    x = tensor(np.random.randn(5, 3), requires_grad=True)
    check_grads(lambda: bn(x), [bn.weight, bn.bias, x])
    bn.eval()
    check_grads(lambda: bn(x), [bn.weight, bn.bias, x], seed=1)


def test_batchnorm2d_forward_and_grads():
    bn = nn.BatchNorm2d(3, dtype=DTYPE)
    bn.weight = nn.Parameter(tensor(np.random.rand(3) + 0.5))
    bn.bias = nn.Parameter(tensor(np.random.randn(3)))
    x = np.random.randn(2, 3, 4, 5)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
    expected = (bn.weight.numpy()[None, :, None, None] * (x - mean[None, :, None, None])
                / np.sqrt(var[None, :, None, None] + 1e-5) + bn.bias.numpy()[None, :, None, None])
    assert_close(bn(tensor(x)), expected)
    assert_close(bn.running_mean, 0.1 * mean)
    assert_close(bn.running_var, 0.9 + 0.1 * var)
    xt = tensor(np.random.randn(2, 3, 2, 2), requires_grad=True)
    check_grads(lambda: bn(xt), [bn.weight, bn.bias, xt])


def test_layernorm1d_forward_and_grads():
    ln = nn.LayerNorm1d(6, eps=1e-5, dtype=DTYPE)
    ln.weight = nn.Parameter(tensor(np.random.rand(6) + 0.5))
    ln.bias = nn.Parameter(tensor(np.random.randn(6)))
    x = np.random.randn(4, 6) * 3
    expected = (ln.weight.numpy() * (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
                + ln.bias.numpy())
    assert_close(ln(tensor(x)), expected)
    xt = tensor(x, requires_grad=True)
    check_grads(lambda: ln(xt), [ln.weight, ln.bias, xt])


# ---- Dropout -----------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5])
def test_dropout_mask_and_rng(p):
    x = np.random.randn(50, 40) + 3
    drop = nn.Dropout(p)
    np.random.seed(7)
    out = drop(tensor(x)).numpy()
    after = np.random.rand()
    np.random.seed(7)
    mask = np.random.rand(50, 40) <= 1 - p
    assert np.random.rand() == after  # exactly one draw of x's shape
    np.testing.assert_allclose(out, x * mask / (1 - p), rtol=1e-6, atol=1e-6)
    if p > 0:
        frac = (out == 0).mean()
        assert abs(frac - p) < 0.05
    # eval: identity, no RNG use
    drop.eval()
    np.random.seed(7)
    assert_close(drop(tensor(x)), x)
    assert np.random.rand() == _after_draws(7, [])


# ---- Conv --------------------------------------------------------------------------------
def _conv_ref(x, w, b, stride, pad):
    """Direct NCHW convolution loop; w is (k, k, cin, cout)."""
    n, cin, h, wd = x.shape
    k, cout = w.shape[0], w.shape[3]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, cout, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride:i * stride + k, j * stride:j * stride + k]  # n cin k k
            out[:, :, i, j] = np.einsum("ncab,abco->no", patch, w)
    if b is not None:
        out += b[None, :, None, None]
    return out


def test_conv_init_order():
    np.random.seed(11)
    conv = nn.Conv(3, 4, 3, dtype=DTYPE)
    np.random.seed(11)
    fan_in = 3 * 9
    w = _uniform((3, 3, 3, 4), math.sqrt(2) * math.sqrt(3 / fan_in))
    b = _uniform((4,), 1 / math.sqrt(fan_in))
    assert conv.weight.shape == (3, 3, 3, 4) and conv.bias.shape == (4,)
    assert_close(conv.weight, w, rtol=1e-6, atol=1e-6)
    assert_close(conv.bias, b, rtol=1e-6, atol=1e-6)
    assert conv.padding == 1


@pytest.mark.parametrize("k,stride,bias", [(3, 1, True), (3, 2, True), (1, 1, False), (4, 2, True),
                                           (5, 1, True)])
def test_conv_forward(k, stride, bias):
    conv = nn.Conv(3, 5, k, stride=stride, bias=bias, dtype=DTYPE)
    x = np.random.randn(2, 3, 9, 8)
    out = conv(tensor(x))
    expected = _conv_ref(x, conv.weight.numpy(), conv.bias.numpy() if bias else None, stride, (k - 1) // 2)
    assert out.shape == expected.shape
    assert_close(out, expected, rtol=max(1e-4, 10 * 1e-9), atol=1e-4 if DTYPE == "float32" else 1e-9)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_grads(stride):
    conv = nn.Conv(2, 3, 3, stride=stride, dtype=DTYPE)
    x = tensor(np.random.randn(2, 2, 5, 5), requires_grad=True)
    check_grads(lambda: conv(x), [conv.weight, conv.bias, x])


# ---- every parameter gets a gradient -----------------------------------------------------
def test_every_parameter_gets_gradient():
    model = nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Dropout(0.1),
        nn.Residual(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm1d(8), nn.Tanh())),
        nn.Linear(8, 4))
    x = ndl.Tensor(np.random.randn(10, 6).astype("float32"))
    y = ndl.Tensor(np.random.randint(0, 4, 10).astype("float32"))
    nn.SoftmaxLoss()(model(x), y).backward()
    for p in model.parameters():
        assert p.grad is not None and p.grad.shape == p.shape
    conv = nn.Sequential(nn.Conv(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    conv(ndl.Tensor(np.random.randn(2, 3, 6, 6).astype("float32"))).sum().backward()
    for p in conv.parameters():
        assert p.grad is not None and p.grad.shape == p.shape
