"""Attention and transformer modules (course hw4 semantics)."""
from __future__ import annotations

import math

import numpy as np

from .. import init, ops
from ..autograd import Tensor
from .nn_basic import Dropout, LayerNorm1d, Linear, Module, ReLU, Sequential
from .nn_sequence import Embedding


class MultiHeadAttention(Module):
    """Softmax attention over (batch, heads, len, dim) inputs; returns (result, probs)."""

    def __init__(self, *, dropout=0.0, causal=False, device=None, dtype="float32"):
        super().__init__()
        self.device = device
        self.dtype = dtype
        self.causal = causal
        self.dropout = Dropout(dropout)

    @staticmethod
    def create_causal_mask(i, j, dtype="float32"):
        """-float32max above the diagonal offset j - i (key positions after the query's)."""
        return (-np.finfo(np.float32).max * np.triu(np.ones((1, 1, i, j), dtype=np.float32), j - i + 1)
                ).astype(dtype)

    def softmax(self, logit: Tensor) -> Tensor:
        """Softmax over the last axis after subtracting the (constant) row max."""
        shape = logit.shape
        keep = tuple(shape[:-1]) + (1,)
        row_max = ops.reshape(ops.max(logit.detach(), axes=len(shape) - 1), keep)
        e = ops.exp(logit - ops.broadcast_to(row_max, shape))
        denom = ops.reshape(ops.summation(e, axes=len(shape) - 1), keep)
        return e / ops.broadcast_to(denom, shape)

    def forward(self, q: Tensor, k: Tensor, v: Tensor):
        _, _, q_len, q_dim = q.shape
        _, _, kv_len, _ = k.shape
        scores = ops.matmul(q, ops.transpose(k)) / math.sqrt(q_dim)
        if self.causal:
            mask = self.create_causal_mask(q_len, kv_len, dtype=np.dtype(str(scores.dtype)).name)
            scores = scores + Tensor(mask, device=scores.device, dtype=scores.dtype, requires_grad=False)
        probs = self.dropout(self.softmax(scores))
        return ops.matmul(probs, v), probs


class AttentionLayer(Module):
    """Pre-norm multi-head attention with q/k/v and output projections (no bias)."""

    def __init__(self, q_features, num_head, dim_head, *, k_features=None, v_features=None,
                 out_features=None, dropout=0.0, causal=True, device=None, dtype="float32"):
        super().__init__()
        self.device = device
        self.dtype = dtype
        k_features = q_features if k_features is None else k_features
        v_features = q_features if v_features is None else v_features
        out_features = q_features if out_features is None else out_features
        self.q_features, self.k_features, self.v_features = q_features, k_features, v_features
        self.out_features = out_features
        self.num_head = num_head
        self.dim_head = dim_head
        inner = num_head * dim_head
        self.prenorm_q = LayerNorm1d(q_features, device=device, dtype=dtype)
        self.prenorm_k = LayerNorm1d(k_features, device=device, dtype=dtype)
        self.prenorm_v = LayerNorm1d(v_features, device=device, dtype=dtype)
        self.q_projection = Linear(q_features, inner, bias=False, device=device, dtype=dtype)
        self.k_projection = Linear(k_features, inner, bias=False, device=device, dtype=dtype)
        self.v_projection = Linear(v_features, inner, bias=False, device=device, dtype=dtype)
        self.attn = MultiHeadAttention(dropout=dropout, causal=causal, device=device, dtype=dtype)
        self.out_projection = Linear(inner, out_features, bias=False, device=device, dtype=dtype)

    def _heads(self, x: Tensor, norm: Module, proj: Module, features: int) -> Tensor:
        batch, length, _ = x.shape
        rows = proj(norm(ops.reshape(x, (batch * length, features))))
        return ops.permute(ops.reshape(rows, (batch, length, self.num_head, self.dim_head)), (0, 2, 1, 3))

    def forward(self, q: Tensor, k: Tensor = None, v: Tensor = None) -> Tensor:
        k = q if k is None else k
        v = q if v is None else v
        batch, q_len, _ = q.shape
        qh = self._heads(q, self.prenorm_q, self.q_projection, self.q_features)
        kh = self._heads(k, self.prenorm_k, self.k_projection, self.k_features)
        vh = self._heads(v, self.prenorm_v, self.v_projection, self.v_features)
        result, _ = self.attn(qh, kh, vh)
        merged = ops.reshape(ops.permute(result, (0, 2, 1, 3)), (batch * q_len, self.num_head * self.dim_head))
        return ops.reshape(self.out_projection(merged), (batch, q_len, self.out_features))


class TransformerLayer(Module):
    """Pre-norm transformer block: self-attention and a ReLU MLP, both residual."""

    def __init__(self, q_features, num_head, dim_head, hidden_size, *, dropout=0.0, causal=True,
                 device=None, dtype="float32"):
        super().__init__()
        self.device = device
        self.dtype = dtype
        self.attention = AttentionLayer(q_features, num_head, dim_head, dropout=dropout, causal=causal,
                                        device=device, dtype=dtype)
        self.layernorm = LayerNorm1d(q_features, device=device, dtype=dtype)
        self.linear1 = Linear(q_features, hidden_size, device=device, dtype=dtype)
        self.linear2 = Linear(hidden_size, q_features, device=device, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.relu = ReLU()

    def forward(self, x: Tensor) -> Tensor:
        batch, length, d = x.shape
        x = x + self.dropout(self.attention(x))
        rows = ops.reshape(x, (batch * length, d))
        y = self.linear2(self.dropout(self.relu(self.linear1(self.layernorm(rows)))))
        return x + ops.reshape(self.dropout(y), (batch, length, d))


class Transformer(Module):
    """Positional embedding then `num_layers` TransformerLayers; forward(x, h) -> (x, zeros)."""

    def __init__(self, embedding_size, hidden_size, num_layers, *, num_head=8, dim_head=32,
                 dropout=0.0, causal=True, device=None, dtype="float32", batch_first=False,
                 sequence_len=2048):
        super().__init__()
        self.device = device
        self.dtype = dtype
        self.batch_first = batch_first
        self.embedding_size = embedding_size
        self.sequence_len = sequence_len
        self.positional_embedding = Embedding(sequence_len, embedding_size, device=device, dtype=dtype)
        self.layers = Sequential(*[
            TransformerLayer(embedding_size, num_head, dim_head, hidden_size, dropout=dropout,
                             causal=causal, device=device, dtype=dtype)
            for _ in range(num_layers)
        ])

    def forward(self, x: Tensor, h=None):
        if not self.batch_first:
            x = ops.transpose(x, (0, 1))
        batch, length, d = x.shape
        if length > self.sequence_len:
            raise ValueError(f"Transformer: sequence length {length} exceeds sequence_len={self.sequence_len}")
        positions = Tensor(np.arange(length).reshape(length, 1), device=x.device, requires_grad=False)
        pos = ops.reshape(self.positional_embedding(positions), (1, length, d))
        x = x + ops.broadcast_to(pos, x.shape)
        x = self.layers(x)
        if not self.batch_first:
            x = ops.transpose(x, (0, 1))
        return x, init.zeros_like(x)
