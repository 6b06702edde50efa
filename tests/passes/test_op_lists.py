"""The passes' op lists are derived from the ops' facts (issue 13) and equal the hand-written
lists they replaced."""
from __future__ import annotations

from needle.passes import fusion, memory_plan


def test_fusion_views_are_the_ops_that_move_data():
    assert fusion.VIEW_OPS == {"Reshape", "Permute", "Transpose", "BroadcastTo", "GetItem", "Flip",
                               "Dilate", "UnDilate", "UnSlice", "Concat", "Stack"}


def test_gemm_operand_views_are_the_bijective_views():
    assert fusion._BIJECTIVE_VIEWS == {"Transpose", "Permute", "Reshape"}


def test_memory_plan_views_are_the_ops_that_alias_their_input():
    assert memory_plan.VIEW_OPS == {"Reshape", "Detach"}
