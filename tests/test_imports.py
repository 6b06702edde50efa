"""needle's module structure, from the AST (module-level and function-level imports alike;
`if TYPE_CHECKING:` blocks excluded): the graph IR depends on nothing but `needle.errors`,
and the only import cycle left is the eager core's, which may only shrink.

The core cycle: an op's VJP is written with other ops (shape's gradients sum, reduce's
broadcast), ops make Tensors, Tensors call ops, and tracing sits between them. Breaking it
(VJPs written with Tensor methods, ops reaching Tensor through the registry) is open work of
issue 13; until then this test fails if any other module joins the cycle or a new one forms.
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


#: the eager core's cycle (see the module docstring): nothing may join it
CORE_CYCLE = {
    "needle.autograd", "needle.init", "needle.init.init_basic", "needle.init.init_initializers",
    "needle.ops", "needle.ops.composite", "needle.ops.custom", "needle.ops.elementwise",
    "needle.ops.gather", "needle.ops.linalg", "needle.ops.random", "needle.ops.reduce",
    "needle.ops.shape", "needle.ops.tuple_ops", "needle.trace.autodiff_request", "needle.trace.tracer",
}


def test_no_import_cycles_beyond_the_core():
    cycles = [set(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    extra = [sorted(c) for c in cycles if not c <= CORE_CYCLE]
    assert not extra, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in extra)


def test_passes_codegen_runtime_and_library_are_outside_every_cycle():
    cycles = set().union(*(c for c in nx.strongly_connected_components(import_graph()) if len(c) > 1))
    for layer in ("needle.ir", "needle.passes", "needle.codegen", "needle.runtime", "needle.nn",
                  "needle.compile", "needle.data", "needle.cli", "needle.backend_ndarray"):
        assert not {m for m in cycles if m == layer or m.startswith(layer + ".")}, layer


def test_ir_depends_only_on_errors():
    graph = import_graph()
    outside = {(m, d) for m, d in graph.edges if m.startswith("needle.ir")
               and not d.startswith("needle.ir") and d not in ("needle", "needle.errors")}
    assert not outside, sorted(outside)
