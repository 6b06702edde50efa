"""NDArray backend tests: every feature against numpy on cpu() and cpu_numpy(), and on cuda()
where it runs (WITH_CUDA; skipped without a GPU, emulated with NEEDLE_TEST_CUDA_EMULATE=1)."""
import numpy as np
import pytest

import needle.backend_ndarray as nd
from needle.backend_ndarray import ndarray_backend_numpy
from tests.cuda.devices import CUDA_PARAM

DEVICES = [pytest.param(nd.cpu(), id="cpu"), pytest.param(nd.cpu_numpy(), id="cpu_numpy")]
#: the tests that also run on cuda() (the cuda-only ones are in tests/cuda/test_eager_cuda.py)
WITH_CUDA = DEVICES + [CUDA_PARAM]
RTOL = 1e-5


def rand(*shape, low=-1.0, high=1.0):
    return np.random.uniform(low, high, shape).astype(np.float32)


def check(a, ref, rtol=RTOL, atol=1e-6):
    out = a.numpy() if isinstance(a, nd.NDArray) else a
    assert out.shape == np.asarray(ref).shape, (out.shape, np.asarray(ref).shape)
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)


# ---------------------------------------------------------------------------
# devices, construction
# ---------------------------------------------------------------------------
def test_cpu_module_is_compiled():
    assert nd.CPU_BACKEND_COMPILED, "the C++ cpu backend is not built (pip install -e .)"
    assert nd.cpu().mod is not ndarray_backend_numpy
    assert nd.cpu().mod.__tile_size__ == 8


def test_devices():
    assert str(nd.cpu()) == "cpu()" and repr(nd.cpu()) == "cpu()"
    assert str(nd.cpu_numpy()) == "cpu_numpy()"
    assert str(nd.cuda()) == "cuda()"
    assert nd.cpu() == nd.BackendDevice("cpu", None)
    assert nd.cpu() != nd.cpu_numpy()
    assert nd.default_device() == nd.cpu()
    assert nd.cpu().enabled() and nd.cpu_numpy().enabled()
    assert isinstance(nd.cuda().enabled(), bool)
    assert [str(d) for d in nd.all_devices()] == ["cpu()", "cuda()", "cpu_numpy()"]
    assert nd.cpu().Array is nd.cpu().mod.Array  # falls through to the module


@pytest.mark.parametrize("device", WITH_CUDA)
def test_device_helpers_rng(device):
    np.random.seed(3)
    ref = np.random.randn(4, 5).astype(np.float32)
    np.random.seed(3)
    check(device.randn(4, 5), ref, rtol=0, atol=0)
    np.random.seed(3)
    ref = np.random.rand(2, 3).astype(np.float32)
    np.random.seed(3)
    check(device.rand(2, 3), ref, rtol=0, atol=0)
    check(device.one_hot(5, np.array([1, 3])), np.eye(5, dtype=np.float32)[[1, 3]])
    assert device.empty((2, 3)).shape == (2, 3)
    check(device.full((2, 3), 7.5), np.full((2, 3), 7.5, np.float32))


@pytest.mark.parametrize("device", DEVICES)
def test_construct_and_properties(device):
    A = rand(3, 4)
    a = nd.NDArray(A, device=device)
    assert a.shape == (3, 4) and a.strides == (4, 1) and a.ndim == 2 and a.size == 12
    assert a.dtype == "float32" and a.device == device and len(a) == 3
    check(a, A, rtol=0, atol=0)
    b = nd.NDArray(a)  # copy
    assert b._handle is not a._handle and b.device == device
    check(b, A, rtol=0, atol=0)
    check(nd.NDArray([[1, 2], [3, 4]], device=device), np.array([[1, 2], [3, 4]], np.float32))
    check(nd.array(np.arange(6, dtype=np.float64), device=device), np.arange(6, dtype=np.float32))
    assert np.asarray(a).dtype == np.float32
    assert "device=" + str(device) in repr(a)
    assert str(a) == str(A)
    c = a.to(nd.cpu_numpy() if device == nd.cpu() else nd.cpu())
    assert c.device != device
    check(c, A, rtol=0, atol=0)
    z = nd.array(3.5, device=device)
    assert z.shape == () and float(z) == 3.5
    assert a.astype("float32")._handle is not a._handle
    with pytest.raises(TypeError):
        a.astype("int32")


@pytest.mark.parametrize("device", WITH_CUDA)
def test_fill_and_module_constructors(device):
    for shape in ((3, 2), (300, 7)):
        a = nd.empty(shape, device=device)
        a.fill(2.0)
        check(a, np.full(shape, 2.0, np.float32))
    check(nd.zeros((2, 2), device=device), np.zeros((2, 2), np.float32))
    check(nd.ones((2,), device=device), np.ones(2, np.float32))
    check(nd.full((2, 1), -3.0, device=device), np.full((2, 1), -3.0, np.float32))
    assert nd.full((2,), 1.0).device == nd.cpu()


# ---------------------------------------------------------------------------
# views
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", WITH_CUDA)
def test_reshape_permute_broadcast_share_memory(device):
    A = rand(2, 3, 4)
    a = nd.array(A, device=device)
    r = a.reshape((4, 6))
    assert r._handle is a._handle and r.strides == (6, 1)
    check(r, A.reshape(4, 6), rtol=0, atol=0)
    check(a.reshape((-1, 4)), A.reshape(-1, 4), rtol=0, atol=0)
    check(a.reshape(24), A.reshape(24), rtol=0, atol=0)
    p = a.permute((2, 0, 1))
    assert p._handle is a._handle
    assert p.strides == tuple(s // 4 for s in A.transpose(2, 0, 1).strides)
    check(p, A.transpose(2, 0, 1), rtol=0, atol=0)
    check(a.transpose(), A.transpose(), rtol=0, atol=0)
    check(nd.transpose(a, (1, 0, 2)), A.transpose(1, 0, 2), rtol=0, atol=0)
    B = rand(3, 1)
    b = nd.array(B, device=device)
    bb = b.broadcast_to((2, 3, 5))
    assert bb.strides == (0, 1, 0) and bb._handle is b._handle
    check(bb, np.broadcast_to(B, (2, 3, 5)), rtol=0, atol=0)
    check(nd.broadcast_to(b, (3, 4)), np.broadcast_to(B, (3, 4)), rtol=0, atol=0)
    assert a.flat.shape == (24,)


@pytest.mark.parametrize("device", WITH_CUDA)
def test_ptr_sharing(device):
    a = nd.array(rand(4, 4), device=device)
    ptr = a._handle.ptr()
    assert a[1:3, ::2]._handle.ptr() == ptr
    assert a.permute((1, 0))._handle.ptr() == ptr
    a[0, 0] = 5.0
    assert a._handle.ptr() == ptr
    assert (a + 1)._handle.ptr() != ptr


@pytest.mark.parametrize("n", [0, 1, 1000, 1 << 18])
def test_cpu_buffer_protocol_is_the_array_memory(n):
    """numpy (and mpi4py's messages) see a cpu buffer's memory itself: every element, float32,
    writable both ways, at the buffer's address."""
    x = rand(n)
    a = nd.array(x, device=nd.cpu())
    view = np.asarray(a._handle)
    assert view.dtype == np.float32 and view.shape == (n,) and view.flags.writeable
    np.testing.assert_array_equal(view, x)
    if n:
        assert view.ctypes.data == a._handle.ptr()
        view[-1] = -7.0
        assert a.numpy()[-1] == -7.0
        a[0] = 3.0
        assert view[0] == 3.0
    assert memoryview(a._handle).nbytes == 4 * n


@pytest.mark.parametrize("device", WITH_CUDA)
@pytest.mark.parametrize("idx", [
    (slice(1, 3), slice(None)),
    (slice(None, None, 2), slice(1, None, 3)),
    (1, slice(2, 5)),
    (slice(0, 4, 3), 4),
    (slice(-3, None), slice(None, -1)),
    (slice(5, 2), slice(None)),
    (slice(None), slice(0, 100)),
    2,
    Ellipsis,
])
def test_getitem(device, idx):
    A = rand(5, 6)
    a = nd.array(A, device=device)
    v = a[idx]
    assert v._handle is a._handle
    idx_t = idx if isinstance(idx, tuple) else (idx,)
    np_idx = tuple(slice(i, i + 1) if isinstance(i, int) else i for i in idx_t)
    ref = A[np_idx]
    check(v, ref, rtol=0, atol=0)
    if ref.size:  # strides as numpy's, except on size-1 axes where they do not matter
        assert all(s == r // 4 for s, r, d in zip(v.strides, ref.strides, ref.shape) if d > 1)
    check(v.compact(), ref, rtol=0, atol=0)
    assert v.compact().is_compact()


@pytest.mark.parametrize("device", DEVICES)
def test_getitem_errors(device):
    a = nd.array(rand(3, 4), device=device)
    with pytest.raises(IndexError):
        a[3, 0]
    with pytest.raises(IndexError):
        a[-1]
    with pytest.raises(IndexError):
        a[0, 0, 0]
    with pytest.raises(ValueError):
        a[::-1]
    # dim is the axis index (the course's contract): axis 1 has size 4, axis 0 size 3
    assert a.process_slice(slice(None, -1, None), 1) == slice(0, 3, 1)
    assert a.process_slice(slice(1, None), 1) == slice(1, 4, 1)
    assert a.process_slice(slice(1, None), 0) == slice(1, 3, 1)
    assert a.process_slice(slice(None), 0) == slice(0, 3, 1)


def _views(A, a):
    """(NDArray view, numpy reference) pairs of many strided layouts."""
    yield a.permute((2, 1, 0)), A.transpose(2, 1, 0)
    yield a[1:3, ::2, 3:], A[1:3, ::2, 3:]
    yield a.permute((1, 0, 2))[1:, :, ::5], A.transpose(1, 0, 2)[1:, :, ::5]
    yield a[:, 2:3, :].broadcast_to((4, 7, 6)), np.broadcast_to(A[:, 2:3, :], (4, 7, 6))
    yield a.flip((0, 2)), np.flip(A, (0, 2))
    yield a[3, 4, 5], A[3:4, 4:5, 5:6]
    yield a.as_strided((3, 3), (1, 6)), np.lib.stride_tricks.as_strided(A, (3, 3), (4, 24))


@pytest.mark.parametrize("device", WITH_CUDA)
def test_compact_strided_views(device):
    A = rand(4, 5, 6)
    a = nd.array(A, device=device)
    for view, ref in _views(A, a):
        c = view.compact()
        assert c.is_compact() and c.strides == nd.NDArray.compact_strides(c.shape)
        check(c, ref, rtol=0, atol=0)
        check(view, ref, rtol=0, atol=0)  # to_numpy of a strided view
    # many axes, large sizes (grid-stride loops), 64-bit offsets are not needed here
    B = rand(2, 3, 2, 3, 2, 3, 2, 3, 2, 3)
    perm = (9, 0, 8, 1, 7, 2, 6, 3, 5, 4)
    check(nd.array(B, device=device).permute(perm).compact(), B.transpose(perm), rtol=0, atol=0)
    C = rand(300, 129, 31)
    c = nd.array(C, device=device)
    check(c.permute((2, 0, 1)).compact(), C.transpose(2, 0, 1), rtol=0, atol=0)
    check(c[::3, 1:, ::2].compact(), C[::3, 1:, ::2], rtol=0, atol=0)
    with pytest.raises(IndexError):
        a.as_strided((200,), (1,))


@pytest.mark.parametrize("device", WITH_CUDA)
def test_setitem(device):
    A = rand(4, 6)
    a = nd.array(A, device=device)
    B = rand(2, 3)
    a[1:3, ::2] = nd.array(B, device=device)
    A[1:3, ::2] = B
    check(a, A, rtol=0, atol=0)
    a[0] = 9.0
    A[0:1] = 9.0
    check(a, A, rtol=0, atol=0)
    t = a.permute((1, 0))
    t[2:5, 1:3] = -1.0
    A.T[2:5, 1:3] = -1.0
    check(a, A, rtol=0, atol=0)
    C = rand(3, 2)
    t[::2, 1:3] = nd.array(C, device=device).permute((1, 0)).compact().permute((1, 0))
    A.T[::2, 1:3] = C
    check(a, A, rtol=0, atol=0)
    a[:, 0:2] = nd.array(rand(1, 2), device=device).broadcast_to((1, 2)).compact().reshape((1, 2))
    a[3, :] = np.arange(6, dtype=np.float32).reshape(1, 6)
    assert a.numpy()[3].tolist() == list(range(6))
    a[0:2, 1:4] = a[2:4, 0:3]  # source is a view of the destination's buffer
    ref = a.numpy().copy()
    with pytest.raises(ValueError):
        a[0:2, 0:2] = nd.array(rand(3, 3), device=device)
    check(a, ref, rtol=0, atol=0)
    # a big strided write
    D = rand(257, 300)
    d = nd.array(D, device=device)
    E = rand(129, 100)
    d[::2, 100:] = nd.array(np.repeat(E, 2, axis=1), device=device)
    D[::2, 100:] = np.repeat(E, 2, axis=1)
    check(d, D, rtol=0, atol=0)
    d[1::2, :7] = 3.0
    D[1::2, :7] = 3.0
    check(d, D, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# elementwise
# ---------------------------------------------------------------------------
BINARY = [
    ("add", lambda a, b: a + b, lambda a, b: a + b),
    ("sub", lambda a, b: a - b, lambda a, b: a - b),
    ("mul", lambda a, b: a * b, lambda a, b: a * b),
    ("div", lambda a, b: a / b, lambda a, b: a / b),
    ("maximum", lambda a, b: a.maximum(b), np.maximum),
    ("eq", lambda a, b: a == b, lambda a, b: (a == b).astype(np.float32)),
    ("ge", lambda a, b: a >= b, lambda a, b: (a >= b).astype(np.float32)),
    ("ne", lambda a, b: a != b, lambda a, b: (a != b).astype(np.float32)),
    ("gt", lambda a, b: a > b, lambda a, b: (a > b).astype(np.float32)),
    ("lt", lambda a, b: a < b, lambda a, b: (a < b).astype(np.float32)),
    ("le", lambda a, b: a <= b, lambda a, b: (a <= b).astype(np.float32)),
    ("pow", lambda a, b: abs(a) ** b, lambda a, b: np.abs(a) ** b),
]


@pytest.mark.parametrize("device", WITH_CUDA)
@pytest.mark.parametrize("name,f,ref", BINARY, ids=[b[0] for b in BINARY])
@pytest.mark.parametrize("shape", [(7,), (4, 5), (3, 1000), (257, 129)])
def test_ewise_binary(device, name, f, ref, shape):
    A, B = rand(*shape), rand(*shape)
    if name in ("eq", "ge", "ne", "gt", "lt", "le"):
        B[::3] = A[::3]
    a, b = nd.array(A, device=device), nd.array(B, device=device)
    check(f(a, b), ref(A, B))
    # non-compact operands
    if len(shape) == 2:
        check(f(a.permute((1, 0)), b.permute((1, 0))), ref(A.T, B.T))


@pytest.mark.parametrize("device", WITH_CUDA)
@pytest.mark.parametrize("name,f,ref", BINARY, ids=[b[0] for b in BINARY])
@pytest.mark.parametrize("scalar", [0.0, -1.5, 2.0, 3.0, 0.5, -1.0, 1.0])
def test_scalar_binary(device, name, f, ref, scalar):
    A = rand(5, 13)
    A[0, :3] = scalar
    a = nd.array(A, device=device)
    s = np.float32(scalar)
    if name == "pow":
        with np.errstate(all="ignore"):
            check(abs(a) ** scalar, np.abs(A) ** s, rtol=1e-5)
        return
    with np.errstate(all="ignore"):
        check(f(a, scalar), ref(A, s))


@pytest.mark.parametrize("device", WITH_CUDA)
def test_reflected_and_unary_ops(device):
    A = rand(6, 7)
    a = nd.array(A, device=device)
    check(2.0 + a, 2 + A)
    check(2.0 - a, 2 - A)
    check(3.0 * a, 3 * A)
    check(1.5 / (a + 2.0), 1.5 / (A + 2))
    check(-a, -A)
    check(2.0 ** a, np.float32(2) ** A)
    check(abs(a), np.abs(A))
    check(a ** 2, A ** 2)
    check(nd.maximum(a, 0.0), np.maximum(A, 0))
    check(nd.maximum(0.0, a), np.maximum(A, 0))
    check(nd.minimum(a, 0.0), np.minimum(A, 0))
    check(a - a, np.zeros_like(A))


@pytest.mark.parametrize("device", WITH_CUDA)
@pytest.mark.parametrize("size", [1, 7, 8, 9, 100, 4099, 300001])
def test_unary_math(device, size):
    X = rand(size, low=-5, high=5)
    x = nd.array(X, device=device)
    check(x.exp(), np.exp(X), rtol=1e-5)
    check(nd.exp(x), np.exp(X), rtol=1e-5)
    check(x.tanh(), np.tanh(X), rtol=1e-5, atol=1e-7)
    P = np.abs(X) + 1e-3
    p = nd.array(P, device=device)
    check(p.log(), np.log(P), rtol=1e-5, atol=1e-7)
    check(p.sqrt(), np.sqrt(P), rtol=1e-6)
    check(nd.sqrt(p), np.sqrt(P), rtol=1e-6)
    check(-x, -X, rtol=0, atol=0)


@pytest.mark.parametrize("device", WITH_CUDA)
def test_edge_values(device):
    X = np.array([0.0, -0.0, 1.0, -1.0, 88.0, 89.0, -100.0, -104.0, 1e-40, 20.0, -20.0, 1e30,
                  np.inf, -np.inf, np.nan, 3.4e38, 1e-6], dtype=np.float32)
    x = nd.array(X, device=device)
    tiny = np.finfo(np.float32).tiny  # subnormal results may differ by a few subnormal ulps on a GPU
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(x.exp().numpy(), np.exp(X), rtol=1e-5, atol=tiny)
        np.testing.assert_allclose(x.tanh().numpy(), np.tanh(X), rtol=1e-5, atol=1e-30)
        np.testing.assert_allclose(x.log().numpy(), np.log(X), rtol=1e-5, atol=0)
        np.testing.assert_allclose(x.sqrt().numpy(), np.sqrt(X), rtol=1e-6)
    Y = np.array([1.0, np.nan, -np.inf, np.inf, 0.0, 5.0, np.nan, 2.0, 3.0, np.nan, -1.0, 0.0,
                  np.inf, 1.0, 2.0, -3.0, 4.0], dtype=np.float32)
    y = nd.array(Y, device=device)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal((x + y).numpy(), X + Y)
        np.testing.assert_array_equal(x.maximum(y).numpy(), np.maximum(X, Y))
        np.testing.assert_array_equal(y.maximum(x).numpy(), np.maximum(Y, X))
        np.testing.assert_array_equal(x.maximum(0.0).numpy(), np.maximum(X, 0))
        np.testing.assert_array_equal((x == y).numpy(), (X == Y).astype(np.float32))
        np.testing.assert_array_equal((x >= y).numpy(), (X >= Y).astype(np.float32))
        np.testing.assert_array_equal((x != y).numpy(), (X != Y).astype(np.float32))
        np.testing.assert_array_equal((x / 0.0).numpy(), X / np.float32(0))
    assert np.isnan(y.max().numpy())
    big = np.tile(Y, 1000)
    assert np.isnan(nd.array(big, device=device).max().numpy())
    assert np.isnan(nd.array(big, device=device).sum().numpy())
    check(nd.array(big, device=device).argmax(), np.argmax(big).astype(np.float32))


def ulps(got, want):
    """Distance in float32 units in the last place, elementwise (0 where both are NaN, 0 and -0 apart)."""
    def ordered(x):
        i = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    both_nan = np.isnan(got) & np.isnan(want)
    return np.where(both_nan, 0, np.abs(ordered(got) - ordered(want)))


@pytest.mark.parametrize("device", WITH_CUDA)
@pytest.mark.parametrize("name", ["sin", "cos"])
def test_sin_cos(device, name):
    """Within 4 ulps of numpy's float32 (each side is within 2 of the exact value) for |x| up to 1e4,
    bit-exact on 0, -0, inf, nan and subnormals, on contiguous arrays (vector tails included)
    and strided views."""
    rng = np.random.default_rng(1)
    wide = np.concatenate([rng.uniform(-1e4, 1e4, 100003), rng.uniform(-10, 10, 1001),
                           np.arange(-400, 401) * (np.pi / 4)]).astype(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-40, -1e-40, 1e-45, -1.17e-38,
                        np.finfo(np.float32).tiny, 1e-20, 3.0e-4, np.pi, 1e4, -1e4], dtype=np.float32)
    f = getattr(np, name)
    with np.errstate(invalid="ignore"):
        for X in (wide, special, wide[:13]):
            got = getattr(nd.array(X, device=device), name)().numpy()
            assert ulps(got, f(X)).max() <= 4, X[np.argmax(ulps(got, f(X)))]
        got = getattr(nd, name)(nd.array(special, device=device)).numpy()
        np.testing.assert_array_equal(got, f(special))
        signed = ~np.isnan(f(special))  # a NaN's sign means nothing (sin(inf): -nan on x86, +nan on a GPU)
        np.testing.assert_array_equal(np.signbit(got[signed]), np.signbit(f(special[signed])))
        W = wide[:100000].reshape(40, 50, 50)
        w = nd.array(W, device=device)
        for view, ref in ((w[::3, 1:, ::7], W[::3, 1:, ::7]), (w.permute((2, 0, 1)), W.transpose(2, 0, 1)),
                          (w[5:6, 2:3].broadcast_to((4, 1, 1, 50)), np.broadcast_to(W[5:6, 2:3], (4, 1, 1, 50)))):
            got = getattr(view, name)()
            assert got.shape == ref.shape and got.is_compact()
            assert ulps(got.numpy(), f(ref)).max() <= 4


@pytest.mark.parametrize("device", WITH_CUDA)
def test_shape_mismatch_errors(device):
    a = nd.array(rand(3, 4), device=device)
    b = nd.array(rand(4, 3), device=device)
    for f in (lambda: a + b, lambda: a * b, lambda: a / b, lambda: a.maximum(b), lambda: a == b,
              lambda: a - b, lambda: a ** b):
        with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
            f()
    other = nd.cpu_numpy() if device == nd.cpu() else nd.cpu()
    with pytest.raises(ValueError):
        a + nd.array(rand(3, 4), device=other)


# ---------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------
AXES_3D = [None, 0, 1, 2, -1, (0, 1), (1, 2), (0, 2), (0, 1, 2), (2, 0)]


@pytest.mark.parametrize("device", WITH_CUDA)
@pytest.mark.parametrize("axis", AXES_3D, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_sum_max(device, axis, keepdims):
    A = rand(5, 6, 7)
    a = nd.array(A, device=device)
    check(a.sum(axis=axis, keepdims=keepdims), A.sum(axis=axis, keepdims=keepdims), atol=1e-5)
    check(nd.sum(a, axis=axis, keepdims=keepdims), A.sum(axis=axis, keepdims=keepdims), atol=1e-5)
    check(a.max(axis=axis, keepdims=keepdims), A.max(axis=axis, keepdims=keepdims), rtol=0, atol=0)
    check(nd.max(a, axis, keepdims), A.max(axis=axis, keepdims=keepdims), rtol=0, atol=0)
    check(a.min(axis=axis, keepdims=keepdims), A.min(axis=axis, keepdims=keepdims), rtol=0, atol=0)
    # non-compact input
    t = a.permute((2, 0, 1))
    check(t.sum(axis=axis, keepdims=keepdims), A.transpose(2, 0, 1).sum(axis=axis, keepdims=keepdims), atol=1e-5)


@pytest.mark.parametrize("device", WITH_CUDA)
@pytest.mark.parametrize("shape,axis", [((1 << 20,), None), ((3, 300000), 1), ((300000, 3), 0), ((300000, 3), 1),
                                        ((2048, 512), 0), ((512, 2048), 1), ((8, 100001), None), ((40, 33), 1),
                                        ((7, 5000, 3), 1), ((100, 70), 0)])
def test_large_reductions(device, shape, axis):
    A = rand(*shape)
    a = nd.array(A, device=device)
    np.testing.assert_allclose(a.sum(axis=axis).numpy(), A.astype(np.float64).sum(axis=axis), rtol=1e-4,
                               atol=1e-3)
    check(a.max(axis=axis), A.max(axis=axis), rtol=0, atol=0)


@pytest.mark.parametrize("device", WITH_CUDA)
def test_reduction_edge_cases(device):
    a = nd.array(rand(3, 0), device=device)
    check(a.sum(axis=1), np.zeros(3, np.float32))
    check(nd.array(rand(0, 3), device=device).sum(axis=0), np.zeros(3, np.float32))
    with pytest.raises(ValueError):
        a.max(axis=1)
    b = nd.array(rand(3, 4), device=device)
    with pytest.raises(np.exceptions.AxisError):
        b.sum(axis=2)
    with pytest.raises(ValueError):
        b.sum(axis=(0, 0))
    assert b.sum().shape == () and b.sum(keepdims=True).shape == (1, 1)
    check(nd.array(np.full(100, -np.inf, np.float32), device=device).max(), np.float32(-np.inf), rtol=0, atol=0)


@pytest.mark.parametrize("device", WITH_CUDA)
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_argmax(device, axis, keepdims):
    A = rand(4, 5, 6)
    A[1, 2, :] = A.max() + 1  # ties: first index wins
    a = nd.array(A, device=device)
    out = a.argmax(axis=axis, keepdims=keepdims)
    assert out.dtype == "float32"
    ref = np.argmax(A, axis=axis, keepdims=keepdims).astype(np.float32)
    check(out, ref, rtol=0, atol=0)
    check(nd.argmax(a, axis=axis, keepdims=keepdims), ref, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# matmul
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", WITH_CUDA)
@pytest.mark.parametrize("m,n,p", [(1, 1, 1), (7, 13, 5), (16, 16, 16), (33, 65, 17), (64, 64, 64), (65, 63, 129),
                                   (128, 64, 96), (1, 300, 1), (257, 1, 130), (200, 513, 70), (3, 0, 4), (0, 3, 4)])
def test_matmul(device, m, n, p):
    A, B = rand(m, n), rand(n, p)
    a, b = nd.array(A, device=device), nd.array(B, device=device)
    check(a @ b, A @ B, rtol=1e-4, atol=1e-5)
    check(nd.matmul(a, b), A @ B, rtol=1e-4, atol=1e-5)
    if m and p:
        check(a.permute((1, 0)).compact().permute((1, 0)) @ b, A @ B, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", WITH_CUDA)
def test_matmul_1024(device):
    A, B = rand(1024, 1024), rand(1024, 1024)
    out = (nd.array(A, device=device) @ nd.array(B, device=device)).numpy()
    np.testing.assert_allclose(out, A.astype(np.float64) @ B.astype(np.float64), rtol=1e-3, atol=1e-3)


def test_matmul_fallback_kernel():
    """needle's own small_gemm kernel, which runs every product when BLAS is unavailable."""
    mod = nd.cpu().mod
    try:
        mod.set_blas_enabled(False)
        for m, n, p in [(1, 1, 1), (5, 7, 3), (67, 300, 45), (256, 256, 256), (4, 1, 33)]:
            A, B = rand(m, n), rand(n, p)
            out = nd.array(A) @ nd.array(B)
            np.testing.assert_allclose(out.numpy(), A @ B, rtol=1e-4, atol=1e-4)
        A, B = rand(3, 70, 80), rand(3, 80, 90)
        np.testing.assert_allclose(nd.matmul(nd.array(A), nd.array(B)).numpy(), A @ B, rtol=1e-4, atol=1e-4)
    finally:
        mod.set_blas_enabled(True)


@pytest.mark.parametrize("device", WITH_CUDA)
@pytest.mark.parametrize("sa,sb", [((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)),
                                   ((2, 1, 3, 4), (5, 4, 2)), ((1, 3, 4), (6, 4, 2)),
                                   ((64, 8, 8), (64, 8, 8)), ((2, 2, 60, 70), (2, 2, 70, 50)),
                                   ((3, 130, 65), (3, 65, 67))])
def test_matmul_batched(device, sa, sb):
    A, B = rand(*sa), rand(*sb)
    check(nd.matmul(nd.array(A, device=device), nd.array(B, device=device)), np.matmul(A, B), rtol=1e-4,
          atol=1e-5)
    check(nd.array(A, device=device) @ nd.array(B, device=device), A @ B, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", WITH_CUDA)
def test_matmul_errors(device):
    a = nd.array(rand(3, 4), device=device)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 4\)"):
        a @ a
    with pytest.raises(ValueError):
        nd.matmul(nd.array(rand(2, 3, 4), device=device), nd.array(rand(3, 4, 5), device=device))


@pytest.mark.parametrize("device", WITH_CUDA)
@pytest.mark.parametrize("m,n,p", [(8, 8, 8), (16, 24, 32), (64, 128, 72)])
def test_matmul_tiled(device, m, n, p):
    A, B = rand(m, n), rand(n, p)
    check(nd.matmul_tiled(nd.array(A, device=device), nd.array(B, device=device)), A @ B, rtol=1e-4, atol=1e-5)
    # directly through the module, with the tiled layout and a dirty output buffer
    t = 8
    mod = device.mod
    at = A.reshape(m // t, t, n // t, t).transpose(0, 2, 1, 3).copy()
    bt = B.reshape(n // t, t, p // t, t).transpose(0, 2, 1, 3).copy()
    ha, hb, ho = mod.Array(m * n), mod.Array(n * p), mod.Array(m * p)
    mod.from_numpy(at, ha)
    mod.from_numpy(bt, hb)
    mod.fill(ho, 123.0)
    mod.matmul_tiled(ha, hb, ho, m, n, p)
    out = mod.to_numpy(ho, (m // t, p // t, t, t), (p * t, t * t, t, 1), 0)
    np.testing.assert_allclose(out.transpose(0, 2, 1, 3).reshape(m, p), A @ B, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        mod.matmul_tiled(ha, hb, ho, m + 1, n, p)


# ---------------------------------------------------------------------------
# data movement
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", WITH_CUDA)
@pytest.mark.parametrize("axes", [0, 1, 2, (0, 2), (0, 1, 2), None, -1])
def test_flip(device, axes):
    A = rand(3, 4, 5)
    a = nd.array(A, device=device)
    out = nd.flip(a, axes)
    assert out.is_compact()
    check(out, np.flip(A, axes), rtol=0, atol=0)
    check(a.permute((2, 1, 0)).flip(axes), np.flip(A.transpose(2, 1, 0), axes), rtol=0, atol=0)


@pytest.mark.parametrize("device", WITH_CUDA)
def test_pad(device):
    A = rand(2, 3, 4)
    a = nd.array(A, device=device)
    pw = ((0, 0), (1, 2), (3, 0))
    check(a.pad(pw), np.pad(A, pw), rtol=0, atol=0)
    check(nd.pad(a, pw), np.pad(A, pw), rtol=0, atol=0)
    check(nd.pad(a.permute((2, 1, 0)), pw), np.pad(A.transpose(2, 1, 0), pw), rtol=0, atol=0)
    with pytest.raises(ValueError):
        a.pad(((1, 1),))


@pytest.mark.parametrize("device", WITH_CUDA)
def test_where(device):
    C = (rand(4, 5) > 0).astype(np.float32)
    A, B = rand(4, 5), rand(4, 5)
    c, a, b = (nd.array(x, device=device) for x in (C, A, B))
    check(nd.where(c, a, b), np.where(C != 0, A, B), rtol=0, atol=0)
    check(nd.where(c, a, 0.0), np.where(C != 0, A, 0), rtol=0, atol=0)
    with pytest.raises(ValueError):
        nd.where(c, a, nd.array(rand(5, 4), device=device))


@pytest.mark.parametrize("device", WITH_CUDA)
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_concatenate_stack(device, axis):
    arrs = [rand(2, 3, 4) for _ in range(3)]
    nds = [nd.array(x, device=device) for x in arrs]
    check(nd.concatenate(nds, axis=axis), np.concatenate(arrs, axis=axis), rtol=0, atol=0)
    check(nd.stack(nds, axis=axis), np.stack(arrs, axis=axis), rtol=0, atol=0)
    other = [rand(2, 3, 4), rand(2, 5, 4)]
    check(nd.concatenate([nd.array(x, device=device) for x in other], axis=1), np.concatenate(other, axis=1),
          rtol=0, atol=0)
    with pytest.raises(ValueError):
        nd.concatenate([nd.array(x, device=device) for x in other], axis=0)
    with pytest.raises(ValueError):
        nd.stack([nd.array(x, device=device) for x in other])
    A = rand(2, 3, 4)
    for got, ref in zip(nd.split(nd.array(A, device=device), 2, axis=2), np.split(A, 2, axis=2)):
        check(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("device", WITH_CUDA)
def test_take_index_add(device):
    A = rand(10, 3, 2)
    a = nd.array(A, device=device)
    idx = np.array([[3, 0, 9], [3, 3, 1]])
    check(nd.take(a, idx), np.take(A, idx, axis=0), rtol=0, atol=0)
    check(nd.take(a, nd.array(idx.astype(np.float32), device=device)), A[idx], rtol=0, atol=0)
    V = rand(2, 3, 3, 2)
    ref = np.zeros((10, 3, 2), np.float32)
    np.add.at(ref, idx.reshape(-1), V.reshape(-1, 3, 2))
    check(nd.index_add(idx, nd.array(V, device=device), 10), ref, atol=1e-6)
    check(nd.index_add(nd.array(idx.astype(np.float32), device=device), nd.array(V, device=device), 10), ref,
          atol=1e-6)
    big_idx = np.random.randint(0, 50, 5000)
    W = rand(5000, 33)
    ref = np.zeros((50, 33), np.float32)
    np.add.at(ref, big_idx, W)
    check(nd.index_add(big_idx, nd.array(W, device=device), 50), ref, rtol=1e-4, atol=1e-4)
    check(nd.take(nd.array(W, device=device), big_idx[:700]), W[big_idx[:700]], rtol=0, atol=0)
    for bad in (np.array([0, 10]), np.array([-1]), np.array([1.5])):
        with pytest.raises(IndexError):
            nd.take(a, nd.array(bad.astype(np.float32), device=device))
        with pytest.raises(IndexError):
            nd.index_add(nd.array(bad.astype(np.float32), device=device), nd.array(rand(len(bad), 3, 2),
                                                                                   device=device), 10)
    with pytest.raises(IndexError):
        nd.take(a, np.array([11]))


@pytest.mark.parametrize("device", WITH_CUDA)
@pytest.mark.parametrize("k,stride", [(1, 1), (3, 1), (3, 2), ((2, 3), 1)])
def test_im2col(device, k, stride):
    A = rand(2, 7, 8, 3)
    out = nd.im2col(nd.array(A, device=device), k, stride)
    kh, kw = (k, k) if isinstance(k, int) else k
    ho, wo = (7 - kh) // stride + 1, (8 - kw) // stride + 1
    ref = np.zeros((2, ho, wo, kh, kw, 3), np.float32)
    for i in range(ho):
        for j in range(wo):
            ref[:, i, j] = A[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
    assert out.is_compact()
    check(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_reshape_errors(device):
    a = nd.array(rand(3, 4), device=device)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 2\)"):
        a.reshape((5, 2))
    with pytest.raises(ValueError):
        a.reshape((-1, 5))
    with pytest.raises(ValueError):
        a.permute((1, 0)).reshape((12,))
    check(nd.reshape(a.permute((1, 0)), (12,)), a.numpy().T.reshape(12), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 4\)"):
        a.broadcast_to((2, 4))
    with pytest.raises(ValueError):
        a.broadcast_to((4,))
    with pytest.raises(ValueError):
        a.permute((0, 0))


# ---------------------------------------------------------------------------
# low-level module validation: never a crash
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", WITH_CUDA)
def test_low_level_validation(device):
    mod = device.mod
    a, b, small = mod.Array(12), mod.Array(12), mod.Array(3)
    mod.fill(a, 1.0)
    bad_calls = [
        (lambda: mod.compact(a, b, (3, 5), (5, 1), 0), IndexError),
        (lambda: mod.compact(a, b, (3, 4), (4, 1), 1), IndexError),
        (lambda: mod.compact(a, small, (3, 4), (4, 1), 0), ValueError),
        (lambda: mod.compact(a, b, (3, 4), (4,), 0), ValueError),
        (lambda: mod.compact(a, b, (3, 4), (4, 1), -1), ValueError),
        (lambda: mod.compact(a, b, (2, 2), (-4, 1), 0), IndexError),
        (lambda: mod.compact(a, a, (3, 4), (4, 1), 0), ValueError),
        (lambda: mod.to_numpy(a, (13,), (1,), 0), IndexError),
        (lambda: mod.to_numpy(a, (2,), (100,), 0), IndexError),
        (lambda: mod.ewise_setitem(small, a, (3, 4), (4, 1), 0), ValueError),
        (lambda: mod.ewise_setitem(a, small, (3, 4), (4, 1), 0), IndexError),
        (lambda: mod.scalar_setitem(12, 1.0, small, (3, 4), (4, 1), 0), IndexError),
        (lambda: mod.scalar_setitem(5, 1.0, a, (3, 4), (4, 1), 0), ValueError),
        (lambda: mod.ewise_add(a, small, b), ValueError),
        (lambda: mod.ewise_mul(a, b, small), ValueError),
        (lambda: mod.scalar_add(a, 1.0, small), ValueError),
        (lambda: mod.ewise_exp(a, small), ValueError),
        (lambda: mod.ewise_where(a, b, small, b), ValueError),
        (lambda: mod.matmul(a, b, small, 3, 4, 3), ValueError),
        (lambda: mod.matmul(a, b, b, 4, 4, 4), ValueError),
        (lambda: mod.matmul(a, b, b, -1, 4, 3), ValueError),
        (lambda: mod.matmul_batched(a, b, b, 2, 2, 3, 2, 6, 6), ValueError),
        (lambda: mod.matmul_batched(a, b, b, 3, 2, 2, 2, 6, 0), ValueError),
        (lambda: mod.reduce_sum(a, small, 5), ValueError),
        (lambda: mod.reduce_max(a, b, 2), ValueError),
        (lambda: mod.reduce_argmax(a, small, -4), ValueError),
        (lambda: mod.reduce_sum_axis(a, small, 2, 3, 3), ValueError),
        (lambda: mod.from_numpy(np.zeros(5, np.float32), a), ValueError),
        (lambda: mod.take_rows(a, small, b, 5, 3), ValueError),
        (lambda: mod.index_add_rows(small, a, b, 12, 1), ValueError),
        (lambda: mod.Array(1 << 50), ValueError),
    ]
    for call, exc in bad_calls:
        with pytest.raises(exc):
            call()
    # a gather index out of range raises IndexError and leaves the output alone
    idx = mod.Array(2)
    mod.from_numpy(np.array([1, 4], np.float32), idx)
    out = mod.Array(6)
    with pytest.raises(IndexError):
        mod.take_rows(a, idx, out, 4, 3)
    mod.fill(b, 0.0)
    with pytest.raises(IndexError):
        mod.index_add_rows(out, idx, b, 4, 3)
    assert mod.to_numpy(b, (12,), (1,), 0).tolist() == [0.0] * 12
    # argument of the wrong type
    with pytest.raises(TypeError):
        mod.ewise_add(a, None, b)


def test_cpu_threads_and_blas():
    mod = nd.cpu().mod
    n0 = mod.get_num_threads()
    try:
        mod.set_num_threads(1)
        assert mod.get_num_threads() == 1
        A = rand(300, 300)
        np.testing.assert_allclose((nd.array(A) @ nd.array(A)).numpy(), A @ A, rtol=1e-4, atol=1e-4)
        X = rand(1 << 20)
        check(nd.array(X).exp(), np.exp(X), rtol=1e-5)
        mod.set_num_threads(3)
        check(nd.array(X).sum(), np.float32(X.astype(np.float64).sum()), rtol=1e-4, atol=1e-3)
        with pytest.raises(ValueError):
            mod.set_num_threads(0)
    finally:
        mod.set_num_threads(n0)
    assert isinstance(nd.BLAS_LOADED, bool)


@pytest.mark.parametrize("value, expect", [("1", "1"), ("3", "3"), ("", "cores"), ("zero", "error")])
def test_needle_num_threads_sets_the_pool(value, expect):
    """NEEDLE_NUM_THREADS was documented (and set by the distributed runs) but read by nothing:
    every process ran one pool thread per core."""
    import os
    import subprocess
    import sys

    code = "import needle as ndl; ndl.cpu(); print(ndl.get_num_threads())"
    env = dict(os.environ, NEEDLE_NUM_THREADS=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if expect == "error":
        assert out.returncode != 0 and "NEEDLE_NUM_THREADS must be a positive number" in out.stderr
    else:
        assert out.returncode == 0, out.stderr
        want = str(os.cpu_count()) if expect == "cores" else expect
        assert out.stdout.strip() == want


def _child_work(q):
    X = np.arange(1 << 20, dtype=np.float32) / (1 << 20)
    q.put(float((nd.array(X).exp() + 1.0).sum().numpy()))


def test_cpu_pool_after_fork():
    """Kernels keep working (multi-threaded) in a forked child, e.g. a DataLoader worker."""
    import multiprocessing as mp

    X = np.arange(1 << 20, dtype=np.float32) / (1 << 20)
    expected = float((np.exp(X.astype(np.float64)) + 1.0).sum())
    nd.array(X).exp().sum()  # parent pool in use before the fork
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_work, args=(q,))
    p.start()
    got = q.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0
    assert abs(got - expected) / expected < 1e-5


@pytest.mark.parametrize("device", WITH_CUDA)
def test_zero_dim(device):
    a = nd.array(np.float32(2.5), device=device)
    assert a.shape == () and a.size == 1
    check(a + 1.0, np.float32(3.5))
    check(a.sum(), np.float32(2.5))
    check(a.max(keepdims=True), np.float32(2.5))
    check(a.argmax(), np.float32(0))
    check(a.reshape((1, 1)), np.full((1, 1), 2.5, np.float32))
    check(a.broadcast_to((2, 3)), np.full((2, 3), 2.5, np.float32))


def test_cuda_without_a_gpu_says_so():
    if nd.cuda().enabled():
        pytest.skip("a GPU is visible")
    with pytest.raises(RuntimeError, match=r"cuda\(\) cannot be used here: .*cuda backend module"):
        nd.array(np.ones(3, dtype="float32"), device=nd.cuda())
    assert not hasattr(nd.cuda(), "Array")  # still an AttributeError for hasattr


def test_a_huge_shape_is_a_clear_value_error():
    with pytest.raises(ValueError, match=r"too large"):
        nd.empty((2 ** 40, 2 ** 40), device=nd.cpu())


def test_new_arrays_validate_their_shape_every_time():
    """The layout of a new array is memoised per shape: a bad shape still fails on every call,
    and numpy integer dimensions give a shape of Python ints."""
    for _ in range(2):
        with pytest.raises(ValueError, match=r"negative dimensions are not allowed: \(-1, -1\)"):
            nd.NDArray.make((-1, -1))
    a = nd.NDArray.make((np.int64(3), 2))
    assert a.shape == (3, 2) and all(type(s) is int for s in a.shape) and a.strides == (2, 1)
    assert nd.NDArray.make([3, 2]).shape == (3, 2)
