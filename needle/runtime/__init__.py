"""Running compiled graphs: the reference interpreter (the correctness oracle), the native
program executor (`native.py`), the Python-driven kernel executor (`executor.py`), the CUDA
executor and the on-disk graph cache."""
from .interpreter import run_graph  # noqa: F401
