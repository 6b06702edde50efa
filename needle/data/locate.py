"""Where the project's data sets live.

Search order (first existing directory wins):

1. ``data_dir`` when given,
2. ``$NEEDLE_DATA_DIR`` when set,
3. ``data/`` in the current working directory,
4. ``<checkout>/../shared/data`` when needle runs from a source checkout (the parent of
   the ``needle`` package holds ``pyproject.toml``); an installed wheel has no checkout,
   so nothing inside the virtual environment is searched.
"""
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["data_search_paths", "find_data_root", "mnist_files", "cifar10_files", "ptb_files"]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # .../needle
REPO_ROOT = _PACKAGE_DIR.parent

MNIST_SPLITS = ("train", "t10k")
PTB_SPLITS = ("train", "valid", "test")


def data_search_paths(data_dir: Optional[PathLike] = None) -> List[Path]:
    """Candidate data roots, in the order :func:`find_data_root` tries them."""
    paths: List[Path] = []
    if data_dir is not None:
        paths.append(Path(data_dir).expanduser())
    env = os.environ.get("NEEDLE_DATA_DIR")
    if env:
        paths.append(Path(env).expanduser())
    paths.append(Path.cwd() / "data")
    if is_checkout(REPO_ROOT):
        paths.append(REPO_ROOT.parent / "shared" / "data")
    return paths


def is_checkout(root: Path) -> bool:
    """True when `root` is a source checkout of needle (not an installed package's folder)."""
    return (root / "pyproject.toml").is_file() and (root / "needle" / "__init__.py").is_file()


def find_data_root(data_dir: Optional[PathLike] = None) -> Optional[Path]:
    """The first existing directory of :func:`data_search_paths`, or None."""
    for p in data_search_paths(data_dir):
        if p.is_dir():
            return p
    return None


def mnist_files(root: Optional[PathLike]) -> Dict[str, Tuple[Path, Path]]:
    """MNIST splits present under ``root/mnist``: ``{split: (images, labels)}``.

    A split ("train" or "t10k") counts only if both of its gzip IDX files exist.
    """
    if root is None:
        return {}
    base = Path(root) / "mnist"
    found: Dict[str, Tuple[Path, Path]] = {}
    for split in MNIST_SPLITS:
        images = base / f"{split}-images-idx3-ubyte.gz"
        labels = base / f"{split}-labels-idx1-ubyte.gz"
        if images.is_file() and labels.is_file():
            found[split] = (images, labels)
    return found


def cifar10_files(root: Optional[PathLike]) -> Dict[str, List[Path]]:
    """CIFAR-10 splits present under ``root/cifar-10-batches-py``: ``{"train": [data_batch_1..5],
    "test": [test_batch]}``; the training split counts only if all five batches exist."""
    if root is None:
        return {}
    base = Path(root) / "cifar-10-batches-py"
    found: Dict[str, List[Path]] = {}
    train = [base / f"data_batch_{i}" for i in range(1, 6)]
    if all(p.is_file() for p in train):
        found["train"] = train
    if (base / "test_batch").is_file():
        found["test"] = [base / "test_batch"]
    return found


def ptb_files(root: Optional[PathLike]) -> Dict[str, Path]:
    """PTB splits present under ``root/ptb``: ``{split: path}``.

    Mikolov's names ``ptb.{train,valid,test}.txt`` are preferred; ``train.txt`` /
    ``valid.txt`` / ``test.txt`` are accepted too.
    """
    if root is None:
        return {}
    base = Path(root) / "ptb"
    found: Dict[str, Path] = {}
    for split in PTB_SPLITS:
        for name in (f"ptb.{split}.txt", f"{split}.txt"):
            p = base / name
            if p.is_file():
                found[split] = p
                break
    return found
