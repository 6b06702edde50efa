"""Module machinery and the basic layers (Linear, norms, dropout, losses)."""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from .. import init, ops
from ..ir import tracer
from ..autograd import Tensor


class Parameter(Tensor):
    """A Tensor that a Module owns as a trainable parameter."""


def _unpack_params(value: object) -> List[Tensor]:
    if isinstance(value, Parameter):
        return [value]
    if isinstance(value, Module):
        return value.parameters()
    if isinstance(value, dict):
        params = []
        for v in value.values():
            params += _unpack_params(v)
        return params
    if isinstance(value, (list, tuple)):
        params = []
        for v in value:
            params += _unpack_params(v)
        return params
    return []


def _child_modules(value: object) -> List["Module"]:
    if isinstance(value, Module):
        return [value] + _child_modules(value.__dict__)
    if isinstance(value, dict):
        modules = []
        for v in value.values():
            modules += _child_modules(v)
        return modules
    if isinstance(value, (list, tuple)):
        modules = []
        for v in value:
            modules += _child_modules(v)
        return modules
    return []


class Module:
    """Base class of layers: parameters are found by walking the instance __dict__."""

    #: class-level default, so subclasses that skip super().__init__() still work
    training = True

    def __init__(self):
        self.training = True

    def parameters(self) -> List[Tensor]:
        """Every Parameter reachable through attributes, lists, tuples and dicts, in order."""
        return _unpack_params(self.__dict__)

    def _children(self) -> List["Module"]:
        return _child_modules(self.__dict__)

    def eval(self):
        self.training = False
        for m in self._children():
            m.training = False
        return self

    def train(self):
        self.training = True
        for m in self._children():
            m.training = True
        return self

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Parameters and buffers (plain Tensor attributes) as numpy arrays, dotted names."""
        from .state import module_state_dict

        return module_state_dict(self)

    def load_state_dict(self, state: Dict[str, Any], strict: bool = True) -> None:
        """Copy `state` into the module's tensors (validated first; nothing changes on error)."""
        from .state import load_module_state_dict

        load_module_state_dict(self, state, strict=strict)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")


class Identity(Module):
    def forward(self, x):
        return x


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.relu(x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.tanh(x)


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.sigmoid(x)


class Flatten(Module):
    def forward(self, X: Tensor) -> Tensor:
        return ops.reshape(X, (X.shape[0], -1)) if len(X.shape) != 2 else X


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True, device=None, dtype="float32"):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(init.kaiming_uniform(in_features, out_features, device=device, dtype=dtype))
        if bias:
            self.bias = Parameter(ops.reshape(
                init.kaiming_uniform(out_features, 1, device=device, dtype=dtype), (1, out_features)))
        else:
            self.bias = None

    def forward(self, X: Tensor) -> Tensor:
        shape = X.shape
        if len(shape) > 2:  # one GEMM over all leading axes
            out = ops.matmul(ops.reshape(X, (-1, shape[-1])), self.weight)
        else:
            out = ops.matmul(X, self.weight)
        if self.bias is not None:
            bias = self.bias
            out = out + (bias if len(bias.shape) == 2 else ops.reshape(bias, (1, self.out_features)))
        if len(shape) > 2:
            out = ops.reshape(out, tuple(shape[:-1]) + (self.out_features,))
        return out


class Sequential(Module):
    def __init__(self, *modules):
        super().__init__()
        self.modules = modules

    def forward(self, x):
        for m in self.modules:
            x = m(x)
        return x


class Residual(Module):
    def __init__(self, fn: Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x) + x


class SoftmaxLoss(Module):
    """Mean over the batch of logsumexp(row) - row[y]."""

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        n, k = logits.shape
        y_one_hot = init.one_hot(k, y, device=logits.device, dtype=logits.dtype)
        lse = ops.logsumexp(logits, axes=(1,))
        picked = ops.summation(logits * y_one_hot, axes=(1,))
        return ops.summation(lse - picked) / n


def _row(t: Tensor, dim: int) -> Tensor:
    return ops.reshape(t, (1, dim))


class BatchNorm1d(Module):
    def __init__(self, dim, eps=1e-5, momentum=0.1, device=None, dtype="float32"):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.momentum = momentum
        self.weight = Parameter(init.ones(dim, device=device, dtype=dtype))
        self.bias = Parameter(init.zeros(dim, device=device, dtype=dtype))
        self.running_mean = init.zeros(dim, device=device, dtype=dtype)
        self.running_var = init.ones(dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        n, d = x.shape
        if self.training:
            mean = ops.summation(x, axes=(0,)) / n
            centered = x - ops.broadcast_to(_row(mean, d), x.shape)
            var = ops.summation(centered * centered, axes=(0,)) / n
            m = self.momentum
            self.running_mean = (self.running_mean.detach() * (1 - m) + mean.detach() * m).detach()
            self.running_var = (self.running_var.detach() * (1 - m) + var.detach() * m).detach()
        else:
            mean, var = self.running_mean.detach(), self.running_var.detach()
            centered = x - ops.broadcast_to(_row(mean, d), x.shape)
        std = ops.power_scalar(var + self.eps, 0.5)
        normed = centered / ops.broadcast_to(_row(std, d), x.shape)
        return (ops.broadcast_to(_row(self.weight, d), x.shape) * normed
                + ops.broadcast_to(_row(self.bias, d), x.shape))


class BatchNorm2d(BatchNorm1d):
    """BatchNorm over the channels of an NCHW input."""

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        flat = ops.reshape(ops.permute(x, (0, 2, 3, 1)), (n * h * w, c))
        y = super().forward(flat)
        return ops.permute(ops.reshape(y, (n, h, w, c)), (0, 3, 1, 2))


class LayerNorm1d(Module):
    """Normalise each row (the last axis) with its mean and biased variance."""

    def __init__(self, dim, eps=1e-5, device=None, dtype="float32"):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = Parameter(init.ones(dim, device=device, dtype=dtype))
        self.bias = Parameter(init.zeros(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        d = shape[-1]
        x2 = ops.reshape(x, (-1, d)) if len(shape) != 2 else x
        rows = x2.shape[0]
        mean = ops.reshape(ops.summation(x2, axes=(1,)) / d, (rows, 1))
        centered = x2 - ops.broadcast_to(mean, x2.shape)
        var = ops.reshape(ops.summation(centered * centered, axes=(1,)) / d, (rows, 1))
        std = ops.broadcast_to(ops.power_scalar(var + self.eps, 0.5), x2.shape)
        out = (ops.broadcast_to(_row(self.weight, d), x2.shape) * (centered / std)
               + ops.broadcast_to(_row(self.bias, d), x2.shape))
        return ops.reshape(out, shape) if len(shape) != 2 else out


class Dropout(Module):
    """Training: x * mask / (1 - p) with mask = randb(p=1-p), one RNG draw per call."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        if tracer.ACTIVE is not None:  # compiled: counter-based masks (see needle/ops/random.py)
            mask = ops.compare(ops.random_uniform(x.shape), 1 - self.p, "le")
        else:
            mask = init.randb(*x.shape, p=1 - self.p, device=x.device, dtype=x.dtype)
        if self.p >= 1:
            return x * 0.0
        return x * mask / (1 - self.p)
