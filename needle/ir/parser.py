"""Parse the IR's text format (see `printer` and docs/ir.md) back into a `Graph`.

`parse_graph(text)` reads one graph; `parse_graphs(text)` reads any number. Blank lines
and lines starting with `#` are ignored. Errors are `IRParseError`s that name the line
number and what was expected there.
"""
from __future__ import annotations

import ast
import re
from typing import Any, Optional

from .graph import DTYPE_LONG, Graph, Node, SourceLoc, TensorType, ValueType

__all__ = ["IRParseError", "parse_graph", "parse_graphs", "parse_value", "parse_type"]


class IRParseError(ValueError):
    """Malformed IR text; `.line` is the 1-based line number (None when unknown)."""

    def __init__(self, message: str, line: Optional[int] = None, text: Optional[str] = None):
        self.line = line
        self.text = text
        where = f"line {line}: " if line is not None else ""
        snippet = f"\n    {text.strip()}" if text is not None else ""
        super().__init__(f"{where}{message}{snippet}")


_HEADER = re.compile(r"^graph\s+@(.*?)\s*\{$")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[-+]?(?:inf\b|nan\b|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'')
_VALUE_ID = re.compile(r"%(\d+)")
_DTYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEVICE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:]*")


class _Cursor:
    """A position in one line of text, with helpers that raise IRParseError."""

    def __init__(self, text: str, line: Optional[int]):
        self.text, self.pos, self.line = text, 0, line

    def error(self, expected: str) -> IRParseError:
        rest = self.text[self.pos:].strip()
        got = repr(rest[:20]) if rest else "end of line"
        return IRParseError(f"expected {expected} at column {self.pos + 1}, got {got}", self.line, self.text)

    def skip_ws(self):
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self, s: str) -> bool:
        self.skip_ws()
        return self.text.startswith(s, self.pos)

    def accept(self, s: str) -> bool:
        if self.peek(s):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: str, what: Optional[str] = None):
        if not self.accept(s):
            raise self.error(what or f"'{s}'")

    def match(self, pattern: re.Pattern, what: str) -> re.Match:
        self.skip_ws()
        m = pattern.match(self.text, self.pos)
        if not m:
            raise self.error(what)
        self.pos = m.end()
        return m

    def at_end(self) -> bool:
        self.skip_ws()
        return self.pos >= len(self.text)


# ---- values ------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """An attribute literal (`1`, `-2.5e-07`, `inf`, `"s"`, `None`, `(1, (2, 3))`)."""
    cur = _Cursor(text, None)
    value = _value(cur)
    if not cur.at_end():
        raise cur.error("end of value")
    return value


def _value(cur: _Cursor) -> Any:
    cur.skip_ws()
    if cur.accept("("):
        items = []
        if cur.accept(")"):
            return ()
        while True:
            items.append(_value(cur))
            if cur.accept(")"):
                return tuple(items)
            cur.expect(",", "',' or ')' in a tuple")
            if cur.accept(")"):
                return tuple(items)
    if cur.peek('"') or cur.peek("'"):
        m = cur.match(_STRING, "a string literal")
        return ast.literal_eval(m.group(0))
    m = _NUMBER.match(cur.text, cur.pos)
    if m:
        cur.pos = m.end()
        token = m.group(0)
        if re.fullmatch(r"[-+]?\d+", token):
            return int(token)
        return float(token)
    m = _IDENT.match(cur.text, cur.pos)
    if m and m.group(0) in ("None", "True", "False"):
        cur.pos = m.end()
        return {"None": None, "True": True, "False": False}[m.group(0)]
    raise cur.error("a value (number, string, True/False/None or tuple)")


# ---- types -------------------------------------------------------------------------------
def parse_type(text: str) -> ValueType:
    """A value type: `f32[2,3] cpu`, `f32[] cpu`, or a tuple `(f32[2] cpu, i64[] cpu)`."""
    cur = _Cursor(text, None)
    t = _type(cur)
    if not cur.at_end():
        raise cur.error("end of type")
    return t


def _type(cur: _Cursor) -> ValueType:
    if cur.accept("("):
        items = []
        if cur.accept(")"):
            return ()
        while True:
            items.append(_type(cur))
            if cur.accept(")"):
                return tuple(items)
            cur.expect(",", "',' or ')' in a tuple type")
            if cur.accept(")"):
                return tuple(items)
    dtype = cur.match(_DTYPE, "a type such as f32[2,3] cpu").group(0)
    cur.expect("[", "'[' after the dtype")
    dims = []
    if not cur.accept("]"):
        while True:
            m = cur.match(re.compile(r"\d+"), "a dimension (non-negative int)")
            dims.append(int(m.group(0)))
            if cur.accept("]"):
                break
            cur.expect(",", "',' or ']' in a shape")
    if cur.pos < len(cur.text) and cur.text[cur.pos] not in " \t":
        raise cur.error("a space and a device name after the shape")
    device = cur.match(_DEVICE, "a device name (cpu, cuda, ...) after the shape").group(0)
    return TensorType(tuple(dims), DTYPE_LONG.get(dtype, dtype), device)


# ---- nodes and graphs --------------------------------------------------------------------
def _node(text: str, lineno: int) -> Node:
    cur = _Cursor(text, lineno)
    node_id = int(cur.match(_VALUE_ID, "a node '%<id> = ...' or 'return'").group(1))
    cur.expect("=", "'=' after the node id")
    op = cur.match(_IDENT, "an op name").group(0)
    cur.expect("(", "'(' after the op name")
    inputs = []
    if not cur.accept(")"):
        while True:
            inputs.append(int(cur.match(_VALUE_ID, "an input '%<id>'").group(1)))
            if cur.accept(")"):
                break
            cur.expect(",", "',' or ')' after an input")
    attrs: dict[str, Any] = {}
    if cur.accept("{"):
        if not cur.accept("}"):
            while True:
                name = cur.match(_IDENT, "an attribute name").group(0)
                if name in attrs:
                    raise IRParseError(f"attribute {name!r} given twice", lineno, text)
                cur.expect("=", f"'=' after attribute {name!r}")
                attrs[name] = _value(cur)
                if cur.accept("}"):
                    break
                cur.expect(",", "',' or '}' after an attribute")
    cur.expect(":", "':' and the node's type")
    vtype = _type(cur)
    loc = None
    if not cur.at_end():
        cur.expect("#", "end of line or '# file:line'")
        rest = cur.text[cur.pos:].strip()
        file, sep, line = rest.rpartition(":")
        if not sep or not file or not line.isdigit():
            raise IRParseError(f"expected a source location 'file:line' after '#', got {rest!r}", lineno, text)
        loc = SourceLoc(file, int(line))
    return Node(node_id, op, tuple(inputs), tuple(sorted(attrs.items())), vtype, loc)


def _outputs(text: str, lineno: int) -> tuple[int, ...]:
    cur = _Cursor(text, lineno)
    cur.expect("return")
    outs = []
    if cur.at_end():
        return ()
    while True:
        outs.append(int(cur.match(_VALUE_ID, "an output '%<id>'").group(1)))
        if cur.at_end():
            return tuple(outs)
        cur.expect(",", "',' or end of line after an output")


def parse_graphs(text: str) -> list[Graph]:
    """Every graph in `text`, in order."""
    graphs: list[Graph] = []
    state = "top"  # top -> body -> after_return -> top
    name, nodes, outputs, header_line = "", [], (), 0
    lineno = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if state == "top":
            m = _HEADER.match(line)
            if not m:
                raise IRParseError("expected 'graph @<name> {'", lineno, raw)
            name, nodes, outputs, header_line, state = m.group(1), [], (), lineno, "body"
        elif state == "body":
            if line.startswith("return") and (len(line) == 6 or line[6] in " \t%"):
                outputs, state = _outputs(raw.rstrip(), lineno), "after_return"
            elif line == "}":
                raise IRParseError("expected 'return ...' before '}'", lineno, raw)
            else:
                nodes.append(_node(raw.rstrip(), lineno))
        else:  # after_return
            if line != "}":
                raise IRParseError("expected '}' after the return line", lineno, raw)
            graphs.append(Graph(name, tuple(nodes), outputs))
            state = "top"
    if state != "top":
        raise IRParseError(f"unexpected end of text: graph @{name} (line {header_line}) is missing "
                           + ("'return ...' and '}'" if state == "body" else "'}'"), lineno + 1)
    return graphs


def parse_graph(text: str) -> Graph:
    """The single graph in `text` (node ids kept as written)."""
    graphs = parse_graphs(text)
    if len(graphs) != 1:
        raise IRParseError(f"expected exactly one graph, found {len(graphs)}")
    return graphs[0]
