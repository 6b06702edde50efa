"""`Module.summary`: a table of every submodule's output shape and parameter count for one
example forward pass (like torchinfo's summary for PyTorch)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..autograd import Tensor, no_grad


def _shape_text(value: Any) -> str:
    """(8, 100) for a Tensor; nested tuples for tuple outputs (an LSTM's (out, (h, c)))."""
    if isinstance(value, Tensor):
        return str(tuple(value.shape))
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_shape_text(v) for v in value) + ")"
    return type(value).__name__


def module_summary(model, *inputs, **kwargs) -> str:
    """Run `model(*inputs, **kwargs)` once in eval mode without gradients (BatchNorm
    statistics and Dropout are untouched; the training flags are restored after) and return
    the table: one row per submodule (dotted name, type, first output shape, parameters of it
    and its children, calls when more than one; "(no call of its own)" for a module whose
    parent uses its parameters directly, as LSTM uses its cells), then the distinct parameter
    total."""
    inputs = tuple(Tensor(x) if isinstance(x, np.ndarray) else x for x in inputs)
    modules = model.named_modules()
    outputs: dict[int, list] = {id(m): [] for _, m in modules}
    modes = [(m, m.__dict__.get("training")) for _, m in modules]

    def recording(module):
        forward = module.forward

        def wrapper(*args, **kw):
            out = forward(*args, **kw)
            outputs[id(module)].append(out)
            return out
        return wrapper

    try:
        for _, m in modules:
            m.forward = recording(m)
            m.training = False
        with no_grad():
            model(*inputs, **kwargs)
    finally:
        for m, mode in modes:
            m.__dict__.pop("forward", None)
            if mode is None:
                m.__dict__.pop("training", None)
            else:
                m.training = mode

    rows = [("name", "type", "output shape", "params")]
    for name, m in modules:
        seen = outputs[id(m)]
        shape = _shape_text(seen[0]) if seen else "(no call of its own)"
        if len(seen) > 1:
            shape += f" x{len(seen)} calls"
        rows.append((name or "(model)", type(m).__name__, shape, f"{m.num_parameters():,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    fmt = lambda r: "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]),  # noqa: E731
                               r[3].rjust(widths[3])]).rstrip()
    rule = "-" * len(fmt(rows[0]))
    total = model.num_parameters()
    trainable = sum(int(np.prod(p.shape)) for p in {id(p): p for p in model.parameters()}.values()
                    if p.requires_grad)
    lines = [fmt(rows[0]), rule, *map(fmt, rows[1:]), rule,
             f"parameters: {total:,} ({trainable:,} trainable)"]
    return "\n".join(lines)
