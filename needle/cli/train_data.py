"""needle-train's data: the data sets found under the search roots (or generated), cut to
``--train-limit`` / ``--eval-limit``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import needle.data as ndata

from needle.cli.train_options import SYNTHETIC_SIZES, DataNotFound

MNIST_T10K_TRAIN = 8000  # MNIST without training images: t10k[:8000] / t10k[8000:]


# ---- data -------------------------------------------------------------------------------


def _candidate_roots(data_dir):
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    return ndata.data_search_paths(None)


def _not_found(what, looked):
    lines = "\n".join(f"  {p}" for p in looked)
    return DataNotFound(f"no {what} found; looked in:\n{lines}\n"
                        "(pass --data-dir DIR or set NEEDLE_DATA_DIR)")


def _synthetic_images(n, shape, rng, prototypes):
    y = rng.randint(0, 10, size=n).astype(np.uint8)
    noise = rng.rand(n, *shape).astype(np.float32)
    X = np.clip(0.6 * prototypes[y] + 0.4 * noise, 0.0, 1.0).astype(np.float32)
    return X, y


def _synthetic(task, seed):
    """Learnable generated data of the data set's shapes, from a private RNG (the global
    numpy RNG is untouched)."""
    rng = np.random.RandomState(10_000 + seed)
    shape = (28, 28, 1) if task == "mnist" else (3, 32, 32)
    protos = (rng.rand(10, *shape) > 0.5).astype(np.float32)
    n_train, n_eval = SYNTHETIC_SIZES[task]
    Xtr, ytr = _synthetic_images(n_train, shape, rng, protos)
    Xev, yev = _synthetic_images(n_eval, shape, rng, protos)
    return Xtr, ytr, Xev, yev


def _limit(X, y, n):
    return (X, y) if n is None else (X[:n], y[:n])


def _find_mnist(data_dir):
    """(Xtr, ytr, Xev, yev, description) of the first root holding MNIST's t10k split."""
    looked = []
    for root in _candidate_roots(data_dir):
        looked.append(root / "mnist")
        files = ndata.mnist_files(root)
        if "t10k" not in files:
            continue
        test = ndata.MNISTDataset(*files["t10k"])
        if "train" in files:
            train = ndata.MNISTDataset(*files["train"])
            return (train.images, train.labels, test.images, test.labels,
                    f"mnist train ({len(train.labels)}) / t10k ({len(test.labels)}) from {root / 'mnist'}")
        k = MNIST_T10K_TRAIN
        return (test.images[:k], test.labels[:k], test.images[k:], test.labels[k:],
                f"mnist t10k[:{k}] (train) / t10k[{k}:] ({len(test.labels) - k}, eval) from "
                f"{root / 'mnist'} (no training images)")
    raise _not_found("MNIST data (mnist/t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz at least)",
                     looked)


def _find_cifar10(data_dir):
    """(Xtr, ytr, Xev, yev, description) of the first root holding all CIFAR-10 batches."""
    looked = []
    for root in _candidate_roots(data_dir):
        looked.append(root / "cifar-10-batches-py")
        files = ndata.cifar10_files(root)
        if "train" in files and "test" in files:
            base = root / "cifar-10-batches-py"
            train = ndata.CIFAR10Dataset(str(base), train=True)
            test = ndata.CIFAR10Dataset(str(base), train=False)
            return (train.X, train.y, test.X, test.y,
                    f"cifar10 data_batch_1-5 ({len(train.y)}) / test_batch ({len(test.y)}) from {base}")
    raise _not_found("CIFAR-10 data (cifar-10-batches-py/data_batch_1..5 and test_batch)", looked)


_IMAGE_FINDERS = {"mnist": _find_mnist, "cifar10": _find_cifar10}


def load_images(args):
    """The image task's (Xtr, ytr, Xev, yev, description): found data or `--synthetic`, cut
    to `--train-limit` / `--eval-limit`."""
    if args.synthetic:
        Xtr, ytr, Xev, yev = _synthetic(args.task, args.seed)
        desc = f"synthetic {args.task} ({len(ytr)} train / {len(yev)} eval)"
    else:
        Xtr, ytr, Xev, yev, desc = _IMAGE_FINDERS[args.task](args.data_dir)
    Xtr, ytr = _limit(Xtr, ytr, args.train_limit)
    Xev, yev = _limit(Xev, yev, args.eval_limit)
    if args.train_limit is not None or args.eval_limit is not None:
        desc += f"; using {len(ytr)} train / {len(yev)} eval"
    return Xtr, ytr, Xev, yev, desc


def load_ptb(args):
    looked = []
    for root in _candidate_roots(args.data_dir):
        looked.append(root / "ptb")
        files = ndata.ptb_files(root)
        if "test" not in files:
            continue
        if "train" in files:
            train_path, eval_path, note = files["train"], files["test"], ""
        elif "valid" in files:
            train_path, eval_path = files["valid"], files["test"]
            note = " (no training split: training on valid)"
        else:
            continue
        break
    else:
        raise _not_found("PTB data (ptb/ptb.test.txt with ptb.train.txt or ptb.valid.txt)",
                         looked)
    if train_path.parent != eval_path.parent:  # pragma: no cover - ptb_files uses one folder
        raise DataNotFound(f"PTB splits in different folders: {train_path}, {eval_path}")
    corpus = ndata.Corpus(str(train_path.parent), train_file=train_path.name,
                          test_file=eval_path.name)
    train_ids, eval_ids = corpus.train, corpus.test
    if args.train_limit is not None:
        train_ids = train_ids[: args.train_limit]
    if args.eval_limit is not None:
        eval_ids = eval_ids[: args.eval_limit]
    desc = (f"ptb {train_path.name} ({len(train_ids)} tokens, train) / {eval_path.name} "
            f"({len(eval_ids)} tokens, eval) from {train_path.parent}{note}")
    return corpus, train_ids, eval_ids, desc
