"""Shrinking a failing program to a smaller one that fails alike."""
from __future__ import annotations

import re
from typing import Callable, Optional

from .run import failure_class, run_source


def _drop_unused_inputs(lines: list[str]) -> list[str]:
    """Remove inputs and setup values no line uses any more (from INPUTS and the signature)."""
    text = "\n".join(line for line in lines if not line.startswith(("INPUTS", "def program")))
    used = set(re.findall(r"\b[a-z]\d+\b", text))
    out = []
    for line in lines:
        if line.startswith("INPUTS = "):
            kept = {k: v for k, v in eval(line[9:]).items() if k in used}  # noqa: S307 (our own text)
            line = "INPUTS = {" + ", ".join(f"{k!r}: {v!r}" for k, v in kept.items()) + "}"
        elif line.startswith("def program("):
            args = [a for a in line[12:-2].split(", ") if a in used]
            line = f"def program({', '.join(args)}):"
        out.append(line)
    return out


def minimize(source: str, seed: int = 0, log: Optional[Callable[[str], None]] = None) -> str:
    """A smaller program failing like `source` does: lines and returned values dropped greedily."""
    target = failure_class(run_source(source, seed))
    lines = source.splitlines()

    def candidates(lines):
        for i, line in enumerate(lines):
            if re.match(r"(    )?[vpmecs]\d+ = ", line):
                yield lines[:i] + lines[i + 1:]
            elif line.startswith("    return ") and "," in line:
                values = line[11:].split(", ")
                for j in range(len(values)):
                    yield lines[:i] + ["    return " + ", ".join(values[:j] + values[j + 1:])] + lines[i + 1:]

    progress = True
    while progress:
        progress = False
        for cand in candidates(lines):
            cand = _drop_unused_inputs(cand)
            try:
                same = failure_class(run_source("\n".join(cand), seed)) == target
            except Exception:  # noqa: BLE001 (the candidate broke the harness: not the same failure)
                same = False
            if same:
                lines, progress = cand, True
                if log:
                    log(f"minimize: {len(lines)} lines")
                break
    return "\n".join(lines)
