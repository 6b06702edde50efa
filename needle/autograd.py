"""Tensor and TensorTuple, the eager values; `backward()` runs the tape of `needle.backprop`
(eagerly) or requests gradients from the autodiff pass (in a trace)."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Optional

import numpy

from . import backend_selection, ops, value_types
from .backend_selection import BACKEND, Device, NDArray, array_api, cpu, default_device
from .backprop import compute_gradient_of_variables, find_topo_sort  # noqa: F401  (the course's API names them here)
from .errors import OpError, user_location
from .ops.registry import Op, TensorOp, TensorTupleOp  # noqa: F401
from .trace import tracer
from .trace.autodiff_request import request_gradients

#: When True, op results are computed only when read (`realize_cached_data`).
LAZY_MODE = False
#: Number of live Values (+1 on init, -1 on __del__).
TENSOR_COUNTER = 0
#: Values created so far (each Value records its birth number; tracing uses it to tell
#: tensors that existed before a trace, which become graph inputs, from constants)
_BIRTHS = 0

_grad_enabled = True


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Within this context op results record no history (like `torch.no_grad()`)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    return _grad_enabled


class Value:
    """A node of the computational graph: an op applied to inputs, or a leaf."""

    op: Optional["Op"]
    inputs: List["Value"]
    cached_data: Any
    requires_grad: bool

    _trace = None  # a tracer.TraceRef while the value stands for a node of a trace

    def realize_cached_data(self):
        """The value's array, computing it (and its inputs) if needed."""
        if self.cached_data is not None:
            return self.cached_data
        if self._trace is not None:
            raise tracer.read_error("realize_cached_data")
        self.cached_data = _compute(self.op, [x.realize_cached_data() for x in self.inputs], self.inputs)
        return self.cached_data

    def is_leaf(self) -> bool:
        return self.op is None

    def __del__(self):
        global TENSOR_COUNTER
        TENSOR_COUNTER -= 1

    def _init(self, op, inputs, *, num_outputs: int = 1, cached_data=None, requires_grad=None):
        global TENSOR_COUNTER, _BIRTHS
        TENSOR_COUNTER += 1
        _BIRTHS += 1
        self._birth = _BIRTHS
        if requires_grad is None:
            requires_grad = False
            if _grad_enabled and op.differentiable:
                for x in inputs:
                    if x.requires_grad:
                        requires_grad = True
                        break
        self.op = op
        self.inputs = inputs
        self.num_outputs = num_outputs
        self.cached_data = cached_data
        self.requires_grad = requires_grad
        self.grad = None

    @classmethod
    def make_const(cls, data, requires_grad: bool = False):
        value = cls.__new__(cls)
        value._init(None, [], cached_data=data, requires_grad=requires_grad)
        return value

    @classmethod
    def make_from_op(cls, op, inputs):
        if tracer.ACTIVE is not None:
            birth = tracer.ACTIVE.birth
            for x in inputs:  # traced values and tensors from outside the trace are graph values
                if x._trace is not None or x._birth < birth:
                    return tracer.trace_op(cls, op, inputs)
        value = cls.__new__(cls)
        inputs = list(inputs)
        value._init(op, inputs)
        if not LAZY_MODE:
            if op.validates:
                op.infer(*inputs)
            value.cached_data = _compute(op, [x.realize_cached_data() for x in inputs], inputs)
            if not value.requires_grad:
                value.op, value.inputs = None, []
        return value


def _compute(op, arrays, inputs):
    """Run an op's eager kernel; backend errors are re-raised naming the op and the shapes."""
    try:
        return op.compute(*arrays)
    except OpError:
        raise
    except (ValueError, IndexError, TypeError, RuntimeError) as e:
        shapes = ", ".join(str(getattr(x, "shape", "?")) for x in inputs)
        where = user_location()
        raise type(e)(f"{op.name}: {e} [input shapes {shapes}]" + (f" (at {where})" if where else "")) from e


class TensorTuple(Value):
    """A tuple of tensors produced by one op (split, make_tuple)."""

    def __len__(self) -> int:
        if self._trace is not None:
            return len(self._trace.type)
        return len(self.realize_cached_data())

    def __getitem__(self, index: int):
        return ops.tuple_get_item(self, index)

    def tuple(self) -> tuple:
        return tuple(self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return "needle.TensorTuple" + str(self.tuple())

    def __str__(self) -> str:
        return self.__repr__()

    def __add__(self, other: "TensorTuple") -> "TensorTuple":
        if not isinstance(other, TensorTuple) or len(self) != len(other):
            raise OpError("TensorTuple.__add__", "needs another TensorTuple of the same length")
        return ops.make_tuple(*[self[i] + other[i] for i in range(len(self))])

    def detach(self) -> "TensorTuple":
        return TensorTuple.make_const(self.realize_cached_data())


class Tensor(Value):
    """An n-dimensional array with reverse-mode autodiff."""

    grad: Optional["Tensor"]

    def __init__(self, array, *, device: Optional[Device] = None, dtype=None,
                 requires_grad: bool = True, **kwargs):
        if isinstance(array, Tensor):
            device = array.device if device is None else device
            dtype = array.dtype if dtype is None else dtype
            if device == array.device and dtype == array.dtype:
                cached_data = array.realize_cached_data()
            else:
                cached_data = Tensor._array_from_numpy(array.numpy(), device=device, dtype=dtype)
        else:
            device = device if device else default_device()
            cached_data = Tensor._array_from_numpy(array, device=device, dtype=dtype)
        self._init(None, [], cached_data=cached_data, requires_grad=requires_grad)

    @staticmethod
    def _array_from_numpy(numpy_array, device, dtype):
        if BACKEND == "np":
            if isinstance(numpy_array, numpy.ndarray) and dtype is None:
                return numpy_array.copy()
            return numpy.array(numpy_array, dtype=dtype)
        # The nd backend stores float32 only: bool and integer data become 0/1 and float ids;
        # an explicit dtype= other than float32 or bool is a TypeError naming float32.
        if dtype is not None:  # lazy: the nd backend's extension may be missing under NEEDLE_BACKEND=np
            from .backend_ndarray.ndarray import _check_dtype

            _check_dtype(dtype)
        if isinstance(numpy_array, NDArray):
            return numpy_array if numpy_array.device == device else numpy_array.to(device)
        return array_api.array(numpy.asarray(numpy_array, dtype=numpy.float32), device=device)

    @staticmethod
    def make_const(data, requires_grad: bool = False) -> "Tensor":
        if isinstance(data, Tensor):
            data = data.realize_cached_data()
        return Value.make_const.__func__(Tensor, data, requires_grad)

    # ---- data access -------------------------------------------------------------
    @property
    def data(self) -> "Tensor":
        return self.detach()

    @data.setter
    def data(self, value: "Tensor") -> None:
        if not isinstance(value, Tensor):
            raise TypeError(f"Tensor.data must be set to a Tensor, got {type(value).__name__}")
        if value.dtype != self.dtype:
            raise TypeError(f"Tensor.data: dtype {value.dtype} does not match {self.dtype}")
        if tracer.ACTIVE is not None and (value._trace is not None or self._trace is not None
                                          or self._birth < tracer.ACTIVE.birth):
            tracer.ACTIVE.assign_data(self, value)
            return
        self.cached_data = value.realize_cached_data()

    def detach(self) -> "Tensor":
        """A new constant leaf sharing this tensor's data."""
        if self._trace is not None or (tracer.ACTIVE is not None and self._birth < tracer.ACTIVE.birth):
            return ops.Detach()(self)
        return Tensor.make_const(self.realize_cached_data())

    @property
    def shape(self) -> tuple:
        if self.cached_data is not None:
            return self.cached_data.shape
        if self._trace is not None:
            return self._trace.type.shape
        return self.realize_cached_data().shape

    @property
    def dtype(self):
        if self._trace is not None:
            return self._trace.type.dtype
        return self.realize_cached_data().dtype

    @property
    def device(self):
        if BACKEND == "np":
            return cpu()
        if self._trace is not None:
            return getattr(backend_selection, self._trace.type.device)()
        return self.realize_cached_data().device

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(numpy.prod(self.shape))

    def numpy(self):
        if self._trace is not None:
            raise tracer.read_error(".numpy()")
        data = self.realize_cached_data()
        return data if BACKEND == "np" else data.numpy()

    def item(self) -> float:
        """The value of a one-element tensor as a Python number."""
        if self._trace is not None:
            raise tracer.read_error(".item() / float()")
        if self.size != 1:
            raise ValueError(f"item(): tensor of shape {self.shape} has {self.size} elements, not one")
        return self.numpy().reshape(-1)[0].item()

    def __float__(self) -> float:
        return float(self.item())

    def __bool__(self) -> bool:
        if self._trace is not None:
            raise tracer.read_error("bool(tensor), e.g. `if t > 0:`")
        return bool(self.item())

    def to(self, device) -> "Tensor":
        """This tensor on `device` (differentiable; itself if already there)."""
        return self if device == self.device else ops.to_device(self, device)

    def __repr__(self) -> str:
        return "needle.Tensor(" + str(self.realize_cached_data()) + ")"

    def __str__(self) -> str:
        return str(self.realize_cached_data())

    __hash__ = object.__hash__

    # ---- autograd ----------------------------------------------------------------
    def backward(self, out_grad: Optional["Tensor"] = None) -> None:
        if out_grad is not None and tuple(out_grad.shape) != tuple(self.shape):
            raise ValueError(f"backward: out_grad has shape {tuple(out_grad.shape)}, but the tensor "
                             f"it seeds has shape {tuple(self.shape)}")
        if self._trace is not None:
            request_gradients(self, out_grad)
            return
        if out_grad is None:
            out_grad = Tensor.make_const(array_api.full(self.shape, 1.0, dtype=self.dtype, device=self.device))
        compute_gradient_of_variables(self, out_grad)

    # ---- operators ---------------------------------------------------------------
    def __add__(self, other):
        return ops.add(self, other) if isinstance(other, Tensor) else ops.add_scalar(self, other)

    def __mul__(self, other):
        return ops.multiply(self, other) if isinstance(other, Tensor) else ops.mul_scalar(self, other)

    def __pow__(self, other):
        return ops.power(self, other) if isinstance(other, Tensor) else ops.power_scalar(self, other)

    def __sub__(self, other):
        return ops.add(self, ops.negate(other)) if isinstance(other, Tensor) else ops.add_scalar(self, -other)

    def __truediv__(self, other):
        return ops.divide(self, other) if isinstance(other, Tensor) else ops.divide_scalar(self, other)

    def __rsub__(self, other):
        return ops.add_scalar(ops.negate(self), other)

    def __rtruediv__(self, other):
        return ops.mul_scalar(ops.power_scalar(self, -1), other)

    def __matmul__(self, other):
        return ops.matmul(self, other)

    def __neg__(self):
        return ops.negate(self)

    __radd__ = __add__
    __rmul__ = __mul__

    def __gt__(self, other):
        return ops.compare(self, other, "gt")

    def __ge__(self, other):
        return ops.compare(self, other, "ge")

    def __lt__(self, other):
        return ops.compare(self, other, "lt")

    def __le__(self, other):
        return ops.compare(self, other, "le")

    def __getitem__(self, index):
        return ops.get_item(self, index)

    def matmul(self, other):
        return ops.matmul(self, other)

    def sum(self, axes=None):
        return ops.summation(self, axes)

    def mean(self, axes=None):
        return ops.mean(self, axes)

    def max(self, axes=None):
        return ops.max(self, axes)

    def argmax(self, axis=None):
        return ops.argmax(self, axis)

    def broadcast_to(self, shape):
        return ops.broadcast_to(self, shape)

    def reshape(self, *shape):
        return ops.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def view(self, *shape):
        """Alias of `reshape` (needle's reshape of a compact tensor is a view)."""
        return self.reshape(*shape)

    def unsqueeze(self, dim: int):
        """A new axis of size 1 at `dim` (in [-ndim-1, ndim], as in PyTorch)."""
        n = self.ndim
        if not isinstance(dim, int) or not -n - 1 <= dim <= n:
            raise IndexError(f"unsqueeze: dim {dim!r} is out of range [{-n - 1}, {n}] for shape {self.shape}")
        dim %= n + 1
        return ops.reshape(self, tuple(self.shape[:dim]) + (1,) + tuple(self.shape[dim:]))

    def squeeze(self, dim=None):
        """Drop axes of size 1: all of them, or those of `dim` (an int or tuple; an axis of
        another size is kept, as in PyTorch)."""
        n, shape = self.ndim, tuple(self.shape)
        if dim is None:
            drop = {i for i, d in enumerate(shape) if d == 1}
        else:
            dims = (dim,) if isinstance(dim, int) else tuple(dim)
            for d in dims:
                if not isinstance(d, int) or not -max(n, 1) <= d < max(n, 1):
                    raise IndexError(f"squeeze: dim {d!r} is out of range for shape {shape}")
            drop = {d % n for d in dims if n and shape[d % n] == 1}
        out = tuple(d for i, d in enumerate(shape) if i not in drop)
        return self if out == shape else ops.reshape(self, out)

    def clone(self):
        """A new tensor with a copy of this one's data; gradients flow through it unchanged."""
        return ops.mul_scalar(self, 1)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __abs__(self):
        return ops.abs(self)

    def __array__(self, dtype=None, copy=None):
        # numpy reads the data (not element by element through __len__/__getitem__)
        out = numpy.asarray(self.numpy())
        return out if dtype is None else out.astype(dtype)

    def transpose(self, axes=None):
        return ops.transpose(self, axes)

    def permute(self, axes):
        return ops.permute(self, axes)

    def exp(self):
        return ops.exp(self)

    def log(self):
        return ops.log(self)

    def tanh(self):
        return ops.tanh(self)

    def relu(self):
        return ops.relu(self)

    def sigmoid(self):
        return ops.sigmoid(self)


value_types.Tensor = Tensor
value_types.TensorTuple = TensorTuple
