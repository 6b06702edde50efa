"""Where needle keeps its on-disk caches (compiled graphs, kernel object code)."""
from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from typing import Optional


def cache_dir() -> Optional[str]:
    """The disk cache directory, or None when disabled (`NEEDLE_CACHE_DIR` empty or `0`);
    default `$XDG_CACHE_HOME/needle` (`~/.cache/needle`)."""
    d = os.environ.get("NEEDLE_CACHE_DIR")
    if d is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "needle")
    if d.strip() in ("", "0"):
        return None
    return d


def write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename (never a half file)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@functools.lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """sha256 of needle's Python sources (ops, passes, lowering, renderers...): part of every
    disk cache key, so that an entry made by other code (an edited VJP, a new pass) is never
    reused even when needle's version string is the same."""
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()
