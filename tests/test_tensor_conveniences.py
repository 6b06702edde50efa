"""Tensor conveniences (len, unsqueeze, squeeze, view, clone, item, softmax, sqrt, abs,
negative-step slices, integer-list indexing), eager and compiled, and honest nd dtypes."""
from __future__ import annotations

import numpy as np
import pytest

import needle as ndl
from needle.backend_selection import BACKEND
from tests.conftest import close, gradient_check, tensor

RNG = np.random.default_rng(15)


def rand(*shape):
    return RNG.standard_normal(shape)


def numpy_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# (name, function of one tensor, numpy reference, input shape)
CASES = [
    ("unsqueeze0", lambda t: t.unsqueeze(0), lambda a: a[None], (3, 4)),
    ("unsqueeze_neg", lambda t: t.unsqueeze(-1), lambda a: a[..., None], (3, 4)),
    ("unsqueeze_mid", lambda t: t.unsqueeze(1), lambda a: a[:, None], (3, 4)),
    ("squeeze_all", lambda t: t.squeeze(), lambda a: np.squeeze(a), (1, 3, 1, 4)),
    ("squeeze_dim", lambda t: t.squeeze(2), lambda a: np.squeeze(a, 2), (1, 3, 1, 4)),
    ("squeeze_tuple", lambda t: t.squeeze((0, -2)), lambda a: np.squeeze(a, (0, 2)), (1, 3, 1, 4)),
    ("squeeze_not_one", lambda t: t.squeeze(1), lambda a: a, (1, 3, 1, 4)),
    ("view", lambda t: t.view(4, 3), lambda a: a.reshape(4, 3), (3, 4)),
    ("view_tuple", lambda t: t.view((2, -1)), lambda a: a.reshape(2, -1), (3, 4)),
    ("clone", lambda t: t.clone(), lambda a: a, (3, 4)),
    ("softmax_last", lambda t: ndl.softmax(t), lambda a: numpy_softmax(a, -1), (3, 5)),
    ("softmax_axis0", lambda t: ndl.softmax(t, axis=0), lambda a: numpy_softmax(a, 0), (3, 5)),
    ("softmax_3d", lambda t: ndl.softmax(t * 30.0, axis=1), lambda a: numpy_softmax(a * 30.0, 1), (2, 3, 4)),
    ("sqrt", lambda t: ndl.sqrt(ndl.abs(t) + 0.5), lambda a: np.sqrt(np.abs(a) + 0.5), (3, 4)),
    ("abs", lambda t: ndl.abs(t), np.abs, (3, 4)),
    ("abs_op", lambda t: abs(t), np.abs, (3, 4)),
    ("reverse", lambda t: t[::-1], lambda a: a[::-1], (5, 3)),
    ("reverse_cols", lambda t: t[:, ::-1], lambda a: a[:, ::-1], (5, 3)),
    ("neg_step2", lambda t: t[4:0:-2, 1], lambda a: a[4:0:-2, 1], (6, 3)),
    ("neg_step_empty", lambda t: t[0:3:-1], lambda a: a[0:3:-1], (5, 3)),
    ("neg_step_both", lambda t: t[::-2, -1::-1], lambda a: a[::-2, -1::-1], (5, 3)),
    ("take_rows", lambda t: t[[0, 2, 2, -1]], lambda a: a[[0, 2, 2, -1]], (4, 3)),
    ("take_cols", lambda t: t[:, [2, 0]], lambda a: a[:, [2, 0]], (4, 3)),
    ("take_np", lambda t: t[np.array([3, 1])], lambda a: a[np.array([3, 1])], (4, 3)),
    ("take_sliced", lambda t: t[1:, [1, 0], ::-1], lambda a: a[1:, [1, 0], ::-1], (3, 4, 2)),
    ("take_int_adjacent", lambda t: t[:, 1, [0, 1]], lambda a: a[:, 1, [0, 1]], (2, 3, 2)),
    ("take_int_apart", lambda t: t[1, :, [0, 1]], lambda a: a[1, :, [0, 1]], (2, 3, 2)),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name,fn,ref,shape", CASES, ids=IDS)
def test_eager_matches_numpy(name, fn, ref, shape):
    a = rand(*shape)
    out = fn(tensor(a))
    expected = ref(a)
    assert tuple(out.shape) == expected.shape
    close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,fn,ref,shape", CASES, ids=IDS)
def test_compiled_matches_eager(name, fn, ref, shape):
    f = ndl.compile(fn)
    for _ in range(2):
        x = tensor(rand(*shape))
        got, want = f(x), fn(x)
        assert tuple(got.shape) == tuple(want.shape)
        close(got, want, rtol=1e-5, atol=1e-6)
    assert f.stats["traces"] == 1


@pytest.mark.parametrize("name,fn,ref,shape", CASES, ids=IDS)
def test_gradients(name, fn, ref, shape):
    """Eager backward against central differences; the compiled gradient against eager's."""
    a = rand(*shape)
    if name.startswith("abs") or name == "sqrt":
        a = np.where(np.abs(a) < 0.1, 0.5, a)  # away from the kink of |x|
    if ref(a).size == 0:
        pytest.skip("empty result")
    gradient_check(fn, a)
    weights = tensor(rand(*ref(a).shape), requires_grad=False)

    def objective(x):
        return (fn(x) * weights).sum()

    x = tensor(a)
    objective(x).backward()
    compiled = ndl.compile(ndl.grad(objective))(tensor(a))
    close(compiled, x.grad, rtol=1e-4, atol=1e-5)


def test_softmax_of_large_inputs_is_finite():
    x = tensor(np.array([[1000.0, 0.0, -1000.0], [1e4, 1e4, 1e4]]))
    out = ndl.softmax(x).numpy()
    assert np.isfinite(out).all()
    close(out, [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-5, atol=1e-6)


def test_abs_gradient_is_zero_at_zero_and_sign_elsewhere():
    x = tensor(np.array([-2.0, 0.0, 3.0]))
    ndl.abs(x).sum().backward()
    close(x.grad, [-1.0, 0.0, 1.0])


def test_sqrt_gradient_analytic():
    a = np.array([0.25, 1.0, 4.0])
    x = tensor(a)
    ndl.sqrt(x).sum().backward()
    close(x.grad, 0.5 / np.sqrt(a), rtol=1e-5, atol=1e-6)


def test_len():
    assert len(tensor(rand(4, 2))) == 4
    assert len(tensor(rand(0, 2))) == 0
    with pytest.raises(TypeError, match="0-d"):
        len(tensor(np.array(1.5)))

    @ndl.compile
    def f(x):
        return x * float(len(x))

    x = tensor(rand(3, 2))
    close(f(x), x * 3.0)


def test_clone_copies_data_and_is_a_new_tensor():
    x = tensor(rand(3, 2))
    y = x.clone()
    assert y is not x
    assert y.realize_cached_data() is not x.realize_cached_data()
    x.data = tensor(np.zeros((3, 2)), requires_grad=False)
    assert np.abs(y.numpy()).sum() > 0  # y kept the old values
    (y * 2.0).sum().backward()
    close(x.grad, np.full((3, 2), 2.0))


def test_item():
    assert isinstance(tensor(np.array([2.5])).item(), float)
    assert tensor(np.array([[2.5]])).item() == 2.5
    assert tensor(np.array(-1.0)).item() == -1.0
    with pytest.raises(ValueError, match="one"):
        tensor(rand(2)).item()


def test_bad_arguments():
    x = tensor(rand(2, 3))
    with pytest.raises(IndexError):
        x.unsqueeze(3)
    with pytest.raises(IndexError):
        x.squeeze(2)
    with pytest.raises(IndexError):
        x[[0, 2]]
    with pytest.raises(Exception, match="integer.list"):
        x[[0], [1]]
    with pytest.raises(Exception, match="integer.list"):
        x[[[0, 1]]]
    with pytest.raises(Exception, match="step"):
        x[::0]
    with pytest.raises(ValueError, match="axis"):
        ndl.softmax(x, axis=2)


@pytest.mark.skipif(BACKEND != "nd", reason="the nd backend stores float32 only")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64", "int64", "int32", "uint8",
                                   np.float64, np.int64])
def test_nd_rejects_dtypes_it_cannot_honour(dtype):
    with pytest.raises(TypeError, match="float32"):
        ndl.Tensor([1.0, 2.0], dtype=dtype)
    with pytest.raises(TypeError, match="float32"):
        ndl.init.zeros(2, 3, dtype=dtype)
    with pytest.raises(TypeError, match="float32"):
        ndl.init.rand(2, 3, dtype=dtype)
    with pytest.raises(TypeError, match="float32"):
        ndl.Tensor(ndl.Tensor([1.0]), dtype=dtype)


@pytest.mark.skipif(BACKEND != "nd", reason="the nd backend stores float32 only")
def test_nd_converts_inputs_and_accepts_float32_and_bool():
    for array in (np.arange(3, dtype=np.int64), np.ones(3, dtype=np.float64),
                  np.ones(3, dtype=np.float16), np.array([True, False, True])):
        t = ndl.Tensor(array)
        assert t.dtype == "float32"
        close(t, array.astype(np.float32))
    for dtype in ("float32", np.float32, "bool", bool):
        assert ndl.Tensor([1.0, 0.0], dtype=dtype).dtype == "float32"
    mask = ndl.init.randb(4, 5, p=0.5)
    assert mask.dtype == "float32" and set(np.unique(mask.numpy())) <= {0.0, 1.0}


@pytest.mark.skipif(BACKEND != "np", reason="the np backend keeps numpy dtypes")
def test_np_keeps_numpy_dtypes():
    assert ndl.Tensor([1.0], dtype="float16").dtype == np.float16
    assert ndl.Tensor(np.arange(3)).dtype == np.arange(3).dtype
    assert ndl.init.zeros(2, dtype="float64").dtype == np.float64


def test_numpy_reads_a_tensor_as_its_data():
    a = rand(4, 3)
    got = np.asarray(tensor(a))
    assert got.shape == (4, 3) and got.dtype != object
    close(got, a)


def test_index_edge_cases():
    a = rand(3, 4)
    x = tensor(a)
    close(x[np.array(1)], a[1])  # a 0-d array is an int
    close(x[np.int64(-1)], a[-1])
    assert tuple(x[[]].shape) == (0, 4)
    assert tuple(x[:, []].shape) == (3, 0)
    with pytest.raises(Exception, match="integer.list"):
        x[[True, False, True]]  # boolean masks are not supported
