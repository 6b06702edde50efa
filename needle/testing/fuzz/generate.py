"""Random programs over needle's public API, as Python source (deterministic per seed)."""
from __future__ import annotations

import dataclasses
import itertools
import random
from math import prod
from typing import Optional

import numpy as np

Shape = tuple[int, ...]

MAX_ELEMENTS = 128
SCALARS = (0.5, 2.0, 3.0, -1.5, 1.0, 0.0)
POWERS = (2, 3, -1, 0.5, -0.5, 1, 0, 2.0, -2, 1.5)


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
