"""NEEDLE_PROFILE=1: per-kernel timing of the kernel executor, `compiled.profile()` and the
table printed at exit."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
import needle.optim as optim
from needle.runtime import profile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mlp_step():
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.SoftmaxLoss()

    @ndl.compile
    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    rng = np.random.RandomState(1)
    x = ndl.Tensor(rng.randn(16, 32).astype(np.float32), requires_grad=False)
    y = ndl.Tensor(rng.randint(0, 10, 16).astype(np.float32), requires_grad=False)
    return step, x, y


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch):
    """Executors profiled here are not printed when pytest exits."""
    monkeypatch.setattr(profile, "_REGISTRY", [])


ROW = re.compile(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(k\d+\S* .*)$")


def test_profile_table_lists_every_step(monkeypatch):
    monkeypatch.setenv("NEEDLE_PROFILE", "1")
    monkeypatch.setenv("NEEDLE_EXECUTOR", "kernels")
    step, x, y = mlp_step()
    for _ in range(3):
        step(x, y)
    text = step.profile()
    assert "reference machine" in text and "387" in text and "59" in text
    rows = [ROW.match(line) for line in text.splitlines()]
    rows = [m for m in rows if m]
    runner = next(iter(step._cache.values())).runner
    assert len(rows) == len(runner.steps) > 0
    assert all(int(m.group(1)) == 3 for m in rows)
    assert abs(sum(float(m.group(3)) for m in rows) - 100.0) < 1.0
    matmul = [m for m in rows if "MatMul" in m.group(7)]
    assert matmul and any(float(m.group(4)) > 0 for m in matmul)
    assert any("test_profile.py:" in m.group(7) for m in rows)  # the user's source line
    labels = [m.group(7).split()[0] for m in rows]
    assert len(set(labels)) == len(labels)  # a GEMM's epilogue is k<id>.epi
    means = [float(m.group(2)) for m in rows]  # equal calls: by total time = by mean
    assert means == sorted(means, reverse=True)


def test_peaks_are_overridable(monkeypatch):
    monkeypatch.setenv("NEEDLE_PROFILE", "1")
    monkeypatch.setenv("NEEDLE_EXECUTOR", "kernels")
    monkeypatch.setenv("NEEDLE_PEAK_GFLOPS", "1000")
    monkeypatch.setenv("NEEDLE_PEAK_GBS", "100")
    step, x, y = mlp_step()
    step(x, y)
    text = step.profile()
    assert "1000 GFLOP/s, 100 GB/s" in text and "reference machine" not in text


def test_profile_raises_without_profiling(monkeypatch):
    monkeypatch.delenv("NEEDLE_PROFILE", raising=False)
    monkeypatch.setenv("NEEDLE_EXECUTOR", "kernels")
    step, x, y = mlp_step()
    step(x, y)
    with pytest.raises(RuntimeError, match="NEEDLE_PROFILE=1"):
        step.profile()


def test_profile_raises_on_interpreter(monkeypatch):
    monkeypatch.setenv("NEEDLE_PROFILE", "1")
    monkeypatch.setenv("NEEDLE_EXECUTOR", "interp")
    step, x, y = mlp_step()
    step(x, y)
    with pytest.raises(RuntimeError, match="interpreter executor"):
        step.profile()


def test_table_printed_at_exit():
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        from tests.compile.test_profile import mlp_step
        step, x, y = mlp_step()
        for _ in range(2):
            step(x, y)
    """ % ROOT)
    env = dict(os.environ, NEEDLE_PROFILE="1", NEEDLE_EXECUTOR="kernels")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "needle profile: " in proc.stderr
    assert "calls    mean µs  % step   GFLOP/s     GB/s roofline  kernel" in proc.stderr
    assert "MatMul" in proc.stderr
