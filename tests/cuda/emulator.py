"""The CUDA backend built as plain C++ with its kernels run on the CPU (backends/cuda/cuda_emu.h).

Test tool for machines without a GPU: ``NEEDLE_TEST_CUDA_EMULATE=1 pytest tests/cuda`` runs
the eager cuda() tests against this module (``cuda()`` is replaced by the emulated device for
the test process).  The build (about 20 s) is cached in the temp folder, keyed by the sources.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUDA_DIR = os.path.join(ROOT, "backends", "cuda")
COMMON_DIR = os.path.join(ROOT, "backends", "common")  # headers the .cu includes by relative path


def _sources():
    return sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))


def build_emulated_module() -> str:
    """Path of the emulated ndarray_backend_cuda extension (built on first use)."""
    import pybind11

    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler found to build the emulated CUDA backend")
    files = _sources() + sorted(glob.glob(os.path.join(CUDA_DIR, "*.h")) + glob.glob(os.path.join(COMMON_DIR, "*.h")))
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            h.update(os.path.basename(f).encode() + b"\0" + fh.read())
    h.update(sys.version.encode() + pybind11.__version__.encode() + cxx.encode())
    out_dir = os.path.join(tempfile.gettempdir(), "needle-cuda-emu-" + h.hexdigest()[:16])
    so = os.path.join(out_dir, "ndarray_backend_cuda" + sysconfig.get_config_var("EXT_SUFFIX"))
    if os.path.exists(so):
        return so
    os.makedirs(out_dir, exist_ok=True)
    tmp = so + f".{os.getpid()}.tmp"
    cmd = [cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-fvisibility=hidden", "-pthread",
           "-Wall", "-Wno-unknown-pragmas", "-DNEEDLE_CUDA_EMULATE", "-I", CUDA_DIR,
           "-I", pybind11.get_include(), "-I", sysconfig.get_paths()["include"],
           "-x", "c++", *_sources(), "-o", tmp]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError("building the emulated CUDA backend failed:\n" + res.stderr[-4000:])
    os.replace(tmp, so)
    return so


def load_emulated_module():
    so = build_emulated_module()
    spec = importlib.util.spec_from_file_location("ndarray_backend_cuda", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def use_emulated_cuda():
    """Make needle's cuda() the emulated device for this process; returns it."""
    from needle.backend_ndarray import core

    dev = core.BackendDevice("cuda", load_emulated_module())
    core._CUDA = dev
    return dev
