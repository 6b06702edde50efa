"""The course's models and helpers (NEEDLE_API.md section 9): `mlp_resnet`, `models`, `simple_ml`.

A checkout's top-level ``apps/`` re-exports these modules under the names course code
imports (``apps.mlp_resnet``, or ``mlp_resnet`` with ``apps/`` on ``sys.path``); the
installed wheel ships only ``needle.apps``.
"""
