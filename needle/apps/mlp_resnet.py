"""The course's MLPResNet for MNIST (NEEDLE_API.md section 9).

Installed as ``needle.apps.mlp_resnet``; a checkout's ``apps/`` makes it importable as
``apps.mlp_resnet`` and as ``mlp_resnet`` (with ``apps/`` on the path), as course code expects.
"""
import os
import time  # noqa: F401

import numpy as np

import needle as ndl
import needle.nn as nn
import needle.optim as optim  # noqa: F401  (makes ndl.optim available)

__all__ = ["ResidualBlock", "MLPResNet", "epoch", "train_mnist"]


def ResidualBlock(dim, hidden_dim, norm=nn.BatchNorm1d, drop_prob=0.1):
    return nn.Sequential(
        nn.Residual(
            nn.Sequential(
                nn.Linear(dim, hidden_dim),
                norm(hidden_dim),
                nn.ReLU(),
                nn.Dropout(drop_prob),
                nn.Linear(hidden_dim, dim),
                norm(dim),
            )
        ),
        nn.ReLU(),
    )


def MLPResNet(dim, hidden_dim=100, num_blocks=3, num_classes=10, norm=nn.BatchNorm1d,
              drop_prob=0.1):
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(dim, hidden_dim),
        nn.ReLU(),
        *[ResidualBlock(hidden_dim, hidden_dim // 2, norm, drop_prob) for _ in range(num_blocks)],
        nn.Linear(hidden_dim, num_classes),
    )


def run_batches(dataloader, model, loss_fn, opt=None):
    """Yield (logits, loss, labels) for each batch of ``dataloader``: after a training step
    when ``opt`` is given (the model in train mode), else in eval mode without one."""
    if opt is not None:
        model.train()
    else:
        model.eval()
    for batch in dataloader:
        X, y = batch[0], batch[1]
        if opt is not None:
            opt.reset_grad()
        out = model(X)
        loss = loss_fn(out, y)
        if opt is not None:
            loss.backward()
            opt.step()
        yield out, loss, y


def epoch(dataloader, model, opt=None):
    """One pass over ``dataloader``: training with ``opt``, evaluation without.

    Returns (error rate over the dataset, mean of the per-batch mean losses).
    """
    np.random.seed(4)
    errors = 0
    losses = []
    for out, loss, y in run_batches(dataloader, model, nn.SoftmaxLoss(), opt):
        errors += int((out.numpy().argmax(axis=1) != y.numpy()).sum())
        losses.append(float(loss.numpy()))
    return errors / len(dataloader.dataset), float(np.mean(losses))


def train_mnist(batch_size=100, epochs=10, optimizer=ndl.optim.Adam, lr=0.001,
                weight_decay=0.001, hidden_dim=100, data_dir="data"):
    np.random.seed(4)
    train_dataset = ndl.data.MNISTDataset(
        os.path.join(data_dir, "train-images-idx3-ubyte.gz"),
        os.path.join(data_dir, "train-labels-idx1-ubyte.gz"),
    )
    test_dataset = ndl.data.MNISTDataset(
        os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"),
        os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"),
    )
    train_loader = ndl.data.DataLoader(train_dataset, batch_size, shuffle=True)
    test_loader = ndl.data.DataLoader(test_dataset, batch_size)
    model = MLPResNet(784, hidden_dim)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    train_err, train_loss = 0.0, 0.0
    for _ in range(epochs):
        train_err, train_loss = epoch(train_loader, model, opt)
    test_err, test_loss = epoch(test_loader, model)
    return train_err, train_loss, test_err, test_loss


if __name__ == "__main__":  # pragma: no cover
    train_mnist(data_dir="../data")
