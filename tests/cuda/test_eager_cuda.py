"""The eager cuda() NDArray device against numpy, and Tensor ops on cuda() against cpu().

Every test is marked `cuda` and skipped unless ``ndl.cuda().enabled()`` (the module is built
and a GPU is visible).  ``NEEDLE_TEST_CUDA_EMULATE=1`` runs them on a machine without a GPU
against the same source built as C++ with its kernels run on the CPU (tests/cuda/emulator.py).

Structure follows tests/backend_ndarray/test_ndarray.py (parametrized over the device); the
tests that are the same on every device live there, with a `cuda` parameter.
"""

import numpy as np
import pytest

import needle as ndl
import needle.backend_ndarray as nd

from .devices import CUDA, SKIP_REASON


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA.enabled(), reason=SKIP_REASON)]
DEVICES = [pytest.param(CUDA, id="cuda")]
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


@pytest.mark.parametrize("device", DEVICES)
def test_device_helpers(device):
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
    a = nd.empty((300, 7), device=device)
    a.fill(2.0)
    check(a, np.full((300, 7), 2.0, np.float32))
    check(nd.zeros((2, 2), device=device), np.zeros((2, 2), np.float32))
    check(nd.ones((2,), device=device), np.ones(2, np.float32))


# ---------------------------------------------------------------------------
# views, compact, setitem
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_views_share_memory(device):
    A = rand(2, 3, 4)
    a = nd.array(A, device=device)
    r = a.reshape((4, 6))
    assert r._handle is a._handle and r.strides == (6, 1)
    check(r, A.reshape(4, 6), rtol=0, atol=0)
    p = a.permute((2, 0, 1))
    assert p._handle is a._handle
    assert p.strides == tuple(s // 4 for s in A.transpose(2, 0, 1).strides)
    check(p, A.transpose(2, 0, 1), rtol=0, atol=0)
    B = rand(3, 1)
    b = nd.array(B, device=device)
    bb = b.broadcast_to((2, 3, 5))
    assert bb.strides == (0, 1, 0) and bb._handle is b._handle
    check(bb, np.broadcast_to(B, (2, 3, 5)), rtol=0, atol=0)
    ptr = a._handle.ptr()
    assert a[1:2, ::2]._handle.ptr() == ptr and a.permute((1, 0, 2))._handle.ptr() == ptr
    a[0, 0, 0] = 5.0
    assert a._handle.ptr() == ptr
    assert (a + 1)._handle.ptr() != ptr


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("idx", [
    (slice(1, 3), slice(None)),
    (slice(None, None, 2), slice(1, None, 3)),
    (1, slice(2, 5)),
    (slice(0, 4, 3), 4),
    (slice(-3, None), slice(None, -1)),
    (slice(5, 2), slice(None)),
    2,
    Ellipsis,
])
def test_getitem(device, idx):
    A = rand(5, 6)
    a = nd.array(A, device=device)
    v = a[idx]
    assert v._handle is a._handle
    idx_t = idx if isinstance(idx, tuple) else (idx,)
    ref = A[tuple(slice(i, i + 1) if isinstance(i, int) else i for i in idx_t)]
    check(v, ref, rtol=0, atol=0)
    check(v.compact(), ref, rtol=0, atol=0)
    assert v.compact().is_compact()


def _views(A, a):
    """(NDArray view, numpy reference) pairs of many strided layouts."""
    yield a.permute((2, 1, 0)), A.transpose(2, 1, 0)
    yield a[1:3, ::2, 3:], A[1:3, ::2, 3:]
    yield a.permute((1, 0, 2))[1:, :, ::5], A.transpose(1, 0, 2)[1:, :, ::5]
    yield a[:, 2:3, :].broadcast_to((4, 7, 6)), np.broadcast_to(A[:, 2:3, :], (4, 7, 6))
    yield a.flip((0, 2)), np.flip(A, (0, 2))
    yield a[3, 4, 5], A[3:4, 4:5, 5:6]
    yield a.as_strided((3, 3), (1, 6)), np.lib.stride_tricks.as_strided(A, (3, 3), (4, 24))


@pytest.mark.parametrize("device", DEVICES)
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


@pytest.mark.parametrize("device", DEVICES)
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



@pytest.mark.parametrize("device", DEVICES)
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


@pytest.mark.parametrize("device", DEVICES)
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
    check(nd.minimum(a, 0.0), np.minimum(A, 0))
    check(a - a, np.zeros_like(A))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [1, 7, 100, 4099, 300001])
def test_unary_math(device, size):
    X = rand(size, low=-5, high=5)
    x = nd.array(X, device=device)
    check(x.exp(), np.exp(X), rtol=1e-5)
    check(x.tanh(), np.tanh(X), rtol=1e-5, atol=1e-7)
    P = np.abs(X) + 1e-3
    p = nd.array(P, device=device)
    check(p.log(), np.log(P), rtol=1e-5, atol=1e-7)
    check(p.sqrt(), np.sqrt(P), rtol=1e-6)
    check(-x, -X, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
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


@pytest.mark.parametrize("device", DEVICES)
def test_shape_mismatch_errors(device):
    a = nd.array(rand(3, 4), device=device)
    b = nd.array(rand(4, 3), device=device)
    for f in (lambda: a + b, lambda: a * b, lambda: a / b, lambda: a.maximum(b), lambda: a == b,
              lambda: a - b, lambda: a ** b):
        with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
            f()
    with pytest.raises(ValueError):
        a + nd.array(rand(3, 4), device=nd.cpu())


# ---------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------
AXES_3D = [None, 0, 1, 2, -1, (0, 1), (1, 2), (0, 2), (0, 1, 2), (2, 0)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("axis", AXES_3D, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_sum_max(device, axis, keepdims):
    A = rand(5, 6, 7)
    a = nd.array(A, device=device)
    check(a.sum(axis=axis, keepdims=keepdims), A.sum(axis=axis, keepdims=keepdims), atol=1e-5)
    check(a.max(axis=axis, keepdims=keepdims), A.max(axis=axis, keepdims=keepdims), rtol=0, atol=0)
    check(a.min(axis=axis, keepdims=keepdims), A.min(axis=axis, keepdims=keepdims), rtol=0, atol=0)
    t = a.permute((2, 0, 1))
    check(t.sum(axis=axis, keepdims=keepdims), A.transpose(2, 0, 1).sum(axis=axis, keepdims=keepdims), atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,axis", [((1 << 20,), None), ((3, 300000), 1), ((300000, 3), 0), ((300000, 3), 1),
                                        ((2048, 512), 0), ((512, 2048), 1), ((8, 100001), None), ((40, 33), 1),
                                        ((7, 5000, 3), 1), ((100, 70), 0)])
def test_large_reductions(device, shape, axis):
    A = rand(*shape)
    a = nd.array(A, device=device)
    np.testing.assert_allclose(a.sum(axis=axis).numpy(), A.astype(np.float64).sum(axis=axis), rtol=1e-4,
                               atol=1e-3)
    check(a.max(axis=axis), A.max(axis=axis), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_reduction_edge_cases(device):
    a = nd.array(rand(3, 0), device=device)
    check(a.sum(axis=1), np.zeros(3, np.float32))
    check(nd.array(rand(0, 3), device=device).sum(axis=0), np.zeros(3, np.float32))
    with pytest.raises(ValueError):
        a.max(axis=1)
    b = nd.array(rand(3, 4), device=device)
    assert b.sum().shape == () and b.sum(keepdims=True).shape == (1, 1)
    check(nd.array(np.full(100, -np.inf, np.float32), device=device).max(), np.float32(-np.inf), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_argmax(device, axis, keepdims):
    A = rand(4, 5, 6)
    A[1, 2, :] = A.max() + 1  # ties: first index wins
    a = nd.array(A, device=device)
    ref = np.argmax(A, axis=axis, keepdims=keepdims).astype(np.float32)
    check(a.argmax(axis=axis, keepdims=keepdims), ref, rtol=0, atol=0)


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
@pytest.mark.parametrize("m,n,p", [(1, 1, 1), (7, 13, 5), (16, 16, 16), (33, 65, 17), (64, 64, 64), (65, 63, 129),
                                   (128, 64, 96), (1, 300, 1), (257, 1, 130), (200, 513, 70), (3, 0, 4), (0, 3, 4)])
def test_matmul(device, m, n, p):
    A, B = rand(m, n), rand(n, p)
    a, b = nd.array(A, device=device), nd.array(B, device=device)
    check(a @ b, A @ B, rtol=1e-4, atol=1e-5)
    if m and p:
        check(a.permute((1, 0)).compact().permute((1, 0)) @ b, A @ B, rtol=1e-4, atol=1e-5)



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
# data movement
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_pad_where_concatenate(device):
    A = rand(2, 3, 4)
    a = nd.array(A, device=device)
    pw = ((0, 0), (1, 2), (3, 0))
    check(a.pad(pw), np.pad(A, pw), rtol=0, atol=0)
    check(nd.pad(a.permute((2, 1, 0)), pw), np.pad(A.transpose(2, 1, 0), pw), rtol=0, atol=0)
    C = (rand(4, 5) > 0).astype(np.float32)
    X, Y = rand(4, 5), rand(4, 5)
    c, x, y = (nd.array(v, device=device) for v in (C, X, Y))
    check(nd.where(c, x, y), np.where(C != 0, X, Y), rtol=0, atol=0)
    check(nd.where(c, x, 0.0), np.where(C != 0, X, 0), rtol=0, atol=0)
    arrs = [rand(2, 3, 4) for _ in range(3)]
    nds = [nd.array(v, device=device) for v in arrs]
    for axis in (0, 1, 2):
        check(nd.concatenate(nds, axis=axis), np.concatenate(arrs, axis=axis), rtol=0, atol=0)
        check(nd.stack(nds, axis=axis), np.stack(arrs, axis=axis), rtol=0, atol=0)
    parts = nd.split(nd.array(A, device=device), 2, axis=2)
    for got, ref in zip(parts, np.split(A, 2, axis=2)):
        check(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
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
            nd.index_add(nd.array(bad.astype(np.float32), device=device),
                         nd.array(rand(len(bad), 3, 2), device=device), 10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k,stride", [(1, 1), (3, 1), (3, 2), ((2, 3), 1)])
def test_im2col(device, k, stride):
    A = rand(2, 7, 8, 3)
    out = nd.im2col(nd.array(A, device=device), k, stride)
    ref = nd.im2col(nd.array(A, device=nd.cpu()), k, stride)
    assert out.is_compact()
    check(out, ref.numpy(), rtol=0, atol=0)



# ---------------------------------------------------------------------------
# low-level module validation: exceptions, never a crash (same cases as the cpu module)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
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
    idx = mod.Array(2)
    mod.from_numpy(np.array([1, 4], np.float32), idx)
    out = mod.Array(6)
    with pytest.raises(IndexError):
        mod.take_rows(a, idx, out, 4, 3)
    mod.fill(b, 0.0)
    with pytest.raises(IndexError):
        mod.index_add_rows(out, idx, b, 4, 3)
    assert mod.to_numpy(b, (12,), (1,), 0).tolist() == [0.0] * 12
    with pytest.raises(TypeError):
        mod.ewise_add(a, None, b)
    with pytest.raises(TypeError):  # a cpu buffer is not a cuda buffer
        mod.ewise_add(a, nd.cpu().mod.Array(12), b)


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
