"""On-disk cache of compiled graphs: a warm start skips every graph-changing pass.

The key is the traced graph's text (with source locations), the pass pipeline, needle's
version, the array backend and a fingerprint of needle's sources (`needle.cache.code_fingerprint`:
an edited VJP or pass never reuses an old entry); the value is the text of the graph after each
of those passes (so `.ir(stage)` and needle-ir work on a warm start too), stored as the
`needle.cache` entry `graphs/<2 hex>/<key>.ir` (atomic, with a keyed MAC). A missing, unauthenticated,
unreadable or unparsable entry is a miss (the graph is compiled and the entry rewritten).
"""
from __future__ import annotations

import hashlib
from collections.abc import MutableMapping
from typing import Iterator, Optional, Sequence

from ..cache import code_fingerprint, read_entry, write_entry
from ..ir.graph import Graph
from ..ir.parser import parse_graph
from ..ir.printer import print_graph
from .. import __version__
from ..backend_selection import BACKEND

_STAGE = "# stage: "


def _key(graph: Graph, pipeline: Sequence[str]) -> str:
    text = "\n".join([print_graph(graph), ",".join(pipeline), __version__, BACKEND, code_fingerprint()])
    return hashlib.sha256(text.encode()).hexdigest()


def _entry(key: str) -> str:
    return f"graphs/{key[:2]}/{key}.ir"


class Stages(MutableMapping):
    """{stage: Graph} whose cached stages are parsed from their text when first read (a warm
    start needs only the last one; `.ir(stage)` and needle-ir parse the others on demand)."""

    def __init__(self, texts: dict[str, str]):
        self._texts = dict(texts)
        self._graphs: dict[str, Graph] = {}

    def __getitem__(self, name: str) -> Graph:
        if name not in self._graphs:
            self._graphs[name] = parse_graph(self._texts[name])
        return self._graphs[name]

    def __setitem__(self, name: str, graph: Graph) -> None:
        self._texts.setdefault(name, "")
        self._graphs[name] = graph

    def __delitem__(self, name: str) -> None:
        del self._texts[name]
        self._graphs.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._texts)

    def __len__(self) -> int:
        return len(self._texts)


def load(graph: Graph, pipeline: Sequence[str]) -> Optional[Stages]:
    """{stage: graph after that pass} cached for running `pipeline` on `graph`, or None.
    The last stage is parsed now (an unparsable one is a miss), the others when read."""
    data = read_entry(_entry(_key(graph, pipeline)))
    if data is None:
        return None
    try:
        texts = {}
        for chunk in data.decode("utf-8").split(_STAGE)[1:]:
            name, _, body = chunk.partition("\n")
            texts[name.strip()] = body
        if not texts:
            return None
        stages = Stages(texts)
        stages[list(texts)[-1]]  # parse the final graph now: a broken entry is a miss
        return stages
    except ValueError:  # includes UnicodeDecodeError
        return None


def store(graph: Graph, pipeline: Sequence[str], stages: dict[str, Graph]) -> None:
    """Remember the graph after each pass of `pipeline` on `graph` (a failed write is ignored)."""
    body = "".join(f"{_STAGE}{name}\n{print_graph(g)}" for name, g in stages.items())
    write_entry(_entry(_key(graph, pipeline)), body.encode())
