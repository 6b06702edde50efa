"""The IR's text format: `print_graph(graph)` writes it, `parser.parse_graph` reads it back.

    graph @train_step {
      %0 = input() {name="x", role="arg"} : f32[100,784] cpu
      %1 = input() {name="w", role="param"} : f32[784,100] cpu
      %2 = MatMul(%0, %1) : f32[100,100] cpu  # train.py:12
      %3 = Split(%2) {axis=0} : (f32[100] cpu, f32[100] cpu)
      return %2, %3
    }

Attribute values are Python-style literals (ints, floats written with `repr`, so they
round-trip exactly, plus `inf`, `-inf`, `nan`; double-quoted strings; `True`, `False`,
`None`; tuples). Print -> parse -> print is the identity. See docs/ir.md.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .types import _DTYPE_SHORT, TensorType, ValueType

if TYPE_CHECKING:
    from .graph import Graph, Node

__all__ = ["print_graph", "format_node", "format_type", "format_value", "format_attrs"]


def print_graph(graph: Graph, locs: bool = True) -> str:
    """The graph as text (ends with a newline); `locs=False` leaves out source locations."""
    lines = [f"graph @{graph.name} {{"]
    lines += ["  " + format_node(n, locs) for n in graph.nodes]
    lines.append("  return" + ("" if not graph.outputs else " " + ", ".join(f"%{i}" for i in graph.outputs)))
    lines.append("}")
    return "\n".join(lines) + "\n"


def format_node(node: Node, loc: bool = True) -> str:
    """One node line, without indentation: `%id = Op(%a, %b) {k=v} : type  # file:line`."""
    text = f"%{node.id} = {node.op}({', '.join(f'%{i}' for i in node.inputs)})"
    if node.attrs:
        text += " " + format_attrs(node.attrs)
    text += " : " + format_type(node.type)
    if loc and node.loc is not None:
        text += f"  # {node.loc.file}:{node.loc.line}"
    return text


def format_attrs(attrs) -> str:
    """`{name=value, ...}` from (name, value) pairs, in the order given."""
    return "{" + ", ".join(f"{k}={format_value(v)}" for k, v in attrs) + "}"


def format_type(t: ValueType) -> str:
    """`f32[2,3] cpu`, `f32[] cpu` for a scalar, `(t1, t2)` for a tuple type."""
    if isinstance(t, tuple):
        return "(" + ", ".join(format_type(x) for x in t) + ")"
    if not isinstance(t, TensorType):
        raise TypeError(f"cannot print IR type {t!r} (expected a TensorType or a tuple of them)")
    dims = ",".join(str(int(d)) for d in t.shape)
    return f"{_DTYPE_SHORT.get(t.dtype, t.dtype)}[{dims}] {t.device}"


def format_value(value: Any) -> str:
    """An attribute value as an IR literal (parsed back by `parser.parse_value`)."""
    if value is None or value is True or value is False:
        return str(value)
    if isinstance(value, bool):  # numpy bool and friends
        return str(bool(value))
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(float(value))
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, (tuple, list)):
        items = [format_value(v) for v in value]
        if len(items) == 1:
            return f"({items[0]},)"
        return "(" + ", ".join(items) + ")"
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalar
        return format_value(value.item())
    if hasattr(value, "tolist"):  # a numpy array (a const's value)
        return format_value(value.tolist())
    raise TypeError(f"attribute value {value!r} of type {type(value).__name__} has no IR literal "
                    "(use ints, floats, strings, bools, None or tuples of them)")


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _quote(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'
