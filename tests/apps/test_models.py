"""apps/: ResNet9, LanguageModel, MLPResNet and simple_ml against numpy references."""
import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
import needle.optim as optim  # noqa: F401

from apps import simple_ml
from apps.mlp_resnet import MLPResNet, ResidualBlock, epoch
from apps.models import LanguageModel, ResNet9

REPO = Path(__file__).resolve().parents[2]


def _count(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


# ---- models --------------------------------------------------------------------------------


def test_resnet9_shape_and_parameter_count():
    np.random.seed(0)
    model = ResNet9()
    assert _count(model) == 431946  # the course's figure
    x = ndl.Tensor(np.random.rand(2, 3, 32, 32).astype(np.float32), requires_grad=False)
    out = model(x)
    assert out.shape == (2, 10)
    model.eval()
    assert model(x).shape == (2, 10)


def test_resnet9_construction_order():
    np.random.seed(1)
    model = ResNet9()
    shapes = [tuple(p.shape) for p in model.parameters()]
    # ConvBN(3, 16, 7, 4): conv weight, conv bias, bn weight, bn bias
    assert shapes[:4] == [(7, 7, 3, 16), (16,), (16,), (16,)]
    assert shapes[-4:] == [(128, 128), (1, 128), (128, 10), (1, 10)]
    np.random.seed(1)
    k, cin, cout = 7, 3, 16
    bound = np.sqrt(2) * np.sqrt(3 / (cin * k * k))
    w = np.random.rand(k, k, cin, cout) * 2 * bound - bound
    b_bound = 1 / np.sqrt(cin * k * k)
    b = np.random.rand(cout) * 2 * b_bound - b_bound
    params = model.parameters()
    np.testing.assert_allclose(params[0].numpy(), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params[1].numpy(), b, rtol=1e-5, atol=1e-6)


def _lm_param_count(emb, vocab, hidden, layers, kind):
    count = vocab * emb
    gates = 4 if kind == "lstm" else 1
    for layer in range(layers):
        inp = emb if layer == 0 else hidden
        count += inp * gates * hidden + hidden * gates * hidden + 2 * gates * hidden
    return count + hidden * vocab + vocab


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_language_model_recurrent_shapes(kind):
    np.random.seed(0)
    emb, vocab, hidden, layers, seq, bs = 6, 13, 7, 2, 5, 3
    model = LanguageModel(emb, vocab, hidden, num_layers=layers, seq_model=kind)
    assert _count(model) == _lm_param_count(emb, vocab, hidden, layers, kind)
    x = ndl.Tensor(np.random.randint(0, vocab, size=(seq, bs)).astype(np.float32),
                   requires_grad=False)
    logits, h = model(x)
    assert logits.shape == (seq * bs, vocab)
    if kind == "lstm":
        assert isinstance(h, tuple) and len(h) == 2
        assert h[0].shape == (layers, bs, hidden) and h[1].shape == (layers, bs, hidden)
        h = tuple(t.detach() for t in h)
    else:
        assert h.shape == (layers, bs, hidden)
        h = h.detach()
    logits2, _ = model(x, h)  # carrying the state works
    assert logits2.shape == (seq * bs, vocab)
    logits2.sum().backward()
    for p in model.parameters():
        assert p.grad is not None and p.grad.shape == p.shape


def test_language_model_transformer_shapes():
    np.random.seed(0)
    emb, vocab, hidden, seq, bs = 8, 11, 16, 4, 2
    model = LanguageModel(emb, vocab, hidden, num_layers=1, seq_model="transformer")
    assert isinstance(model.seq_model, nn.Transformer)
    assert model.linear.weight.shape == (emb, vocab)  # transformer keeps the model width
    x = ndl.Tensor(np.random.randint(0, vocab, size=(seq, bs)).astype(np.float32),
                   requires_grad=False)
    logits, h = model(x)
    assert logits.shape == (seq * bs, vocab)
    assert h.shape == (seq, bs, emb)


def test_language_model_bad_kind():
    with pytest.raises(ValueError, match="seq_model"):
        LanguageModel(4, 5, 6, seq_model="gru")


def test_language_model_lstm_rng_order_matches_numpy_redraw():
    emb, vocab, hidden = 4, 10, 5
    np.random.seed(7)
    model = LanguageModel(emb, vocab, hidden, num_layers=1, seq_model="lstm")
    np.random.seed(7)
    expected = [np.random.randn(vocab, emb)]  # Embedding: N(0, 1)
    k = 1 / np.sqrt(hidden)
    for shape in [(emb, 4 * hidden), (hidden, 4 * hidden), (4 * hidden,), (4 * hidden,)]:
        expected.append(np.random.rand(*shape) * 2 * k - k)  # W_ih, W_hh, bias_ih, bias_hh
    b = np.sqrt(2) * np.sqrt(3 / hidden)
    expected.append(np.random.rand(hidden, vocab) * 2 * b - b)  # Linear weight
    b = np.sqrt(2) * np.sqrt(3 / vocab)
    expected.append((np.random.rand(vocab, 1) * 2 * b - b).reshape(1, vocab))  # Linear bias
    params = model.parameters()
    assert len(params) == len(expected)
    for p, e in zip(params, expected):
        assert p.shape == e.shape
        np.testing.assert_allclose(p.numpy(), e, rtol=1e-5, atol=1e-6)


# ---- mlp_resnet ----------------------------------------------------------------------------


def test_mlp_resnet_structure_and_count():
    np.random.seed(0)
    model = MLPResNet(784, hidden_dim=100)
    # Linear(784,100) + 3 blocks of [Linear(100,50), BN(50), Linear(50,100), BN(100)] + Linear(100,10)
    block = 100 * 50 + 50 + 2 * 50 + 50 * 100 + 100 + 2 * 100
    assert _count(model) == 784 * 100 + 100 + 3 * block + 100 * 10 + 10
    x = ndl.Tensor(np.random.rand(4, 28, 28, 1).astype(np.float32), requires_grad=False)
    assert model(x).shape == (4, 10)
    blk = ResidualBlock(8, 4)
    assert isinstance(blk, nn.Sequential)


def test_mlp_resnet_rng_order_first_layer():
    np.random.seed(3)
    model = MLPResNet(20, hidden_dim=6, num_blocks=1)
    np.random.seed(3)
    b = np.sqrt(2) * np.sqrt(3 / 20)
    w = np.random.rand(20, 6) * 2 * b - b
    np.testing.assert_allclose(model.parameters()[0].numpy(), w, rtol=1e-5, atol=1e-6)


def test_mlp_resnet_epoch_trains_and_evaluates():
    np.random.seed(0)
    rng = np.random.RandomState(0)
    X = rng.rand(60, 28, 28, 1).astype(np.float32)
    y = rng.randint(0, 10, size=60).astype(np.uint8)
    ds = ndl.data.NDArrayDataset(X, y)
    loader = ndl.data.DataLoader(ds, 20, shuffle=True)
    model = MLPResNet(784, hidden_dim=16)
    opt = ndl.optim.Adam(model.parameters(), lr=0.01)
    err, loss = epoch(loader, model, opt)
    assert 0.0 <= err <= 1.0 and np.isfinite(loss)
    err2, loss2 = epoch(ndl.data.DataLoader(ds, 20), model)
    assert 0.0 <= err2 <= 1.0 and np.isfinite(loss2)
    assert model.training is False


# ---- simple_ml -----------------------------------------------------------------------------


def _np_softmax_loss(Z, Y):
    Z = Z.astype(np.float64)
    return float(np.mean(np.log(np.exp(Z).sum(axis=1)) - (Z * Y).sum(axis=1)))


def test_softmax_loss_matches_numpy():
    rng = np.random.RandomState(0)
    Z = rng.randn(7, 5).astype(np.float32)
    y = rng.randint(0, 5, size=7)
    Y = np.eye(5, dtype=np.float32)[y]
    got = simple_ml.softmax_loss(ndl.Tensor(Z), ndl.Tensor(Y)).numpy()
    np.testing.assert_allclose(float(np.asarray(got).reshape(-1)[0]), _np_softmax_loss(Z, Y),
                               rtol=1e-5)


def test_nn_epoch_matches_numpy():
    rng = np.random.RandomState(1)
    X = rng.rand(50, 6).astype(np.float32)
    y = rng.randint(0, 3, size=50).astype(np.uint8)
    W1 = (rng.randn(6, 4) / 2).astype(np.float32)
    W2 = (rng.randn(4, 3) / 2).astype(np.float32)
    got1, got2 = simple_ml.nn_epoch(X, y, ndl.Tensor(W1), ndl.Tensor(W2), lr=0.2, batch=20)
    w1, w2 = W1.astype(np.float64), W2.astype(np.float64)
    for i in range(0, 50, 20):
        xb, yb = X[i:i + 20].astype(np.float64), y[i:i + 20]
        n = xb.shape[0]
        h = np.maximum(xb @ w1, 0)
        z = h @ w2
        s = np.exp(z - z.max(axis=1, keepdims=True))
        s /= s.sum(axis=1, keepdims=True)
        s[np.arange(n), yb] -= 1
        g2 = h.T @ s / n
        g1 = xb.T @ ((s @ w2.T) * (h > 0)) / n
        w1, w2 = w1 - 0.2 * g1, w2 - 0.2 * g2
    np.testing.assert_allclose(got1.numpy(), w1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got2.numpy(), w2, rtol=1e-4, atol=1e-5)


def test_loss_err_matches_numpy():
    rng = np.random.RandomState(2)
    h = rng.randn(9, 4).astype(np.float32)
    y = rng.randint(0, 4, size=9).astype(np.uint8)
    loss, err = simple_ml.loss_err(ndl.Tensor(h), y)
    Y = np.eye(4)[y]
    np.testing.assert_allclose(float(np.asarray(loss).reshape(-1)[0]), _np_softmax_loss(h, Y),
                               rtol=1e-5)
    assert err == pytest.approx(np.mean(h.argmax(axis=1) != y))


def test_parse_mnist_reads_idx(tmp_path):
    rng = np.random.RandomState(0)
    imgs = rng.randint(0, 256, size=(3, 28, 28)).astype(np.uint8)
    labels = np.array([1, 7, 3], dtype=np.uint8)
    (tmp_path / "i.gz").write_bytes(gzip.compress(
        np.array([2051, 3, 28, 28], dtype=">u4").tobytes() + imgs.tobytes()))
    (tmp_path / "l.gz").write_bytes(gzip.compress(
        np.array([2049, 3], dtype=">u4").tobytes() + labels.tobytes()))
    X, y = simple_ml.parse_mnist(str(tmp_path / "i.gz"), str(tmp_path / "l.gz"))
    assert X.dtype == np.float32 and X.shape == (3, 784)
    np.testing.assert_allclose(X, imgs.reshape(3, -1) / 255.0, rtol=1e-6)
    assert y.dtype == np.uint8 and list(y) == [1, 7, 3]


def test_ptb_helpers_run():
    np.random.seed(0)
    ids = list(np.random.RandomState(0).randint(0, 12, size=200))
    data = ndl.data.batchify(ids, 4, device=ndl.cpu(), dtype="float32")
    model = LanguageModel(5, 12, 6, seq_model="lstm")
    acc, loss = simple_ml.train_ptb(model, data, seq_len=8, n_epochs=1, optimizer=ndl.optim.Adam,
                                    lr=0.01, clip=1.0)
    assert 0 <= acc <= 1 and np.isfinite(loss)
    acc, loss = simple_ml.evaluate_ptb(model, data, seq_len=8)
    assert 0 <= acc <= 1 and np.isfinite(loss)


def test_cifar_helpers_run():
    np.random.seed(0)
    rng = np.random.RandomState(0)
    ds = ndl.data.NDArrayDataset(rng.rand(8, 3, 32, 32).astype(np.float32),
                                 rng.randint(0, 10, size=8).astype(np.uint8))
    model = ResNet9()
    acc, loss = simple_ml.train_cifar10(model, ndl.data.DataLoader(ds, 4, shuffle=True))
    assert 0 <= acc <= 1 and np.isfinite(loss)
    acc, loss = simple_ml.evaluate_cifar10(model, ndl.data.DataLoader(ds, 4))
    assert 0 <= acc <= 1 and np.isfinite(loss)


def test_importable_with_apps_dir_on_path(tmp_path):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import models, simple_ml, mlp_resnet; "
            "print(models.ResNet9.__name__, simple_ml.softmax_loss.__name__, "
            "mlp_resnet.MLPResNet.__name__)")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "apps")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ResNet9", "softmax_loss", "MLPResNet"]
