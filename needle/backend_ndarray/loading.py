"""Finds and loads the backend modules: the compiled cpu module (numpy's stand-in when it
is not built) and the CUDA module, usable only where a GPU is visible."""
from __future__ import annotations

import os
import warnings


def load_cpu_module():
    """The compiled cpu module, or None (with a warning) when it is not built."""
    try:
        from . import ndarray_backend_cpu as mod
    except ImportError as e:  # not built: keep needle importable, but say so
        if os.environ.get("NEEDLE_CPU_ISA"):  # kernels asked for by name: no silent numpy stand-in
            raise
        warnings.warn(f"needle: compiled cpu backend not available ({e}); cpu() falls back to the "
                      "numpy implementation. Build it with `pip install -e .`.", RuntimeWarning)
        return None
    threads = threads_from_env()
    if threads is not None:
        mod.set_num_threads(threads)
    return mod


def threads_from_env():
    """NEEDLE_NUM_THREADS (the cpu backend's threads: its kernels' pool and its BLAS), or None
    when it is not set (then the pool has one thread per core)."""
    raw = os.environ.get("NEEDLE_NUM_THREADS")
    if raw is None or raw == "":
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"NEEDLE_NUM_THREADS must be a positive number of threads, got {raw!r}")
    return n


def load_cuda_module():
    """(the compiled CUDA module or None when it is not built or no GPU is usable, why not)."""
    try:
        from . import ndarray_backend_cuda as mod
    except Exception as e:  # ImportError, or a CUDA runtime that fails to load
        return None, f"the cuda backend module is not built or does not load ({type(e).__name__}: {e})"
    try:
        count = int(mod.device_count())
    except Exception as e:
        return None, f"the CUDA runtime fails ({type(e).__name__}: {e}); the cuda backend module is built"
    return (mod, "") if count > 0 else (None, "no CUDA GPU is visible; the cuda backend module is built")

