"""The on-disk cache of compiled graphs: a warm start runs no graph pass."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from tests.conftest import close, tensor


@pytest.fixture(autouse=True)
def _key_file(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NEEDLE_CACHE_KEY_FILE", str(tmp_path_factory.mktemp("key") / "cache-key"))


def _step_factory():
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def step(x):
        loss = model(x).sum()
        loss.backward()
        return loss

    return model, step


def test_warm_start_skips_passes_and_gives_the_same_results(tmp_path, monkeypatch):
    monkeypatch.setenv("NEEDLE_CACHE_DIR", str(tmp_path))
    x = tensor(np.random.randn(3, 4))
    model, step = _step_factory()
    cold = ndl.compile(step)
    out_cold = cold(x).numpy()
    grads_cold = [p.grad.numpy() for p in model.parameters()]
    assert "graph_cache_hits" not in cold.stats
    files = glob.glob(os.path.join(str(tmp_path), "graphs", "*", "*.ir"))
    assert len(files) == 1
    warm = ndl.compile(step)
    close(warm(x), out_cold)
    for p, g in zip(model.parameters(), grads_cold):
        close(p.grad, g)
    assert warm.stats["graph_cache_hits"] == 1
    assert warm.ir("autodiff") == cold.ir("autodiff") and warm.ir("final") == cold.ir("final")


def test_corrupt_entry_is_a_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("NEEDLE_CACHE_DIR", str(tmp_path))
    x = tensor(np.random.randn(3, 4))
    _, step = _step_factory()
    expected = ndl.compile(step)(x).numpy()
    (path,) = glob.glob(os.path.join(str(tmp_path), "graphs", "*", "*.ir"))
    with open(path, "r+") as f:
        text = f.read()
        f.seek(0)
        f.write(text[: len(text) // 2] + "%%garbage")
        f.truncate()
    again = ndl.compile(step)
    close(again(x), expected)
    assert "graph_cache_hits" not in again.stats
    warm = ndl.compile(step)  # the entry was rewritten
    warm(x)
    assert warm.stats["graph_cache_hits"] == 1


def test_disabled_cache_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("NEEDLE_CACHE_DIR", "0")
    _, step = _step_factory()
    ndl.compile(step)(tensor(np.random.randn(3, 4)))
    assert not os.listdir(tmp_path)
