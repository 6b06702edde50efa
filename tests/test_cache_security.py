"""Attacks on needle's disk caches (issue 12, docs/compile.md "Caches and security"): planted or
edited entries (kernel objects, CUDA libraries, compiled graphs), symlinks and FIFOs, an unsafe
folder or key file, unbounded growth. Each is refused or ignored (the entry recompiled and
rewritten) and results stay correct."""
from __future__ import annotations

import gc
import hashlib
import hmac
import os
import shutil
import stat
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest

import needle as ndl
from needle import cache as disk
from tests.conftest import ROOT

llvm = pytest.importorskip("llvmlite.binding")

from needle.codegen import compile_kernel, jit  # noqa: E402
from needle.codegen.lower import lower  # noqa: E402
from needle.ir import parse_graph  # noqa: E402
from tests.codegen.test_kernels import graph1  # noqa: E402

X = np.linspace(-3, 3, 64, dtype=np.float32)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("NEEDLE_CACHE_DIR", str(d))
    monkeypatch.setenv("NEEDLE_CACHE_KEY_FILE", str(tmp_path / "config" / "cache-key"))
    jit.clear_memory_cache()
    yield d
    jit.clear_memory_cache()


def fresh_kernel(text):
    jit.clear_memory_cache()
    return compile_kernel(parse_graph(text))


def foreign_mac_entry(name: str, payload: bytes) -> bytes:
    """An entry in today's format, MACed with a key that is not the user's."""
    mac = hmac.new(os.urandom(32), name.encode() + b"\0" + payload, hashlib.sha256).hexdigest()
    return b"needle-cache v2 " + mac.encode() + b"\n" + payload


def entries(d):
    return sorted(p for p in d.rglob("*") if p.is_file() or p.is_symlink()) if d.exists() else []


def test_forged_kernel_object_is_not_loaded(cache, monkeypatch):
    text = graph1("Exp", X.shape)
    a = fresh_kernel(text)
    (path,) = entries(cache)
    name = "/".join(path.relative_to(cache).parts)
    monkeypatch.setenv("NEEDLE_CACHE_DIR", "0")     # the attacker's object: tanh, under exp's names
    evil = jit.Kernel(lower(parse_graph(graph1("Tanh", X.shape))), "forged", a.key)
    obj = jit.target_machine().emit_object(llvm.parse_assembly(evil.llvm_ir_optimized))
    monkeypatch.setenv("NEEDLE_CACHE_DIR", str(cache))
    old_style = (b"NEEDLEOBJ1\n" + struct.pack("<32sQ32s", bytes.fromhex(a.disk_key), len(obj),
                                               hashlib.sha256(obj).digest()) + obj)
    for planted in (old_style, foreign_mac_entry(name, obj)):
        with open(path, "wb") as f:
            f.write(planted)
        k = fresh_kernel(text)
        assert not k.from_disk
        np.testing.assert_allclose(k(X)[0], np.exp(X), rtol=1e-5)
        assert disk.read_entry(name) is not None    # rewritten with a valid entry
    disk.write_entry(name, obj)     # only the user's key makes it load: the object is a real attack
    k = fresh_kernel(text)
    assert k.from_disk
    np.testing.assert_allclose(k(X)[0], np.tanh(X), rtol=1e-5)


def test_cuda_library_entries_are_verified(cache):
    name = f"cuda/ab/{'ab' * 32}.so"
    other = f"cuda/cd/{'cd' * 32}.so"
    elf = b"\x7fELF" + os.urandom(4000)
    disk.write_entry(other, elf)
    path = disk.entry_path(name)
    os.makedirs(os.path.dirname(path))
    with open(disk.entry_path(other), "rb") as f:
        moved = f.read()    # a valid entry, under another name
    for planted in (elf, foreign_mac_entry(name, elf), moved):
        with open(path, "wb") as f:
            f.write(planted)
        assert disk.read_entry(name) is None
    disk.write_entry(name, elf)
    assert disk.read_entry(name) == elf


@pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("gcc") is None, reason="needs nvcc and gcc")
def test_forged_cuda_library_is_not_loaded(cache, tmp_path):
    from needle.codegen.cuda.build import compile_library, library_key, load_library
    marker = tmp_path / "pwned"
    evil_c = tmp_path / "evil.c"
    evil_c.write_text('#include <stdio.h>\n'
                      f'__attribute__((constructor)) static void pwn(void) {{ fclose(fopen("{marker}", "w")); }}\n'
                      'int f(void) { return 666; }\n')
    subprocess.run(["gcc", "-shared", "-fPIC", str(evil_c), "-o", str(tmp_path / "evil.so")], check=True)
    evil = (tmp_path / "evil.so").read_bytes()
    source = 'extern "C" int f(void) { return 42; }\n'
    key = library_key(source, "sm_90")
    name = f"cuda/{key[:2]}/{key}.so"
    path = disk.entry_path(name)
    os.makedirs(os.path.dirname(path))
    for planted in (evil, foreign_mac_entry(name, evil)):
        with open(path, "wb") as f:
            f.write(planted)
        lib = compile_library(source, "sm_90")
        assert lib == path and load_library(lib).f() == 42 and not marker.exists()
        assert disk.read_entry(name) == lib.data != evil     # rewritten
    hit = compile_library(source, "sm_90")
    assert hit.data == lib.data and load_library(hit).f() == 42


def test_edited_graph_is_not_used(cache):
    x = ndl.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))

    def double(x):
        return x * 2

    np.testing.assert_array_equal(ndl.compile(double)(x).numpy(), x.numpy() * 2)
    (path,) = (cache / "graphs").rglob("*.ir")
    name = "/".join(path.relative_to(cache).parts)
    text = path.read_bytes().split(b"\n", 1)[1]     # after the header line
    assert b"{scalar=2}" in text
    edited = text.replace(b"{scalar=2}", b"{scalar=3}")
    old_style = b"# needle compiled graph, key " + path.stem.encode() + b"\n" + edited
    for planted in (old_style, foreign_mac_entry(name, edited)):
        path.write_bytes(planted)
        f = ndl.compile(double)
        np.testing.assert_array_equal(f(x).numpy(), x.numpy() * 2)
        assert "graph_cache_hits" not in f.stats
        assert disk.read_entry(name) == text          # rewritten
    f = ndl.compile(double)
    f(x)
    assert f.stats["graph_cache_hits"] == 1


CHILD = """
import numpy as np, needle as ndl
f = ndl.compile(lambda x: (x * 2 + 1).exp())
x = np.linspace(-1, 1, 6, dtype="float32").reshape(2, 3)
assert np.allclose(f(ndl.Tensor(x)).numpy(), np.exp(x * 2 + 1), rtol=1e-5)
"""


def _limit_memory():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_symlinks_and_fifos_are_skipped(cache, kind):
    run = [sys.executable, "-c", CHILD]
    subprocess.run(run, cwd=ROOT, check=True, timeout=120, preexec_fn=_limit_memory)
    planted = entries(cache)
    assert {p.suffix for p in planted} == {".ir", ".o"}
    for p in planted:
        p.unlink()
        os.symlink("/dev/zero", p) if kind == "symlink" else os.mkfifo(p)
    subprocess.run(run, cwd=ROOT, check=True, timeout=120, preexec_fn=_limit_memory)
    for p in planted:
        assert stat.S_ISREG(os.lstat(p).st_mode)      # rewritten
        assert disk.read_entry("/".join(p.relative_to(cache).parts)) is not None


def test_group_writable_or_foreign_folder_is_refused(cache):
    cache.mkdir(mode=0o700)
    os.chmod(cache, 0o775)
    x = ndl.Tensor(np.arange(6, dtype=np.float32))
    with pytest.warns(RuntimeWarning, match="disk cache off.*group or others may write"):
        np.testing.assert_array_equal(ndl.compile(lambda x: x * 2)(x).numpy(), x.numpy() * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # warned once per process
        k = fresh_kernel(graph1("Exp", X.shape))
        np.testing.assert_allclose(k(X)[0], np.exp(X), rtol=1e-5)
    assert not k.from_disk and entries(cache) == []
    if os.getuid() == 0:
        os.chmod(cache, 0o700)
        os.chown(cache, 65534, 65534)
        with pytest.warns(RuntimeWarning, match="owned by uid 65534"):
            assert not fresh_kernel(graph1("Exp", X.shape)).from_disk
        assert entries(cache) == []


def test_key_file_is_private_and_outside_the_cache(cache):
    fresh_kernel(graph1("Exp", X.shape))
    key = disk.key_path()
    st = os.lstat(key)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == 32
    assert stat.S_IMODE(os.stat(os.path.dirname(key)).st_mode) == 0o700
    assert not os.path.abspath(key).startswith(os.path.abspath(cache) + os.sep)
    assert fresh_kernel(graph1("Exp", X.shape)).from_disk


@pytest.mark.parametrize("damage", ["readable", "symlink", "short"])
def test_unsafe_key_file_turns_the_disk_cache_off(cache, tmp_path, monkeypatch, damage):
    key = tmp_path / "config" / f"key-{damage}"
    key.parent.mkdir(mode=0o700)
    if damage == "symlink":
        (tmp_path / "elsewhere").write_bytes(os.urandom(32))
        os.chmod(tmp_path / "elsewhere", 0o600)
        key.symlink_to(tmp_path / "elsewhere")
    else:
        key.write_bytes(os.urandom(32 if damage == "readable" else 5))
        os.chmod(key, 0o644 if damage == "readable" else 0o600)
    monkeypatch.setenv("NEEDLE_CACHE_KEY_FILE", str(key))
    with pytest.warns(RuntimeWarning, match="disk cache off: cache key file"):
        k = fresh_kernel(graph1("Exp", X.shape))
    np.testing.assert_allclose(k(X)[0], np.exp(X), rtol=1e-5)
    assert not k.from_disk and not list((cache / "kernels").rglob("*.o"))


def test_eviction_keeps_the_folder_under_the_bound(cache, monkeypatch):
    monkeypatch.setenv("NEEDLE_CACHE_MAX_BYTES", "10000")
    names = [f"kernels/{i:02d}/{i:064d}.o" for i in range(4)]
    for name in names[:3]:
        disk.write_entry(name, b"x" * 3000)
    for i, name in enumerate(names[:3]):            # used long ago, in this order...
        path = disk.entry_path(name)
        os.utime(path, ns=(10**18 + i * 10**9, os.stat(path).st_mtime_ns))
    assert disk.read_entry(names[0]) is not None    # ...then a hit makes the first the most recent
    disk.write_entry(names[3], b"x" * 3000)
    assert [os.path.exists(disk.entry_path(n)) for n in names] == [True, False, False, True]
    for i in range(12):                             # and through the kernel cache itself
        fresh_kernel(graph1("Exp", (100 + i,)))
        assert sum(p.stat().st_size for p in entries(cache)) <= 10000
    assert len(entries(cache)) < 12


def test_memory_cache_is_bounded_and_dropped_kernels_stay_valid(cache, monkeypatch):
    monkeypatch.setattr(jit, "MEMORY_CACHE_SIZE", 2)
    for i in range(5):
        compile_kernel(parse_graph(graph1("Exp", (50 + i,))))
    assert len(jit._CACHE) == 2
    f = ndl.compile(lambda x: (x * 2 + 1).exp())     # the native executor keeps only addresses
    x = ndl.Tensor(np.linspace(-1, 1, 6, dtype=np.float32))
    expected = np.exp(x.numpy() * 2 + 1)
    np.testing.assert_allclose(f(x).numpy(), expected, rtol=1e-5)
    jit.clear_memory_cache()
    gc.collect()
    np.testing.assert_allclose(f(x).numpy(), expected, rtol=1e-5)
