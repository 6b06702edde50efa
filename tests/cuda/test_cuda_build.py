"""Build checks of the CUDA backend that need no GPU.

* nvcc compiles backends/cuda/*.cu without warnings about uninitialised variables;
* the built module (if setup.py built it) imports without a GPU or driver, device_count()
  returns an int, and cuda().enabled() is exactly device_count() > 0;
* the same source built as C++ with its kernels on the CPU (tests/cuda/emulator.py) has every
  function NDArray calls on a device, and computes a few ops right.
"""
import glob
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sysconfig

import numpy as np
import pytest

import needle as ndl
import needle.backend_ndarray as nd
from needle.backend_ndarray import array_api, array_math, core
from needle.backend_ndarray.loading import load_cuda_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUDA_DIR = os.path.join(ROOT, "backends", "cuda")
CUDA_SOURCES = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))
MODULE = "needle.backend_ndarray.ndarray_backend_cuda"
EMULATED_RUN = os.environ.get("NEEDLE_TEST_CUDA_EMULATE") == "1"


def _find_nvcc():
    home = os.environ.get("CUDA_HOME")
    if home:
        path = os.path.join(home, "bin", "nvcc")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which("nvcc")


NVCC = _find_nvcc()


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (neither in $CUDA_HOME/bin nor on PATH): "
                                         "the CUDA backend cannot be compiled on this machine")
def test_nvcc_compiles_without_uninitialised_warnings(tmp_path):
    import pybind11

    assert CUDA_SOURCES, "no backends/cuda/*.cu sources"
    for src in CUDA_SOURCES:
        obj = tmp_path / (os.path.splitext(os.path.basename(src))[0] + ".o")
        cmd = [NVCC, "-c", src, "-o", str(obj), "-O3", "-std=c++17", "-Xcompiler", "-Wall", "-Xcompiler", "-fPIC",
               "-gencode", "arch=compute_90,code=sm_90", "-I", pybind11.get_include(),
               "-I", sysconfig.get_paths()["include"], "-I", CUDA_DIR]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"nvcc failed on {src}:\n{res.stderr[-6000:]}"
        lines = (res.stdout + res.stderr).splitlines()
        bad = [ln for ln in lines if re.search(r"uninitiali[sz]ed|used before its value is set", ln)]
        assert not bad, f"{src}: warnings about uninitialised variables:\n" + "\n".join(bad)
        assert obj.stat().st_size > 0


def test_built_module_imports_and_counts_devices():
    if importlib.util.find_spec(MODULE) is None:
        pytest.skip("the CUDA extension is not built (no nvcc at install time, NEEDLE_NO_CUDA=1, "
                    "or its build failed: see the pip install output)")
    mod = importlib.import_module(MODULE)
    n = mod.device_count()
    assert isinstance(n, int) and n >= 0
    assert mod.__device_name__ == "cuda" and mod.__tile_size__ == 8
    assert mod.__emulated__ is False
    # the rule cuda() uses; the emulated test mode replaces cuda() itself
    assert (load_cuda_module()[0] is not None) == (n > 0)
    if not EMULATED_RUN:
        assert nd.cuda().enabled() == (n > 0)
        if ndl.BACKEND == "nd":
            assert ndl.cuda().enabled() == (n > 0)
    if n == 0:
        with pytest.raises(RuntimeError):
            mod.Array(4)  # no device: a clear error, not a crash


def test_cuda_device_disabled_is_harmless():
    dev = nd.BackendDevice("cuda", None)
    assert not dev.enabled() and str(dev) == "cuda()"
    with pytest.raises(AttributeError, match="cannot be used here"):
        dev.Array(3)


# ---------------------------------------------------------------------------
# the emulated build (kernels on the CPU)
# ---------------------------------------------------------------------------
def _device_calls_in_ndarray():
    """Names of module functions that NDArray calls on a device (read from its modules' source)."""
    src = ""
    for module in (core, array_math, array_api):
        with open(module.__file__) as f:
            src += f.read()
    names = set(re.findall(r"\b(?:_device|device|dev)\.([a-z_][a-z0-9_]*)\b", src))
    names |= set(re.findall(r"\"((?:ewise|scalar|reduce)_[a-z_]+)\"", src))
    names |= {"reduce_sum_axis", "reduce_max_axis"}  # getattr(device, fn_name + "_axis")
    helpers = {n for n in dir(nd.BackendDevice) if not n.startswith("_")} | {"name", "mod"}
    return sorted(names - helpers)


@pytest.fixture(scope="module")
def emulated():
    if shutil.which("g++") is None and shutil.which("c++") is None and not os.environ.get("CXX"):
        pytest.skip("no C++ compiler to build the emulated CUDA backend")
    from .emulator import load_emulated_module

    return load_emulated_module()


def test_emulated_module_has_the_ndarray_interface(emulated):
    names = _device_calls_in_ndarray()
    assert {"compact", "ewise_setitem", "scalar_setitem", "fill", "from_numpy", "to_numpy", "matmul",
            "reduce_sum", "reduce_max", "ewise_add", "scalar_power"} <= set(names)
    missing = [n for n in names if not hasattr(emulated, n)]
    assert not missing, f"functions NDArray calls that the CUDA module lacks: {missing}"
    for n in ("Array", "device_count", "matmul_tiled", "matmul_batched", "__device_name__", "__tile_size__"):
        assert hasattr(emulated, n), n
    assert emulated.__emulated__ is True and emulated.__device_name__ == "cuda"


def test_emulated_kernels_smoke(emulated):
    dev = nd.BackendDevice("cuda", emulated)
    np.random.seed(0)
    A = np.random.randn(37, 70).astype(np.float32)
    B = np.random.randn(70, 45).astype(np.float32)
    a, b = nd.array(A, device=dev), nd.array(B, device=dev)
    np.testing.assert_allclose((a @ b).numpy(), A @ B, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(a.permute((1, 0)).compact().numpy(), A.T)
    np.testing.assert_allclose(a.sum(axis=1).numpy(), A.sum(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a.max(axis=0).numpy(), A.max(axis=0))
    np.testing.assert_array_equal(a.argmax(axis=1).numpy(), A.argmax(axis=1).astype(np.float32))
    np.testing.assert_allclose((a.exp() + a * 2.0).numpy(), np.exp(A) + A * 2, rtol=1e-5, atol=1e-6)
    a[1:30:3, ::7] = 0.5
    A[1:30:3, ::7] = 0.5
    np.testing.assert_array_equal(a.numpy(), A)
