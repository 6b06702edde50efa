"""The course's simple_ml helpers (NEEDLE_API.md section 9).

Installed as ``needle.apps.simple_ml``; a checkout's ``apps/`` makes it importable as
``apps.simple_ml`` and ``simple_ml`` too.
"""
import gzip  # noqa: F401
import struct  # noqa: F401
import time  # noqa: F401

import numpy as np

import needle as ndl
import needle.nn as nn
import needle.optim as optim  # noqa: F401  (makes ndl.optim available)

from needle.apps.mlp_resnet import run_batches
from needle.apps.models import *  # noqa: F401,F403

__all__ = [
    "parse_mnist", "softmax_loss", "nn_epoch", "loss_err",
    "epoch_general_cifar10", "train_cifar10", "evaluate_cifar10",
    "epoch_general_ptb", "train_ptb", "evaluate_ptb",
]

device = ndl.cpu()


def parse_mnist(image_filename, label_filename):
    """(X float32 (N, 784) in [0, 1], y uint8 (N,)) from gzip IDX files."""
    return ndl.data.parse_mnist(image_filename, label_filename)


def softmax_loss(Z, y_one_hot):
    """Mean over rows of log(sum(exp(Z))) - sum(Z * y_one_hot), a scalar Tensor."""
    batch_size = Z.shape[0]
    lse = ndl.log(ndl.exp(Z).sum(axes=(1,)))
    return (lse.sum() - (Z * y_one_hot).sum()) / batch_size


def _one_hot(y, k, dtype):
    y = np.asarray(y).astype(np.int64).reshape(-1)
    out = np.zeros((y.shape[0], k), dtype=dtype)
    out[np.arange(y.shape[0]), y] = 1
    return out


def _np_dtype(t):
    return np.dtype(str(t.dtype))


def nn_epoch(X, y, W1, W2, lr=0.1, batch=100):
    """One pass of minibatch SGD over consecutive batches of the net relu(X@W1)@W2.

    Returns the updated (W1, W2) Tensors.
    """
    dtype = _np_dtype(W1)
    num_examples = X.shape[0]
    for i in range(0, num_examples, batch):
        Xb = ndl.Tensor(np.asarray(X[i:i + batch], dtype=dtype), device=W1.device,
                        requires_grad=False)
        yb = y[i:i + batch]
        Z = ndl.relu(Xb @ W1) @ W2
        Y = ndl.Tensor(_one_hot(yb, W2.shape[1], dtype), device=W1.device, requires_grad=False)
        loss = softmax_loss(Z, Y)
        loss.backward()
        W1 = ndl.Tensor((W1.numpy() - lr * W1.grad.numpy()).astype(dtype), device=W1.device)
        W2 = ndl.Tensor((W2.numpy() - lr * W2.grad.numpy()).astype(dtype), device=W2.device)
    return W1, W2


def loss_err(h, y):
    """(softmax loss, error rate) of logits ``h`` against integer labels ``y``."""
    y = np.asarray(y.numpy() if isinstance(y, ndl.Tensor) else y)
    Y = ndl.Tensor(_one_hot(y, h.shape[-1], _np_dtype(h)), device=h.device, requires_grad=False)
    return softmax_loss(h, Y).numpy(), np.mean(h.numpy().argmax(axis=1) != y.reshape(-1))


def _loss_instance(loss_fn):
    return loss_fn() if isinstance(loss_fn, type) else loss_fn


# ---- CIFAR-10 -----------------------------------------------------------------------


def epoch_general_cifar10(dataloader, model, loss_fn=nn.SoftmaxLoss(), opt=None):
    """One epoch (training when ``opt`` is given); returns (avg_acc, avg_loss)."""
    np.random.seed(4)
    correct, total_loss, n = 0, 0.0, 0
    for out, loss, y in run_batches(dataloader, model, _loss_instance(loss_fn), opt):
        yn = y.numpy().reshape(-1)
        correct += int((out.numpy().argmax(axis=1) == yn).sum())
        total_loss += float(loss.numpy()) * yn.shape[0]
        n += yn.shape[0]
    return correct / max(n, 1), total_loss / max(n, 1)


def train_cifar10(model, dataloader, n_epochs=1, optimizer=ndl.optim.Adam, lr=0.001,
                  weight_decay=0.001, loss_fn=nn.SoftmaxLoss):
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    avg_acc, avg_loss = 0.0, 0.0
    for _ in range(n_epochs):
        avg_acc, avg_loss = epoch_general_cifar10(dataloader, model, _loss_instance(loss_fn), opt)
    return avg_acc, avg_loss


def evaluate_cifar10(model, dataloader, loss_fn=nn.SoftmaxLoss):
    np.random.seed(4)
    return epoch_general_cifar10(dataloader, model, _loss_instance(loss_fn), None)


# ---- PTB ----------------------------------------------------------------------------


def epoch_general_ptb(data, model, seq_len=40, loss_fn=nn.SoftmaxLoss(), opt=None, clip=None,
                      device=None, dtype="float32"):
    """One epoch of truncated BPTT over batchified ``data`` (nbatch, bs).

    The hidden state is carried across batches, detached. Returns (avg_acc, avg_loss)
    averaged over tokens.
    """
    np.random.seed(4)
    loss_fn = _loss_instance(loss_fn)
    model.train() if opt is not None else model.eval()
    nbatch = data.shape[0]
    h = None
    correct, total_loss, n = 0, 0.0, 0
    for i in range(0, nbatch - 1, seq_len):
        X, y = ndl.data.get_batch(data, i, seq_len, device=device, dtype=dtype)
        if opt is not None:
            opt.reset_grad()
        out, h = model(X, h)
        loss = loss_fn(out, y)
        if opt is not None:
            loss.backward()
            if clip is not None:
                opt.clip_grad_norm(clip)
            opt.step()
        h = nn.detach_hidden(h)
        yn = y.numpy().reshape(-1)
        correct += int((out.numpy().argmax(axis=1) == yn).sum())
        total_loss += float(loss.numpy()) * yn.shape[0]
        n += yn.shape[0]
    return correct / max(n, 1), total_loss / max(n, 1)


def train_ptb(model, data, seq_len=40, n_epochs=1, optimizer=ndl.optim.SGD, lr=4.0,
              weight_decay=0.0, loss_fn=nn.SoftmaxLoss, clip=None, device=None, dtype="float32"):
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    avg_acc, avg_loss = 0.0, 0.0
    for _ in range(n_epochs):
        avg_acc, avg_loss = epoch_general_ptb(data, model, seq_len, _loss_instance(loss_fn), opt,
                                              clip, device, dtype)
    return avg_acc, avg_loss


def evaluate_ptb(model, data, seq_len=40, loss_fn=nn.SoftmaxLoss, device=None, dtype="float32"):
    np.random.seed(4)
    return epoch_general_ptb(data, model, seq_len, _loss_instance(loss_fn), None, None, device, dtype)
