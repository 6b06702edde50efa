"""Graph passes, the pass manager and the pipeline.

`PassManager(passes).run(graph, PassContext(...))` runs passes (see `manager`); `PASSES` holds
the named passes (`get_pass`, `PassManager.from_names`); `pipeline` declares which run on each
executor, in order (`pipeline.run(graph, executor)`, `default_pipeline()`).
"""
from .manager import (  # noqa: F401
    PASSES, Analysis, FunctionPass, Pass, PassContext, PassError, PassManager, PassResult, get_pass,
    register_pass,
)
from .pipeline import default_pipeline  # noqa: F401  (imports and registers every pipeline pass)
