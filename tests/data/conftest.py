"""Fixtures and file writers for the needle.data tests (no downloads)."""
import gzip
import io
import pickle
import struct

import numpy as np
import pytest

from needle.data import find_data_root, mnist_files, ptb_files


@pytest.fixture(scope="session")
def data_root():
    root = find_data_root()
    if root is None:
        pytest.skip(
            "no data root found (looked in $NEEDLE_DATA_DIR, ./data and "
            "<repo>/../shared/data); real-data tests need it"
        )
    return root


@pytest.fixture(scope="session")
def mnist_t10k_files(data_root):
    files = mnist_files(data_root)
    if "t10k" not in files:
        pytest.skip(f"MNIST t10k images+labels not found under {data_root / 'mnist'}")
    return files["t10k"]


@pytest.fixture(scope="session")
def ptb_valid_test(data_root):
    files = ptb_files(data_root)
    if "valid" not in files or "test" not in files:
        pytest.skip(f"PTB valid/test splits not found under {data_root / 'ptb'}")
    return files["valid"], files["test"]


# ---------------------------------------------------------------- IDX writers
def idx_bytes(magic, dims, payload):
    head = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    return head + bytes(payload)


def write_idx_gz(path, magic, dims, payload):
    with gzip.open(path, "wb") as f:
        f.write(idx_bytes(magic, dims, payload))
    return path


def write_mnist_pair(tmp_path, images, labels, prefix="toy"):
    """Write uint8 images (n, r, c) and labels (n,) as gzip IDX files."""
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.uint8)
    img = write_idx_gz(tmp_path / f"{prefix}-images-idx3-ubyte.gz", 2051,
                       images.shape, images.tobytes())
    lab = write_idx_gz(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", 2049,
                       labels.shape, labels.tobytes())
    return img, lab


# ------------------------------------------------------ CIFAR batch writers
class Py2StylePickler(pickle._Pickler):
    """Protocol-2 pickler that writes bytes as Python 2 ``str`` (BINSTRING), like
    the published CIFAR-10 batches, instead of Python 3's ``_codecs.encode`` call."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def py2_pickle_bytes(obj):
    buf = io.BytesIO()
    Py2StylePickler(buf, protocol=2).dump(obj)
    data = buf.getvalue()
    # the published files name numpy's reconstructor by its NumPy 1.x path
    return data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_batch_dict(data, labels, name=b"batch", str_keys=False):
    d = {
        b"batch_label": name,
        b"labels": [int(v) for v in labels],
        b"data": np.asarray(data, dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(len(labels))],
    }
    if str_keys:
        d = {k.decode(): v for k, v in d.items()}
    return d


def write_cifar_folder(folder, n_per_batch=3, seed=0, py2=True, str_keys=False):
    """data_batch_1..5 and test_batch with n_per_batch random images each.

    Returns {name: (data uint8 (n, 3072), labels int (n,))}."""
    rng = np.random.RandomState(seed)  # local generator: leaves the global RNG alone
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.randint(0, 256, size=(n_per_batch, 3072)).astype(np.uint8)
        labels = rng.randint(0, 10, size=n_per_batch)
        d = cifar_batch_dict(data, labels, name=name.encode(), str_keys=str_keys)
        blob = py2_pickle_bytes(d) if py2 else pickle.dumps(d, protocol=4)
        (folder / name).write_bytes(blob)
        written[name] = (data, labels)
    return written
