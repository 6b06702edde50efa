"""Every op: forward against numpy on fresh random inputs, and a finite-difference gradient check."""
from __future__ import annotations

import numpy as np
import pytest

import needle as ndl
from tests.conftest import BACKEND, close, gradient_check, tensor

rng = np.random.default_rng


def randn(*shape):
    return np.random.randn(*shape)


def positive(*shape):
    return np.random.rand(*shape) + 0.5


def away_from_zero(*shape):
    x = np.random.randn(*shape)
    return np.where(np.abs(x) < 0.1, x + np.sign(x) * 0.2 + 0.2 * (x == 0), x)


def distinct(*shape):
    """Values at least 0.1 apart, so finite differences never cross a max's tie."""
    n = int(np.prod(shape))
    return (np.random.permutation(n) * 0.1 + np.random.rand(n) * 0.02 - n * 0.05).reshape(shape)


def np_logsumexp(x, axes):
    m = np.max(x, axis=axes, keepdims=True)
    return np.squeeze(np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m,
                      axis=axes if axes is not None else tuple(range(x.ndim)))


# (id, needle fn, numpy fn, input generators)
CASES = [
    ("add", lambda a, b: a + b, lambda a, b: a + b, [randn(3, 4), randn(3, 4)]),
    ("add_broadcast", lambda a, b: a + b, lambda a, b: a + b, [randn(3, 4), randn(4)]),
    ("add_broadcast_both", lambda a, b: ndl.add(a, b), lambda a, b: a + b, [randn(3, 1), randn(1, 5)]),
    ("add_scalar", lambda a: a + 1.7, lambda a: a + 1.7, [randn(5, 2)]),
    ("radd_scalar", lambda a: 2.5 + a, lambda a: 2.5 + a, [randn(5)]),
    ("sub", lambda a, b: a - b, lambda a, b: a - b, [randn(2, 3), randn(2, 3)]),
    ("rsub", lambda a: 3.0 - a, lambda a: 3.0 - a, [randn(2, 3)]),
    ("mul", lambda a, b: a * b, lambda a, b: a * b, [randn(4, 3), randn(4, 3)]),
    ("mul_scalar", lambda a: a * -2.5, lambda a: a * -2.5, [randn(4, 3)]),
    ("div", lambda a, b: a / b, lambda a, b: a / b, [randn(3, 3), positive(3, 3)]),
    ("div_scalar", lambda a: a / 4.0, lambda a: a / 4.0, [randn(3, 3)]),
    ("rdiv", lambda a: 2.0 / a, lambda a: 2.0 / a, [positive(3, 2)]),
    ("power", lambda a, b: a ** b, lambda a, b: a ** b, [positive(3, 4), randn(3, 4)]),
    ("power_scalar_int", lambda a: a ** 3, lambda a: a ** 3, [randn(3, 4)]),
    ("power_scalar_neg", lambda a: a ** -1.5, lambda a: a ** -1.5, [positive(3, 4)]),
    ("power_scalar_half", lambda a: ndl.power_scalar(a, 0.5), lambda a: a ** 0.5, [positive(6)]),
    ("negate", lambda a: -a, lambda a: -a, [randn(2, 5)]),
    ("log", ndl.log, np.log, [positive(4, 4)]),
    ("exp", ndl.exp, np.exp, [randn(4, 4)]),
    ("tanh", ndl.tanh, np.tanh, [randn(4, 4) * 2]),
    ("relu", ndl.relu, lambda a: np.maximum(a, 0), [away_from_zero(5, 4)]),
    ("sigmoid", ndl.sigmoid, lambda a: 1 / (1 + np.exp(-a)), [randn(4, 4) * 3]),
    ("matmul", lambda a, b: a @ b, lambda a, b: a @ b, [randn(3, 5), randn(5, 4)]),
    ("matmul_odd", lambda a, b: a @ b, lambda a, b: a @ b, [randn(7, 13), randn(13, 5)]),
    ("matmul_batched", lambda a, b: a @ b, lambda a, b: a @ b, [randn(2, 3, 4), randn(2, 4, 5)]),
    ("matmul_batch_2d", lambda a, b: a @ b, lambda a, b: a @ b, [randn(2, 3, 3, 4), randn(4, 2)]),
    ("matmul_2d_batch", lambda a, b: a @ b, lambda a, b: a @ b, [randn(3, 4), randn(2, 4, 2)]),
    ("matmul_bcast", lambda a, b: a @ b, lambda a, b: a @ b, [randn(2, 1, 3, 4), randn(3, 4, 2)]),
    ("sum_all", lambda a: ndl.summation(a), lambda a: np.sum(a), [randn(3, 4)]),
    ("sum_axis0", lambda a: ndl.summation(a, axes=0), lambda a: np.sum(a, 0), [randn(3, 4)]),
    ("sum_axes", lambda a: ndl.summation(a, axes=(0, 2)), lambda a: np.sum(a, (0, 2)), [randn(3, 4, 2)]),
    ("sum_neg_axis", lambda a: a.sum(axes=-1), lambda a: np.sum(a, -1), [randn(3, 4, 2)]),
    ("mean", lambda a: ndl.mean(a, axes=(1,)), lambda a: np.mean(a, 1), [randn(3, 4)]),
    ("mean_all", lambda a: a.mean(), lambda a: np.mean(a), [randn(3, 4)]),
    ("max_axis", lambda a: ndl.max(a, axes=1), lambda a: np.max(a, 1), [distinct(4, 5)]),
    ("max_all", lambda a: a.max(), lambda a: np.max(a), [distinct(4, 5)]),
    ("max_axes", lambda a: ndl.max(a, axes=(0, 2)), lambda a: np.max(a, (0, 2)), [distinct(3, 2, 4)]),
    ("broadcast_to", lambda a: ndl.broadcast_to(a, (3, 4)), lambda a: np.broadcast_to(a, (3, 4)), [randn(1, 4)]),
    ("broadcast_new_axes", lambda a: ndl.broadcast_to(a, (2, 3, 4)), lambda a: np.broadcast_to(a, (2, 3, 4)), [randn(3, 1)]),
    ("reshape", lambda a: ndl.reshape(a, (2, 6)), lambda a: a.reshape(2, 6), [randn(3, 4)]),
    ("reshape_infer", lambda a: a.reshape((-1, 3)), lambda a: a.reshape(-1, 3), [randn(2, 6)]),
    ("reshape_noncompact", lambda a: ndl.reshape(ndl.transpose(a), (12,)), lambda a: a.T.reshape(12), [randn(3, 4)]),
    ("transpose", lambda a: ndl.transpose(a), lambda a: np.swapaxes(a, -1, -2), [randn(2, 3, 4)]),
    ("transpose_axes", lambda a: ndl.transpose(a, (0, 2)), lambda a: np.swapaxes(a, 0, 2), [randn(2, 3, 4)]),
    ("permute", lambda a: ndl.permute(a, (2, 0, 1)), lambda a: np.transpose(a, (2, 0, 1)), [randn(2, 3, 4)]),
    ("logsoftmax", ndl.logsoftmax, lambda a: a - np_logsumexp(a, (1,))[:, None], [randn(4, 6)]),
    ("logsumexp", lambda a: ndl.logsumexp(a, axes=(1,)), lambda a: np_logsumexp(a, (1,)), [randn(3, 5)]),
    ("logsumexp_all", lambda a: ndl.logsumexp(a), lambda a: np_logsumexp(a, None), [randn(3, 5)]),
    ("logsumexp_axes", lambda a: ndl.logsumexp(a, axes=(0, 2)), lambda a: np_logsumexp(a, (0, 2)), [randn(3, 2, 4)]),
    ("logsumexp_huge", lambda a: ndl.logsumexp(a, axes=(1,)), lambda a: np_logsumexp(a, (1,)), [randn(3, 5) * 1e4]),
    ("stack", lambda a, b, c: ndl.stack([a, b, c], 1), lambda a, b, c: np.stack([a, b, c], 1), [randn(3, 4)] * 3),
    ("split_getitem", lambda a: ndl.split(a, 1)[2], lambda a: a[:, 2], [randn(3, 4)]),
    ("split_stack", lambda a: ndl.stack(list(ndl.split(a, 0).tuple())[::-1], 0), lambda a: a[::-1], [randn(3, 2)]),
    ("concat", lambda a, b: ndl.concat([a, b], 1), lambda a, b: np.concatenate([a, b], 1), [randn(2, 3), randn(2, 5)]),
    ("flip", lambda a: ndl.flip(a, (0, 2)), lambda a: np.flip(a, (0, 2)), [randn(2, 3, 4)]),
    ("dilate", lambda a: ndl.dilate(a, (0, 1), 2), None, [randn(2, 3)]),
    ("undilate", lambda a: ndl.undilate(a, (1,), 1), lambda a: a[:, ::2], [randn(2, 6)]),
    ("getitem_slice", lambda a: a[1:3, ::2], lambda a: a[1:3, ::2], [randn(4, 5)]),
    ("getitem_int", lambda a: a[2], lambda a: a[2], [randn(4, 5)]),
    ("getitem_mixed", lambda a: a[-1, 1:, 0:4:3], lambda a: a[-1, 1:, 0:4:3], [randn(2, 3, 5)]),
    ("where", lambda c, a, b: ndl.where(c > 0, a, b), lambda c, a, b: np.where(c > 0, a, b),
     [away_from_zero(3, 4), randn(3, 4), randn(3, 4)]),
    ("conv", lambda a, b: ndl.conv(a, b, stride=1, padding=1), None, [randn(2, 5, 5, 3), randn(3, 3, 3, 4)]),
    ("conv_stride2", lambda a, b: ndl.conv(a, b, stride=2, padding=1), None, [randn(2, 6, 6, 2), randn(3, 3, 2, 3)]),
    ("conv_stride2_odd", lambda a, b: ndl.conv(a, b, stride=2, padding=0), None, [randn(1, 7, 6, 2), randn(3, 3, 2, 2)]),
    ("conv_k1", lambda a, b: ndl.conv(a, b, stride=1, padding=0), None, [randn(2, 4, 4, 3), randn(1, 1, 3, 2)]),
    ("conv_pad2", lambda a, b: ndl.conv(a, b, stride=3, padding=2), None, [randn(1, 5, 7, 2), randn(2, 2, 2, 3)]),
    ("conv_rect", lambda a, b: ndl.conv(a, b, stride=2, padding=1), None, [randn(1, 6, 5, 2), randn(3, 2, 2, 2)]),
    ("conv_backward_data", lambda g, w: ndl.ops.ConvBackwardData(1, 1, (5, 5))(g, w), None,
     [randn(2, 5, 5, 4), randn(3, 3, 3, 4)]),
    ("conv_backward_data_stride2", lambda g, w: ndl.ops.ConvBackwardData(2, 1, (6, 5))(g, w), None,
     [randn(1, 3, 3, 3), randn(3, 2, 2, 3)]),
    ("conv_backward_filter", lambda a, g: ndl.ops.ConvBackwardFilter(1, 1, (3, 3))(a, g), None,
     [randn(2, 5, 5, 3), randn(2, 5, 5, 4)]),
    ("conv_backward_filter_stride2", lambda a, g: ndl.ops.ConvBackwardFilter(2, 0, (3, 2))(a, g), None,
     [randn(1, 7, 6, 2), randn(1, 3, 3, 3)]),
]


def np_dilate(a, axes, d):
    shape = [n * (d + 1) if i in axes else n for i, n in enumerate(a.shape)]
    out = np.zeros(shape)
    out[tuple(slice(None, None, d + 1) if i in axes else slice(None) for i in range(a.ndim))] = a
    return out


def np_conv(a, b, stride, padding):
    a = np.pad(a, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n, h, w, _ = a.shape
    kh, kw, _, c_out = b.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((n, ho, wo, c_out))
    for i in range(ho):
        for j in range(wo):
            patch = a[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.tensordot(patch, b, axes=([1, 2, 3], [0, 1, 2]))
    return out


def np_conv_backward_data(g, w, stride, padding, size):
    n, ho, wo, _ = g.shape
    kh, kw, c_in, _ = w.shape
    h, wd = size
    out = np.zeros((n, h + 2 * padding, wd + 2 * padding, c_in))
    for i in range(ho):
        for j in range(wo):
            out[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :] += np.einsum("no,abco->nabc", g[:, i, j], w)
    return out[:, padding:padding + h, padding:padding + wd, :]


def np_conv_backward_filter(a, g, stride, padding, kernel):
    a = np.pad(a, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    kh, kw = kernel
    _, ho, wo, _ = g.shape
    out = np.zeros((kh, kw, a.shape[3], g.shape[3]))
    for i in range(ho):
        for j in range(wo):
            out += np.einsum("nabc,no->abco", a[:, i * stride:i * stride + kh, j * stride:j * stride + kw], g[:, i, j])
    return out


NUMPY_FALLBACK = {
    "conv_backward_data": lambda g, w: np_conv_backward_data(g, w, 1, 1, (5, 5)),
    "conv_backward_data_stride2": lambda g, w: np_conv_backward_data(g, w, 2, 1, (6, 5)),
    "conv_backward_filter": lambda a, g: np_conv_backward_filter(a, g, 1, 1, (3, 3)),
    "conv_backward_filter_stride2": lambda a, g: np_conv_backward_filter(a, g, 2, 0, (3, 2)),
    "dilate": lambda a: np_dilate(a, (0, 1), 2),
    "conv": lambda a, b: np_conv(a, b, 1, 1),
    "conv_stride2": lambda a, b: np_conv(a, b, 2, 1),
    "conv_stride2_odd": lambda a, b: np_conv(a, b, 2, 0),
    "conv_k1": lambda a, b: np_conv(a, b, 1, 0),
    "conv_pad2": lambda a, b: np_conv(a, b, 3, 2),
    "conv_rect": lambda a, b: np_conv(a, b, 2, 1),
}

NONDIFF_INPUTS = {"where": [0]}


@pytest.mark.parametrize("name,fn,ref,inputs", CASES, ids=[c[0] for c in CASES])
def test_forward(name, fn, ref, inputs):
    ref = ref or NUMPY_FALLBACK[name]
    arrays = [np.asarray(x) for x in inputs]
    out = fn(*[tensor(a) for a in arrays])
    expected = ref(*arrays)
    assert out.shape == np.shape(expected), f"{name}: shape {out.shape} vs {np.shape(expected)}"
    close(out, expected, rtol=None if "huge" not in name else 1e-6)


# finite differences are meaningless at magnitude 1e4: test_logsumexp_huge_grad covers that case
GRAD_CASES = [c for c in CASES if "huge" not in c[0]]


@pytest.mark.parametrize("name,fn,ref,inputs", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_gradient(name, fn, ref, inputs):
    arrays = [np.asarray(x) for x in inputs]
    wrt = [i for i in range(len(arrays)) if i not in NONDIFF_INPUTS.get(name, [])]
    gradient_check(fn, *arrays, wrt=wrt)


def test_logsumexp_huge_grad():
    x = randn(3, 5) * 1e4
    t = tensor(x)
    ndl.logsumexp(t, axes=(1,)).sum().backward()
    p = np.exp(x - np_logsumexp(x, (1,))[:, None])
    close(t.grad, p, atol=1e-6)


def test_exp_edge_values():
    x = np.array([-100.0, -1.0, 0.0, 1.0, 80.0, np.inf, -np.inf])
    with np.errstate(over="ignore"):
        close(ndl.exp(tensor(x)), np.exp(x).astype(np.float64), rtol=1e-5)
    close(ndl.tanh(tensor(np.array([-50.0, -1.0, 0.0, 3.0, 50.0]))), np.tanh([-50.0, -1.0, 0.0, 3.0, 50.0]))


def test_gather_and_index_add():
    w = randn(6, 3)
    ids = np.array([[0, 5, 2], [2, 2, 1]], dtype=np.float64)
    wt = tensor(w)
    idx = tensor(ids, requires_grad=False)
    out = ndl.gather(wt, idx)
    close(out, w[ids.astype(int)])
    onehot = np.eye(6)[ids.astype(int)]
    close(out, onehot @ w)
    g = randn(2, 3, 3)
    out.backward(tensor(g, requires_grad=False))
    expected = np.zeros_like(w)
    np.add.at(expected, ids.astype(int).reshape(-1), g.reshape(-1, 3))
    close(wt.grad, expected)
    gradient_check(lambda a: ndl.gather(a, idx), w)
    gradient_check(lambda v: ndl.index_add(v, idx, 6), randn(2, 3, 3))


def test_argmax():
    x = randn(4, 7)
    close(ndl.argmax(tensor(x), 1), np.argmax(x, 1))
    close(tensor(x).argmax(), np.argmax(x))
    assert not ndl.argmax(tensor(x), 0).requires_grad


def test_compare_ops():
    a, b = randn(3, 4), randn(3, 4)
    ta, tb = tensor(a), tensor(b)
    close(ta > tb, (a > b).astype(float))
    close(ta <= 0.1, (a <= 0.1).astype(float))
    close(ndl.compare(ta, tb, "eq"), (a == b).astype(float))
    assert not (ta > tb).requires_grad


def test_getitem_out_of_range():
    with pytest.raises(IndexError, match="out of range"):
        tensor(randn(3, 4))[3]


@pytest.mark.parametrize("fn", [
    lambda x: (x ** 3).sum(),
    lambda x: ndl.exp(x).sum(),
    lambda x: ndl.tanh(x).sum(),
    lambda x: (ndl.log(x * x + 1.0) * x).sum(),
    lambda x: ndl.logsumexp(ndl.reshape(x, (2, 3)), axes=(1,)).sum(),
    lambda x: (ndl.reshape(x, (2, 3)) @ ndl.reshape(x, (3, 2))).sum(),
    lambda x: ndl.sigmoid(x).sum(),
    lambda x: (ndl.logsoftmax(ndl.reshape(x, (2, 3))) * 1.5).sum(),
], ids=["cube", "exp", "tanh", "log_mul", "logsumexp", "matmul", "sigmoid", "logsoftmax"])
def test_second_derivative(fn):
    """x.grad.backward(): d/dx sum(grad f(x) * v) against finite differences of grad f."""
    x0 = randn(6)
    v = randn(6)

    def grad_dot_v(x_arr):
        x = tensor(x_arr)
        fn(x).backward()
        return float(np.sum(x.grad.numpy() * v))

    x = tensor(x0)
    fn(x).backward()
    g = x.grad
    x2 = x  # differentiate the gradient (built from needle ops) again
    (g * tensor(v, requires_grad=False)).sum().backward()
    got = x2.grad.numpy()
    eps = 1e-6 if BACKEND == "np" else 1e-2
    expected = np.zeros(6)
    for j in range(6):
        p, m = x0.copy(), x0.copy()
        p[j] += eps
        m[j] -= eps
        expected[j] = (grad_dot_v(p) - grad_dot_v(m)) / (2 * eps)
    tol = 1e-5 if BACKEND == "np" else 3e-2
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * max(1, np.abs(expected).max()))
