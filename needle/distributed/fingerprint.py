"""Every rank must trace the same graph: a compiled step whose graph holds collectives is
checked once, when it is traced, by comparing a fingerprint of its IR text across ranks.

Ranks that traced different graphs (other shapes, other code) would otherwise issue
mismatched collectives and deadlock or exchange garbage; instead every rank raises
`GraphMismatch` naming the ranks that differ and the first line where they do.
"""
from __future__ import annotations

import hashlib

from ..ir.graph import Graph
from ..ir.printer import print_graph
from . import world
from .collectives import COLLECTIVE_OPS

__all__ = ["GraphMismatch", "check_same_graph"]


class GraphMismatch(RuntimeError):
    """Ranks traced different graphs for the same compiled function."""


def check_same_graph(graph: Graph) -> None:
    """Raise GraphMismatch on every rank unless all ranks traced this same graph (only for
    graphs with collectives, in a world of more than one)."""
    comm = world.comm()
    if comm is None or not any(n.op in COLLECTIVE_OPS for n in graph.nodes):
        return
    text = print_graph(graph, locs=False)
    digest = hashlib.sha256(text.encode()).hexdigest()
    digests = comm.allgather(digest)   # a few bytes, once per trace
    if len(set(digests)) == 1:
        return
    texts = comm.allgather(text)
    me = comm.Get_rank()
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    other = 0 if me in differ and me != 0 else (differ[0] if differ else 0)
    line = _first_difference(texts[me], texts[other])
    raise GraphMismatch(
        f"rank {me}: the compiled function {graph.name!r} traced a different graph on rank(s) "
        f"{', '.join(map(str, differ))} than on rank 0 (different input shapes or code on different "
        f"ranks); every rank must trace the same graph. First difference, rank {me} vs rank {other}:\n"
        f"  {line[0]}\n  {line[1]}")


def _first_difference(a: str, b: str) -> tuple[str, str]:
    for x, y in zip(a.splitlines(), b.splitlines()):
        if x != y:
            return x, y
    return "(same lines, different length)", ""
