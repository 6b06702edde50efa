"""needle: a deep-learning framework with the CMU 10-414/714 Needle API and a graph compiler."""
from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    """The installed distribution's version (pyproject.toml holds the one version string)."""
    try:
        return version("needle")
    except PackageNotFoundError:  # a checkout used without installing it
        return "0+unknown"


__version__ = _version()  # before the submodules, which read it

from . import backend_selection
from .backend_selection import BACKEND, Device, all_devices, cpu, cuda, default_device  # noqa: F401
from . import autograd
from .autograd import Tensor, TensorTuple, Value, no_grad, is_grad_enabled  # noqa: F401
from . import ops
from .ops import *  # noqa: F401,F403
from . import init
from . import data, nn, optim
from .threads import set_num_threads, get_num_threads  # noqa: F401
from .compile import compile, grad, value_and_grad  # noqa: F401,A001

if BACKEND == "nd":
    from . import backend_ndarray  # noqa: F401
    from .backend_ndarray import cpu_numpy  # noqa: F401
from . import backend_numpy  # noqa: F401

