"""Running compiled graphs: the reference interpreter (generated code comes later)."""
from .interpreter import run_graph  # noqa: F401
