"""Graph passes and the pass manager.

`PassManager(passes).run(graph, PassContext(...))` runs passes (see `manager`); `PASSES` holds
the named passes and `list_passes()` the default pipeline's names in order. Importing this
package imports every pipeline module that exists (decompose, autodiff, simplify, recompute,
fusion, schedule, memory_plan), each of which registers its passes with `register_pass`.
"""
from importlib import import_module
from importlib.util import find_spec

from .manager import (  # noqa: F401
    PASSES, PIPELINE_ORDER, FunctionPass, Pass, PassContext, PassError, PassManager, PassResult,
    default_pipeline, get_pass, list_passes, register_pass,
)

for _name in ("decompose", "autodiff", "simplify", "recompute", "fusion", "schedule", "memory_plan"):
    if find_spec(f"{__name__}.{_name}") is not None:
        import_module(f"{__name__}.{_name}")
del _name
