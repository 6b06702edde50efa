"""Sequence modules: RNNCell, RNN, LSTMCell, LSTM, Embedding.

Sequences are (seq_len, batch, features). The whole-sequence layers project every time
step's input with one matmul (X @ W_ih + biases over seq_len*batch rows), then split the
result per step; only the recurrent h @ W_hh is computed step by step.
"""
from __future__ import annotations

import math

import numpy as np

from .. import init, ops
from ..autograd import Tensor
from .nn_basic import Module, Parameter


def _uniform(shape, bound, device, dtype):
    return Parameter(init.rand(*shape, low=-bound, high=bound, device=device, dtype=dtype))


def _bias_sum(cell, width):
    """bias_ih + bias_hh as a (1, width) row, or None when the cell has no bias."""
    total = None
    for b in (cell.bias_ih, cell.bias_hh):
        if b is not None:
            b = ops.reshape(b, (1, width))
            total = b if total is None else total + b
    return total


def _project_inputs(cell, X, width):
    """X (..., input) @ W_ih + biases, computed as one matmul over all leading axes."""
    shape = X.shape
    flat = ops.reshape(X, (-1, shape[-1])) if len(shape) != 2 else X
    out = ops.matmul(flat, cell.W_ih)
    bias = _bias_sum(cell, width)
    if bias is not None:
        out = out + bias
    return ops.reshape(out, tuple(shape[:-1]) + (width,)) if len(shape) != 2 else out


def _time_steps(seq):
    """The time steps of a (seq_len, ...) tensor as one Split (backward assembles one adjoint)."""
    return ops.split(seq, 0).tuple()


def detach_hidden(h):
    """A recurrent state (a Tensor, a tuple of them such as LSTM's (h, c), or None) cut off
    from its history: truncated backpropagation through time between sequence windows."""
    if h is None:
        return None
    if isinstance(h, (tuple, list)):
        return tuple(detach_hidden(x) for x in h)
    return h.detach()


class RNNCell(Module):
    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity!r}"

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh",
                 device=None, dtype="float32"):
        super().__init__()
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.nonlinearity = nonlinearity
        self.device = device
        self.dtype = dtype
        bound = 1.0 / math.sqrt(hidden_size)
        self.W_ih = _uniform((input_size, hidden_size), bound, device, dtype)
        self.W_hh = _uniform((hidden_size, hidden_size), bound, device, dtype)
        if bias:
            self.bias_ih = _uniform((hidden_size,), bound, device, dtype)
            self.bias_hh = _uniform((hidden_size,), bound, device, dtype)
        else:
            self.bias_ih = None
            self.bias_hh = None

    def _act(self, x):
        return ops.tanh(x) if self.nonlinearity == "tanh" else ops.relu(x)

    def _step(self, x_proj, h):
        """One step from the already projected input (X @ W_ih + biases)."""
        if h is None:  # zeros, so W_hh still receives a (zero) gradient
            h = init.zeros(x_proj.shape[0], self.hidden_size, device=x_proj.device, dtype=x_proj.dtype)
        return self._act(x_proj + ops.matmul(h, self.W_hh))

    def forward(self, X, h=None):
        return self._step(_project_inputs(self, X, self.hidden_size), h)


class RNN(Module):
    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, nonlinearity="tanh",
                 device=None, dtype="float32"):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.device = device
        self.dtype = dtype
        self.rnn_cells = [
            RNNCell(input_size if i == 0 else hidden_size, hidden_size, bias=bias,
                    nonlinearity=nonlinearity, device=device, dtype=dtype)
            for i in range(num_layers)
        ]

    def forward(self, X, h0=None):
        h_init = list(ops.split(h0, 0).tuple()) if h0 is not None else [None] * self.num_layers
        layer_in = X
        h_n = []
        for cell, h in zip(self.rnn_cells, h_init):
            proj = _project_inputs(cell, layer_in, self.hidden_size)
            outs = []
            for x_t in _time_steps(proj):
                h = cell._step(x_t, h)
                outs.append(h)
            h_n.append(h)
            layer_in = ops.stack(outs, 0)
        return layer_in, ops.stack(h_n, 0)


class LSTMCell(Module):
    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype="float32"):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.device = device
        self.dtype = dtype
        bound = 1.0 / math.sqrt(hidden_size)
        self.W_ih = _uniform((input_size, 4 * hidden_size), bound, device, dtype)
        self.W_hh = _uniform((hidden_size, 4 * hidden_size), bound, device, dtype)
        if bias:
            self.bias_ih = _uniform((4 * hidden_size,), bound, device, dtype)
            self.bias_hh = _uniform((4 * hidden_size,), bound, device, dtype)
        else:
            self.bias_ih = None
            self.bias_hh = None

    def _step(self, x_proj, h):
        """One step from the projected input; h is None or (h, c). Returns (h', c')."""
        hs = self.hidden_size
        bs = x_proj.shape[0]
        if h is None:  # zeros, so every parameter still receives a gradient
            zeros = init.zeros(bs, hs, device=x_proj.device, dtype=x_proj.dtype)
            h = (zeros, zeros)
        h_prev, c = h
        gates = x_proj + ops.matmul(h_prev, self.W_hh)
        i, f, g, o = ops.split(ops.reshape(gates, (bs, 4, hs)), 1).tuple()
        i, f, g, o = ops.sigmoid(i), ops.sigmoid(f), ops.tanh(g), ops.sigmoid(o)
        c_new = f * c + i * g
        return o * ops.tanh(c_new), c_new

    def forward(self, X, h=None):
        return self._step(_project_inputs(self, X, 4 * self.hidden_size), h)


class LSTM(Module):
    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, device=None, dtype="float32"):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.device = device
        self.dtype = dtype
        self.lstm_cells = [
            LSTMCell(input_size if i == 0 else hidden_size, hidden_size, bias=bias,
                     device=device, dtype=dtype)
            for i in range(num_layers)
        ]

    def forward(self, X, h=None):
        if h is None:
            states = [None] * self.num_layers
        else:
            h0, c0 = h
            states = list(zip(ops.split(h0, 0).tuple(), ops.split(c0, 0).tuple()))
        layer_in = X
        h_n, c_n = [], []
        for cell, state in zip(self.lstm_cells, states):
            proj = _project_inputs(cell, layer_in, 4 * self.hidden_size)
            outs = []
            for x_t in _time_steps(proj):
                state = cell._step(x_t, state)
                outs.append(state[0])
            h_n.append(state[0])
            c_n.append(state[1])
            layer_in = ops.stack(outs, 0)
        return layer_in, (ops.stack(h_n, 0), ops.stack(c_n, 0))


class Embedding(Module):
    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"

    def __init__(self, num_embeddings, embedding_dim, device=None, dtype="float32"):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.device = device
        self.dtype = dtype
        self.weight = Parameter(init.randn(num_embeddings, embedding_dim, device=device, dtype=dtype))

    def forward(self, x) -> Tensor:
        """x (seq, bs) of integer ids -> (seq, bs, dim): rows of `weight` (a gather)."""
        if isinstance(x, Tensor):
            idx = x.detach()
        else:
            idx = Tensor(np.asarray(x), device=self.weight.device, requires_grad=False)
        return ops.gather(self.weight, idx)
