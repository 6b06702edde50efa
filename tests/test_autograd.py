"""Tensor semantics of the course API: construction, graph structure, backward, no_grad."""
from __future__ import annotations

import gc

import numpy as np
import pytest

import needle as ndl
from needle import autograd
from tests.conftest import BACKEND, close, tensor


def op_names(t):
    return [type(n.op).__name__ for n in autograd.find_topo_sort([t]) if n.op is not None]


def test_operators_build_listed_nodes():
    a, b = tensor(np.random.randn(2, 3)), tensor(np.random.randn(2, 3))
    assert op_names(a - b) == ["Negate", "EWiseAdd"]
    assert op_names(a - 2.0) == ["AddScalar"]
    assert op_names(a * b) == ["EWiseMul"]
    assert op_names(a / 2.0) == ["DivScalar"]
    assert op_names(a ** 2) == ["PowerScalar"]
    assert op_names(-a) == ["Negate"]
    assert op_names(a @ ndl.transpose(b)) == ["Transpose", "MatMul"]


def test_find_topo_sort_order():
    a, b = tensor([1.0, 2.0]), tensor([3.0, 4.0])
    c = a * b
    d = c + a
    order = autograd.find_topo_sort([d])
    assert order == [a, b, c, d]


def test_backward_default_ones_and_overwrite():
    x = tensor(np.random.randn(3, 4))
    y = x * 3.0
    y.backward()
    close(x.grad, np.full((3, 4), 3.0))
    (x * 2.0).sum().backward()
    close(x.grad, np.full((3, 4), 2.0))  # overwritten, not accumulated


def test_gradient_as_tuple_direct_call():
    a, b = tensor([1.0, 2.0]), tensor([3.0, 4.0])
    node = a * b
    grads = node.op.gradient_as_tuple(ndl.Tensor(np.ones(2, dtype=np.float32)), node)
    assert len(grads) == 2
    close(grads[0], [3.0, 4.0])
    single = ndl.ops.Exp().gradient_as_tuple(tensor([1.0]), ndl.exp(tensor([0.0])))
    assert isinstance(single, tuple) and len(single) == 1


def test_constant_when_no_input_requires_grad():
    a = tensor([1.0, 2.0], requires_grad=False)
    b = a * 2.0
    assert b.op is None and not b.requires_grad


def test_tensor_from_tensor_shares_data():
    a = tensor(np.random.randn(3))
    b = ndl.Tensor(a)
    assert b.realize_cached_data() is a.realize_cached_data()


def test_detach_and_data_setter():
    a = tensor(np.random.randn(3))
    d = a.detach()
    assert d.op is None and not d.requires_grad
    assert d.realize_cached_data() is a.realize_cached_data()
    a.data = tensor(np.ones(5))
    assert a.shape == (5,)


def test_dtype_compares_to_string():
    if BACKEND == "nd":
        assert ndl.Tensor([1.0, 2.0]).dtype == "float32"
    else:
        assert ndl.Tensor([1.0, 2.0]).dtype == "float64"  # numpy semantics
        assert ndl.Tensor(np.zeros(2, dtype=np.float32)).dtype == "float32"


def test_numpy_backend_data_is_mutable():
    if BACKEND != "np":
        pytest.skip("NEEDLE_BACKEND=np semantics")
    t = ndl.Tensor(np.zeros(3))
    t.realize_cached_data().flat[1] += 1.0
    assert t.numpy()[1] == 1.0


def test_tensor_counter_tracks_live_tensors():
    gc.collect()
    start = autograd.TENSOR_COUNTER
    xs = [tensor(np.random.randn(2)) for _ in range(10)]
    assert autograd.TENSOR_COUNTER == start + 10
    del xs
    gc.collect()
    assert autograd.TENSOR_COUNTER == start


def test_no_grad():
    x = tensor(np.random.randn(3))
    with ndl.no_grad():
        y = x * 2.0
        assert not ndl.is_grad_enabled()
    assert y.op is None and not y.requires_grad
    assert ndl.is_grad_enabled()
    assert (x * 2.0).requires_grad


def test_tensor_tuple():
    a, b = tensor([1.0]), tensor([2.0, 3.0])
    t = ndl.make_tuple(a, b)
    assert len(t) == 2
    close(t[1], [2.0, 3.0])
    s = t + t
    close(s[0], [2.0])
    assert len(t.tuple()) == 2
    assert isinstance(t.detach(), ndl.TensorTuple)


def test_tensor_to_device_and_item():
    x = tensor([1.5])
    assert x.to(x.device) is x
    assert x.item() == 1.5 and float(x) == 1.5
    with pytest.raises(ValueError, match="elements"):
        tensor([1.0, 2.0]).item()


def test_devices():
    assert str(ndl.cpu()) == "cpu()"
    assert ndl.cuda().enabled() in (True, False)
    assert ndl.default_device() == ndl.cpu()
    assert ndl.Tensor([1.0]).device == ndl.cpu()


def test_set_num_threads():
    ndl.set_num_threads(1)
    if BACKEND == "nd":
        assert ndl.get_num_threads() == 1
    ndl.set_num_threads(2)
    with pytest.raises(ValueError):
        ndl.set_num_threads(0)


def test_deep_chain_backward_no_recursion_limit():
    x = tensor(np.ones(2))
    y = x
    for _ in range(3000):
        y = y * 1.0
    y.sum().backward()
    close(x.grad, np.ones(2))


def test_split_indexing_backward_is_linear_in_parts():
    """Adjoints of tuple items are assembled once per tuple, not once per TupleGetItem."""
    sizes = {}
    for n in (20, 40):
        x = tensor(np.random.randn(n, 3))
        parts = ndl.split(x, 0)
        ndl.stack([parts[i] * float(i) for i in range(n)], 0).sum().backward()
        close(x.grad, np.arange(n)[:, None] * np.ones((n, 3)))
        sizes[n] = len(autograd.find_topo_sort([x.grad]))
    assert sizes[40] <= 2.2 * sizes[20], sizes
