"""Tests for needle.data (API contract section 8). Nothing here downloads data."""
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import needle.data as ndata
from needle.data import (
    CIFAR10Dataset,
    Corpus,
    DataLoader,
    Dataset,
    Dictionary,
    MNISTDataset,
    NDArrayDataset,
    RandomCrop,
    RandomFlipHorizontal,
    Transform,
    batchify,
    get_batch,
    parse_mnist,
)
from needle.data.locate import REPO_ROOT

from .conftest import (
    cifar_batch_dict,
    idx_bytes,
    py2_pickle_bytes,
    write_cifar_folder,
    write_idx_gz,
    write_mnist_pair,
)


def _tensor_values(t):
    return t.numpy()


def _state_equal(a, b):
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


# ===================================================================== exports
def test_public_exports():
    for name in ["Dataset", "NDArrayDataset", "DataLoader", "Transform",
                 "RandomFlipHorizontal", "RandomCrop", "MNISTDataset",
                 "CIFAR10Dataset", "Dictionary", "Corpus", "batchify", "get_batch",
                 "parse_mnist", "find_data_root"]:
        assert hasattr(ndata, name), name
    assert issubclass(RandomCrop, Transform) and issubclass(MNISTDataset, Dataset)


# ===================================================================== locate
def test_search_order(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    given = tmp_path / "given"
    monkeypatch.setenv("NEEDLE_DATA_DIR", str(env_dir))
    monkeypatch.chdir(tmp_path)
    paths = ndata.data_search_paths(given)
    assert paths == [given, env_dir, tmp_path / "data", REPO_ROOT.parent / "shared" / "data"]
    assert REPO_ROOT == Path(ndata.__file__).resolve().parent.parent.parent

    # first existing one wins
    (tmp_path / "data").mkdir()
    assert ndata.find_data_root(given) == tmp_path / "data"
    env_dir.mkdir()
    assert ndata.find_data_root(given) == env_dir
    given.mkdir()
    assert ndata.find_data_root(given) == given
    assert ndata.find_data_root(str(given)) == given

    monkeypatch.delenv("NEEDLE_DATA_DIR")
    assert ndata.data_search_paths() == [tmp_path / "data", REPO_ROOT.parent / "shared" / "data"]


def test_installed_package_searches_no_checkout_path(tmp_path, monkeypatch):
    """A wheel installed in site-packages has no checkout: `../shared/data` beside the package
    would point inside the virtual environment, so it is not searched."""
    site = tmp_path / "venv" / "lib" / "site-packages"
    (site / "needle").mkdir(parents=True)
    (site / "needle" / "__init__.py").write_text("")
    monkeypatch.delenv("NEEDLE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ndata.locate, "REPO_ROOT", site)
    assert ndata.data_search_paths() == [tmp_path / "data"]
    (site / "pyproject.toml").write_text("")  # a checkout
    assert ndata.data_search_paths() == [tmp_path / "data", tmp_path / "venv" / "lib" / "shared" / "data"]


def test_find_data_root_none(tmp_path, monkeypatch):
    monkeypatch.setenv("NEEDLE_DATA_DIR", str(tmp_path / "nope"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ndata.locate, "REPO_ROOT", tmp_path / "repo")
    assert ndata.find_data_root(tmp_path / "missing") is None


def test_split_helpers(tmp_path):
    assert ndata.mnist_files(None) == {} and ndata.ptb_files(None) == {}
    m = tmp_path / "mnist"
    m.mkdir()
    for n in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
              "train-labels-idx1-ubyte.gz"]:
        (m / n).write_bytes(b"")
    # train has labels only: not a complete split
    assert ndata.mnist_files(tmp_path) == {
        "t10k": (m / "t10k-images-idx3-ubyte.gz", m / "t10k-labels-idx1-ubyte.gz")
    }
    p = tmp_path / "ptb"
    p.mkdir()
    (p / "ptb.valid.txt").write_text("a\n")
    (p / "train.txt").write_text("a\n")
    assert ndata.ptb_files(tmp_path) == {"valid": p / "ptb.valid.txt",
                                         "train": p / "train.txt"}
    (p / "ptb.train.txt").write_text("a\n")
    assert ndata.ptb_files(str(tmp_path))["train"] == p / "ptb.train.txt"


# ===================================================================== transforms
def _ref_flip(img, p, draws):
    out = []
    for _ in range(draws):
        out.append(img[:, ::-1, :] if np.random.rand() < p else img)
    return out


def _ref_crop(img, padding):
    # explicit construction, independent of np.pad
    shift_x, shift_y = np.random.randint(low=-padding, high=padding + 1, size=2)
    H, W, C = img.shape
    padded = np.zeros((H + 2 * padding, W + 2 * padding, C), dtype=img.dtype)
    padded[padding:padding + H, padding:padding + W, :] = img
    return padded[padding + shift_x: padding + shift_x + H,
                  padding + shift_y: padding + shift_y + W, :]


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_flip_matches_reference_rng(p):
    img = np.random.RandomState(1).rand(5, 7, 3).astype(np.float32)
    t = RandomFlipHorizontal(p)
    np.random.seed(11)
    got = [t(img) for _ in range(20)]
    state_got = np.random.get_state()
    np.random.seed(11)
    ref = _ref_flip(img, p, 20)
    state_ref = np.random.get_state()
    assert _state_equal(state_got, state_ref)  # exactly one rand() per call
    for g, r in zip(got, ref):
        assert g.shape == img.shape
        np.testing.assert_array_equal(g, r)
    if p == 1.0:
        np.testing.assert_array_equal(got[0], img[:, ::-1, :])
    if p == 0.0:
        assert all(np.array_equal(g, img) for g in got)


@pytest.mark.parametrize("padding", [0, 1, 3])
def test_crop_matches_reference_rng(padding):
    img = np.random.RandomState(2).rand(6, 8, 2).astype(np.float32)
    t = RandomCrop(padding)
    np.random.seed(5)
    got = [t(img) for _ in range(25)]
    state_got = np.random.get_state()
    np.random.seed(5)
    ref = [_ref_crop(img, padding) for _ in range(25)]
    assert _state_equal(state_got, np.random.get_state())
    for g, r in zip(got, ref):
        assert g.shape == img.shape and g.dtype == img.dtype
        np.testing.assert_array_equal(g, r)


def test_crop_default_padding_and_values():
    assert RandomCrop().padding == 3 and RandomFlipHorizontal().p == 0.5
    img = np.arange(4 * 4, dtype=np.float32).reshape(4, 4, 1) + 1
    np.random.seed(0)
    sx, sy = np.random.randint(low=-2, high=3, size=2)
    np.random.seed(0)
    out = RandomCrop(2)(img)
    # out[i, j] = img[i + sx, j + sy] where in range, else 0
    for i in range(4):
        for j in range(4):
            a, b = i + sx, j + sy
            expect = img[a, b, 0] if (0 <= a < 4 and 0 <= b < 4) else 0
            assert out[i, j, 0] == expect


# ===================================================================== NDArrayDataset
def test_ndarray_dataset():
    X = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10)
    ds = NDArrayDataset(X, y)
    assert len(ds) == 10
    xi, yi = ds[3]
    np.testing.assert_array_equal(xi, X[3])
    assert yi == 3
    xs, ys = ds[2:5]
    np.testing.assert_array_equal(xs, X[2:5])
    np.testing.assert_array_equal(ys, y[2:5])
    assert len(NDArrayDataset(X)[0]) == 1
    with pytest.raises(ValueError):
        NDArrayDataset(X, y[:3])


# ===================================================================== MNIST (real)
@pytest.fixture(scope="module")
def mnist_t10k(mnist_t10k_files):
    return MNISTDataset(*map(str, mnist_t10k_files))


def test_mnist_real_facts(mnist_t10k):
    ds = mnist_t10k
    assert len(ds) == 10000
    img, label = ds[0]
    assert img.shape == (28, 28, 1) and img.dtype == np.float32
    assert label == 7 and np.asarray(label).dtype == np.uint8
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    assert ds.images.dtype == np.float32
    np.testing.assert_array_equal(ds.labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    assert np.bincount(ds.labels).sum() == 10000 and len(np.bincount(ds.labels)) == 10
    imgs, labels = ds[10:15]
    assert imgs.shape == (5, 28, 28, 1) and labels.shape == (5,)
    np.testing.assert_array_equal(imgs[0], ds[10][0])


def test_parse_mnist_real(mnist_t10k_files, mnist_t10k):
    X, y = parse_mnist(*mnist_t10k_files)
    assert X.shape == (10000, 784) and X.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert 0.0 <= X.min() and X.max() <= 1.0
    np.testing.assert_array_equal(X.reshape(-1, 28, 28, 1), mnist_t10k.images)
    # values are exactly k/255 in float32
    raw = np.frombuffer(gzip.open(mnist_t10k_files[0]).read()[16:16 + 784], np.uint8)
    np.testing.assert_array_equal(X[0], raw.astype(np.float32) / 255.0)


# ===================================================================== IDX files
def test_idx_roundtrip_and_transforms(tmp_path):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(6, 28, 28)).astype(np.uint8)
    labels = rng.randint(0, 10, size=6).astype(np.uint8)
    img_f, lab_f = write_mnist_pair(tmp_path, images, labels)
    X, y = parse_mnist(str(img_f), str(lab_f))
    np.testing.assert_array_equal(X, images.reshape(6, -1).astype(np.float32) / 255)
    np.testing.assert_array_equal(y, labels)

    tf = [RandomFlipHorizontal(0.5), RandomCrop(2)]
    ds = MNISTDataset(str(img_f), str(lab_f), transforms=tf)
    np.random.seed(3)
    per_item = [ds[i][0] for i in range(2, 6)]
    st1 = np.random.get_state()
    np.random.seed(3)
    sliced, lab = ds[2:6]
    assert _state_equal(st1, np.random.get_state())
    np.testing.assert_array_equal(sliced, np.stack(per_item))
    np.testing.assert_array_equal(lab, labels[2:6])
    # reference: the contract's calls, image by image
    np.random.seed(3)
    ref = []
    for i in range(2, 6):
        im = images[i].astype(np.float32)[..., None] / 255
        im = _ref_flip(im, 0.5, 1)[0]
        ref.append(_ref_crop(im, 2))
    np.testing.assert_array_equal(sliced, np.stack(ref))


def _msg_check(excinfo, path, *words):
    msg = str(excinfo.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg.lower(), msg


def test_idx_wrong_magic(tmp_path):
    img = write_idx_gz(tmp_path / "img.gz", 2049, (2, 28, 28), bytes(2 * 784))
    lab = write_idx_gz(tmp_path / "lab.gz", 2049, (2,), bytes(2))
    with pytest.raises(ValueError) as e:
        parse_mnist(img, lab)
    _msg_check(e, img, "magic", "2051")
    img2 = write_idx_gz(tmp_path / "img2.gz", 2051, (2, 28, 28), bytes(2 * 784))
    lab2 = write_idx_gz(tmp_path / "lab2.gz", 2051, (2,), bytes(2))
    with pytest.raises(ValueError) as e:
        MNISTDataset(str(img2), str(lab2))
    _msg_check(e, lab2, "magic", "2049")


def test_idx_truncated_gzip(tmp_path):
    img = write_idx_gz(tmp_path / "img.gz", 2051, (50, 28, 28),
                       np.random.RandomState(0).bytes(50 * 784))
    lab = write_idx_gz(tmp_path / "lab.gz", 2049, (50,), bytes(50))
    blob = img.read_bytes()
    cut = tmp_path / "cut.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError) as e:
        parse_mnist(cut, lab)
    _msg_check(e, cut, "gzip")


def test_idx_truncated_payload_and_header(tmp_path):
    img = write_idx_gz(tmp_path / "img.gz", 2051, (3, 28, 28), bytes(2 * 784))
    lab = write_idx_gz(tmp_path / "lab.gz", 2049, (3,), bytes(3))
    with pytest.raises(ValueError) as e:
        parse_mnist(img, lab)
    _msg_check(e, img, "truncated")
    img_ok = write_idx_gz(tmp_path / "img_ok.gz", 2051, (3, 28, 28), bytes(3 * 784))
    lab_short = tmp_path / "lab_short.gz"
    with gzip.open(lab_short, "wb") as f:
        f.write(idx_bytes(2049, (3,), b"")[:6])
    with pytest.raises(ValueError) as e:
        MNISTDataset(str(img_ok), str(lab_short))
    _msg_check(e, lab_short, "truncated")


def test_idx_count_mismatch(tmp_path):
    img = write_idx_gz(tmp_path / "img.gz", 2051, (3, 28, 28), bytes(3 * 784))
    lab = write_idx_gz(tmp_path / "lab.gz", 2049, (4,), bytes(4))
    with pytest.raises(ValueError) as e:
        parse_mnist(img, lab)
    _msg_check(e, img, "mismatch")
    assert str(lab) in str(e.value)


def test_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        parse_mnist(tmp_path / "nope.gz", tmp_path / "nope2.gz")


# ===================================================================== CIFAR-10
def test_cifar_py2_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    written = write_cifar_folder(folder, n_per_batch=4)
    train = CIFAR10Dataset(str(folder), train=True)
    assert len(train) == 20
    assert train.X.shape == (20, 3, 32, 32) and train.X.dtype == np.float32
    data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(
        train.X, data.reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    x5, y5 = train[5]
    assert isinstance(x5, np.ndarray) and x5.shape == (3, 32, 32)
    assert y5 == labels[5]
    test = CIFAR10Dataset(folder, train=False)
    assert len(test) == 4
    np.testing.assert_array_equal(test.y, written["test_batch"][1])


@pytest.mark.parametrize("str_keys", [False, True])
def test_cifar_py3_pickles(tmp_path, str_keys):
    folder = tmp_path / "c"
    written = write_cifar_folder(folder, n_per_batch=2, py2=False, str_keys=str_keys)
    test = CIFAR10Dataset(str(folder), train=False)
    np.testing.assert_array_equal(
        test.X.reshape(2, -1), written["test_batch"][0].astype(np.float32) / 255)


def test_cifar_transforms_act_on_hwc(tmp_path):
    folder = tmp_path / "c"
    write_cifar_folder(folder, n_per_batch=2)
    plain = CIFAR10Dataset(str(folder), train=False)
    flipped = CIFAR10Dataset(str(folder), train=False,
                             transforms=[RandomFlipHorizontal(1.0)])
    np.testing.assert_array_equal(flipped[1][0], plain[1][0][:, :, ::-1])
    xs, _ = flipped[0:2]
    np.testing.assert_array_equal(xs, plain.X[:, :, :, ::-1])


def test_cifar_missing_key_and_bad_size(tmp_path):
    folder = tmp_path / "c"
    write_cifar_folder(folder, n_per_batch=2)
    bad = cifar_batch_dict(np.zeros((2, 3072), np.uint8), [1, 2])
    del bad[b"labels"]
    (folder / "test_batch").write_bytes(py2_pickle_bytes(bad))
    with pytest.raises(ValueError) as e:
        CIFAR10Dataset(str(folder), train=False)
    _msg_check(e, folder / "test_batch", "labels")

    bad = cifar_batch_dict(np.zeros((2, 3000), np.uint8), [1, 2])
    (folder / "test_batch").write_bytes(py2_pickle_bytes(bad))
    with pytest.raises(ValueError) as e:
        CIFAR10Dataset(str(folder), train=False)
    _msg_check(e, folder / "test_batch", "data")

    bad = cifar_batch_dict(np.zeros((2, 3072), np.uint8), [1, 2])
    del bad[b"data"]
    (folder / "data_batch_3").write_bytes(py2_pickle_bytes(bad))
    with pytest.raises(ValueError) as e:
        CIFAR10Dataset(str(folder), train=True)
    _msg_check(e, folder / "data_batch_3", "data")


def test_cifar_missing_file(tmp_path):
    folder = tmp_path / "c"
    write_cifar_folder(folder, n_per_batch=1)
    (folder / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError) as e:
        CIFAR10Dataset(str(folder), train=True)
    assert str(folder / "data_batch_4") in str(e.value)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os')",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_malicious_pickle(tmp_path, protocol):
    folder = tmp_path / "c"
    write_cifar_folder(folder, n_per_batch=1)
    marker = tmp_path / "pwned"
    payload = {"data": _Evil(marker), "labels": [0]}
    (folder / "test_batch").write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(ValueError) as e:
        CIFAR10Dataset(str(folder), train=False)
    _msg_check(e, folder / "test_batch", "system")
    assert not marker.exists()

    (folder / "test_batch").write_bytes(pickle.dumps(_EvalEvil(), protocol=protocol))
    with pytest.raises(ValueError) as e:
        CIFAR10Dataset(str(folder), train=False)
    _msg_check(e, folder / "test_batch", "eval")


def test_cifar_not_a_pickle(tmp_path):
    folder = tmp_path / "c"
    write_cifar_folder(folder, n_per_batch=1)
    (folder / "test_batch").write_bytes(b"garbage\x00\x01")
    with pytest.raises(ValueError) as e:
        CIFAR10Dataset(str(folder), train=False)
    assert str(folder / "test_batch") in str(e.value)


# ===================================================================== DataLoader
def _batches_as_numpy(loader):
    out = []
    for batch in loader:
        assert isinstance(batch, (tuple, list))
        out.append([_tensor_values(t) for t in batch])
    return out


@pytest.mark.parametrize("n,bs", [(10, 3), (10, 5), (10, 1), (10, 10), (10, 32), (1, 4)])
def test_dataloader_sequential(n, bs):
    X = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = np.arange(n, dtype=np.float32)
    loader = DataLoader(NDArrayDataset(X, y), batch_size=bs)
    groups = np.array_split(np.arange(n), range(bs, n, bs))
    assert len(loader) == len(groups)
    st = np.random.get_state()
    got = _batches_as_numpy(loader)
    assert _state_equal(st, np.random.get_state())  # no RNG use without shuffle
    assert len(got) == len(groups)
    for (xb, yb), g in zip(got, groups):
        np.testing.assert_array_equal(xb, X[g])
        np.testing.assert_array_equal(yb, y[g])
    # a second pass gives the same
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(got, _batches_as_numpy(loader)))


def test_dataloader_defaults_and_dtype():
    X = np.random.RandomState(0).rand(7, 3).astype(np.float32)
    loader = DataLoader(NDArrayDataset(X))
    assert loader.batch_size == 1 and loader.shuffle is False and len(loader) == 7
    first = next(iter(loader))
    assert len(first) == 1
    assert first[0].shape == (1, 3)
    assert first[0].dtype == "float32"


def test_dataloader_shuffle_one_permutation_per_pass():
    n, bs = 23, 5
    X = np.arange(n, dtype=np.float32).reshape(n, 1)
    loader = DataLoader(NDArrayDataset(X), batch_size=bs, shuffle=True)
    assert len(loader) == 5

    np.random.seed(42)
    epoch1 = np.concatenate([b[0].reshape(-1) for b in _batches_as_numpy(loader)])
    state_after_1 = np.random.get_state()
    epoch2 = np.concatenate([b[0].reshape(-1) for b in _batches_as_numpy(loader)])
    state_after_2 = np.random.get_state()

    np.random.seed(42)
    perm1 = np.random.permutation(n)
    ref_state_1 = np.random.get_state()
    perm2 = np.random.permutation(n)
    ref_state_2 = np.random.get_state()

    np.testing.assert_array_equal(epoch1, perm1)
    np.testing.assert_array_equal(epoch2, perm2)
    assert _state_equal(state_after_1, ref_state_1)
    assert _state_equal(state_after_2, ref_state_2)

    # batch boundaries follow array_split of the permutation
    np.random.seed(42)
    sizes = [len(b[0]) for b in _batches_as_numpy(loader)]
    assert sizes == [5, 5, 5, 5, 3]

    # the permutation is drawn when the pass starts
    np.random.seed(7)
    it = iter(loader)
    ref = np.random.RandomState()
    ref.seed(7)
    ref.permutation(n)
    assert _state_equal(np.random.get_state(), ref.get_state())
    np.testing.assert_array_equal(next(it)[0].numpy().reshape(-1), np.random.RandomState(7).permutation(n)[:bs])


class _PerItemDataset(Dataset):
    """A generic Dataset (no batch fast path) mirroring MNISTDataset."""

    def __init__(self, images, labels, transforms=None):
        super().__init__(transforms)
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.apply_transforms(self.images[i]), self.labels[i]


def test_dataloader_fast_path_equals_per_item(tmp_path):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(11, 28, 28)).astype(np.uint8)
    labels = rng.randint(0, 10, size=11).astype(np.uint8)
    img_f, lab_f = write_mnist_pair(tmp_path, images, labels)
    tf = [RandomFlipHorizontal(), RandomCrop(3)]
    mnist = MNISTDataset(str(img_f), str(lab_f), transforms=tf)
    generic = _PerItemDataset(mnist.images, mnist.labels, transforms=tf)

    results, states = [], []
    for ds in (mnist, generic):
        np.random.seed(9)
        results.append(_batches_as_numpy(DataLoader(ds, batch_size=4, shuffle=True)))
        states.append(np.random.get_state())
    assert _state_equal(*states)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert results[0][0][0].shape == (4, 28, 28, 1)

    # RNG use = one permutation, then the transforms item by item in batch order
    np.random.seed(9)
    perm = np.random.permutation(11)
    for _ in perm:
        np.random.rand()
        np.random.randint(low=-3, high=4, size=2)
    assert _state_equal(states[0], np.random.get_state())


def test_dataloader_subclass_override_uses_getitem():
    class Doubled(NDArrayDataset):
        def __getitem__(self, i):
            return tuple(a[i] * 2 for a in self.arrays)

    X = np.arange(6, dtype=np.float32).reshape(6, 1)
    (xb,) = next(iter(DataLoader(Doubled(X), batch_size=6)))
    np.testing.assert_array_equal(_tensor_values(xb), X * 2)


def test_dataloader_mnist_real(mnist_t10k):
    loader = DataLoader(mnist_t10k, batch_size=1000)
    assert len(loader) == 10
    xb, yb = next(iter(loader))
    assert xb.shape == (1000, 28, 28, 1) and xb.dtype == "float32"
    np.testing.assert_array_equal(_tensor_values(xb), mnist_t10k.images[:1000])
    np.testing.assert_array_equal(_tensor_values(yb), mnist_t10k.labels[:1000])


# ===================================================================== PTB
def test_dictionary():
    d = Dictionary()
    assert len(d) == 0
    assert d.add_word("a") == 0 and d.add_word("b") == 1 and d.add_word("a") == 0
    assert len(d) == 2 and d.idx2word == ["a", "b"] and d.word2idx == {"a": 0, "b": 1}


def test_corpus_default_names(tmp_path):
    (tmp_path / "train.txt").write_text(" the cat sat \n the dog\n\nlast line\n")
    (tmp_path / "test.txt").write_text("a cat\n the end\n")
    c = Corpus(str(tmp_path))
    w = c.dictionary.idx2word
    assert [w[i] for i in c.train] == ["the", "cat", "sat", "<eos>", "the", "dog", "<eos>",
                                       "<eos>", "last", "line", "<eos>"]
    assert [w[i] for i in c.test] == ["a", "cat", "<eos>", "the", "end", "<eos>"]
    assert c.train[:4] == [0, 1, 2, 3]  # consecutive ids in order of first use
    c2 = Corpus(tmp_path, max_lines=1)
    assert [c2.dictionary.idx2word[i] for i in c2.train] == ["the", "cat", "sat", "<eos>"]
    assert [c2.dictionary.idx2word[i] for i in c2.test] == ["a", "cat", "<eos>"]


def _words(path, max_lines):
    out = []
    with open(path) as f:
        for k, line in enumerate(f):
            if max_lines is not None and k >= max_lines:
                break
            out += line.split() + ["<eos>"]
    return out


@pytest.mark.parametrize("max_lines", [50, None])
def test_corpus_real_ptb(ptb_valid_test, max_lines):
    valid, test = ptb_valid_test
    c = Corpus(valid.parent, max_lines=max_lines,
               train_file=valid.name, test_file=test.name)
    ref_train, ref_test = _words(valid, max_lines), _words(test, max_lines)
    d = c.dictionary
    assert [d.idx2word[i] for i in c.train] == ref_train
    assert [d.idx2word[i] for i in c.test] == ref_test
    assert len(d) == len(set(ref_train) | set(ref_test))
    assert all(d.word2idx[wd] == i for i, wd in enumerate(d.idx2word))
    # ids are assigned in order of first appearance, train file first
    firsts = list(dict.fromkeys(ref_train + ref_test))
    assert d.idx2word == firsts
    if max_lines is None:
        assert len(d) <= 10000  # Mikolov's 10k vocabulary (incl. <unk>, <eos>)
        assert "<unk>" in d.word2idx
    else:
        assert len([i for i in c.train if d.idx2word[i] == "<eos>"]) == max_lines


def test_batchify_and_get_batch_small():
    data = list(range(23))
    b = batchify(data, 4, None, "float32")
    assert isinstance(b, np.ndarray) and b.shape == (5, 4)
    np.testing.assert_array_equal(b, np.array(data[:20]).reshape(4, 5).T)
    assert b[:, 1].tolist() == [5, 6, 7, 8, 9]  # column-major split

    x, t = get_batch(b, 0, 3)
    np.testing.assert_array_equal(_tensor_values(x), b[0:3])
    np.testing.assert_array_equal(_tensor_values(t), b[1:4].reshape(-1))
    assert x.shape == (3, 4) and t.shape == (12,)
    assert not x.requires_grad and not t.requires_grad
    x, t = get_batch(b, 2, 10)  # L = min(10, 5-1-2) = 2
    assert x.shape == (2, 4) and t.shape == (8,)
    np.testing.assert_array_equal(_tensor_values(t), b[3:5].reshape(-1))


def test_batchify_get_batch_real(ptb_valid_test):
    valid, test = ptb_valid_test
    c = Corpus(valid.parent, max_lines=200, train_file=valid.name, test_file=test.name)
    bs, bptt = 16, 35
    b = batchify(c.train, bs, None, "float32")
    nb = len(c.train) // bs
    assert b.shape == (nb, bs)
    ref = np.array(c.train[: nb * bs]).reshape(bs, nb).T
    np.testing.assert_array_equal(b, ref)
    steps = 0
    for i in range(0, b.shape[0] - 1, bptt):
        x, t = get_batch(b, i, bptt, device=None, dtype="float32")
        L = min(bptt, nb - 1 - i)
        assert x.shape == (L, bs) and t.shape == (L * bs,)
        assert x.dtype == "float32"
        np.testing.assert_array_equal(_tensor_values(x), ref[i:i + L])
        np.testing.assert_array_equal(_tensor_values(t), ref[i + 1:i + 1 + L].flatten())
        steps += 1
    assert steps == len(range(0, nb - 1, bptt))


def test_cifar10_files(tmp_path):
    assert ndata.cifar10_files(None) == {} and ndata.cifar10_files(tmp_path) == {}
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    (base / "test_batch").write_bytes(b"")
    for i in range(1, 5):
        (base / f"data_batch_{i}").write_bytes(b"")
    assert ndata.cifar10_files(tmp_path) == {"test": [base / "test_batch"]}  # batch 5 missing
    (base / "data_batch_5").write_bytes(b"")
    assert ndata.cifar10_files(tmp_path)["train"] == [base / f"data_batch_{i}" for i in range(1, 6)]
