"""Loads scipy-openblas32's sgemm into the compiled cpu module (its own kernel otherwise)."""
from __future__ import annotations

import glob
import os


def init_blas(mod) -> bool:
    """dlopen scipy-openblas32's sgemm into the cpu module `mod`; True when it is in use
    (`NEEDLE_NO_BLAS=1`, a missing wheel or a library without sgemm: False)."""
    if mod is None or os.environ.get("NEEDLE_NO_BLAS") == "1":
        return False
    try:
        import scipy_openblas32
        lib_dir = scipy_openblas32.get_lib_dir()
        name = scipy_openblas32.get_library()
    except Exception:
        return False
    for pattern in (f"lib{name}.so", f"lib{name}*.so*", f"lib{name}*.dylib", f"{name}*.dll", "*openblas*"):
        for path in sorted(glob.glob(os.path.join(lib_dir, pattern))):
            try:
                if mod.init_blas(path):
                    return True
            except Exception:
                pass
    return False

