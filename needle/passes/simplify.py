"""`simplify`: algebraic identities, constant folding, CSE, sums of matrix products as one
product (`matmul_sums`) and DCE, repeated to a fixed point.

The five passes are also registered on their own (`algebraic`, `fold`, `cse`, `matmul_sums`,
`dce`) so tests and `PassManager.from_names` can run each one alone.
"""
from __future__ import annotations

from .algebraic import AlgebraicSimplification
from .cse import CommonSubexpressionElimination
from .dce import DeadCodeElimination
from .fold import ConstantFolding
from .manager import Pass, PassResult, register_pass
from .matmul_sums import MatmulSums

#: a safety stop: each round shrinks or rewrites the graph, so this is never reached in practice
MAX_ROUNDS = 20


def _add(total: dict, report: dict) -> None:
    for key, value in report.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, list):
                total.setdefault(key, []).extend(value)
            elif isinstance(value, dict):
                _add(total.setdefault(key, {}), value)
            continue
        total[key] = total.get(key, 0) + value


class Simplify(Pass):
    name = "simplify"

    def __init__(self, passes=None):
        self.passes = list(passes) if passes is not None else [
            AlgebraicSimplification(), ConstantFolding(), CommonSubexpressionElimination(),
            MatmulSums(), DeadCodeElimination()]

    def run(self, graph, ctx):
        report: dict = {"rounds": 0}
        changed = False
        for _ in range(MAX_ROUNDS):
            report["rounds"] += 1
            round_changed = False
            for p in self.passes:
                result = p.run(graph, ctx)
                _add(report.setdefault(p.name, {}), result.report)
                if result.changed:
                    round_changed = True
                    graph = result.graph
            changed |= round_changed
            if not round_changed:
                break
        return PassResult(graph, changed, report)


for _p in (DeadCodeElimination(), CommonSubexpressionElimination(), ConstantFolding(),
           AlgebraicSimplification(), MatmulSums(), Simplify()):
    register_pass(_p)
