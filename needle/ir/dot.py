"""Graphviz DOT export of a graph: one box per value (op and type), an edge per input.

Graph inputs are green ellipses (their name and role shown), constants grey, `grad`
requests orange, and each returned value gets a bold border plus an edge to a `return`
node. Render with `dot -Tsvg graph.dot -o graph.svg`.
"""
from __future__ import annotations

from .graph import Graph, Node
from .printer import format_attrs, format_type

__all__ = ["to_dot"]

_MAX_ATTR_CHARS = 60


def to_dot(graph: Graph, locs: bool = True) -> str:
    """The graph as DOT text (`digraph`); `locs` adds each node's source location."""
    outputs = set(graph.outputs)
    lines = [f"digraph {_quote(graph.name)} {{",
             "  rankdir=TB;",
             '  node [shape=box, fontname="monospace", fontsize=10];',
             '  edge [fontname="monospace", fontsize=8];']
    for node in graph.nodes:
        style = _style(node)
        if node.id in outputs:
            style += ", penwidth=2"
        lines.append(f"  n{node.id} [label={_quote(_label(node, locs))}{style}];")
    for node in graph.nodes:
        for k, i in enumerate(node.inputs):
            label = f' [label="{k}"]' if len(node.inputs) > 1 else ""
            lines.append(f"  n{i} -> n{node.id}{label};")
    if graph.outputs:
        lines.append('  ret [label="return", shape=doubleoctagon, style=filled, fillcolor="#dddddd"];')
        for k, i in enumerate(graph.outputs):
            lines.append(f'  n{i} -> ret [label="{k}", style=dashed];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _label(node: Node, locs: bool) -> str:
    head = f"%{node.id} = {node.op}"
    if node.op == "input":
        head += f" {node.attr('name')} ({node.attr('role')})"
    elif node.attrs:
        attrs = format_attrs(node.attrs)
        if len(attrs) > _MAX_ATTR_CHARS:
            attrs = attrs[:_MAX_ATTR_CHARS - 4] + " ...}"
        head += " " + attrs
    label = head + "\n" + format_type(node.type)
    if locs and node.loc is not None:
        label += f"\n{node.loc}"
    return label


def _style(node: Node) -> str:
    if node.op == "input":
        return ', shape=ellipse, style=filled, fillcolor="#c8e6c9"'
    if node.op == "const":
        return ', style=filled, fillcolor="#eeeeee"'
    if node.op == "grad":
        return ', style=filled, fillcolor="#ffcc80"'
    return ""


def _quote(s: str) -> str:
    """A DOT double-quoted string (newlines become centered line breaks)."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
