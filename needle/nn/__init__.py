"""needle.nn: modules (layers, losses, sequence models, transformer) and state dicts."""
from .nn_basic import (  # noqa: F401
    BatchNorm1d,
    BatchNorm2d,
    Dropout,
    Flatten,
    Identity,
    LayerNorm1d,
    Linear,
    Module,
    Parameter,
    ReLU,
    Residual,
    Sequential,
    Sigmoid,
    SoftmaxLoss,
    Tanh,
)
from .nn_conv import Conv  # noqa: F401
from .nn_sequence import LSTM, RNN, Embedding, LSTMCell, RNNCell, detach_hidden  # noqa: F401
from .nn_transformer import AttentionLayer, MultiHeadAttention, Transformer, TransformerLayer  # noqa: F401
from .state import load_checkpoint, save_checkpoint, stale_temporaries  # noqa: F401

__all__ = [
    "Module", "Parameter", "Identity", "ReLU", "Tanh", "Sigmoid", "Flatten", "Linear",
    "Sequential", "Residual", "SoftmaxLoss", "BatchNorm1d", "BatchNorm2d", "LayerNorm1d",
    "Dropout", "Conv", "RNNCell", "RNN", "LSTMCell", "LSTM", "Embedding",
    "detach_hidden", "MultiHeadAttention", "AttentionLayer", "TransformerLayer", "Transformer",
    "save_checkpoint", "load_checkpoint", "stale_temporaries",
]
