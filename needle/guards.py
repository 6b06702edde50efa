"""What a compiled graph assumed about the Python world when it was traced.

A compiled function reuses a traced graph for a call only when

1. the call's **signature** (`signature`) is the one it was traced with: every argument,
   positional or keyword, by value. Tensors by shape, dtype, device, `requires_grad` and
   which arguments are the same tensor; `bool`, `int` and `float` by type and value (`True`,
   `1` and `1.0` differ, so do `0.0` and `-0.0`); strings, bytes, None, and tuples, lists,
   dicts and numpy arrays of them by content; modules and other objects by identity;
2. and its **guards** (`Guard`) hold: each global and closure variable that the function
   (or a plain function it names) refers to, and each instance attribute of a reachable
   object read while tracing, still has the value it had after the trace, by the same rules.
   A Tensor found there is checked by shape, dtype and device only: its data is a graph input
   read at every call.

`freeze` is the one rule that turns a Python value into the comparable key of both.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import itertools
import operator
import sys
import threading
import types
from typing import Any, Callable, Iterator, Optional

import numpy as np

from .autograd import Tensor

_ATOMS = (bool, int, str, bytes, complex, type(None))


def tensor_key(t: Tensor) -> tuple:
    return ("Tensor", tuple(t.shape), str(t.dtype), str(t.device), bool(t.requires_grad))


def freeze(value: Any, inner: bool = False) -> Any:
    """A hashable key equal for two values exactly when a trace would treat them alike.
    Tensors inside containers (`inner`) count only as Tensors (their slots are graph inputs)."""
    kind = type(value)
    if kind in _ATOMS:
        return (kind.__name__, value)
    if kind is float:
        return ("float", value.hex())
    if isinstance(value, Tensor):
        return ("Tensor",) if inner else tensor_key(value)
    if kind in (list, tuple):
        return (kind.__name__,) + tuple(freeze(v, True) for v in value)
    if kind is dict:
        return ("dict",) + tuple((freeze(k, True), freeze(v, True)) for k, v in value.items())
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value).view(np.uint8)
        return ("ndarray", value.dtype.str, value.shape, hashlib.sha256(data).digest())
    if isinstance(value, np.generic):
        return ("numpy", value.dtype.str, value.tobytes())
    return ("object", id(value))


def _same_items(a, b) -> bool:
    """Containers holding the very same objects (the cheap test before `freeze`)."""
    if type(a) is not type(b) or len(a) != len(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(map(operator.is_, a.values(), b.values()))
    return all(map(operator.is_, a, b))


class Guard:
    """One assumption: `read()` returns a value that freezes to `frozen`. `label` names it
    for recompile messages (`global SCALE`, `model.modules[0].scale`)."""

    __slots__ = ("label", "read", "value", "frozen", "kind", "source")

    def __init__(self, label: str, read: Callable[[], Any], source: Optional[tuple] = None):
        self.label = label
        self.read = read
        self.source = source  # (dict, key) when read() is dict[key]: checked in bulk
        self.value = read()
        self.frozen = freeze(self.value)
        self.kind = ("tensor" if isinstance(self.value, Tensor) else
                     "container" if type(self.value) in (list, tuple, dict) else
                     "array" if isinstance(self.value, np.ndarray) else "plain")

    def current(self) -> Any:
        try:
            return self.read()
        except (AttributeError, KeyError, ValueError, IndexError):  # deleted (ValueError: an empty cell)
            return _MISSING

    def holds(self) -> bool:
        now = self.current()
        if now is self.value and self.kind in ("plain", "tensor"):
            return True
        if self.kind == "tensor":  # another tensor here: the trace bound the old one elsewhere
            return False
        if self.kind == "container" and _same_items(now, self.value):
            return True
        if freeze(now) != self.frozen:
            return False
        if self.kind in ("plain", "container"):
            self.value = now if self.kind == "plain" else type(now)(now)
        return True

    def describe_change(self) -> str:
        now = self.current()
        if self.kind == "tensor" and isinstance(now, Tensor):
            return f"{self.label}: replaced by another {_show(now)}"
        return f"{self.label}: {_show(self.value)} → {_show(now)}"


class _Missing:
    def __repr__(self) -> str:
        return "<deleted>"


_MISSING = _Missing()


def _show(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"Tensor{tuple(value.shape)} {value.dtype}"
    if isinstance(value, np.ndarray):
        return f"ndarray{value.shape} {value.dtype} (content {hashlib.sha256(np.ascontiguousarray(value)).hexdigest()[:8]})"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- the signature of a call --------------------------------------------------------------
def parameter_names(fn: Callable, n_positional: int) -> list[str]:
    """Names of the first n positional parameters of fn (`arg3` past its signature)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    params = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    star = next((p.name for p in parameters if p.kind == p.VAR_POSITIONAL), None)
    return [params[i] if i < len(params) else (f"{star}[{i - len(params)}]" if star else f"arg{i}")
            for i in range(n_positional)]


def signature(args: tuple, kwargs: dict) -> tuple:
    """The cache key of a call's arguments: ((name-free) positional keys, sorted keyword keys).
    A tensor passed twice is keyed by the position of its first occurrence."""
    first: dict[int, int] = {}

    def one(i: int, a: Any):
        if isinstance(a, Tensor):
            j = first.setdefault(id(a), i)
            return tensor_key(a) if j == i else ("same as", j)
        return freeze(a)

    named = sorted(kwargs.items())
    return (tuple(one(i, a) for i, a in enumerate(args)),
            tuple((k, one(len(args) + i, v)) for i, (k, v) in enumerate(named)))


def describe_signature_change(old: tuple, new: tuple, names: list[str]) -> list[str]:
    """Readable differences between two signatures: "argument `x`, dim 0: 3 → 5"."""
    out = []
    old_pos, new_pos = old[0], new[0]
    if len(old_pos) != len(new_pos):
        out.append(f"number of positional arguments: {len(old_pos)} → {len(new_pos)}")
    for i, (a, b) in enumerate(zip(old_pos, new_pos)):
        out += _describe_value(f"argument `{names[i] if i < len(names) else f'arg{i}'}`", a, b)
    old_kw, new_kw = dict(old[1]), dict(new[1])
    for k in sorted(set(old_kw) | set(new_kw)):
        if k not in old_kw or k not in new_kw:
            out.append(f"keyword argument `{k}`: {'added' if k not in old_kw else 'removed'}")
        else:
            out += _describe_value(f"keyword argument `{k}`", old_kw[k], new_kw[k])
    return out


def _describe_value(label: str, a: Any, b: Any) -> list[str]:
    if a == b:
        return []
    if a[0] == b[0] == "Tensor":
        fields = []
        if len(a[1]) != len(b[1]):
            fields.append(f"{label}, shape: {a[1]} → {b[1]}")
        else:
            fields += [f"{label}, dim {d}: {x} → {y}" for d, (x, y) in enumerate(zip(a[1], b[1])) if x != y]
        fields += [f"{label}, {name}: {x} → {y}" for name, x, y in
                   zip(("dtype", "device", "requires_grad"), a[2:], b[2:]) if x != y]
        return fields
    return [f"{label}: {show_key(a)} → {show_key(b)}"]


def show_key(key: tuple) -> str:
    """A signature key as text: `float32[3,4]`, `2.0`, `True`."""
    kind = key[0]
    if kind == "float":
        return repr(float.fromhex(key[1]))
    if kind in ("bool", "int", "str", "bytes", "complex", "NoneType"):
        return repr(key[1])
    if kind == "Tensor":
        return f"{key[2]}[{','.join(map(str, key[1]))}]"
    if kind == "same as":
        return f"the same tensor as argument {key[1]}"
    if kind == "object":
        return "another object"
    return f"another {kind}"


# ---- what a traced function can reach -----------------------------------------------------
def _is_user_function(fn: Any) -> bool:
    """A plain Python function of the user's (not needle's, a library's or the standard library's)."""
    if not isinstance(fn, types.FunctionType):
        return False
    module = (getattr(fn, "__module__", None) or "").split(".")[0]
    path = fn.__code__.co_filename
    return module not in ("needle", "numpy") and "site-packages" not in path and not path.startswith(
        (sys.base_prefix, sys.prefix))


def name_guards(fn: Callable, max_depth: int = 4) -> list[tuple[str, Guard, Any, Any]]:
    """(label, guard, holder, key) for each global and closure variable that fn (or a user
    function it names, transitively) refers to; holder[key] (a dict entry or a cell's
    `cell_contents`) reads it."""
    out: list = []
    seen_fns: set = set()

    def visit(f, depth):
        f = getattr(f, "__func__", f)  # bound methods: their function
        if depth > max_depth or id(f) in seen_fns or not isinstance(f, types.FunctionType):
            return
        seen_fns.add(id(f))
        code = f.__code__
        for name, cell in zip(code.co_freevars, f.__closure__ or ()):
            out.append((f"closure variable `{name}`", Guard(f"closure variable `{name}`", _cell_reader(cell)),
                        cell, "cell_contents"))
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            if _is_user_function(value):
                visit(value, depth + 1)
        fn_globals = f.__globals__
        for name in _global_names(code):
            if name in fn_globals:
                out.append((f"global `{name}`", _dict_guard(f"global `{name}`", fn_globals, name),
                            fn_globals, name))
                if _is_user_function(fn_globals[name]):
                    visit(fn_globals[name], depth + 1)

    visit(fn, 0)
    unique: dict = {}
    for item in out:  # a name reached twice (two functions of one module) is guarded once
        unique.setdefault((id(item[2]), item[3]), item)
    return list(unique.values())


def _global_names(code: types.CodeType) -> list[str]:
    """co_names of a code object and its nested code (comprehensions, lambdas)."""
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += _global_names(const)
    return list(dict.fromkeys(names))


def _cell_reader(cell) -> Callable[[], Any]:
    return lambda: cell.cell_contents


def _dict_guard(label: str, d: dict, key: Any) -> Guard:
    return Guard(label, lambda: d[key], (d, key))


def attribute_guard(label: str, obj: Any, name: str) -> Guard:
    return _dict_guard(label, obj.__dict__, name)


# ---- recording attribute reads while tracing ----------------------------------------------
def _instance_dict(obj: Any) -> dict:
    """obj's instance attributes; empty for objects without a readable one (__slots__ classes,
    protobuf messages)."""
    try:
        return object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return {}


@contextlib.contextmanager
def recording_reads(objects: list) -> Iterator[dict]:
    """While active, record the instance attributes of `objects` read by the calling thread:
    {(id(obj), name): (obj, name)}. It hooks `__getattribute__` of their classes for the
    duration (classes that cannot be hooked are left alone; their reads go unrecorded)."""
    reads: dict = {}
    watched = {id(o) for o in objects}
    thread = threading.get_ident()
    hooked = []
    for cls in {type(o) for o in objects}:
        own = cls.__dict__.get("__getattribute__")
        inner = cls.__getattribute__

        def hook(self, name, _inner=inner):
            value = _inner(self, name)
            if (id(self) in watched and name[:2] != "__" and threading.get_ident() == thread
                    and name in _instance_dict(self)):
                reads.setdefault((id(self), name), (self, name))
            return value

        try:
            cls.__getattribute__ = hook
        except TypeError:  # a built-in or extension type
            continue
        hooked.append((cls, own))
    try:
        yield reads
    finally:
        for cls, own in hooked:
            if own is None:
                del cls.__getattribute__
            else:
                cls.__getattribute__ = own


class GuardSet:
    """The guards of one compiled graph. `failing()` first compares, in bulk, the values
    read from dicts (globals, instance attributes) with the objects seen last time; only
    when one differs, or for the other guards, are the guards checked one by one."""

    def __init__(self, guards: list[Guard]):
        self.guards = guards
        self._bulk = [g for g in guards if g.source is not None and g.kind in ("plain", "tensor")]
        self._rest = [g for g in guards if g not in self._bulk]
        self._dicts = [g.source[0] for g in self._bulk]
        self._keys = [g.source[1] for g in self._bulk]
        self._values = [g.value for g in self._bulk]

    def failing(self) -> Optional[Guard]:
        """The first guard that fails, or None."""
        now = map(dict.get, self._dicts, self._keys, itertools.repeat(_MISSING))
        same = all(map(operator.is_, now, self._values))
        for g in self._rest if same else self.guards:
            if not g.holds():
                return g
        if not same:  # equal values in new objects: compare those in bulk from now on
            self._values = [g.value for g in self._bulk]
        return None
