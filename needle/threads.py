"""Thread count of the cpu backend's kernels and its BLAS."""
from __future__ import annotations

from .backend_selection import BACKEND


def _cpu_module():
    if BACKEND != "nd":
        return None
    try:  # lazy: the cpu extension may be missing (an np-only install)
        from .backend_ndarray import ndarray_backend_cpu
    except ImportError:
        return None
    return ndarray_backend_cpu


def set_num_threads(n: int) -> None:
    """Use `n` threads in the cpu backend (elementwise kernels, reductions and GEMM)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    mod = _cpu_module()
    if mod is not None:
        mod.set_num_threads(n)


def get_num_threads() -> int:
    mod = _cpu_module()
    return mod.get_num_threads() if mod is not None else 1
