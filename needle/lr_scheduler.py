"""Learning-rate schedulers: each `step()` sets `optimizer.lr` for the next optimizer step.

Like PyTorch, constructing a scheduler sets the epoch-0 learning rate, and the schedule
is a closed form of the number of `step()` calls made so far (`last_epoch`).
"""
from __future__ import annotations

import math


class LRScheduler:
    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0
        self._set(self.get_lr())

    def get_lr(self) -> float:
        raise NotImplementedError()

    def _set(self, lr: float) -> None:
        self.optimizer.lr = lr
        self._last_lr = lr

    def step(self) -> None:
        self.last_epoch += 1
        self._set(self.get_lr())

    def get_last_lr(self) -> float:
        """The learning rate set by the last `step()` (or the constructor)."""
        return self._last_lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.base_lr = float(state["base_lr"])
        self.last_epoch = int(state["last_epoch"])
        self._set(self.get_lr())


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer)

    def get_lr(self) -> float:
        return self.base_lr * self.gamma ** (self.last_epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        if T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be >= 1, got {T_max}")
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer)

    def get_lr(self) -> float:
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2


class LinearWarmup(LRScheduler):
    """lr = base_lr * (start_factor + (1 - start_factor) * min(epoch, warmup_steps) / warmup_steps)."""

    def __init__(self, optimizer, warmup_steps, start_factor=0.0):
        if warmup_steps < 1:
            raise ValueError(f"LinearWarmup: warmup_steps must be >= 1, got {warmup_steps}")
        self.warmup_steps = warmup_steps
        self.start_factor = start_factor
        super().__init__(optimizer)

    def get_lr(self) -> float:
        frac = min(self.last_epoch, self.warmup_steps) / self.warmup_steps
        return self.base_lr * (self.start_factor + (1 - self.start_factor) * frac)


__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR", "LinearWarmup"]
