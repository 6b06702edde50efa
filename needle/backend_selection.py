"""Chooses the array backend at import time from `NEEDLE_BACKEND` (`nd`, the default, or `np`)."""
from __future__ import annotations

import os

BACKEND = os.environ.get("NEEDLE_BACKEND", "nd")

if BACKEND == "nd":
    from . import backend_ndarray as array_api
    from .backend_ndarray import (  # noqa: F401
        BackendDevice as Device,
        NDArray,
        all_devices,
        cpu,
        cpu_numpy,
        cuda,
        default_device,
    )
elif BACKEND == "np":
    import numpy as _np

    from . import numpy_array_api as array_api  # noqa: F401
    from .backend_numpy import Device, all_devices, cpu, cuda, default_device  # noqa: F401

    NDArray = _np.ndarray
else:
    raise RuntimeError(f"Unknown NEEDLE_BACKEND={BACKEND!r}: use 'nd' or 'np'")
