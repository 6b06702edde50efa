"""docs/ops.md lists every registered op."""
import os

from needle.ops import OPS

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "ops.md")


def test_every_op_is_documented():
    text = open(DOCS).read()
    missing = [name for name in OPS if f"`{name}`" not in text]
    assert not missing, f"docs/ops.md lacks {missing}"
