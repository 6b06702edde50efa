"""The code's shape, checked (issue 13's grep-level rules): no module in needle/ over 600
lines, and no op-name string comparisons in codegen/, runtime/ or passes/ (op lists there
come from the ops' facts or from tables keyed by op)."""
from __future__ import annotations

import re
from pathlib import Path

NEEDLE = Path(__file__).resolve().parents[1] / "needle"
#: `node.op == "MatMul"`, `op in ("Permute", ...)`, `op != "EWiseAdd"`: a registry op's name
#: (capitalised) compared as a string; the IR's own structural ops (input, const, grad) are lower case
OP_NAME_COMPARISON = re.compile(r"""\bop\s*(==|!=|\bin\b|\bnot in\b)\s*[(\[{]?\s*["'][A-Z]""")


def test_no_module_over_600_lines():
    long = {str(p.relative_to(NEEDLE)): n for p in NEEDLE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"split these modules along their seams: {long}"


def test_no_op_name_string_comparisons_in_the_compiler():
    found = [f"{p.relative_to(NEEDLE)}:{k}: {line.strip()}"
             for folder in ("codegen", "runtime", "passes") for p in (NEEDLE / folder).rglob("*.py")
             for k, line in enumerate(p.read_text().splitlines(), 1) if OP_NAME_COMPARISON.search(line)]
    assert not found, "derive these from op facts or an op-keyed table:\n" + "\n".join(found)


def test_the_checks_see_what_they_look_for():
    assert OP_NAME_COMPARISON.search('if node.op == "MatMul":')
    assert OP_NAME_COMPARISON.search("if inner.op not in ('Permute', 'Transpose'):")
    assert not OP_NAME_COMPARISON.search('if node.op == "const":')
