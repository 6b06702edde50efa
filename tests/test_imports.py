"""needle's module structure, from the AST (module-level and function-level imports alike;
`if TYPE_CHECKING:` blocks excluded): no import cycle anywhere, and the graph IR depends on
nothing but `needle.errors`.

The eager core is layered: the tracer (`needle.trace.tracer`) below the ops, the ops below
autograd and backprop, `needle.init` above them. Ops and the tracer make Tensors through
`needle.value_types` (bound by autograd), and VJPs use Tensor methods or op families below
their own.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "needle"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (not imported at run time)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def import_graph() -> nx.DiGraph:
    """Edges module -> each needle module it imports (a submodule import counts for the
    packages it passes through, except the importer's own ancestors)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        skip = _type_checking_only(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                for k in range(1, len(parts) + 1):
                    dep = ".".join(parts[:k])
                    if dep in modules and dep != name and not name.startswith(dep + "."):
                        graph.add_edge(name, dep)
    return graph


def test_no_import_cycles():
    cycles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_tracer_and_the_ops_do_not_import_autograd_or_init():
    graph = import_graph()
    below = [m for m in graph if m == "needle.trace.tracer" or m.startswith("needle.ops")]
    for module in below:
        reached = nx.descendants(graph, module)
        assert not reached & {"needle.autograd", "needle.init", "needle.backprop"}, module


def test_ir_depends_only_on_errors():
    graph = import_graph()
    outside = {(m, d) for m, d in graph.edges if m.startswith("needle.ir")
               and not d.startswith("needle.ir") and d not in ("needle", "needle.errors")}
    assert not outside, sorted(outside)
