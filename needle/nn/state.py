"""Module state dicts and safetensors checkpoints.

* `module_state_dict(module)`: every Tensor attribute (Parameters and buffers such as
  BatchNorm's running statistics) reachable from the module, with PyTorch-like dotted
  names ("modules.0.weight": attribute names, list/tuple indices and dict keys).
* `load_module_state_dict(module, state, strict=True)`: validates every key and shape
  first and raises ValueError (naming the first offending key and both shapes) without
  changing anything; then copies the values into the existing tensors (same objects, so
  optimizers that hold them keep working).
* `save_checkpoint(path, tensors, metadata)` / `load_checkpoint(path)`: safetensors files,
  written atomically (temporary file in the same directory, then `os.replace`).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Dict, Tuple

import numpy as np

from ..autograd import Tensor


def as_numpy(value) -> np.ndarray:
    """A Tensor's data, or any array-like, as a numpy array."""
    return value.numpy() if isinstance(value, Tensor) else np.asarray(value)


def save_checkpoint(path, tensors: Dict[str, np.ndarray], metadata: Dict[str, str] = None) -> None:
    """Write `tensors` (name -> numpy array) and string `metadata` as a safetensors file, atomically."""
    from safetensors.numpy import save_file

    path = os.fspath(path)
    metadata = dict(metadata or {})
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"save_checkpoint: metadata must map str to str, got {k!r}: {type(v).__name__}")
    arrays = {}
    for k, v in tensors.items():
        if not isinstance(k, str):
            raise TypeError(f"save_checkpoint: tensor names must be strings, got {k!r}")
        arrays[k] = np.ascontiguousarray(as_numpy(v))
    metadata[CHECKSUMS] = json.dumps({k: _digest(a) for k, a in arrays.items()}, sort_keys=True)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: metadata key of the per-tensor sha256 digests that `load_checkpoint` verifies
CHECKSUMS = "needle.sha256"


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8)).hexdigest()


def stale_temporaries(path) -> list:
    """Temporary files that an interrupted `save_checkpoint(path)` left beside `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = "." + os.path.basename(path) + "."
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [os.path.join(directory, n) for n in names if n.startswith(prefix) and n.endswith(".tmp")]


def load_checkpoint(path) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """(tensors, metadata) from a safetensors file; a corrupt file, or a tensor whose bytes
    do not match the checksum stored with it, raises ValueError naming the file."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_checkpoint: no such file {path!r}")
    try:
        with safe_open(path, framework="np") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError (and others) on bad files
        raise ValueError(f"load_checkpoint: {path!r} is not a valid safetensors file: {e}") from e
    if CHECKSUMS in metadata:
        try:
            sums = json.loads(metadata.pop(CHECKSUMS))
        except ValueError:
            raise ValueError(f"load_checkpoint: {path!r}: its tensor checksums are unreadable") from None
        bad = sorted(k for k in tensors if sums.get(k) != _digest(tensors[k]))
        if bad or set(sums) != set(tensors):
            raise ValueError(f"load_checkpoint: {path!r}: tensor {(bad or sorted(set(sums) ^ set(tensors)))[0]!r} "
                             "does not match its checksum (the file was modified or damaged)")
    return tensors, metadata
