"""The course's models: ResNet9 (CIFAR-10) and LanguageModel (PTB).

Installed as ``needle.apps.models``; a checkout's ``apps/`` makes it importable as
``apps.models`` and ``models`` too. Construction order is the RNG order of the contract
(NEEDLE_API.md section 9).
"""
import numpy as np  # noqa: F401

import needle as ndl
import needle.nn as nn

__all__ = ["ConvBN", "ResNet9", "LanguageModel"]


class ConvBN(nn.Module):
    """Conv(a, b, k, stride=s) -> BatchNorm2d(b) -> ReLU, NCHW."""

    def __init__(self, a, b, k, s, device=None, dtype="float32"):
        super().__init__()
        self.conv = nn.Conv(a, b, k, stride=s, device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(b, device=device, dtype=dtype)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class ResNet9(nn.Module):
    """ResNet9 for NCHW (N, 3, 32, 32) images -> (N, 10) logits."""

    def __init__(self, device=None, dtype="float32"):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.model = nn.Sequential(
            ConvBN(3, 16, 7, 4, **kw),
            ConvBN(16, 32, 3, 2, **kw),
            nn.Residual(nn.Sequential(ConvBN(32, 32, 3, 1, **kw), ConvBN(32, 32, 3, 1, **kw))),
            ConvBN(32, 64, 3, 2, **kw),
            ConvBN(64, 128, 3, 2, **kw),
            nn.Residual(nn.Sequential(ConvBN(128, 128, 3, 1, **kw), ConvBN(128, 128, 3, 1, **kw))),
            nn.Flatten(),
            nn.Linear(128, 128, **kw),
            nn.ReLU(),
            nn.Linear(128, 10, **kw),
        )

    def forward(self, x):
        return self.model(x)


class LanguageModel(nn.Module):
    """Embedding -> RNN / LSTM / Transformer -> Linear.

    forward(x (seq_len, bs) of word ids, h=None) -> (logits (seq_len*bs, output_size), h)
    where ``h`` is shaped like the sequence model's hidden state (for the transformer,
    which keeps no state, ``zeros_like`` of its output).
    """

    def __init__(self, embedding_size, output_size, hidden_size, num_layers=1,
                 seq_model="rnn", seq_len=40, device=None, dtype="float32"):
        super().__init__()
        self.embedding_size = embedding_size
        self.output_size = output_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.seq_model_name = seq_model
        self.seq_len = seq_len
        self.embedding = nn.Embedding(output_size, embedding_size, device=device, dtype=dtype)
        if seq_model == "rnn":
            self.seq_model = nn.RNN(embedding_size, hidden_size, num_layers,
                                    device=device, dtype=dtype)
            out_features = hidden_size
        elif seq_model == "lstm":
            self.seq_model = nn.LSTM(embedding_size, hidden_size, num_layers,
                                     device=device, dtype=dtype)
            out_features = hidden_size
        elif seq_model == "transformer":
            self.seq_model = nn.Transformer(embedding_size, hidden_size, num_layers,
                                            device=device, dtype=dtype)
            out_features = embedding_size  # the transformer keeps the model width
        else:
            raise ValueError(
                f"LanguageModel: seq_model must be 'rnn', 'lstm' or 'transformer', got {seq_model!r}"
            )
        self.out_features = out_features
        self.linear = nn.Linear(out_features, output_size, device=device, dtype=dtype)

    def forward(self, x, h=None):
        seq_len, bs = x.shape
        emb = self.embedding(x)  # (seq_len, bs, embedding_size)
        out, h = self.seq_model(emb, h)  # (seq_len, bs, out_features)
        logits = self.linear(out.reshape((seq_len * bs, self.out_features)))
        return logits, h


if __name__ == "__main__":  # pragma: no cover - smoke check
    model = ResNet9()
    x = np.random.rand(2, 3, 32, 32).astype(np.float32)
    print(model(ndl.Tensor(x)).shape)
