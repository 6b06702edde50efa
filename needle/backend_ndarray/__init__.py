"""NDArray backend: strided float32 arrays on cpu (C++), cuda and cpu_numpy devices."""
from .ndarray import *  # noqa: F401,F403
from .ndarray import __all__  # noqa: F401
