"""needle's ops: the registry (`OPS`) and every op, in class and function form."""
from .registry import OPS, Op, TensorOp, TensorTupleOp  # noqa: F401
from .elementwise import *  # noqa: F401,F403
from .shape import *  # noqa: F401,F403
from .reduce import *  # noqa: F401,F403
from .tuple_ops import *  # noqa: F401,F403
from .gather import *  # noqa: F401,F403
from .indexing import *  # noqa: F401,F403
from .linalg import *  # noqa: F401,F403
from .composite import *  # noqa: F401,F403
from .random import *  # noqa: F401,F403
from .onnx_ops import *  # noqa: F401,F403
from .custom import elementwise_op  # noqa: F401
from . import scalar  # noqa: F401

# Course-compatible aliases.
MakeTuple = MakeTensorTuple  # noqa: F405
