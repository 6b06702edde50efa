"""needle.backend_ndarray.ndarray, the course's module path: NDArray, its devices and the
array API.  They live in core.py (NDArray, devices), array_math.py (NDArray's computations),
array_api.py (numpy-named functions), shapes.py, loading.py (backend modules) and blas.py."""
from .core import (  # noqa: F401
    BLAS_LOADED,
    CPU_BACKEND_COMPILED,
    BackendDevice,
    DeviceUnavailable,
    NDArray,
    all_devices,
    cpu,
    cpu_numpy,
    cuda,
    default_device,
)
from .array_api import *  # noqa: F401,F403
from .array_api import __all__ as _array_api
from .shapes import _check_dtype  # noqa: F401  (needle.autograd checks dtype= arguments with it)

__all__ = ["BackendDevice", "NDArray", "cpu", "cpu_numpy", "cuda", "default_device", "all_devices",
           "CPU_BACKEND_COMPILED", "BLAS_LOADED", *_array_api]
