"""The op table: every registered op class by name. `needle.ops` fills it (each `Op` subclass
registers itself when it is defined); the IR reads it to rebuild and check nodes (the
verifier, the parser's callers) without importing the ops."""
from __future__ import annotations

from typing import Any

#: every op class by name
OPS: dict[str, type] = {}


def op_from_node(name: str, attrs: dict[str, Any]):
    """The registered op named `name`, rebuilt from its IR attributes (`Op.from_attrs`)."""
    if name not in OPS:
        raise KeyError(f"unknown op {name!r}; registered ops: {', '.join(sorted(OPS))}")
    return OPS[name].from_attrs(attrs)
