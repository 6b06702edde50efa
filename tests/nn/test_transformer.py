"""MultiHeadAttention, AttentionLayer, TransformerLayer, Transformer vs numpy references."""
import math

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn

from .helpers import DTYPE, assert_close, check_grads, tensor

F32MAX = np.finfo(np.float32).max


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _dropout(x, p):
    """numpy twin of nn.Dropout in training mode (one draw of x's shape)."""
    mask = np.random.rand(*x.shape) <= 1 - p
    return x * mask / (1 - p)


def _mha(q, k, v, causal, p=0.0):
    lq, lk = q.shape[2], k.shape[2]
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores + (-F32MAX * np.triu(np.ones((1, 1, lq, lk)), lk - lq + 1))
    probs = _dropout(_softmax(scores), p)
    return probs @ v, probs


def _ln(x, w, b, eps=1e-5):
    return w * (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) + b


def _w(t):
    return t.numpy().astype(np.float64)


def _attention_layer(layer, q, k, v, causal, p=0.0):
    b, lq, _ = q.shape
    h, d = layer.num_head, layer.dim_head

    def heads(x, norm, proj):
        rows = _ln(x.reshape(-1, x.shape[-1]), _w(norm.weight), _w(norm.bias)) @ _w(proj.weight)
        return rows.reshape(x.shape[0], x.shape[1], h, d).transpose(0, 2, 1, 3)

    out, _ = _mha(heads(q, layer.prenorm_q, layer.q_projection), heads(k, layer.prenorm_k, layer.k_projection),
                  heads(v, layer.prenorm_v, layer.v_projection), causal, p)
    merged = out.transpose(0, 2, 1, 3).reshape(b * lq, h * d)
    return (merged @ _w(layer.out_projection.weight)).reshape(b, lq, -1)


def _transformer_layer(layer, x, causal, p=0.0):
    b, l, d = x.shape
    x = x + _dropout(_attention_layer(layer.attention, x, x, x, causal, p), p)
    rows = _ln(x.reshape(b * l, d), _w(layer.layernorm.weight), _w(layer.layernorm.bias))
    hid = _dropout(np.maximum(rows @ _w(layer.linear1.weight) + _w(layer.linear1.bias), 0), p)
    y = hid @ _w(layer.linear2.weight) + _w(layer.linear2.bias)
    return x + _dropout(y, p).reshape(b, l, d)


@pytest.mark.parametrize("causal,lq,lk", [(False, 4, 4), (True, 4, 4), (True, 3, 5), (False, 2, 6)])
def test_multihead_attention_forward(causal, lq, lk):
    q, k, v = np.random.randn(2, 3, lq, 4), np.random.randn(2, 3, lk, 4), np.random.randn(2, 3, lk, 5)
    mha = nn.MultiHeadAttention(causal=causal, dtype=DTYPE)
    result, probs = mha(tensor(q), tensor(k), tensor(v))
    er, ep = _mha(q, k, v, causal)
    assert_close(probs, ep)
    assert_close(result, er)
    if causal:  # nothing attends to later keys
        assert np.all(probs.numpy()[..., 0, lk - lq + 1:] == 0)


def test_multihead_attention_dropout_and_grads():
    q, k, v = (np.random.randn(1, 2, 3, 4) for _ in range(3))
    mha = nn.MultiHeadAttention(dropout=0.4, causal=True, dtype=DTYPE)
    np.random.seed(9)
    result, probs = mha(tensor(q), tensor(k), tensor(v))
    np.random.seed(9)
    er, ep = _mha(q, k, v, True, 0.4)
    assert_close(probs, ep)
    assert_close(result, er)
    mha.eval()
    qt, kt, vt = (tensor(a, requires_grad=True) for a in (q, k, v))
    check_grads(lambda: mha(qt, kt, vt)[0], [qt, kt, vt])


def test_attention_layer_members_and_forward():
    np.random.seed(1)
    layer = nn.AttentionLayer(6, 2, 3, k_features=5, v_features=4, out_features=7, causal=True, dtype=DTYPE)
    names = list(k for k, v in vars(layer).items() if isinstance(v, nn.Module))
    assert names == ["prenorm_q", "prenorm_k", "prenorm_v", "q_projection", "k_projection",
                     "v_projection", "attn", "out_projection"]
    for proj in (layer.q_projection, layer.k_projection, layer.v_projection, layer.out_projection):
        assert proj.bias is None
    # RNG order: q, k, v, out projections
    np.random.seed(1)
    for proj, (fi, fo) in zip((layer.q_projection, layer.k_projection, layer.v_projection, layer.out_projection),
                              [(6, 6), (5, 6), (4, 6), (6, 7)]):
        bound = math.sqrt(2) * math.sqrt(3 / fi)
        assert_close(proj.weight, np.random.rand(fi, fo) * 2 * bound - bound, rtol=1e-6, atol=1e-6)
    for norm in (layer.prenorm_q, layer.prenorm_k, layer.prenorm_v):
        norm.weight = nn.Parameter(tensor(np.random.rand(norm.dim) + 0.5))
        norm.bias = nn.Parameter(tensor(np.random.randn(norm.dim)))
    q, k, v = np.random.randn(2, 3, 6), np.random.randn(2, 5, 5), np.random.randn(2, 5, 4)
    out = layer(tensor(q), tensor(k), tensor(v))
    assert out.shape == (2, 3, 7)
    assert_close(out, _attention_layer(layer, q, k, v, True), rtol=1e-4 if DTYPE == "float32" else 1e-9,
                 atol=1e-4 if DTYPE == "float32" else 1e-9)
    # self-attention default
    out = layer.__class__(6, 2, 3, dtype=DTYPE)
    x = np.random.randn(2, 4, 6)
    assert_close(out(tensor(x)), _attention_layer(out, x, x, x, True), rtol=1e-4, atol=1e-4)


def test_attention_layer_grads():
    layer = nn.AttentionLayer(4, 2, 2, causal=True, dtype=DTYPE)
    x = tensor(np.random.randn(2, 3, 4), requires_grad=True)
    check_grads(lambda: layer(x), layer.parameters() + [x], n_entries=3)


def test_transformer_layer_dropout_order():
    layer = nn.TransformerLayer(6, 2, 3, 8, dropout=0.3, causal=True, dtype=DTYPE)
    x = np.random.randn(2, 4, 6)
    np.random.seed(21)
    out = layer(tensor(x))
    after = np.random.rand()
    np.random.seed(21)
    expected = _transformer_layer(layer, x, True, 0.3)
    assert np.random.rand() == after
    assert_close(out, expected, rtol=1e-4 if DTYPE == "float32" else 1e-9,
                 atol=1e-4 if DTYPE == "float32" else 1e-9)
    layer.eval()
    assert_close(layer(tensor(x)), _transformer_layer(layer, x, True, 0.0), rtol=1e-4, atol=1e-4)


def test_transformer_layer_grads():
    layer = nn.TransformerLayer(4, 2, 2, 6, dropout=0.0, causal=False, dtype=DTYPE)
    x = tensor(np.random.randn(2, 3, 4), requires_grad=True)
    params = layer.parameters()
    assert len(params) == 6 + 4 + 2 + 4  # 3 prenorms, 4 projections, layernorm, 2 linears
    check_grads(lambda: layer(x), params + [x], n_entries=2)


@pytest.mark.parametrize("batch_first", [False, True])
def test_transformer_forward_and_init_order(batch_first):
    d, hidden, layers, heads, dh, seq_len = 6, 8, 2, 2, 3, 16
    np.random.seed(4)
    model = nn.Transformer(d, hidden, layers, num_head=heads, dim_head=dh, dropout=0.0, causal=True,
                           dtype=DTYPE, batch_first=batch_first, sequence_len=seq_len)
    np.random.seed(4)
    assert_close(model.positional_embedding.weight, np.random.randn(seq_len, d), rtol=1e-6, atol=1e-6)
    inner = heads * dh
    for layer in model.layers.modules:
        att = layer.attention
        for w, (fi, fo) in [(att.q_projection.weight, (d, inner)), (att.k_projection.weight, (d, inner)),
                            (att.v_projection.weight, (d, inner)), (att.out_projection.weight, (inner, d)),
                            (layer.linear1.weight, (d, hidden)), (layer.linear1.bias, (hidden, 1)),
                            (layer.linear2.weight, (hidden, d)), (layer.linear2.bias, (d, 1))]:
            bound = math.sqrt(2) * math.sqrt(3 / fi)
            expected = np.random.rand(fi, fo) * 2 * bound - bound
            assert_close(w, expected.reshape(w.shape), rtol=1e-6, atol=1e-6)
    b, length = 2, 5
    x = np.random.randn(b, length, d) if batch_first else np.random.randn(length, b, d)
    out, h = model(tensor(x))
    assert out.shape == x.shape and h.shape == x.shape and np.all(h.numpy() == 0)
    xb = x if batch_first else x.transpose(1, 0, 2)
    xb = xb + _w(model.positional_embedding.weight)[:length][None]
    for layer in model.layers.modules:
        xb = _transformer_layer(layer, xb, True)
    expected = xb if batch_first else xb.transpose(1, 0, 2)
    assert_close(out, expected, rtol=1e-4 if DTYPE == "float32" else 1e-9,
                 atol=1e-4 if DTYPE == "float32" else 1e-9)
    out.sum().backward()
    for p in model.parameters():
        assert p.grad is not None and p.grad.shape == p.shape


def test_transformer_training_mode_dropout_active():
    model = nn.Transformer(4, 6, 1, num_head=2, dim_head=2, dropout=0.5, dtype=DTYPE, sequence_len=8)
    x = tensor(np.random.randn(3, 2, 4))
    a = model(x)[0].numpy()
    b = model(x)[0].numpy()
    assert not np.allclose(a, b)
    model.eval()
    assert np.allclose(model(x)[0].numpy(), model(x)[0].numpy())
