"""Differential fuzzing of `needle.compile` against eager execution.

`generate(seed)` writes a random program over the public API as Python source: a module
that defines `INPUTS` (name -> (shape, kind, requires_grad)), builds the parameters,
modules and global tensors (c0, ...) and floats (s0, ...) it uses, and defines
`def program(x0, ...)`. `run_source` executes it eagerly and under `needle.compile` (three
calls: two input sets, then a third after the parameters change and the globals are
rebound) and compares outputs, input gradients and Parameter gradients. `fuzz` runs many
seeds in a pool of worker processes, so a crash or a hang is reported as such.

Tolerances come from eager itself: every program also runs eagerly on inputs and
parameters perturbed by a few ulps, with every op's result perturbed alike (a model of the
compiled code's different rounding), and the spread of those results (how much rounding
noise the computation amplifies: cancellation, ties in max, discontinuities) widens the
float32 tolerance position by position. NaN and +-Inf positions must agree exactly, except
where the perturbed runs disagree with eager about them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import linecache
import os
import random
import re
import tempfile
import time
import traceback
from math import prod
from typing import Callable, Iterable, Optional

import numpy as np

Shape = tuple[int, ...]

#: outcome categories; everything but "ok" is a finding
CATEGORIES = ("ok", "mismatch", "compiled-error", "crash", "timeout")
RTOL = 1e-3            # relative to the magnitude of the element
SCALE_TOL = 1e-5       # relative to the largest finite magnitude of the whole array
ATOL = 1e-5
NOISE_FACTOR = 8.0     # times the spread of the perturbed eager runs
PERTURBATION = 2e-6    # relative size of the input perturbation (about 16 float32 ulps)
PERTURBED_RUNS = 2
MAX_ELEMENTS = 128
SCALARS = (0.5, 2.0, 3.0, -1.5, 1.0, 0.0)
POWERS = (2, 3, -1, 0.5, -0.5, 1, 0, 2.0, -2, 1.5)


# ---- generating programs ---------------------------------------------------------------

@dataclasses.dataclass
class _Var:
    name: str
    shape: Shape
    deps: frozenset  # inputs with requires_grad this value depends on differentiably


class _Generator:
    """Builds one program from a seed; `source()` renders it."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.seed = seed
        self.backward = self.rng.random() < 0.5
        self.nonfinite = self.rng.random() < 0.15
        self.inputs: list[tuple[str, Shape, str, bool]] = []
        self.setup: list[str] = []
        self.body: list[str] = []
        self.vars: list[_Var] = []
        self.exprs: list[tuple[str, Shape, frozenset]] = []  # for repeating an expression
        self.linears: dict[str, tuple[int, int]] = {}  # nn.Linear modules: in and out features
        self.names = itertools.count()

    # -- shapes and operands --
    def dim(self, zero: bool = True) -> int:
        """Mostly small; sometimes past a vector width (8) or two, with a tail."""
        return self.rng.choices((0, 1, 2, 3, 4, 5, 8, 9, 17, 33),
                                weights=(2 if zero else 0, 10, 12, 10, 8, 6, 2, 2, 2, 1))[0]

    def shape(self) -> Shape:
        while True:
            s = tuple(self.dim() for _ in range(self.rng.choices((0, 1, 2, 3), weights=(1, 3, 5, 3))[0]))
            if prod(s) <= MAX_ELEMENTS:
                return s

    def new_input(self, shape: Shape, kind: Optional[str] = None, grad: Optional[bool] = None) -> _Var:
        name = f"x{len(self.inputs)}"
        if kind is None:
            kind = "nonfinite" if self.nonfinite and self.rng.random() < 0.5 else "float"
        if grad is None:  # the first input of a program that calls backward() always
            grad = not kind.startswith("ids") and self.backward and (not self.inputs or self.rng.random() < 0.7)
        self.inputs.append((name, shape, kind, grad))
        return _Var(name, shape, frozenset({name}) if grad else frozenset())

    def new_param(self, shape: Shape) -> _Var:
        name = f"p{next(self.names)}"
        self.setup.append(f"{name} = nn.Parameter(ndl.init.randn({', '.join(map(str, shape))}))")
        return _Var(name, shape, frozenset())

    def operand(self, shape: Shape) -> _Var:
        """A value of exactly `shape`: an existing one, a new input or a new Parameter."""
        same = [v for v in self.vars if v.shape == shape]
        r = self.rng.random()
        if same and r < 0.5:
            return self.rng.choice(same)
        if len(shape) >= 1 and 0 not in shape and r < 0.65:
            return self.new_param(shape)
        if len(shape) >= 1 and 0 not in shape and r < 0.72:  # a global Tensor, rebound before call 3
            name = f"c{next(self.names)}"
            self.setup.append(f"{name} = ndl.init.randn({', '.join(map(str, shape))})")
            return _Var(name, shape, frozenset())
        return self.new_input(shape)

    def scalar(self) -> str:
        """A literal, or sometimes a global float (rebound before call 3)."""
        c = self.rng.choice(SCALARS)
        if self.rng.random() < 0.1:
            name = f"s{next(self.names)}"
            self.setup.append(f"{name} = {c}")
            return name
        return str(c)

    def broadcastable(self, shape: Shape) -> Shape:
        """A shape that broadcasts to `shape` (some axes 1, some leading axes dropped)."""
        s = tuple(1 if self.rng.random() < 0.4 else d for d in shape)
        return s[self.rng.randint(0, len(s)):] if self.rng.random() < 0.3 else s

    def pick(self) -> _Var:
        """An operand, most often one of the latest values (so programs form chains)."""
        recent = self.vars[-3:]
        return self.rng.choice(recent if self.rng.random() < 0.75 else self.vars)

    def emit(self, expr: str, shape: Shape, deps: frozenset) -> _Var:
        var = _Var(f"v{len(self.body)}", shape, deps)
        self.body.append(f"{var.name} = {expr}")
        self.vars.append(var)
        self.exprs.append((expr, shape, deps))
        return var

    # -- ops: each returns False when it does not apply to `a` --
    def op_unary(self, a: _Var) -> bool:
        c, p = self.scalar(), self.rng.choice(POWERS)
        template = self.rng.choice((
            "ndl.exp({a})", "ndl.tanh({a})", "ndl.relu({a})", "ndl.sigmoid({a})", "ndl.negate({a})",
            "-{a}", "ndl.log({a})", "ndl.log(ndl.exp({a}) + {c})", "ndl.power_scalar({a}, {p})",
            "{a} ** {p}", "ndl.add_scalar({a}, {c})", "{a} + {c}", "{c} + {a}", "{a} - {c}",
            "{c} - {a}", "ndl.mul_scalar({a}, {c})", "{a} * {c}", "{c} * {a}",
            "ndl.divide_scalar({a}, {c})", "{a} / {c}", "{c} / {a}", "nn.ReLU()({a})",
            "nn.Tanh()({a})", "nn.Sigmoid()({a})", "{a}.exp()", "{a}.log()", "{a}.tanh()"))
        self.emit(template.format(a=a.name, c=c, p=p), a.shape, a.deps)
        return True

    def op_binary(self, a: _Var) -> bool:
        b = self.operand(a.shape if self.rng.random() < 0.5 else self.broadcastable(a.shape))
        if self.rng.random() < 0.3:
            a, b = b, a
        shape = tuple(np.broadcast_shapes(a.shape, b.shape))
        diff = a.deps | b.deps
        template, deps = self.rng.choice((
            ("{a} + {b}", diff), ("ndl.add({a}, {b})", diff), ("{a} - {b}", diff),
            ("{a} * {b}", diff), ("ndl.multiply({a}, {b})", diff), ("{a} / {b}", diff),
            ("ndl.divide({a}, {b})", diff), ("ndl.power({a}, {b})", diff),
            ("ndl.where({a} > {b}, {a}, {b})", diff), ("ndl.where({b} <= 0.5, {a}, {b})", diff),
            ("ndl.compare({a}, {b}, 'ge')", frozenset()), ("({a} < {b}) * {a}", a.deps)))
        if "({a} < {b}) * {a}" == template and shape != a.shape:
            template = "({a} < {b}) * {b}"
            deps = b.deps
        self.emit(template.format(a=a.name, b=b.name), shape, deps)
        return True

    def op_broadcast_to(self, a: _Var) -> bool:
        shape = tuple(self.dim() if d == 1 else d for d in a.shape)
        shape = tuple(self.dim() for _ in range(self.rng.randint(0, 2))) + shape
        if prod(shape) > MAX_ELEMENTS:
            return False
        form = "ndl.broadcast_to({a}, {s})" if self.rng.random() < 0.7 else "{a}.broadcast_to({s})"
        self.emit(form.format(a=a.name, s=shape), shape, a.deps)
        return True

    def axes(self, rank: int):
        """Axes for a reduction: None, an int (maybe negative) or a tuple of distinct axes."""
        r = self.rng.random()
        if rank == 0 or r < 0.2:
            return None
        if r < 0.5:
            ax = self.rng.randrange(rank)
            return ax - rank if self.rng.random() < 0.3 else ax
        return tuple(sorted(self.rng.sample(range(rank), self.rng.randint(1, rank))))

    def op_reduce(self, a: _Var) -> bool:
        axes = self.axes(len(a.shape))
        over = set() if axes is None else {axes % len(a.shape)} if isinstance(axes, int) else set(axes)
        shape = tuple(d for i, d in enumerate(a.shape) if axes is not None and i not in over)
        templates = ["ndl.summation({a}, axes={x})", "ndl.max({a}, axes={x})", "ndl.mean({a}, axes={x})",
                     "ndl.logsumexp({a}, axes={x})"]
        if axes is None:
            templates += ["{a}.sum()"]
        self.emit(self.rng.choice(templates).format(a=a.name, x=axes), shape, a.deps)
        return True

    def op_matmul(self, a: _Var) -> bool:
        if len(a.shape) < 2:
            return False
        *batch, m, k = a.shape
        r = self.rng.random()
        if len(a.shape) == 2 and r < 0.2:
            self.emit(f"{a.name} @ ndl.transpose({a.name})", (m, m), a.deps)
            return True
        if len(a.shape) in (2, 3) and r < 0.45 and k > 0:
            shared = [(name, n) for name, (i, n) in self.linears.items() if i == k]
            if shared and self.rng.random() < 0.5:  # a module applied twice: gradients add up
                name, n = self.rng.choice(shared)
            else:
                name, n = f"m{next(self.names)}", self.dim(zero=False)
                self.linears[name] = (k, n)
                self.setup.append(f"{name} = nn.Linear({k}, {n}, bias={self.rng.random() < 0.7})")
            self.emit(f"{name}({a.name})", (*batch, m, n), a.deps)
            return True
        n = self.dim()
        bshape = (k, n) if not batch or r < 0.7 else (self.rng.choice((1, batch[-1])), k, n)
        b = self.operand(bshape)
        form = "{a} @ {b}" if self.rng.random() < 0.6 else "ndl.matmul({a}, {b})"
        self.emit(form.format(a=a.name, b=b.name), (*batch, m, n), a.deps | b.deps)
        return True

    def op_reshape(self, a: _Var) -> bool:
        size = prod(a.shape)
        dims = []
        rest = size
        for _ in range(self.rng.randint(0, 3)):
            d = self.rng.choice([f for f in range(1, 6) if rest % f == 0] if rest else [0, 1, 2])
            dims.append(d)
            rest = rest // d if d else 0
        if rest != 1 or not dims:
            dims.append(rest if size else 0)
        if size and prod(dims) != size:
            return False
        shape = tuple(dims)
        shown = list(shape)
        if size and self.rng.random() < 0.3:
            shown[self.rng.randrange(len(shown))] = -1
        form = "ndl.reshape({a}, {s})" if self.rng.random() < 0.7 else "{a}.reshape({s})"
        self.emit(form.format(a=a.name, s=tuple(shown)), shape, a.deps)
        return True

    def op_transpose(self, a: _Var) -> bool:
        rank = len(a.shape)
        if rank < 2:
            return False
        r = self.rng.random()
        if r < 0.35:
            s = list(a.shape)
            s[-1], s[-2] = s[-2], s[-1]
            self.emit(f"ndl.transpose({a.name})", tuple(s), a.deps)
        elif r < 0.65:
            i, j = self.rng.sample(range(rank), 2)
            s = list(a.shape)
            s[i], s[j] = s[j], s[i]
            self.emit(f"ndl.transpose({a.name}, ({i}, {j}))", tuple(s), a.deps)
        else:
            perm = tuple(self.rng.sample(range(rank), rank))
            self.emit(f"ndl.permute({a.name}, {perm})", tuple(a.shape[i] for i in perm), a.deps)
        return True

    def op_getitem(self, a: _Var) -> bool:
        if not a.shape:
            return False
        parts, shape = [], []
        for d in a.shape[:self.rng.randint(1, len(a.shape))]:
            r = self.rng.random()
            if r < 0.25 and d > 0:
                i = self.rng.randrange(-d, d)
                parts.append(str(i))
                continue
            if r < 0.45:
                parts.append(":")
                shape.append(d)
                continue
            bound = lambda: self.rng.choice((None, self.rng.randint(-d - 2, d + 3)))  # noqa: E731
            start, stop, step = bound(), bound(), self.rng.choice((None, 1, 2, 3))
            start_i, stop_i, step_i = slice(start, stop, step).indices(d)
            shape.append(len(range(start_i, max(stop_i, start_i), step_i)))
            text = lambda v: "" if v is None else str(v)  # noqa: E731
            parts.append(f"{text(start)}:{text(stop)}" + (f":{step}" if step else ""))
        shape += a.shape[len(parts):]
        self.emit(f"{a.name}[{', '.join(parts)}]", tuple(shape), a.deps)
        return True

    def op_flip(self, a: _Var) -> bool:
        if not a.shape:
            return False
        axes = tuple(self.rng.sample(range(len(a.shape)), self.rng.randint(1, len(a.shape))))
        self.emit(f"ndl.flip({a.name}, {axes})", a.shape, a.deps)
        return True

    def op_dilate(self, a: _Var) -> bool:
        if not a.shape:
            return False
        axes = tuple(sorted(self.rng.sample(range(len(a.shape)), self.rng.randint(1, len(a.shape)))))
        d = self.rng.choice((0, 1, 2))
        shape = tuple(n * (d + 1) if i in axes else n for i, n in enumerate(a.shape))
        if prod(shape) > MAX_ELEMENTS:
            return False
        self.emit(f"ndl.dilate({a.name}, {axes}, {d})", shape, a.deps)
        return True

    def op_stack(self, a: _Var) -> bool:
        parts = [a] + [a if self.rng.random() < 0.4 else self.operand(a.shape)
                       for _ in range(self.rng.randint(0, 2))]
        axis = self.rng.randint(0, len(a.shape))
        shape = a.shape[:axis] + (len(parts),) + a.shape[axis:]
        if prod(shape) > MAX_ELEMENTS:
            return False
        names = ", ".join(p.name for p in parts)
        self.emit(f"ndl.stack([{names}], {axis})", shape, frozenset().union(*(p.deps for p in parts)))
        return True

    def op_split(self, a: _Var) -> bool:
        axes = [i for i, d in enumerate(a.shape) if d > 0]
        if not axes:
            return False
        axis = self.rng.choice(axes)
        shape = a.shape[:axis] + a.shape[axis + 1:]
        i = self.rng.randrange(a.shape[axis])
        j = self.rng.randrange(a.shape[axis])
        if self.rng.random() < 0.5:
            self.emit(f"ndl.split({a.name}, {axis})[{i}]", shape, a.deps)
        else:
            self.emit(f"ndl.split({a.name}, {axis})[{i}] * ndl.split({a.name}, {axis})[{j}]",
                      shape, a.deps)
        return True

    def op_concat(self, a: _Var) -> bool:
        if not a.shape:
            return False
        axis = self.rng.randrange(len(a.shape))
        parts = [a]
        for _ in range(self.rng.randint(1, 2)):
            s = list(a.shape)
            s[axis] = self.dim()
            parts.append(a if self.rng.random() < 0.3 else self.operand(tuple(s)))
        self.rng.shuffle(parts)
        shape = a.shape[:axis] + (sum(p.shape[axis] for p in parts),) + a.shape[axis + 1:]
        if prod(shape) > MAX_ELEMENTS:
            return False
        names = ", ".join(p.name for p in parts)
        self.emit(f"ndl.concat([{names}], {axis})", shape, frozenset().union(*(p.deps for p in parts)))
        return True

    def op_one_hot(self, a: _Var) -> bool:
        """a * one_hot(k, ids) for a 2-D `a` of shape (n, k)."""
        if len(a.shape) != 2 or not a.shape[1]:
            return False
        n, k = a.shape
        ids = self.new_input((n,), kind=f"ids:{k}")
        self.emit(f"{a.name} * ndl.init.one_hot({k}, {ids.name})", a.shape, a.deps)
        return True

    def op_logsoftmax(self, a: _Var) -> bool:
        if len(a.shape) != 2:
            return False
        self.emit(f"ndl.logsoftmax({a.name})", a.shape, a.deps)
        return True

    def op_norm(self, a: _Var) -> bool:
        """LayerNorm1d or BatchNorm1d (training mode) over a 2-D value with no empty axis."""
        if len(a.shape) != 2 or 0 in a.shape:
            return False
        name = f"m{next(self.names)}"
        kind = self.rng.choice(("LayerNorm1d", "BatchNorm1d"))
        self.setup.append(f"{name} = nn.{kind}({a.shape[1]})")
        self.emit(f"{name}({a.name})", a.shape, a.deps)
        return True

    def op_grad(self, a: _Var) -> bool:
        """The gradient of a nonlinear scalar function of `a` (ndl.grad; second order under backward)."""
        if 0 in a.shape:
            return False
        body = self.rng.choice(("ndl.summation(ndl.tanh(t) * t)", "(t * t).sum()", "ndl.summation(ndl.exp(t))",
                                "ndl.summation(ndl.sigmoid(t) * t)", "ndl.logsumexp(t, axes=None)",
                                "ndl.summation(ndl.relu(t) * t)"))
        form = ("ndl.grad(lambda t: {b})({a})" if self.rng.random() < 0.7
                else "ndl.value_and_grad(lambda t: {b})({a})[1]")
        self.emit(form.format(b=body, a=a.name), a.shape, a.deps)
        return True

    def op_repeat(self, a: _Var) -> bool:
        """The same expression as an earlier line again (common subexpressions)."""
        if not self.exprs:
            return False
        expr, shape, deps = self.rng.choice(self.exprs)
        self.emit(expr, shape, deps)
        return True

    def source_conv(self) -> _Var:
        """A convolution of a new NHWC input (ndl.conv) or NCHW input (nn.Conv)."""
        n, h, w = self.rng.randint(1, 2), self.rng.randint(1, 5), self.rng.randint(1, 5)
        c, out, k, stride = self.rng.randint(1, 3), self.rng.randint(1, 3), self.rng.randint(1, 3), self.rng.randint(1, 2)
        if self.rng.random() < 0.5:
            pad = self.rng.randint(0, 1)
            if min(h, w) + 2 * pad < k:
                return self.source_conv()
            x, weight = self.new_input((n, h, w, c)), self.new_param((k, k, c, out))
            ho, wo = ((d + 2 * pad - k) // stride + 1 for d in (h, w))
            return self.emit(f"ndl.conv({x.name}, {weight.name}, stride={stride}, padding={pad})",
                             (n, ho, wo, out), x.deps)
        pad = (k - 1) // 2
        if min(h, w) + 2 * pad < k:
            return self.source_conv()
        x, name = self.new_input((n, c, h, w)), f"m{next(self.names)}"
        self.setup.append(f"{name} = nn.Conv({c}, {out}, {k}, stride={stride}, bias={self.rng.random() < 0.5})")
        ho, wo = ((d + 2 * pad - k) // stride + 1 for d in (h, w))
        return self.emit(f"{name}({x.name})", (n, out, ho, wo), x.deps)

    def source_embedding(self) -> _Var:
        num, dim = self.dim(zero=False) + 1, self.dim(zero=False)
        ids = self.new_input((self.dim(zero=False), self.dim()), kind=f"ids:{num}")
        if self.rng.random() < 0.5:
            name = f"e{next(self.names)}"
            self.setup.append(f"{name} = nn.Embedding({num}, {dim})")
            return self.emit(f"{name}({ids.name})", ids.shape + (dim,), frozenset())
        table = self.new_param((num, dim))
        return self.emit(f"ndl.gather({table.name}, {ids.name})", ids.shape + (dim,), frozenset())

    OPS = (("unary", 8), ("binary", 7), ("broadcast_to", 2), ("reduce", 5), ("matmul", 3),
           ("reshape", 3), ("transpose", 2), ("getitem", 3), ("flip", 1), ("dilate", 1),
           ("stack", 2), ("split", 2), ("concat", 2), ("one_hot", 1), ("logsoftmax", 1),
           ("norm", 1), ("grad", 1), ("repeat", 1))

    def build(self) -> str:
        r = self.rng.random()
        if r < 0.07:
            self.source_embedding()
        elif r < 0.12:
            self.source_conv()
        else:
            self.vars.append(self.new_input(self.shape()))
        names, weights = zip(*self.OPS)
        for _ in range(self.rng.randint(1, 12)):
            a = self.pick()
            while not getattr(self, f"op_{self.rng.choices(names, weights)[0]}")(a):
                pass
        last = self.vars[-1]
        outputs = [last.name]
        if self.backward:
            loss_deps = last.deps
            if len(last.shape) == 2 and all(last.shape) and self.rng.random() < 0.3:
                y = self.new_input(last.shape[:1], kind=f"ids:{last.shape[1]}")
                self.body.append(f"loss = nn.SoftmaxLoss()({last.name}, {y.name})")
            elif last.shape == ():
                self.body.append(f"loss = {last.name}")
            elif self.rng.random() < 0.3:
                self.body.append(f"loss = {last.name}.sum()")
            else:
                w = self.new_input(last.shape, kind="float", grad=False)
                self.body.append(f"loss = ndl.summation({last.name} * {w.name})")
            self.body.append("loss.backward()")
            outputs = ["loss"] + outputs + [f"{name}.grad" for name, _, _, grad in self.inputs
                                            if grad and name in loss_deps]
        elif self.rng.random() < 0.3:
            outputs.append(self.rng.choice(self.vars).name)
        return self.source(outputs)

    def source(self, outputs: list[str]) -> str:
        inputs = ", ".join(f"{n!r}: ({s!r}, {k!r}, {g})" for n, s, k, g in self.inputs)
        lines = [f"# needle.testing.fuzz program, seed {self.seed}", "import needle as ndl",
                 "import needle.nn as nn", "", f"INPUTS = {{{inputs}}}", *self.setup, "",
                 f"def program({', '.join(n for n, *_ in self.inputs)}):",
                 *(f"    {line}" for line in self.body), f"    return {', '.join(outputs)}", ""]
        return "\n".join(lines)


def generate(seed: int) -> str:
    """The source text of the random program of `seed` (deterministic)."""
    return _Generator(seed).build()


# ---- running and comparing ---------------------------------------------------------------

@dataclasses.dataclass
class Result:
    """The outcome of one program: its category (see CATEGORIES), a description, its source."""

    seed: int
    category: str
    detail: str = ""
    source: str = ""
    eager_error: str = ""  # the exception eager raised (the compiled one matched it)
    seconds: float = 0.0


def _draw(inputs: dict, rng: np.random.Generator) -> list[np.ndarray]:
    arrays = []
    for shape, kind, _ in inputs.values():
        if kind.startswith("ids:"):
            a = rng.integers(0, int(kind[4:]), size=shape).astype(np.float32)
        else:
            a = rng.standard_normal(shape).astype(np.float32)
            if kind == "nonfinite":
                mask = rng.random(shape) < 0.25
                a[mask] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=np.float32), size=shape)[mask]
        arrays.append(a)
    return arrays


def _perturb(a: np.ndarray, rng: np.random.Generator, absolute: bool = False) -> np.ndarray:
    """`a` moved by PERTURBATION relative to each element (and, if `absolute`, to max |a|)."""
    out = a * (1 + PERTURBATION * rng.uniform(-1, 1, a.shape))
    if absolute and a.size:
        finite = np.abs(a[np.isfinite(a)])
        out = out + PERTURBATION * (finite.max() if finite.size else 0.0) * rng.uniform(-1, 1, a.shape)
    return out.astype(np.float32)


@contextlib.contextmanager
def _rounding_noise(rng: np.random.Generator):
    """Eager ops (backward included) perturb their results: a model of compiled rounding."""
    from needle import autograd

    compute = autograd._compute

    def noisy(op, arrays, inputs):
        out = compute(op, arrays, inputs)
        if isinstance(out, tuple):
            return out
        a = np.asarray(out.numpy() if hasattr(out, "numpy") else out)
        if a.dtype != np.float32:
            return out
        return autograd.Tensor._array_from_numpy(_perturb(a, rng, absolute=True),
                                                 device=getattr(out, "device", None), dtype="float32")

    autograd._compute = noisy
    try:
        yield
    finally:
        autograd._compute = compute


#: relative distance under which two compared values are a tie that rounding may break
TIE = 1e-5


@contextlib.contextmanager
def _watching_ties(ties: list):
    """Eager comparisons of two different values within TIE of each other (v < log(exp(v)))
    append to `ties`: which side wins is decided by rounding, so compiled may differ there."""
    from needle import autograd

    compute = autograd._compute

    def watched(op, arrays, inputs):
        if type(op).__name__ == "Compare" and (len(arrays) == 1 or arrays[0] is not arrays[1]):
            a = np.asarray(arrays[0].numpy() if hasattr(arrays[0], "numpy") else arrays[0], np.float64)
            b = op.scalar if len(arrays) == 1 else arrays[1]
            b = np.asarray(b.numpy() if hasattr(b, "numpy") else b, np.float64)
            with np.errstate(all="ignore"):
                near = np.abs(a - b) <= TIE * np.maximum(np.abs(a), np.abs(b))
            if np.any(near & np.isfinite(a) & np.isfinite(b)):
                ties.append(op.cmp)
        return compute(op, arrays, inputs)

    autograd._compute = watched
    try:
        yield
    finally:
        autograd._compute = compute


class _Harness:
    """One exec'd program, its Parameters, and how to call it on numpy inputs."""

    def __init__(self, source: str, seed: int):
        import needle as ndl
        import needle.nn as nn

        self.ndl = ndl
        filename = f"<fuzz-{seed}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        np.random.seed(seed % 2**32)  # parameter initialisation
        self.ns: dict = {}
        exec(compile(source, filename, "exec"), self.ns)  # noqa: S102 (generated program)
        self.inputs: dict = self.ns["INPUTS"]
        self.params: list = []
        self.labels: list[str] = []
        for name, value in list(self.ns.items()):
            found = [value] if isinstance(value, nn.Parameter) else (
                value.parameters() if isinstance(value, nn.Module) else [])
            for i, p in enumerate(found):
                if all(p is not q for q in self.params):
                    self.params.append(p)
                    self.labels.append(name if isinstance(value, nn.Parameter) else f"{name}.parameters()[{i}]")

    def rebind(self, rng: np.random.Generator) -> None:
        """New values for the program's global Tensors (c0, ...) and floats (s0, ...)."""
        for name, value in self.ns.items():
            if re.fullmatch(r"c\d+", name):
                self.ns[name] = self.ndl.Tensor(rng.standard_normal(value.shape).astype(np.float32),
                                                dtype="float32", requires_grad=False)
            elif re.fullmatch(r"s\d+", name):
                self.ns[name] = float(rng.choice([0.5, 2.0, -1.5, 3.0]))

    def set_params(self, arrays: list[np.ndarray]) -> None:
        for p, a in zip(self.params, arrays):
            p.data = self.ndl.Tensor(a, dtype="float32", requires_grad=False)

    def call(self, fn: Callable, arrays: list[np.ndarray]) -> list[Optional[np.ndarray]]:
        """fn's outputs and then every Parameter's gradient (None where there is none)."""
        args = [self.ndl.Tensor(a, dtype="float32", requires_grad=grad)
                for a, (_, _, grad) in zip(arrays, self.inputs.values())]
        for p in self.params:
            p.grad = None
        out = fn(*args)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        grads = [p.grad for p in self.params]
        return [None if t is None else np.asarray(t.numpy()) for t in outs + grads]

    def label(self, i: int, n_outputs: int) -> str:
        return f"output {i}" if i < n_outputs else f"{self.labels[i - n_outputs]}.grad"


def _classes(a: np.ndarray) -> np.ndarray:
    """0 finite, 1 NaN, 2 +Inf, 3 -Inf."""
    return np.select([np.isnan(a), a == np.inf, a == -np.inf], [1, 2, 3], 0)


def _compare(label: str, expected, got, perturbed: list) -> Optional[str]:
    """Why `got` (compiled) is not `expected` (eager) within the perturbed runs' noise, or None."""
    if expected is None or got is None:
        return None if expected is None and got is None else (
            f"{label}: eager {'None' if expected is None else 'a tensor'}, "
            f"compiled {'None' if got is None else 'a tensor'}")
    if expected.shape != got.shape:
        return f"{label}: shape {got.shape}, eager {expected.shape}"
    e, g = expected.astype(np.float64), got.astype(np.float64)
    noise, unstable = np.zeros(e.shape), np.zeros(e.shape, dtype=bool)
    for p in perturbed:
        if p is None or p.shape != e.shape:
            continue
        p = p.astype(np.float64)
        unstable |= _classes(p) != _classes(e)
        both = np.isfinite(p) & np.isfinite(e)
        noise = np.maximum(noise, np.abs(np.where(both, p, 0) - np.where(both, e, 0)))
    names = {1: "NaN", 2: "+Inf", 3: "-Inf", 0: "finite"}
    differs = (_classes(e) != _classes(g)) & ~unstable
    if differs.any():
        idx = tuple(int(i) for i in np.argwhere(differs)[0])
        return (f"{label}: non-finite positions differ at {int(differs.sum())} of {e.size} elements, "
                f"first {idx}: eager {names[int(_classes(e[idx]))]} {e[idx]!r}, compiled {g[idx]!r}")
    finite = np.isfinite(e) & np.isfinite(g) & ~unstable
    scale = float(np.abs(e[finite]).max()) if finite.any() else 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(finite, np.abs(e - g), 0)
        tol = ATOL + RTOL * np.maximum(np.abs(e), np.abs(g)) + SCALE_TOL * scale + NOISE_FACTOR * noise
    bad = finite & (err > tol)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        return (f"{label}: {int(bad.sum())} of {e.size} elements differ, first {idx}: "
                f"eager {e[idx]!r}, compiled {g[idx]!r} (tolerance {tol[idx]:.3g})")
    return None


def _exception(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def run_source(source: str, seed: int = 0) -> Result:
    """Run one program eagerly and compiled (three calls) and classify the outcome."""
    start = time.perf_counter()
    h = _Harness(source, seed)
    result = Result(seed, "ok", source=source)
    rng, noise = (np.random.default_rng([seed % 2**32, k]) for k in (0, 1))  # data, perturbations
    params0 = [p.numpy() for p in h.params]
    param_sets = [params0, params0, [rng.standard_normal(a.shape).astype(np.float32) for a in params0]]
    compiled = h.ndl.compile(h.ns["program"])
    for call, params in enumerate(param_sets):
        arrays = _draw(h.inputs, rng)
        if call == 2:
            h.rebind(rng)
        h.set_params(params)
        ties: list = []
        try:
            with _watching_ties(ties):
                expected = h.call(h.ns["program"], arrays)
        except Exception as e:  # noqa: BLE001 (an invalid program: compiled must raise alike)
            try:
                h.call(compiled, arrays)
            except Exception as c:  # noqa: BLE001
                if not isinstance(c, type(e)):  # a subclass still meets the caller's `except`
                    result.category = "compiled-error"
                    result.detail = f"eager raised {_exception(e)}; compiled raised {_exception(c)}"
                else:
                    result.eager_error = _exception(e)
            else:
                result.category, result.detail = "mismatch", f"eager raised {_exception(e)}; compiled returned"
            break
        perturbed = []
        for _ in range(PERTURBED_RUNS):
            h.set_params([_perturb(a, noise) for a in params])
            try:
                with _rounding_noise(noise):
                    perturbed.append(h.call(h.ns["program"], [a if k.startswith("ids:") else _perturb(a, noise)
                                                              for a, (_, k, _) in zip(arrays, h.inputs.values())]))
            except Exception:  # noqa: BLE001 (no noise estimate from this run)
                pass
        h.set_params(params)
        try:
            got = h.call(compiled, arrays)
        except Exception:  # noqa: BLE001
            result.category, result.detail = "compiled-error", traceback.format_exc(limit=-4)
            break
        n_out = len(expected) - len(h.params)
        if len(got) != len(expected):
            result.category, result.detail = "mismatch", f"compiled returned {len(got)} values, eager {len(expected)}"
            break
        for i, (e, g) in enumerate(zip(expected, got)):
            why = _compare(h.label(i, n_out), e, g, [p[i] for p in perturbed if len(p) == len(expected)])
            if why:
                result.category, result.detail = "mismatch", f"call {call + 1}: {why}"
                if ties:  # rounding decided a comparison: not a finding
                    result.category, result.detail = "ok", f"near tie at a comparison ({ties[0]}): {why}"
                break
        if result.category != "ok":
            break
    result.seconds = time.perf_counter() - start
    return result


def run_seed(seed: int) -> Result:
    """Generate and run the program of `seed`; an exception of the harness itself is a finding."""
    source = generate(seed)
    try:
        return run_source(source, seed)
    except Exception:  # noqa: BLE001
        return Result(seed, "compiled-error", "harness: " + traceback.format_exc(limit=-3), source)


def failure_class(result: Result) -> str:
    """The category and the message's last line with numbers and names abstracted away."""
    lines = [line for line in result.detail.strip().splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    text = re.sub(r" ?\[input shapes [^]]*\]| ?\(at <fuzz-\d+>:\d+\)", "", text)
    text = re.sub(r"<fuzz-\d+>:\d+", "<line>", text)
    text = re.sub(r"\b[vxpmecs]\d+\b", "<var>", text)
    text = re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "N", text)
    return f"{result.category}: {text[:160]}"


def _drop_unused_inputs(lines: list[str]) -> list[str]:
    """Remove inputs and setup values no line uses any more (from INPUTS and the signature)."""
    text = "\n".join(line for line in lines if not line.startswith(("INPUTS", "def program")))
    used = set(re.findall(r"\b[a-z]\d+\b", text))
    out = []
    for line in lines:
        if line.startswith("INPUTS = "):
            kept = {k: v for k, v in eval(line[9:]).items() if k in used}  # noqa: S307 (our own text)
            line = "INPUTS = {" + ", ".join(f"{k!r}: {v!r}" for k, v in kept.items()) + "}"
        elif line.startswith("def program("):
            args = [a for a in line[12:-2].split(", ") if a in used]
            line = f"def program({', '.join(args)}):"
        out.append(line)
    return out


def minimize(source: str, seed: int = 0, log: Optional[Callable[[str], None]] = None) -> str:
    """A smaller program failing like `source` does: lines and returned values dropped greedily."""
    target = failure_class(run_source(source, seed))
    lines = source.splitlines()

    def candidates(lines):
        for i, line in enumerate(lines):
            if re.match(r"(    )?[vpmecs]\d+ = ", line):
                yield lines[:i] + lines[i + 1:]
            elif line.startswith("    return ") and "," in line:
                values = line[11:].split(", ")
                for j in range(len(values)):
                    yield lines[:i] + ["    return " + ", ".join(values[:j] + values[j + 1:])] + lines[i + 1:]

    progress = True
    while progress:
        progress = False
        for cand in candidates(lines):
            cand = _drop_unused_inputs(cand)
            try:
                same = failure_class(run_source("\n".join(cand), seed)) == target
            except Exception:  # noqa: BLE001 (the candidate broke the harness: not the same failure)
                same = False
            if same:
                lines, progress = cand, True
                if log:
                    log(f"minimize: {len(lines)} lines")
                break
    return "\n".join(lines)


# ---- the worker pool -----------------------------------------------------------------------

def _worker(conn) -> None:
    import needle

    needle.set_num_threads(1)
    np.seterr(all="ignore")  # NaN and Inf are what the programs are about
    while True:
        seed = conn.recv()
        if seed is None:
            return
        conn.send(dataclasses.asdict(run_seed(seed)))


def fuzz(seeds: Iterable[int], jobs: int = 2, timeout: float = 60.0, executor: Optional[str] = None,
         on_result: Optional[Callable[[Result], None]] = None) -> list[Result]:
    """Run the programs of `seeds` in `jobs` worker processes; results in seed order.

    Each worker runs programs one at a time; one that dies (a crash) or runs past `timeout`
    seconds is replaced and its program reported. Workers use a fresh NEEDLE_CACHE_DIR,
    the IR verifier (NEEDLE_VERIFY=1), one thread, and NEEDLE_EXECUTOR=`executor` when given.
    """
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    cache = tempfile.TemporaryDirectory(prefix="needle-fuzz-cache-")
    env = {"NEEDLE_CACHE_DIR": cache.name, "NEEDLE_VERIFY": "1", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1"}
    if executor:
        env["NEEDLE_EXECUTOR"] = executor
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # spawned workers inherit the environment at start
    pending = list(seeds)[::-1]
    results: dict[int, Result] = {}
    busy: dict = {}  # connection -> (process, seed, deadline)
    idle: list = []

    def start():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child,), daemon=True)
        proc.start()
        child.close()
        idle.append((parent, proc))

    def finish(result: Result) -> None:
        results[result.seed] = result
        if on_result:
            on_result(result)

    try:
        for _ in range(max(1, min(jobs, len(pending)))):
            start()
        while pending or busy:
            while idle and pending:
                conn, proc = idle.pop()
                seed = pending.pop()
                conn.send(seed)
                busy[conn] = (proc, seed, time.monotonic() + timeout)
            ready = wait(list(busy), timeout=max(0.0, min(d for _, _, d in busy.values()) - time.monotonic()))
            for conn in ready:
                proc, seed, _ = busy.pop(conn)
                try:
                    finish(Result(**conn.recv()))
                    idle.append((conn, proc))
                except (EOFError, OSError):
                    proc.join(5)
                    finish(Result(seed, "crash", f"worker died (exit code {proc.exitcode})", generate(seed)))
                    start()
            for conn, (proc, seed, deadline) in list(busy.items()):
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.join()
                    del busy[conn]
                    finish(Result(seed, "timeout", f"no result after {timeout:g} s", generate(seed)))
                    start()
        for conn, _ in idle:
            conn.send(None)
        for _, proc in idle:
            proc.join(10)
    finally:
        for conn, (proc, _, _) in busy.items():
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        cache.cleanup()
    return [results[s] for s in sorted(results)]
