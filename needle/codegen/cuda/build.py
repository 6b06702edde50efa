"""Compiling CUDA translation units with nvcc, caching the results on disk, loading them.

* `find_nvcc()` / `nvcc_version()`: the toolkit (`NEEDLE_NVCC`, `nvcc` on PATH, `$CUDA_HOME/bin`,
  `/usr/local/cuda/bin`);
* `compile_object(source, arch)`: `nvcc -arch=<arch> -c` (what the tests run on machines without
  a GPU), returning the compiler's messages;
* `compile_library(source, arch)`: a shared library (`nvcc -shared -Xcompiler -fPIC`, the CUDA
  runtime linked statically), cached as the `needle.cache` entry `cuda/<key>.so` (atomic, with a
  keyed MAC) by the sha256 of the source text, the GPU architecture, the nvcc version and the flags;
* `load_library(path)`: dlopen; a cached library is loaded from the very bytes whose MAC was
  checked (a private copy), never from the cache file;
* `compute_capability()`: the GPU's `sm_XY` through the driver API (`libcuda.so.1`);
* `GraphLibrary`: a loaded translation unit's entry points (ctypes).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from typing import Optional

from ...cache import entry_path, read_entry, write_entry

#: bumped when the generated code's ABI (entry points) changes
ABI_VERSION = 1
COMMON_FLAGS = ("-O3", "-Xcompiler", "-Wall", "-Wno-deprecated-gpu-targets")


class NvccError(RuntimeError):
    pass


def find_nvcc() -> Optional[str]:
    for cand in (os.environ.get("NEEDLE_NVCC"), shutil.which("nvcc"),
                 os.path.join(os.environ.get("CUDA_HOME", "/nonexistent"), "bin", "nvcc"),
                 "/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


@functools.lru_cache(maxsize=None)
def nvcc_version(nvcc: Optional[str] = None) -> str:
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise NvccError("nvcc not found (set NEEDLE_NVCC or put the CUDA toolkit's bin on PATH)")
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown"


def _run(cmd, what):
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NvccError(f"{what} failed ({' '.join(cmd)}):\n{proc.stderr[-8000:]}{proc.stdout[-2000:]}")
    return proc.stderr + proc.stdout


def compile_object(source: str, arch: str = "sm_90", workdir: Optional[str] = None, flags=()) -> str:
    """Compile `source` with `nvcc -arch=<arch> -c`; returns nvcc's messages (warnings)."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise NvccError("nvcc not found")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        src = os.path.join(tmp, "graph.cu")
        with open(src, "w") as f:
            f.write(source)
        return _run([nvcc, f"-arch={arch}", "-c", src, "-o", os.path.join(tmp, "graph.o"), *COMMON_FLAGS, *flags],
                    "nvcc -c")


def library_key(source: str, arch: str, flags=()) -> str:
    from ... import __version__
    h = hashlib.sha256()
    for part in (source, arch, nvcc_version(), " ".join(COMMON_FLAGS + tuple(flags)), str(ABI_VERSION),
                 str(__version__)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


_SCRATCH: list = []  # temporary folders of uncached libraries (kept while the process runs)


class LibraryPath(str):
    """The path of a cached library, carrying the bytes that were checked (or just built):
    `load_library` loads exactly those bytes, never the cache file again (no check-then-use race)."""

    def __new__(cls, path: str, data: bytes):
        self = super().__new__(cls, path)
        self.data = data
        return self


def compile_library(source: str, arch: str, flags=()) -> str:
    """The shared library of `source` for `arch`, compiled now or from the disk cache: a
    `LibraryPath` of its cache entry, or (disk cache off) a file in a private temporary folder."""
    key = library_key(source, arch, flags)
    name = f"cuda/{key[:2]}/{key}.so"
    data = read_entry(name)
    if data is not None:
        return LibraryPath(entry_path(name), data)
    nvcc = find_nvcc()
    if nvcc is None:
        raise NvccError("nvcc not found: cannot build the CUDA program")
    tmp = tempfile.mkdtemp(prefix="needle-cuda-")
    src = os.path.join(tmp, "graph.cu")
    lib = os.path.join(tmp, "graph.so")
    with open(src, "w") as f:
        f.write(source)
    _run([nvcc, f"-arch={arch}", "-shared", "-Xcompiler", "-fPIC", src, "-o", lib, *COMMON_FLAGS, *flags],
         "nvcc -shared")
    with open(lib, "rb") as f:
        data = f.read()
    path = write_entry(name, data)
    if path is None:
        _SCRATCH.append(tmp)
        return lib
    shutil.rmtree(tmp, ignore_errors=True)
    return LibraryPath(path, data)


def load_library(path: str) -> ctypes.CDLL:
    """dlopen `path` (RTLD_LOCAL); a `LibraryPath` is loaded from its checked bytes, written to a
    fresh private file (0600, named after the entry, removed once loaded)."""
    mode = getattr(os, "RTLD_LOCAL", 0)
    if not isinstance(path, LibraryPath):
        return ctypes.CDLL(path, mode=mode)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path)[:-3] + "-", suffix=".so")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(path.data)
        return ctypes.CDLL(tmp, mode=mode)
    finally:
        os.unlink(tmp)


@functools.lru_cache(maxsize=None)
def compute_capability(device: int = 0) -> str:
    """`sm_XY` of CUDA device `device`, asked from the driver (libcuda)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        raise RuntimeError(f"no CUDA driver (libcuda.so.1): {e}") from e
    if lib.cuInit(0) != 0:
        raise RuntimeError("cuInit failed: no usable CUDA device")
    dev = ctypes.c_int()
    if lib.cuDeviceGet(ctypes.byref(dev), device) != 0:
        raise RuntimeError(f"no CUDA device {device}")
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)   # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)   # ..._MINOR
    return f"sm_{major.value}{minor.value}"


class GraphLibrary:
    """The entry points of a loaded translation unit (see render.render_program)."""

    def __init__(self, path: str, symbol: str):
        self.path = path
        self.lib = load_library(path)
        self.entry = getattr(self.lib, symbol)
        self.entry.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
                               ctypes.c_void_p]
        self.entry.restype = ctypes.c_int
        arena = getattr(self.lib, f"{symbol}_arena_bytes")
        arena.restype = ctypes.c_size_t
        self.arena_bytes = int(arena())
        self._sync = getattr(self.lib, f"{symbol}_synchronize")
        self._sync.restype = ctypes.c_int
        self._err = getattr(self.lib, f"{symbol}_error_string")
        self._err.argtypes = [ctypes.c_int]
        self._err.restype = ctypes.c_char_p
        self.num_launches = int(getattr(self.lib, f"{symbol}_num_launches")())
        self.profiled = getattr(self.lib, f"{symbol}_profiled")
        self.profiled.argtypes = self.entry.argtypes + [ctypes.POINTER(ctypes.c_float)]
        self.profiled.restype = ctypes.c_int

    def error(self, code: int) -> str:
        return self._err(code).decode(errors="replace")

    def run(self, input_ptrs, output_ptrs, arena_ptr: int, stream: int = 0, synchronize: bool = True,
            times: Optional[list] = None) -> None:
        """Launch every kernel; with `times` (a list), through the profiled entry, which waits
        for the GPU and leaves each launch's seconds in `times`."""
        ins = (ctypes.c_void_p * max(len(input_ptrs), 1))(*input_ptrs)
        outs = (ctypes.c_void_p * max(len(output_ptrs), 1))(*output_ptrs)
        if times is not None:
            ms = (ctypes.c_float * max(self.num_launches, 1))()
            rc = self.profiled(ins, outs, ctypes.c_void_p(arena_ptr), ctypes.c_void_p(stream), ms)
            times[:] = [1e-3 * t for t in ms[:self.num_launches]]
        else:
            rc = self.entry(ins, outs, ctypes.c_void_p(arena_ptr), ctypes.c_void_p(stream))
        if rc != 0:
            raise RuntimeError(f"CUDA launch failed: {self.error(rc)} (error {rc})")
        if synchronize:
            rc = self._sync()
            if rc != 0:
                raise RuntimeError(f"CUDA kernel failed: {self.error(rc)} (error {rc})")


__all__ = ["find_nvcc", "nvcc_version", "compile_object", "compile_library", "load_library", "library_key",
           "compute_capability", "GraphLibrary", "LibraryPath", "NvccError"]
