"""The eager cuda() NDArray device against numpy, and Tensor ops on cuda() against cpu().

Every test is marked `cuda` and skipped unless ``ndl.cuda().enabled()`` (the module is built
and a GPU is visible).  ``NEEDLE_TEST_CUDA_EMULATE=1`` runs them on a machine without a GPU
against the same source built as C++ with its kernels run on the CPU (tests/cuda/emulator.py).

The tests that are the same on every device live in tests/backend_ndarray/test_ndarray.py
(parametrized over the devices, cuda() among them); these are the cuda-only ones.
"""

import numpy as np
import pytest

import needle as ndl
import needle.backend_ndarray as nd

from tests.backend_ndarray.test_ndarray import check, rand

from .devices import CUDA, SKIP_REASON


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA.enabled(), reason=SKIP_REASON)]
DEVICES = [pytest.param(CUDA, id="cuda")]


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)


# ---------------------------------------------------------------------------
# device, construction, memory
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_device_basics(device):
    assert str(device) == "cuda()" and repr(device) == "cuda()"
    assert device == nd.cuda() and device.enabled()
    mod = device.mod
    assert mod.__device_name__ == "cuda"
    assert mod.__tile_size__ == 8
    assert isinstance(mod.device_count(), int) and mod.device_count() >= 1
    a = mod.Array(10)
    assert a.size == 10 and isinstance(a.ptr(), int) and a.ptr() != 0
    assert mod.Array(0).size == 0
    mod.synchronize()
    assert isinstance(mod.release_cached_memory(), int)
    assert device.Array is mod.Array


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 4), (2, 3, 4), (0,), (3, 0, 2), (1000, 257)])
def test_roundtrip(device, shape):
    A = rand(*shape)
    a = nd.array(A, device=device)
    assert a.device == device and a.shape == A.shape
    check(a, A, rtol=0, atol=0)
    c = a.to(nd.cpu())
    assert c.device == nd.cpu()
    check(c, A, rtol=0, atol=0)
    check(c.to(device), A, rtol=0, atol=0)
    b = nd.NDArray(a)  # copy on the same device
    assert b._handle is not a._handle
    check(b, A, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# views, compact, setitem
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_setitem_broadcast_destination_matches_cpu(device):
    """Writes through stride-0 views: the last write wins, as on cpu()."""
    results = []
    for dev in (nd.cpu(), device):
        base = nd.array(np.zeros((1, 4), np.float32), device=dev)
        view = base.broadcast_to((3, 4))
        view[...] = nd.array(np.arange(12, dtype=np.float32).reshape(3, 4), device=dev)
        results.append(base.numpy())
    np.testing.assert_array_equal(results[1], results[0])


@pytest.mark.parametrize("device", DEVICES)
def test_low_level_setitem_same_buffer(device):
    mod = device.mod
    a = mod.Array(8)
    mod.from_numpy(np.arange(8, dtype=np.float32), a)
    mod.ewise_setitem(a, a, (8,), (1,), 0)  # a onto itself: unchanged
    assert mod.to_numpy(a, (8,), (1,), 0).tolist() == list(range(8))
    mod.ewise_setitem(a, a, (8,), (-1,), 7)  # reversed onto itself, from a copy of the source
    assert mod.to_numpy(a, (8,), (1,), 0).tolist() == list(range(8))[::-1]


# ---------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [3, 64, 65, 1000, 70000])
def test_argmax_long_rows(device, n):
    A = rand(3, n)
    A[0, n // 3] = A[0, 2 * n // 3] = 5.0  # tie
    A[1, n // 2] = np.nan
    A[1, n - 1] = np.nan
    A[2, :] = -1.0  # all equal
    a = nd.array(A, device=device)
    check(a.argmax(axis=1), np.argmax(A, axis=1).astype(np.float32), rtol=0, atol=0)


# ---------------------------------------------------------------------------
# matmul
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_matmul_dirty_output(device):
    mod = device.mod
    A, B = rand(70, 20), rand(20, 90)
    ha, hb, ho = mod.Array(A.size), mod.Array(B.size), mod.Array(70 * 90)
    mod.from_numpy(A, ha)
    mod.from_numpy(B, hb)
    mod.fill(ho, np.nan)
    mod.matmul(ha, hb, ho, 70, 20, 90)
    np.testing.assert_allclose(mod.to_numpy(ho, (70, 90), (90, 1), 0), A @ B, rtol=1e-4, atol=1e-5)
    e, z = mod.Array(0), mod.Array(6)
    mod.fill(z, np.nan)
    mod.matmul(e, e, z, 2, 0, 3)  # n == 0: zeros
    assert mod.to_numpy(z, (6,), (1,), 0).tolist() == [0.0] * 6


# ---------------------------------------------------------------------------
# Tensor level: the same computation on cuda() and cpu()
# ---------------------------------------------------------------------------
needs_nd = pytest.mark.skipif(ndl.BACKEND != "nd", reason="Tensor devices need NEEDLE_BACKEND=nd")


def _both(f):
    """f(device) on cpu() and cuda(); returns (cpu result, cuda result)."""
    return f(nd.cpu()), f(CUDA)


def _close(a, b, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(np.asarray(b, dtype=np.float64), np.asarray(a, dtype=np.float64), rtol=rtol, atol=atol)


@needs_nd
@pytest.mark.parametrize("device", DEVICES)
def test_tensor_ops_forward_backward(device):
    X, Y, W = rand(6, 5), rand(6, 5), rand(5, 4)

    def run(dev):
        x = ndl.Tensor(X, device=dev, requires_grad=True)
        y = ndl.Tensor(Y, device=dev, requires_grad=True)
        w = ndl.Tensor(W, device=dev, requires_grad=True)
        h = ndl.ops.tanh(x * y + ndl.ops.exp(x) / (ndl.ops.relu(y) + 1.0)) @ w
        h = h + ndl.ops.broadcast_to(ndl.ops.summation(h, axes=(0,)).reshape((1, 4)), (6, 4))
        z = ndl.ops.logsumexp(h, axes=(1,)) + ndl.ops.log(ndl.ops.summation(x * x, axes=(1,)) + 1.0)
        loss = ndl.ops.summation(z * z) + ndl.ops.max(h).reshape(())
        loss.backward()
        assert loss.device == dev
        return [loss.numpy(), x.grad.numpy(), y.grad.numpy(), w.grad.numpy()]

    cpu_out, cuda_out = _both(run)
    for a, b in zip(cpu_out, cuda_out):
        _close(a, b)


@needs_nd
@pytest.mark.parametrize("device", DEVICES)
def test_mlp_softmax_loss_sgd_step(device):
    X = rand(32, 20)
    y = np.random.randint(0, 10, 32)

    def run(dev):
        np.random.seed(1)  # same initial weights on both devices
        model = ndl.nn.Sequential(ndl.nn.Linear(20, 64, device=dev), ndl.nn.ReLU(),
                                  ndl.nn.Linear(64, 10, device=dev))
        opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for _ in range(3):
            opt.reset_grad()
            loss = ndl.nn.SoftmaxLoss()(model(ndl.Tensor(X, device=dev)), ndl.Tensor(y, device=dev))
            loss.backward()
            opt.step()
            losses.append(loss.numpy())
        return losses + [p.numpy() for p in model.parameters()]

    cpu_out, cuda_out = _both(run)
    for a, b in zip(cpu_out, cuda_out):
        _close(a, b, rtol=1e-3, atol=1e-4)


@needs_nd
@pytest.mark.parametrize("device", DEVICES)
def test_conv_layernorm_forward_backward(device):
    X = rand(2, 3, 9, 8)

    def run(dev):
        np.random.seed(2)
        conv = ndl.nn.Conv(3, 4, 3, stride=2, device=dev)
        norm = ndl.nn.LayerNorm1d(4 * 5 * 4, device=dev)
        x = ndl.Tensor(X, device=dev, requires_grad=True)
        out = norm(conv(x).reshape((2, 4 * 5 * 4)))
        loss = ndl.ops.summation(out * out * 0.5 + out)
        loss.backward()
        return [out.numpy(), x.grad.numpy(), conv.weight.grad.numpy()]

    cpu_out, cuda_out = _both(run)
    for a, b in zip(cpu_out, cuda_out):
        _close(a, b, rtol=1e-3, atol=1e-4)


@needs_nd
@pytest.mark.parametrize("device", DEVICES)
def test_tensor_to_device(device):
    A = rand(3, 4)
    t = ndl.Tensor(A, device=device, requires_grad=True)
    assert t.device == device and t.cached_data.device == device
    c = ndl.Tensor(t, device=nd.cpu())
    assert c.device == nd.cpu()
    _close(A, c.numpy(), rtol=0, atol=0)
    assert ndl.init.rand(2, 3, device=device).device == device
    assert ndl.init.zeros(2, 3, device=device).device == device
