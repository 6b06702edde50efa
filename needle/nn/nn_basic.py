"""Module machinery and the basic layers (Linear, norms, dropout, losses)."""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

import numpy as np

from .. import backend_selection, init, ops
from ..autograd import Tensor
from .state import as_numpy
from .summary import module_summary


class Parameter(Tensor):
    """A Tensor that a Module owns as a trainable parameter."""


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


def _named_params(value: object, prefix: str) -> List[tuple]:
    """(dotted name, Parameter) pairs for every Parameter reachable through attributes, lists,
    tuples and dicts, in order (a shared one each time it is met), named like the state dict:
    attribute names, list/tuple indices, dict keys."""
    def join(key):
        return f"{prefix}.{key}" if prefix else str(key)

    if isinstance(value, Parameter):
        return [(prefix, value)]
    if isinstance(value, Module):
        return _named_params(value.__dict__, prefix)
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            out += _named_params(v, join(k))
        return out
    if isinstance(value, (list, tuple)):
        out = []
        for i, v in enumerate(value):
            out += _named_params(v, join(i))
        return out
    return []


def _direct_children(value: object, prefix: str) -> List[tuple]:
    """(dotted name, Module) for the modules reachable from `value` without passing through
    another Module (attributes, list/tuple items, dict values), in `__dict__` order."""
    if isinstance(value, Module):
        return [(prefix, value)]
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            out += _direct_children(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, (list, tuple)):
        out = []
        for i, v in enumerate(value):
            out += _direct_children(v, f"{prefix}.{i}" if prefix else str(i))
        return out
    return []


def _contains_module(value: object) -> bool:
    if isinstance(value, Module):
        return True
    if isinstance(value, dict):
        return any(_contains_module(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_module(v) for v in value)
    return False


def _indent(text: str) -> str:
    lines = text.split("\n")
    return "\n".join([lines[0]] + ["  " + line for line in lines[1:]])


def _container_repr(value: object) -> str:
    """A list/tuple/dict holding modules, shown like PyTorch's ModuleList / ModuleDict."""
    if isinstance(value, Module):
        return repr(value)
    if isinstance(value, dict):
        items, name = [(str(k), v) for k, v in value.items()], "ModuleDict"
    else:
        items, name = [(str(i), v) for i, v in enumerate(value)], "ModuleList"
    lines = [f"  ({k}): " + _indent(_container_repr(v)) for k, v in items if _contains_module(v)]
    return name + "(\n" + "\n".join(lines) + "\n)" if lines else name + "()"


class Module:
    """Base class of layers: parameters are found by walking the instance __dict__."""

    #: class-level default, so subclasses that skip super().__init__() still work
    training = True

    def __init__(self):
        self.training = True

    def parameters(self) -> List[Tensor]:
        """Every Parameter reachable through attributes, lists, tuples and dicts, in order."""
        return [p for _, p in _named_params(self.__dict__, "")]

    def _children(self) -> List["Module"]:
        return _child_modules(self.__dict__)

    # ---- PyTorch-style conveniences ------------------------------------------------------
    def named_parameters(self) -> List[tuple]:
        """(dotted name, Parameter) pairs in exactly the order (and with the same repeats) of
        `parameters()`; names follow the state dict ("modules.0.weight": attribute names,
        list/tuple indices, dict keys), so `dict(m.named_parameters())` indexes `state_dict()`."""
        return _named_params(self.__dict__, "")

    def named_children(self) -> List[tuple]:
        """(dotted name, Module) for the direct submodules (through lists, tuples and dicts)."""
        return _direct_children(self.__dict__, "")

    def children(self) -> List["Module"]:
        """The direct submodules (see `named_children`)."""
        return [m for _, m in self.named_children()]

    def named_modules(self, prefix: str = "") -> List[tuple]:
        """("", self) then every submodule with its dotted name, depth first in `__dict__`
        order; a module reachable twice is listed once (PyTorch's default)."""
        seen, out = set(), []

        def visit(module, name):
            if id(module) in seen:
                return
            seen.add(id(module))
            out.append((name, module))
            for child_name, child in module.named_children():
                visit(child, f"{name}.{child_name}" if name else child_name)

        visit(self, prefix)
        return out

    def num_parameters(self) -> int:
        """Total number of elements over the distinct parameters (a shared one counts once)."""
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += int(np.prod(p.shape, dtype=np.int64))
        return total

    def summary(self, *inputs, **kwargs) -> str:
        """A table of every submodule's output shape and parameter count for one example
        forward pass (eval mode, no gradients, no state changes); `print` it."""
        return module_summary(self, *inputs, **kwargs)

    def apply(self, fn) -> "Module":
        """Call `fn` on every direct submodule's `apply` (so on all submodules, children before
        their parent), then on self, like PyTorch's; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def to(self, device) -> "Module":
        """Move every parameter and buffer (any Tensor attribute, as in `state_dict`) to
        `device` (a device object, or its name: "cpu", "cuda", "cpu_numpy") in place: the
        tensors stay the same objects, so an optimizer built on them keeps working. Gradients
        move too, and modules' `device` attributes (used to create new tensors) are updated.
        Returns self."""
        if isinstance(device, str):
            name = device[:-2] if device.endswith("()") else device
            factory = getattr(backend_selection, name, None)
            if factory is None or not callable(factory):
                raise ValueError(f"Module.to: unknown device {device!r} (try 'cpu', 'cuda' or 'cpu_numpy')")
            device = factory()
        seen = set()
        for _, t in _named_tensors(self, ""):
            if id(t) in seen:
                continue
            seen.add(id(t))
            if t.device != device:
                t.data = Tensor(t.detach(), device=device, dtype=t.dtype, requires_grad=False)
            g = t.grad
            if g is not None and g.device != device:
                t.grad = Tensor(g.detach(), device=device, dtype=g.dtype, requires_grad=False)
        for _, m in self.named_modules():
            if "device" in m.__dict__:
                m.device = device
        return self

    def extra_repr(self) -> str:
        """The module's settings shown inside its `repr` parentheses (override in layers)."""
        return ""

    def _repr_children(self) -> List[tuple]:
        """(label, module or container of modules) lines of the nested repr."""
        return [(k, v) for k, v in self.__dict__.items() if _contains_module(v)]

    def __repr__(self) -> str:
        """Nested like PyTorch's: `Name(extra)` for a leaf, else one `(name): child` per line."""
        extra = self.extra_repr()
        lines = extra.split("\n") if extra else []
        for k, v in self._repr_children():
            lines.append(f"({k}): " + _container_repr(v))
        name = type(self).__name__
        if not lines:
            return name + "()"
        if len(lines) == 1 and not self._repr_children():
            return f"{name}({lines[0]})"
        return name + "(\n" + "\n".join("  " + _indent(line) for line in lines) + "\n)"

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
        return module_state_dict(self)

    def load_state_dict(self, state: Dict[str, Any], strict: bool = True) -> None:
        """Copy `state` into the module's tensors (validated first; nothing changes on error)."""
        load_module_state_dict(self, state, strict=strict)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")


# ---- state dicts: every Tensor attribute (parameters and buffers) by dotted name ----------


def _named_tensors(value, prefix: str) -> Iterator[Tuple[str, Tensor]]:
    if isinstance(value, Tensor):
        yield prefix, value
    elif isinstance(value, Module):
        yield from _named_tensors(value.__dict__, prefix)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and k.startswith("_"):
                continue
            yield from _named_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _named_tensors(v, f"{prefix}.{i}" if prefix else str(i))


def named_tensors(module) -> Dict[str, Tensor]:
    """Dotted name -> Tensor (the module's own objects, first occurrence wins)."""
    out: Dict[str, Tensor] = {}
    for name, t in _named_tensors(module, ""):
        out.setdefault(name, t)
    return out


def module_state_dict(module) -> Dict[str, np.ndarray]:
    return {name: np.array(t.numpy(), copy=True) for name, t in named_tensors(module).items()}


def load_module_state_dict(module, state, strict: bool = True) -> None:
    current = named_tensors(module)
    arrays = {k: as_numpy(v) for k, v in state.items()}
    if strict:
        for name, t in current.items():
            if name not in arrays:
                raise ValueError(f"load_state_dict: missing key {name!r} (model shape {tuple(t.shape)}, "
                                 f"not in the state dict)")
        for name, a in arrays.items():
            if name not in current:
                raise ValueError(f"load_state_dict: unexpected key {name!r} (state dict shape "
                                 f"{tuple(a.shape)}, not in the model)")
    for name, t in current.items():
        if name in arrays and tuple(arrays[name].shape) != tuple(t.shape):
            raise ValueError(f"load_state_dict: shape mismatch for key {name!r}: state dict has "
                             f"{tuple(arrays[name].shape)}, model has {tuple(t.shape)}")
    new_data = {name: Tensor(arrays[name].astype(np.dtype(str(t.dtype)), copy=True), device=t.device,
                             dtype=t.dtype, requires_grad=False)
                for name, t in current.items() if name in arrays}
    for name, value in new_data.items():
        current[name].data = value


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

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={getattr(self, 'bias', None) is not None}")

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

    def _repr_children(self) -> List[tuple]:
        modules = self.modules
        if isinstance(modules, (list, tuple)):
            return [(str(i), m) for i, m in enumerate(modules) if _contains_module(m)]
        return super()._repr_children()

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

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, momentum={self.momentum}"

    def _batch_sum(self, column_sums: Tensor, n: int) -> tuple:
        """The batch's column sums and row count from this rank's (SyncBatchNorm: over all
        ranks)."""
        return column_sums, n

    def forward(self, x: Tensor) -> Tensor:
        n, d = x.shape
        if self.training:
            total, count = self._batch_sum(ops.summation(x, axes=(0,)), n)
            mean = total / count
            centered = x - ops.broadcast_to(_row(mean, d), x.shape)
            total, count = self._batch_sum(ops.summation(centered * centered, axes=(0,)), n)
            var = total / count
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

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"

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

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        # compiled, init.randb draws from the counter-based generator (needle/ops/random.py)
        mask = init.randb(*x.shape, p=1 - self.p, device=x.device, dtype=x.dtype)
        if self.p >= 1:
            return x * 0.0
        return x * mask / (1 - self.p)
