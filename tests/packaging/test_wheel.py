"""The wheel built with default flags installs in a fresh venv and works there (issue 15).

`pip wheel . --no-deps` from a copy of the working tree; a plain `python -m venv` (not
--system-site-packages) outside the checkout gets the wheel and its dependencies from the
package index; a smoke script run there imports needle from the venv, runs an eager op on
the nd cpu device and a compiled function, and the two console scripts; no top-level
`tools` or `apps` package is installed.  The extension is portable: outside the kernel
units built per instruction set (needle::cpu::avx2 / avx512, picked at run time) the .so
holds no VEX or EVEX instruction (AVX, AVX2, FMA, AVX-512), i.e. nothing beyond x86-64-v2.

Slow (minutes: the build, nvcc when present, the venv): it runs only when `-m slow` selects
it, as `tools/wheel_smoke.sh` does.
"""
from __future__ import annotations

import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.slow

SMOKE = textwrap.dedent("""
    import importlib.util, json, os, sys
    import numpy as np
    import needle as ndl
    import needle.backend_ndarray as nd
    from needle.backend_ndarray import ndarray_backend_cpu

    assert os.path.realpath(ndl.__file__).startswith(os.path.realpath(sys.prefix)), ndl.__file__
    a = ndl.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3), device=ndl.cpu())
    assert isinstance(a.cached_data, nd.NDArray) and nd.CPU_BACKEND_COMPILED
    np.testing.assert_allclose((a * 2 + 1).sum(axes=(1,)).numpy(), [9.0, 27.0])

    @ndl.compile
    def f(x, y):
        return ndl.ops.relu(x @ y) + 1.0

    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    got = f(ndl.Tensor(x), ndl.Tensor(y)).numpy()
    np.testing.assert_allclose(got, np.maximum(x @ y, 0) + 1, rtol=1e-5, atol=1e-5)
    print(json.dumps({"so": ndarray_backend_cpu.__file__, "isa": ndarray_backend_cpu.cpu_isa(),
                      "isas": ndarray_backend_cpu.cpu_isas(),
                      "tools": importlib.util.find_spec("tools") is not None,
                      "apps": importlib.util.find_spec("apps") is not None}))
""")


def run(cmd, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, **kw)
    assert res.returncode == 0, \
        f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    return res.stdout


def working_tree_copy(dest: str) -> None:
    """The checkout's tracked and untracked-but-not-ignored files (no build outputs)."""
    files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).split("\0")
    for rel in filter(None, files):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


def vector_code_outside_dispatch(so: str) -> list[str]:
    """Functions of `so` with a VEX/EVEX-encoded instruction (mnemonic v...) that are not in
    the per-instruction-set kernel namespaces."""
    dis = run(["objdump", "-d", "-C", "--no-show-raw-insn", so])
    bad, fn = set(), None
    for line in dis.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            fn = m.group(1)
            continue
        parts = line.split("\t")
        if fn and len(parts) >= 2 and parts[1].startswith("v") and not re.search(r"needle::cpu::avx(2|512)::", fn):
            bad.add(fn)
    return sorted(bad)


@pytest.mark.skipif(shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")),
                    reason="needs the git checkout (the wheel is built from its working tree)")
def test_wheel_installs_in_a_fresh_venv_and_is_portable(tmp_path, request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("builds a wheel and a venv (minutes): run with -m slow, as tools/wheel_smoke.sh does")
    src, wheels, venv, work = (tmp_path / d for d in ("src", "wheels", "venv", "work"))
    working_tree_copy(str(src))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEEDLE_") and k != "PYTHONPATH"}
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", str(wheels)], cwd=src, env=env)
    (wheel,) = glob.glob(str(wheels / "needle-*.whl"))

    run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    run([py, "-m", "pip", "install", "-q", wheel], env=env)
    work.mkdir()
    info = run([py, "-c", SMOKE], cwd=work, env=env).strip().splitlines()[-1]
    smoke = json.loads(info)
    assert not smoke["tools"] and not smoke["apps"], f"top-level tools/apps packages installed: {smoke}"
    for script in ("needle-train", "needle-ir"):
        out = run([str(venv / "bin" / script), "--help"], cwd=work, env=env)
        assert "usage" in out.lower(), out
    for name in ("tools", "apps"):
        res = subprocess.run([py, "-c", f"import {name}"], cwd=work, env=env, capture_output=True, text=True)
        assert res.returncode != 0 and "ModuleNotFoundError" in res.stderr, f"import {name} works: {res.stderr}"

    if platform.machine().lower() in ("x86_64", "amd64") and shutil.which("objdump"):
        assert {"avx2", "avx512"} <= set(re.findall(r"needle::cpu::(avx2|avx512)::", run(
            ["objdump", "-d", "-C", "--no-show-raw-insn", smoke["so"]]))), "the dispatched kernel units are missing"
        bad = vector_code_outside_dispatch(smoke["so"])
        assert not bad, f"AVX/AVX2/AVX-512 instructions outside the dispatched kernel units: {bad[:20]}"
