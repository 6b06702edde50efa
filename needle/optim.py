"""Optimizers (SGD with dampened momentum, Adam, AdamW) and `optim.lr_scheduler`.

Steps run under `no_grad()` on detached data: they keep no autograd history, never
modify gradient tensors in place and keep each parameter's dtype.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from . import ops
from .autograd import Tensor, no_grad
from .init import ones_like as ndl_ones_like
from .trace import tracer


def _cast(t: Tensor, like: Tensor) -> Tensor:
    """`t` with `like`'s dtype (a constant)."""
    if str(t.dtype) == str(like.dtype):
        return t
    return Tensor(t.numpy().astype(np.dtype(str(like.dtype))), device=like.device, dtype=like.dtype,
                  requires_grad=False)


def _buffers_to_numpy(buffers: Dict[int, Tensor]) -> Dict[int, np.ndarray]:
    return {i: np.array(t.numpy(), copy=True) for i, t in buffers.items()}


class Optimizer:
    """Base optimizer over a list of parameters."""

    _hyper: tuple = ("lr",)
    _buffer_names: tuple = ()

    def __init__(self, params):
        self.params = list(params)

    def step(self):
        raise NotImplementedError()

    def init_state(self) -> None:
        """Create every state buffer, zero-filled, that the first step() would create.

        Eager steps create buffers lazily; a compiled step needs them to exist before
        tracing so that they are graph state (zeros give the same first update)."""
        for name in self._buffer_names:
            buffers = getattr(self, name)
            for i, p in enumerate(self.params):
                if i not in buffers:
                    buffers[i] = Tensor(np.zeros(p.shape, dtype=np.dtype(str(p.dtype))), device=p.device,
                                        dtype=p.dtype, requires_grad=False)

    def reset_grad(self):
        for p in self.params:
            p.grad = None

    zero_grad = reset_grad

    def clip_grad_norm(self, max_norm=0.25):
        """Scale all gradients (new tensors) so their global L2 norm is at most max_norm.

        Returns the norm before clipping, a scalar Tensor (as PyTorch's `clip_grad_norm_`);
        the same ops run eagerly and inside a compiled step.
        """
        grads = [p.grad.detach() for p in self.params if p.grad is not None]
        if not grads:
            return 0.0
        with no_grad():
            total = ops.summation(grads[0] * grads[0])
            for g in grads[1:]:
                total = total + ops.summation(g * g)
            norm = ops.power_scalar(total, 0.5)
            scale = ops.where(ops.compare(norm, max_norm, "gt"), max_norm / (norm + 1e-6),
                              ndl_ones_like(norm))
            for p in self.params:
                if p.grad is not None:
                    p.grad = _cast(p.grad.detach() * scale, p.grad)
        return norm

    # ---- state -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Hyper-parameters (floats), step counter and per-parameter buffers
        ({buffer_name: {param_index: numpy array}})."""
        state = {name: getattr(self, name) for name in self._hyper}
        if hasattr(self, "t"):
            state["t"] = self.t
        for name in self._buffer_names:
            state[name] = _buffers_to_numpy(getattr(self, name))
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` output; validates buffer indices and shapes first."""
        for name in self._buffer_names:
            for i, arr in state.get(name, {}).items():
                i = int(i)
                if not 0 <= i < len(self.params):
                    raise ValueError(f"load_state_dict: buffer {name}[{i}] has no parameter "
                                     f"(optimizer has {len(self.params)})")
                shape = tuple(np.shape(arr))
                if shape != tuple(self.params[i].shape):
                    raise ValueError(f"load_state_dict: buffer {name}[{i}] has shape {shape}, "
                                     f"parameter has {tuple(self.params[i].shape)}")
        for name in self._hyper:
            if name in state:
                setattr(self, name, float(state[name]))
        if "t" in state and hasattr(self, "t"):
            self.t = int(state["t"])
        for name in self._buffer_names:
            buffers = {}
            for i, arr in state.get(name, {}).items():
                p = self.params[int(i)]
                buffers[int(i)] = Tensor(np.asarray(arr).astype(np.dtype(str(p.dtype))), device=p.device,
                                         dtype=p.dtype, requires_grad=False)
            setattr(self, name, buffers)


class SGD(Optimizer):
    """g = grad + wd*p; u = momentum*u + (1-momentum)*g; p -= lr*u."""

    _hyper = ("lr", "momentum", "weight_decay")
    _buffer_names = ("u",)

    def init_state(self) -> None:
        if self.momentum:
            super().init_state()

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0):
        super().__init__(params)
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.u: Dict[int, Tensor] = {}

    def step(self):
        with no_grad():
            for i, p in enumerate(self.params):
                if p.grad is None:
                    continue
                w = p.detach()
                g = _cast(p.grad.detach(), p)
                if self.weight_decay:
                    g = g + w * self.weight_decay
                if self.momentum:
                    prev = self.u.get(i)
                    u = g * (1 - self.momentum) if prev is None else prev * self.momentum + g * (1 - self.momentum)
                    self.u[i] = _cast(u, p)
                    g = self.u[i]
                p.data = _cast(w - g * tracer.hyper(self, "lr"), p)


class Adam(Optimizer):
    """Adam with bias correction and L2 weight decay added to the gradient."""

    _hyper = ("lr", "beta1", "beta2", "eps", "weight_decay")
    _buffer_names = ("m", "v")
    #: False: L2 (weight_decay*p added to the gradient); True: AdamW's decoupled decay
    _decoupled_weight_decay = False

    def __init__(self, params, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weight_decay = weight_decay
        self.t = 0
        self.m: Dict[int, Tensor] = {}
        self.v: Dict[int, Tensor] = {}

    @property
    def next_bias_correction1(self) -> float:
        """1 - beta1**(t+1): the first-moment correction of the coming step."""
        return 1 - self.beta1 ** (self.t + 1)

    @property
    def next_bias_correction2(self) -> float:
        """1 - beta2**(t+1): the second-moment correction of the coming step."""
        return 1 - self.beta2 ** (self.t + 1)

    def step(self):
        b1, b2 = self.beta1, self.beta2
        # the bias corrections are computed in float64 from the step count (1 - 0.999**t
        # cancels); compiled, the count is graph state read at each call and written back
        c1, c2 = tracer.hyper(self, "next_bias_correction1"), tracer.hyper(self, "next_bias_correction2")
        tracer.increment(self, "t")
        lr = tracer.hyper(self, "lr")
        with no_grad():
            for i, p in enumerate(self.params):
                if p.grad is None:
                    continue
                w = p.detach()
                g = _cast(p.grad.detach(), p)
                if self.weight_decay and self._decoupled_weight_decay:
                    w = _cast(w - w * (lr * self.weight_decay), p)  # p -= lr*wd*p, before Adam
                elif self.weight_decay:
                    g = g + w * self.weight_decay
                m, v = self.m.get(i), self.v.get(i)
                m = g * (1 - b1) if m is None else m * b1 + g * (1 - b1)
                v = g * g * (1 - b2) if v is None else v * b2 + g * g * (1 - b2)
                self.m[i], self.v[i] = _cast(m, p), _cast(v, p)
                m_hat = self.m[i] / c1
                v_hat = self.v[i] / c2
                p.data = _cast(w - m_hat * lr / (v_hat ** 0.5 + self.eps), p)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter; PyTorch's AdamW): per step,
    for each parameter with a gradient, first p -= lr*weight_decay*p, then the Adam update
    of `Adam` on the raw gradient (no L2 term in g): m = b1*m + (1-b1)*g,
    v = b2*v + (1-b2)*g², p -= lr*m̂/(sqrt(v̂)+eps). Defaults as PyTorch's except lr, which
    follows this package's Adam (0.01). Compiles like Adam (lr and the step count are
    read at every call; changing weight_decay retraces)."""

    _decoupled_weight_decay = True

    def __init__(self, params, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)


def train_step(model, loss_fn, opt):
    """`step(x, y) -> loss`: reset grads, forward, loss, backward, optimizer update.

    A model returning a tuple (the language models' `(logits, h)`) is scored on its first
    element. The step is a plain function of Tensors, ready for `@needle.compile`."""

    def step(x, y):
        opt.reset_grad()
        out = model(x)
        loss = loss_fn(out[0] if isinstance(out, tuple) else out, y)
        loss.backward()
        opt.step()
        return loss

    return step


from . import lr_scheduler  # noqa: E402,F401
