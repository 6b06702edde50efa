"""needle's on-disk caches (compiled graphs, kernel objects, CUDA libraries), kept so that a
cache folder cannot be turned against the user (docs/compile.md, "Caches and security").

* Every entry is `needle-cache v2 <hmac-sha256 hex>\\n<payload>`; the MAC is keyed with a random
  per-user key (`key_path()`, kept outside the cache folder, 0600) and covers the entry's name
  (its path inside the folder, so an entry cannot be moved to another key) and its payload.
  Anything else (a planted or edited file, an older format) is a miss and gets rewritten.
* The folder is used only when it is owned by the user and not writable by group or others
  (it is created 0700); the key file only when it is a regular 0600 file of the user's in such
  a folder. Otherwise the disk cache is off, with one warning per process.
* Entries are opened without following symlinks and without blocking, and read only when
  they are regular files under `MAX_ENTRY_BYTES`.
* The folder's entries are kept under `NEEDLE_CACHE_MAX_BYTES` (default 1 GiB): a hit sets
  an entry's access time, and a store that takes the total over the bound deletes the least
  recently used entries down to 3/4 of it.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import os
import secrets
import stat
import tempfile
import threading
import time
import warnings
from typing import Optional

MAX_ENTRY_BYTES = 256 << 20
DEFAULT_MAX_BYTES = 1 << 30
#: the folders of the cache folder that needle writes (and the only ones eviction looks into)
SECTIONS = ("graphs", "kernels", "cuda")
_MAGIC = b"needle-cache v2 "
_HEADER_BYTES = len(_MAGIC) + 64 + 1
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LOCK = threading.Lock()
_KEYS: dict[str, Optional[bytes]] = {}   # key file -> its key (None: unusable)
_SIZES: dict[str, int] = {}              # folder -> bytes at its last scan plus those written since
_WARNED: set[str] = set()


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


def key_path() -> str:
    """The per-user MAC key file: `NEEDLE_CACHE_KEY_FILE`, default
    `$XDG_CONFIG_HOME/needle/cache-key` (`~/.config/needle/cache-key`), outside the cache folder."""
    f = os.environ.get("NEEDLE_CACHE_KEY_FILE")
    if f:
        return f
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "needle", "cache-key")


def max_bytes() -> int:
    """The bound on the cache folder's entries: `NEEDLE_CACHE_MAX_BYTES` (bytes), default 1 GiB."""
    try:
        return int(os.environ.get("NEEDLE_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES))
    except ValueError:
        return DEFAULT_MAX_BYTES


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _unsafe(st: os.stat_result, kind: int, private_mode: int) -> Optional[str]:
    """Why a file with status `st` may not be trusted as a `kind` (stat.S_IFDIR/S_IFREG) of
    this user's whose mode has none of the bits `private_mode`; None when it may."""
    if stat.S_IFMT(st.st_mode) != kind:
        return "is not a " + ("folder" if kind == stat.S_IFDIR else "regular file")
    if st.st_uid != os.getuid():
        return f"is owned by uid {st.st_uid}, not by this user"
    if st.st_mode & private_mode:
        return (f"has mode {stat.S_IMODE(st.st_mode):o}: group or others may "
                + ("write it" if private_mode == 0o022 else "read or write it"))
    return None


def _load_key(path: str) -> bytes:
    """The key in `path`, created there (32 random bytes, 0600) when missing: written to a
    temporary file and hard-linked into place, so that racing processes all read one key."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    why = _unsafe(os.stat(folder), stat.S_IFDIR, 0o022)
    if why:
        raise ValueError(f"its folder {folder} {why}")
    if not os.path.lexists(path):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-key-")   # O_CREAT|O_EXCL, 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
            with contextlib.suppress(FileExistsError):   # another process made it first
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        why = _unsafe(os.fstat(fd), stat.S_IFREG, 0o077)
        if why:
            raise ValueError(why)
        key = os.read(fd, 33)
    finally:
        os.close(fd)
    if len(key) != 32:
        raise ValueError(f"holds {len(key)} bytes, not 32")
    return key


def secret_key() -> Optional[bytes]:
    """The user's cache MAC key (see `key_path`), or None (warned once) when it is unsafe."""
    path = key_path()
    with _LOCK:
        if path not in _KEYS:
            try:
                _KEYS[path] = _load_key(path)
            except (OSError, ValueError) as e:
                _KEYS[path] = None
                _warn_once(f"needle: disk cache off: cache key file {path}: {e}")
        return _KEYS[path]


def _folder(create: bool) -> Optional[tuple[str, bytes]]:
    """(the cache folder, the MAC key) when the disk cache may be used (the folder created 0700
    if `create`), else None."""
    d = cache_dir()
    if d is None:
        return None
    try:
        if create:
            os.makedirs(d, mode=0o700, exist_ok=True)
        why = _unsafe(os.stat(d), stat.S_IFDIR, 0o022)
    except FileNotFoundError:
        return None
    except OSError as e:
        why = f"cannot be used ({e})"
    if why:
        _warn_once(f"needle: disk cache off: the cache folder {d} {why}")
        return None
    key = secret_key()
    return None if key is None else (d, key)


def entry_path(name: str) -> Optional[str]:
    """The file of entry `name` (`<section>/<..>/<file>`), or None when caching is disabled."""
    d = cache_dir()
    return None if d is None else os.path.join(d, *name.split("/"))


def _mac(key: bytes, name: str, payload: bytes) -> bytes:
    h = hmac.new(key, name.encode() + b"\0", hashlib.sha256)
    h.update(payload)
    return h.hexdigest().encode()


def read_entry(name: str) -> Optional[bytes]:
    """The payload of entry `name` if it is a regular file (not a symlink, FIFO or device)
    under the size bound whose MAC checks out, else None. A hit refreshes its access time."""
    folder = _folder(create=False)
    if folder is None:
        return None
    d, key = folder
    try:
        fd = os.open(os.path.join(d, *name.split("/")), _OPEN_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES + _HEADER_BYTES:
            return None
        with open(fd, "rb", closefd=False) as f:
            data = f.read(MAX_ENTRY_BYTES + _HEADER_BYTES + 1)
        payload = data[_HEADER_BYTES:]
        if (len(data) > MAX_ENTRY_BYTES + _HEADER_BYTES or data[:len(_MAGIC)] != _MAGIC
                or not hmac.compare_digest(data[len(_MAGIC):_HEADER_BYTES - 1], _mac(key, name, payload))):
            return None
        with contextlib.suppress(OSError):   # least recently used goes first (see `evict`)
            os.utime(fd, ns=(time.time_ns(), st.st_mtime_ns))
        return payload
    except OSError:
        return None
    finally:
        os.close(fd)


def write_entry(name: str, payload: bytes) -> Optional[str]:
    """Store `payload` as entry `name` (atomically: temporary file, then rename) and keep the
    folder under its bound; returns the entry's path, or None if not stored (disabled, unsafe
    or failed)."""
    folder = _folder(create=True)
    if folder is None:
        return None
    d, key = folder
    path = os.path.join(d, *name.split("/"))
    data = _MAGIC + _mac(key, name, payload) + b"\n" + payload
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        return None
    _account(d, len(data))
    return path


def _account(d: str, added: int) -> None:
    """Count `added` bytes into folder `d`; scan it (the first time in this process, or when the
    count passes the bound) and evict."""
    limit = max_bytes()
    with _LOCK:
        total = _SIZES.get(d)
        if total is not None and total + added <= limit:
            _SIZES[d] = total + added
            return
        _SIZES[d] = evict(d, limit)


def evict(d: str, limit: int) -> int:
    """Delete the least recently used entries of cache folder `d` (by access time) when they hold
    more than `limit` bytes, down to 3/4 of it; returns the bytes left."""
    entries = []
    for section in SECTIONS:
        for folder, _, files in os.walk(os.path.join(d, section)):
            for name in files:
                path = os.path.join(folder, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    entries.append((st.st_atime_ns, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    if total > limit:
        for _, size, path in sorted(entries):
            if total <= limit * 3 // 4:
                break
            with contextlib.suppress(OSError):
                os.unlink(path)
                total -= size
    return total


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
