"""needle's graph IR: types, graph, text format, verifier, DOT export."""
from .graph import (  # noqa: F401
    DTYPE_LONG, GRAPH_OPS, ROLES, Graph, Node, SourceLoc, TensorType, ValueType, make_attrs,
)
