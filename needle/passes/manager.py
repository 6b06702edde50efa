"""The pass manager: runs passes in order with timing, IR snapshots, verification, numbered
IR dumps and errors that name the pass and the user's source line.

A pass is an object with a `name` and `run(graph, ctx) -> PassResult(graph, changed, report)`;
it never mutates its input graph. An `Analysis` leaves the graph unchanged and returns a typed
result (a dataclass: the fusion plan, the schedule, the memory plan) instead; the analyses it
`requires` are handed to it as arguments, and a missing one is a `PassError`, never computed
behind the pipeline's back. `PassManager(passes).run(graph, ctx)` runs them in order and,
after each one:

* records `ctx.timings[name]` (seconds), `ctx.reports[name]` and `ctx.snapshots[name]` (the IR
  after the pass; `ctx.snapshots["input"]` is the IR before the first pass), and an analysis's
  result in `ctx.analyses[name]` (dropped when a later pass changes the graph);
* verifies the result when `ctx.verify` (`NEEDLE_VERIFY=1`; the test suite turns it on): the
  structural checks, plus the verifier invariants that the passes run so far `ensure`;
* writes `NN-<name>.ir` to `ctx.dump_dir` (`NEEDLE_DUMP_IR=dir`), `00-input.ir` first. When a
  pass raises, its input is written as `NN-<name>.FAILED.ir` with the error at the top; when
  the verifier rejects a pass's output, that output is written as `NN-<name>.FAILED.ir`.

`ctx.pass_limit` (`NEEDLE_PASS_LIMIT=n`) runs only the first n passes, for bisecting a wrong
result to the pass that introduced it; the names of the skipped passes go to `ctx.skipped`.

Named passes live in `PASSES` (`register_pass`, `get_pass`, `PassManager.from_names`); which of
them run for `@needle.compile`, and in what order, is declared once in `needle.passes.pipeline`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ..ir.graph import Graph, Node
from ..ir.printer import print_graph
from ..ir.verifier import verify as verify_graph

__all__ = [
    "Pass", "Analysis", "FunctionPass", "PassResult", "PassContext", "PassManager", "PassError",
    "PASSES", "register_pass", "get_pass",
]


class PassError(RuntimeError):
    """A pass failed: names the pass and, when known, the node `%id = Op` and its user line.

    Passes raise `PassError(self.name, message, node)` to point at the node they choke on;
    the manager wraps any other exception in a PassError naming the pass (and the node, when
    the exception has a `node` attribute holding a `Node`).
    """

    def __init__(self, pass_name: str, message: str, node: Optional[Node] = None):
        self.pass_name = pass_name
        self.message = message
        self.node = node
        self.loc = getattr(node, "loc", None)
        text = f"pass {pass_name!r} failed"
        if node is not None:
            text += f" at %{node.id} = {node.op}"
            if node.loc is not None:
                text += f" ({node.loc})"
        super().__init__(f"{text}: {message}")


@dataclass
class PassResult:
    """What a pass returns: the new graph, whether it differs from the input, a report, and
    an analysis's typed result (None for a transformation)."""

    graph: Graph
    changed: bool = False
    report: dict = field(default_factory=dict)
    analysis: Any = None


class Pass:
    """Base class of graph passes: set `name`, implement `run(graph, ctx) -> PassResult`."""

    name: str = ""
    #: verifier invariants (`needle.ir.verifier.INVARIANTS`) that hold after this pass and, in a
    #: pipeline, after every later one that does not `break` them
    ensures: tuple[str, ...] = ()
    #: invariants that may no longer hold after this pass (autodiff's VJPs may emit composites)
    breaks: tuple[str, ...] = ()

    def update_invariants(self, holds: set) -> None:
        """`holds`, the invariants true before this pass, becomes those true after it."""
        holds.difference_update(self.breaks)
        holds.update(self.ensures)

    def run(self, graph: Graph, ctx: "PassContext") -> PassResult:
        raise NotImplementedError

    def error(self, message: str, node: Optional[Node] = None) -> PassError:
        """A PassError naming this pass (and `node`); `raise self.error(...)` in `run`."""
        return PassError(self.name, message, node)

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


class Analysis(Pass):
    """A pass that leaves the graph unchanged and computes a typed result.

    Subclasses implement `analyze(graph, *inputs)`, where `inputs` are the results of the
    analyses named in `requires` (in that order), and `summary(result)`, the pass's report."""

    requires: tuple[str, ...] = ()

    def analyze(self, graph: Graph, *inputs: Any) -> Any:
        raise NotImplementedError

    def summary(self, result: Any) -> dict:
        return {}

    def run(self, graph: Graph, ctx: "PassContext") -> PassResult:
        result = self.analyze(graph, *[ctx.analysis(name, self.name) for name in self.requires])
        return PassResult(graph, False, self.summary(result), result)


class FunctionPass(Pass):
    """A pass from a function `fn(graph, ctx) -> PassResult | Graph`."""

    def __init__(self, name: str, fn: Callable[[Graph, "PassContext"], Any], ensures: tuple[str, ...] = (),
                 breaks: tuple[str, ...] = ()):
        self.name = name
        self.fn = fn
        self.ensures = ensures
        self.breaks = breaks

    def run(self, graph, ctx):
        out = self.fn(graph, ctx)
        if isinstance(out, PassResult):
            return out
        return PassResult(out, out != graph, {})


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


class PassContext:
    """Settings and results of one pipeline run.

    Arguments left as None are read from the environment: `verify` from `NEEDLE_VERIFY=1`,
    `dump_dir` from `NEEDLE_DUMP_IR=dir`, `pass_limit` from `NEEDLE_PASS_LIMIT=n`. `analyses`
    gives results the passes may take as if earlier analyses had computed them (e.g. a
    hand-made fusion plan for the schedule).
    """

    def __init__(self, verify: Optional[bool] = None, dump_dir: Optional[str] = None,
                 pass_limit: Optional[int] = None, analyses: Optional[dict] = None):
        self.verify: bool = (os.environ.get("NEEDLE_VERIFY", "") not in ("", "0")
                             if verify is None else bool(verify))
        self.dump_dir: Optional[str] = (os.environ.get("NEEDLE_DUMP_IR") or None
                                        if dump_dir is None else dump_dir)
        self.pass_limit: Optional[int] = _env_int("NEEDLE_PASS_LIMIT") if pass_limit is None else pass_limit
        self.timings: dict[str, float] = {}
        self.reports: dict[str, dict] = {}
        self.snapshots: dict[str, Graph] = {}
        self.skipped: list[str] = []
        self.dumped: list[str] = []
        self.analyses: dict[str, Any] = dict(analyses or {})

    def analysis(self, name: str, consumer: str) -> Any:
        """The result of analysis `name` for the current graph, which pass `consumer` takes."""
        if name not in self.analyses:
            raise PassError(consumer, f"needs the result of the {name!r} analysis of this graph; "
                            f"run {name!r} before {consumer!r} (needle.passes.pipeline)")
        return self.analyses[name]

    def __repr__(self) -> str:
        return (f"PassContext(verify={self.verify}, dump_dir={self.dump_dir!r}, "
                f"pass_limit={self.pass_limit}, timings={self.timings})")


def _format(graph: Graph) -> str:
    try:
        return print_graph(graph)
    except Exception as e:  # a broken graph must still be dumped
        return f"# print_graph failed: {type(e).__name__}: {e}\n{graph!r}\n"


class PassManager:
    """Runs passes in order over a graph (see the module docstring)."""

    def __init__(self, passes: Sequence[Pass]):
        self.passes = list(passes)

    @classmethod
    def from_names(cls, names: Sequence[str]) -> "PassManager":
        return cls([get_pass(n) for n in names])

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def run(self, graph: Graph, ctx: Optional[PassContext] = None) -> Graph:
        ctx = PassContext() if ctx is None else ctx
        ctx.snapshots["input"] = graph
        self._dump(ctx, 0, "input", graph)
        limit = len(self.passes) if ctx.pass_limit is None else max(0, ctx.pass_limit)
        holds: set[str] = set()
        for number, p in enumerate(self.passes, start=1):
            if number > limit:
                ctx.skipped.append(p.name)
                continue
            start = time.perf_counter()
            try:
                result = p.run(graph, ctx)
                if not isinstance(result, PassResult):
                    raise TypeError(f"run() returned {type(result).__name__}, expected a PassResult")
            except Exception as e:
                ctx.timings[p.name] = ctx.timings.get(p.name, 0.0) + time.perf_counter() - start
                error = _as_pass_error(p.name, e, graph)
                self._dump(ctx, number, p.name + ".FAILED", graph, error=str(error))
                if error is e:
                    raise
                raise error from e
            ctx.timings[p.name] = ctx.timings.get(p.name, 0.0) + time.perf_counter() - start
            new = result.graph
            ctx.reports[p.name] = result.report
            if result.analysis is not None:
                ctx.analyses[p.name] = result.analysis
            elif new is not graph:  # the earlier analyses describe the old graph
                ctx.analyses.clear()
            p.update_invariants(holds)
            if ctx.verify:
                try:
                    verify_graph(new, holds)
                except Exception as e:
                    error = PassError(p.name, f"the IR after the pass fails verification: {e}",
                                      _error_node(e, new))
                    self._dump(ctx, number, p.name + ".FAILED", new, error=str(error))
                    raise error from e
            ctx.snapshots[p.name] = new
            self._dump(ctx, number, p.name, new)
            graph = new
        return graph

    @staticmethod
    def _dump(ctx: PassContext, number: int, name: str, graph: Graph, error: str = "") -> None:
        if not ctx.dump_dir:
            return
        os.makedirs(ctx.dump_dir, exist_ok=True)
        path = os.path.join(ctx.dump_dir, f"{number:02d}-{name}.ir")
        text = _format(graph)
        if error:
            header = "".join(f"# {line}\n" for line in f"FAILED: {error}".splitlines())
            text = header + "# the IR below is the input of the failing pass (or its output,\n" \
                            "# when the verifier rejected it)\n" + text
        with open(path, "w") as f:
            f.write(text)
        ctx.dumped.append(path)


def _as_pass_error(pass_name: str, e: Exception, graph: Graph) -> PassError:
    if isinstance(e, PassError):
        return e
    return PassError(pass_name, f"{type(e).__name__}: {e}", _error_node(e, graph))


def _error_node(e: Exception, graph: Graph) -> Optional[Node]:
    """The node an exception points at: its `node` (a Node) or `node_id` (IRVerifyError)."""
    node = getattr(e, "node", None)
    if isinstance(node, Node):
        return node
    node_id = getattr(e, "node_id", None)
    if isinstance(node_id, int) and node_id in graph:
        return graph.node(node_id)
    return None


# ---- the pass registry ----------------------------------------------------------------
#: every named pass
PASSES: dict[str, Pass] = {}


def register_pass(p: Pass) -> Pass:
    """Register a pass under `p.name` (replacing one of the same name) and return it."""
    if not p.name:
        raise ValueError(f"cannot register a pass without a name: {p!r}")
    PASSES[p.name] = p
    return p


def get_pass(name: str) -> Pass:
    if name not in PASSES:
        raise KeyError(f"unknown pass {name!r}; registered passes: {', '.join(sorted(PASSES))}")
    return PASSES[name]
