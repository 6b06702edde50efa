"""RNNCell, RNN, LSTMCell, LSTM, Embedding: numpy loops, RNG order, finite differences."""
import math

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from needle.autograd import find_topo_sort

from .helpers import DTYPE, assert_close, check_grads, tensor


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _np(cell, name):
    t = getattr(cell, name)
    return np.zeros(1) if t is None else t.numpy().astype(np.float64)


def _rnn_cell_ref(cell, x, h):
    act = np.tanh if cell.nonlinearity == "tanh" else (lambda z: np.maximum(z, 0))
    return act(x @ _np(cell, "W_ih") + _np(cell, "bias_ih") + h @ _np(cell, "W_hh") + _np(cell, "bias_hh"))


def _lstm_cell_ref(cell, x, h, c):
    hs = cell.hidden_size
    z = x @ _np(cell, "W_ih") + _np(cell, "bias_ih") + h @ _np(cell, "W_hh") + _np(cell, "bias_hh")
    i, f, g, o = (z[:, k * hs:(k + 1) * hs] for k in range(4))
    c2 = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c2), c2


def test_rnn_cell_init_order():
    np.random.seed(5)
    cell = nn.RNNCell(3, 4, dtype=DTYPE)
    np.random.seed(5)
    k = 1 / math.sqrt(4)
    for name, shape in [("W_ih", (3, 4)), ("W_hh", (4, 4)), ("bias_ih", (4,)), ("bias_hh", (4,))]:
        assert_close(getattr(cell, name), np.random.rand(*shape) * 2 * k - k, rtol=1e-6, atol=1e-6)
    assert [p.shape for p in cell.parameters()] == [(3, 4), (4, 4), (4,), (4,)]


def test_lstm_cell_init_order():
    np.random.seed(6)
    cell = nn.LSTMCell(3, 2, dtype=DTYPE)
    np.random.seed(6)
    k = 1 / math.sqrt(2)
    for name, shape in [("W_ih", (3, 8)), ("W_hh", (2, 8)), ("bias_ih", (8,)), ("bias_hh", (8,))]:
        assert_close(getattr(cell, name), np.random.rand(*shape) * 2 * k - k, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("nonlinearity,bias", [("tanh", True), ("relu", True), ("tanh", False)])
def test_rnn_cell_forward(nonlinearity, bias):
    cell = nn.RNNCell(3, 4, bias=bias, nonlinearity=nonlinearity, dtype=DTYPE)
    x, h = np.random.randn(5, 3), np.random.randn(5, 4)
    assert_close(cell(tensor(x), tensor(h)), _rnn_cell_ref(cell, x, h))
    assert_close(cell(tensor(x)), _rnn_cell_ref(cell, x, np.zeros((5, 4))))


def test_lstm_cell_forward():
    cell = nn.LSTMCell(3, 4, dtype=DTYPE)
    x, h, c = np.random.randn(5, 3), np.random.randn(5, 4), np.random.randn(5, 4)
    h2, c2 = cell(tensor(x), (tensor(h), tensor(c)))
    eh, ec = _lstm_cell_ref(cell, x, h, c)
    assert_close(h2, eh)
    assert_close(c2, ec)
    h3, c3 = cell(tensor(x))
    eh, ec = _lstm_cell_ref(cell, x, np.zeros((5, 4)), np.zeros((5, 4)))
    assert_close(h3, eh)
    assert_close(c3, ec)


@pytest.mark.parametrize("num_layers,with_h0", [(1, False), (2, True), (3, False)])
def test_rnn_forward(num_layers, with_h0):
    seq, bs, inp, hid = 4, 3, 5, 6
    rnn = nn.RNN(inp, hid, num_layers=num_layers, dtype=DTYPE)
    assert len(rnn.rnn_cells) == num_layers
    x = np.random.randn(seq, bs, inp)
    h0 = np.random.randn(num_layers, bs, hid) if with_h0 else np.zeros((num_layers, bs, hid))
    out, hn = rnn(tensor(x), tensor(h0) if with_h0 else None)
    layer_in = x
    hn_ref = []
    for layer, cell in enumerate(rnn.rnn_cells):
        h = h0[layer]
        outs = []
        for t in range(seq):
            h = _rnn_cell_ref(cell, layer_in[t], h)
            outs.append(h)
        hn_ref.append(h)
        layer_in = np.stack(outs)
    assert out.shape == (seq, bs, hid) and hn.shape == (num_layers, bs, hid)
    assert_close(out, layer_in)
    assert_close(hn, np.stack(hn_ref))


@pytest.mark.parametrize("num_layers,with_h0", [(1, False), (2, True)])
def test_lstm_forward(num_layers, with_h0):
    seq, bs, inp, hid = 4, 3, 5, 6
    lstm = nn.LSTM(inp, hid, num_layers=num_layers, dtype=DTYPE)
    assert len(lstm.lstm_cells) == num_layers
    x = np.random.randn(seq, bs, inp)
    h0 = np.random.randn(num_layers, bs, hid) if with_h0 else np.zeros((num_layers, bs, hid))
    c0 = np.random.randn(num_layers, bs, hid) if with_h0 else np.zeros((num_layers, bs, hid))
    out, (hn, cn) = lstm(tensor(x), (tensor(h0), tensor(c0)) if with_h0 else None)
    layer_in = x
    hn_ref, cn_ref = [], []
    for layer, cell in enumerate(lstm.lstm_cells):
        h, c = h0[layer], c0[layer]
        outs = []
        for t in range(seq):
            h, c = _lstm_cell_ref(cell, layer_in[t], h, c)
            outs.append(h)
        hn_ref.append(h)
        cn_ref.append(c)
        layer_in = np.stack(outs)
    assert_close(out, layer_in)
    assert_close(hn, np.stack(hn_ref))
    assert_close(cn, np.stack(cn_ref))


def test_rnn_grads():
    rnn = nn.RNN(3, 4, num_layers=2, dtype=DTYPE)
    x = tensor(np.random.randn(3, 2, 3), requires_grad=True)
    h0 = tensor(np.random.randn(2, 2, 4), requires_grad=True)
    check_grads(lambda: rnn(x, h0)[0], rnn.parameters() + [x, h0], n_entries=3)
    check_grads(lambda: rnn(x, h0)[1], rnn.parameters(), n_entries=2, seed=1)


def test_lstm_grads():
    lstm = nn.LSTM(3, 2, num_layers=2, dtype=DTYPE)
    x = tensor(np.random.randn(3, 2, 3), requires_grad=True)
    h0 = tensor(np.random.randn(2, 2, 2), requires_grad=True)
    c0 = tensor(np.random.randn(2, 2, 2), requires_grad=True)
    check_grads(lambda: lstm(x, (h0, c0))[0], lstm.parameters() + [x, h0, c0], n_entries=3)
    check_grads(lambda: lstm(x, (h0, c0))[1][1], lstm.parameters(), n_entries=2, seed=1)


def test_every_sequence_parameter_gets_gradient_without_state():
    for model in (nn.RNN(3, 4, num_layers=2), nn.LSTM(3, 4, num_layers=2)):
        out, _ = model(ndl.Tensor(np.random.randn(1, 2, 3).astype("float32")))
        out.sum().backward()
        for p in model.parameters():
            assert p.grad is not None and p.grad.shape == p.shape


def test_cell_attributes_read_at_call_time():
    cell = nn.RNNCell(2, 3, dtype=DTYPE)
    cell.W_ih = tensor(np.random.randn(2, 3), requires_grad=True)  # a plain Tensor
    x, h = np.random.randn(4, 2), np.random.randn(4, 3)
    out = cell(tensor(x), tensor(h))
    assert_close(out, _rnn_cell_ref(cell, x, h))
    out.sum().backward()
    assert cell.W_ih.grad is not None and cell.W_ih.grad.shape == (2, 3)


# ---- Embedding ---------------------------------------------------------------------------
def test_embedding_init_forward_gather_and_grad():
    np.random.seed(2)
    emb = nn.Embedding(10, 4, dtype=DTYPE)
    np.random.seed(2)
    assert_close(emb.weight, np.random.randn(10, 4), rtol=1e-6, atol=1e-6)
    ids = np.random.randint(0, 10, (5, 3))
    ids[0, 0] = ids[1, 1] = 7  # repeated ids accumulate gradients
    idx = ndl.Tensor(ids.astype("float32"), requires_grad=False)
    out = emb(idx)
    assert out.shape == (5, 3, 4)
    one_hot = np.eye(10)[ids]
    assert_close(out, one_hot @ emb.weight.numpy())
    ops_used = {type(n.op).__name__ for n in find_topo_sort([out]) if n.op is not None}
    assert "Gather" in ops_used and "MatMul" not in ops_used
    g = np.random.randn(5, 3, 4)
    out.backward(tensor(g))
    expected = np.einsum("sbn,sbd->nd", one_hot, g)
    assert_close(emb.weight.grad, expected)
    check_grads(lambda: emb(idx), [emb.weight], n_entries=8)


def test_detach_hidden_cuts_history_of_nested_states():
    x = ndl.Tensor(np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32), requires_grad=True)
    h, c = x * 2.0, ndl.exp(x)
    out = nn.detach_hidden((h, [c]))
    assert isinstance(out, tuple) and isinstance(out[1], tuple)
    np.testing.assert_array_equal(out[0].numpy(), h.numpy())
    np.testing.assert_array_equal(out[1][0].numpy(), c.numpy())
    assert not out[0].inputs and not out[1][0].inputs and not out[0].requires_grad
    assert nn.detach_hidden(None) is None
