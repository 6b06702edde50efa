"""The eager value classes, `Tensor` and `TensorTuple`, bound by `needle.autograd` once it
defines them.

The modules autograd calls into (the ops, the tracer, backprop) make and recognise values
through these names instead of importing autograd, which imports them: the eager core has
no import cycle.
"""
from __future__ import annotations

from typing import Any

Tensor: Any = None
TensorTuple: Any = None
