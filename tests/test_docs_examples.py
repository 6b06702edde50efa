"""Every ```python block in docs/ and the README runs, so the docs stay true. The blocks of
one file run in order in one fresh process (a later block may use an earlier one's names);
a block preceded by `<!-- not runnable: REASON -->` is left out, for that reason."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"(?:<!-- not runnable: (?P<reason>.*?) -->\n)?```python\n(?P<code>.*?)```", re.S)
RUNNER = """
import sys
for name, code in BLOCKS:
    exec(compile(code, name, "exec"), NAMESPACE)
"""


def blocks(path: Path) -> list[tuple[int, str, str]]:
    """(line, code, reason it is not runnable or '') of each python block of a file."""
    text = path.read_text()
    return [(text[:m.start("code")].count("\n") + 1, m.group("code"), m.group("reason") or "")
            for m in BLOCK.finditer(text)]


@pytest.mark.parametrize("path", [p for p in FILES if blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run(path):
    from needle.backend_selection import BACKEND

    if BACKEND != "nd":
        pytest.skip("the docs' examples are written for the default nd backend")
    runnable = [(f"{path.relative_to(ROOT)}:{line}", code) for line, code, reason in blocks(path) if not reason]
    if not runnable:
        pytest.skip(f"{path.name}: every block is marked not runnable")
    program = f"BLOCKS = {runnable!r}\nNAMESPACE = {{'__name__': '__docs__'}}\n" + RUNNER
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, MPLBACKEND="Agg"))
    assert done.returncode == 0, done.stderr[-3000:]
