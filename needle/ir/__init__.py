"""needle's graph IR: types, graph, text format, verifier, DOT export."""
from .graph import (  # noqa: F401
    DTYPE_LONG, GRAPH_OPS, ROLES, Graph, Node, SourceLoc, TensorType, ValueType, make_attrs,
)
from .printer import format_node, format_type, format_value, print_graph  # noqa: F401
from .parser import IRParseError, parse_graph, parse_graphs, parse_type, parse_value  # noqa: F401
from .verifier import INVARIANTS, IRVerifyError, check_invariants, verify  # noqa: F401
from .dot import to_dot  # noqa: F401
