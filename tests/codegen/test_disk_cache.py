"""On-disk kernel cache (needle.codegen.jit): hits, misses, corruption, disabling, atomic writes
(the attacks on it are in tests/test_cache_security.py)."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

pytest.importorskip("llvmlite")

from needle import cache as disk  # noqa: E402
from needle.codegen import compile_kernel, jit  # noqa: E402
from needle.ir import parse_graph  # noqa: E402

from .test_kernels import graph1  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "needle-cache"
    monkeypatch.setenv("NEEDLE_CACHE_DIR", str(d))
    monkeypatch.setenv("NEEDLE_CACHE_KEY_FILE", str(tmp_path / "cache-key"))
    jit.clear_memory_cache()
    yield d
    jit.clear_memory_cache()


def files(d):
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


def fresh_compile(text):
    jit.clear_memory_cache()
    return compile_kernel(parse_graph(text))


X = np.linspace(-4, 4, 1000, dtype=np.float32).reshape(10, 100)


def test_warm_disk_hit_identical(cache):
    text = graph1("Tanh", X.shape)
    h0, m0 = jit.STATS["disk_hits"], jit.STATS["disk_misses"]
    a = fresh_compile(text)
    assert not a.from_disk and jit.STATS["disk_misses"] == m0 + 1
    (path,) = files(cache)
    assert path.name == a.disk_key + ".o"
    ya = a(X)[0]
    b = fresh_compile(text)
    assert b is not a and b.from_disk and jit.STATS["disk_hits"] == h0 + 1
    np.testing.assert_array_equal(b(X)[0], ya)
    np.testing.assert_allclose(ya, np.tanh(X), rtol=1e-5, atol=1e-6)
    assert "define" in b.llvm_ir_optimized  # rebuilt on demand
    assert files(cache) == [path]


def test_different_kernel_misses(cache):
    a = fresh_compile(graph1("Exp", (37,)))
    m = jit.STATS["disk_misses"]
    b = fresh_compile(graph1("Exp", (38,)))
    assert not b.from_disk and jit.STATS["disk_misses"] == m + 1
    assert a.disk_key != b.disk_key
    assert len(files(cache)) == 2


@pytest.mark.parametrize("damage", ["truncate", "empty", "random", "flip_payload", "wrong_key"])
def test_corrupt_file_falls_back(cache, damage):
    text = graph1("Exp", X.shape)
    a = fresh_compile(text)
    (path,) = files(cache)
    good = path.read_bytes()
    if damage == "truncate":
        bad = good[: len(good) // 2]
    elif damage == "empty":
        bad = b""
    elif damage == "random":
        bad = np.random.default_rng(0).bytes(len(good))
    elif damage == "flip_payload":
        bad = bytearray(good)
        bad[-100] ^= 0xFF
        bad = bytes(bad)
    else:  # a valid entry of another kernel under this name
        other = fresh_compile(graph1("Tanh", (5,)))
        bad = (cache / "kernels" / other.disk_key[:2] / (other.disk_key + ".o")).read_bytes()
    path.write_bytes(bad)
    b = fresh_compile(text)
    assert not b.from_disk
    np.testing.assert_allclose(b(X)[0], np.exp(X), rtol=1e-5)
    assert path.read_bytes() == good  # overwritten with a valid entry
    c = fresh_compile(text)
    assert c.from_disk
    np.testing.assert_array_equal(c(X)[0], a(X)[0])


@pytest.mark.parametrize("value", ["", "0"])
def test_disabled_writes_nothing(tmp_path, monkeypatch, value):
    monkeypatch.setenv("NEEDLE_CACHE_DIR", value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert jit.cache_dir() is None
    k = fresh_compile(graph1("Exp", (41,)))
    assert k.disk_key is None and not k.from_disk
    np.testing.assert_allclose(k(X.ravel()[:41])[0], np.exp(X.ravel()[:41]), rtol=1e-5)
    assert files(tmp_path) == []
    jit.clear_memory_cache()


def test_default_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("NEEDLE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert jit.cache_dir() == os.path.join(str(tmp_path), "needle")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert jit.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "needle")


def test_concurrent_writers_no_partial_files(cache):
    name = jit.entry_name("ab" * 32)
    path = disk.entry_path(name)
    payloads = [bytes([i]) * (200_000 + i) for i in range(8)]
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(disk.read_entry(name) if os.path.exists(path) else "missing")

    def writer(p):
        for _ in range(20):
            disk.write_entry(name, p)

    r = threading.Thread(target=reader)
    r.start()
    ws = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    stop.set()
    r.join()
    assert disk.read_entry(name) in payloads
    assert all(s == "missing" or s in payloads for s in seen)  # never partial / invalid
    assert [p.name for p in files(cache)] == [os.path.basename(path)]  # no temp files left


def test_concurrent_compiles_in_processes(cache):
    import subprocess
    import sys

    code = ("import numpy as np\n"
            "from needle.codegen import compile_kernel\n"
            "from needle.ir import parse_graph\n"
            "from tests.codegen.test_kernels import graph1\n"
            "k = compile_kernel(parse_graph(graph1('Tanh', (777,))))\n"
            "x = np.linspace(-3, 3, 777, dtype=np.float32)\n"
            "assert np.allclose(k(x)[0], np.tanh(x), rtol=1e-5, atol=1e-6)\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, NEEDLE_CACHE_DIR=str(cache))
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env) for _ in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    (path,) = files(cache)
    k = fresh_compile(graph1("Tanh", (777,)))
    assert k.from_disk and path.name == k.disk_key + ".o"
