"""Penn Treebank language-modelling data: Dictionary, Corpus, batchify, get_batch."""
import os

import numpy as np
from ..autograd import Tensor

__all__ = ["Dictionary", "Corpus", "batchify", "get_batch"]


class Dictionary:
    """Word <-> id mapping; ids are consecutive from 0 in order of first addition."""

    def __init__(self):
        self.word2idx = {}
        self.idx2word = []

    def add_word(self, word):
        """Add ``word`` if new; return its id."""
        idx = self.word2idx.get(word)
        if idx is None:
            idx = len(self.idx2word)
            self.word2idx[word] = idx
            self.idx2word.append(word)
        return idx

    def __len__(self):
        return len(self.idx2word)


class Corpus:
    """Token ids of ``base_dir/train.txt`` then ``base_dir/test.txt``.

    Both files share one :class:`Dictionary`. Each line contributes its
    whitespace-separated words followed by ``<eos>``; at most ``max_lines`` lines
    are read per file. ``train_file`` / ``test_file`` (keyword-only) select other
    file names, e.g. Mikolov's ``ptb.valid.txt`` / ``ptb.test.txt``.
    """

    def __init__(self, base_dir, max_lines=None, *, train_file="train.txt",
                 test_file="test.txt"):
        self.dictionary = Dictionary()
        self.train = self.tokenize(os.path.join(base_dir, train_file), max_lines)
        self.test = self.tokenize(os.path.join(base_dir, test_file), max_lines)

    def tokenize(self, path, max_lines=None):
        """Ids of the words of ``path`` (each line's words then ``<eos>``). Raises ValueError
        naming the file when it is not UTF-8 text (a NUL byte or an invalid sequence) or
        holds no words."""
        ids = []
        add = self.dictionary.add_word
        words = 0
        with open(path, encoding="utf-8") as f:
            try:
                for line_idx, line in enumerate(f):
                    if max_lines is not None and line_idx >= max_lines:
                        break
                    if "\0" in line:
                        raise ValueError(f"{path}: not a text file (NUL byte on line {line_idx + 1})")
                    for word in line.split():
                        ids.append(add(word))
                        words += 1
                    ids.append(add("<eos>"))
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not words:
            raise ValueError(f"{path}: holds no words")
        return ids


def batchify(data, batch_size, device=None, dtype=None):
    """Numpy array (nbatch, batch_size): the id list split column-major.

    Column j holds ``data[j*nbatch : (j+1)*nbatch]``; the remainder
    ``len(data) % batch_size`` is dropped. ``device`` and ``dtype`` are accepted for
    API compatibility; the result is a plain numpy array.
    """
    nbatch = len(data) // batch_size
    return np.array(data[: nbatch * batch_size]).reshape(batch_size, nbatch).T


def get_batch(batches, i, bptt, device=None, dtype=None):
    """(data Tensor (L, bs) = rows i..i+L-1, target Tensor (L*bs,) = rows i+1..i+L).

    ``L = min(bptt, len(batches) - 1 - i)``. Tensors are constants
    (requires_grad=False) on ``device`` with ``dtype``.
    """
    seq_len = min(bptt, len(batches) - 1 - i)
    data = batches[i : i + seq_len, :]
    target = batches[i + 1 : i + 1 + seq_len, :].flatten()
    return (
        Tensor(data, device=device, dtype=dtype, requires_grad=False),
        Tensor(target, device=device, dtype=dtype, requires_grad=False),
    )
