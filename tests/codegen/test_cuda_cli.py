"""needle-ir --target cuda / --format cuda / --out: CUDA translation units from a script."""
from __future__ import annotations

import os
import re
import textwrap

import pytest

from needle.codegen.cuda.build import compile_object, find_nvcc
from needle.cli.needle_ir import main

SCRIPT = """
import numpy as np
import needle as ndl
import needle.nn as nn

np.random.seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
loss_fn = nn.SoftmaxLoss()


@ndl.compile
def forward(x):
    return model(x)


@ndl.compile
def loss_and_grads(x, y):
    loss = loss_fn(model(x), y)
    loss.backward()
    return loss


x = ndl.Tensor(np.random.randn(6, 4).astype("float32"))
y = ndl.Tensor(np.array([0, 1, 2, 0, 1, 2]))
forward(x)
forward(ndl.Tensor(np.random.randn(5, 4).astype("float32")))   # a second signature
loss_and_grads(x, y)
print("SCRIPT-DONE")
"""


@pytest.fixture
def script(tmp_path, monkeypatch):
    monkeypatch.setenv("NEEDLE_EXECUTOR", "interp")
    path = tmp_path / "train_tiny.py"
    path.write_text(textwrap.dedent(SCRIPT))
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_out_writes_one_translation_unit_per_graph(tmp_path, capsys, script):
    out_dir = tmp_path / "cu"
    code, out, err = run(capsys, "--target", "cuda", "--out", str(out_dir), script)
    assert code == 0, err
    assert "SCRIPT-DONE" in err and "SCRIPT-DONE" not in out
    files = sorted(os.listdir(out_dir))
    assert files == ["forward-0.cu", "forward-1.cu", "loss_and_grads.cu"]
    wrote = re.findall(r"^# needle-ir: wrote (\S+) \((\d+) kernel launches\)$", out, re.M)
    assert sorted(os.path.basename(p) for p, _ in wrote) == files
    for name in files:
        text = (out_dir / name).read_text()
        stem = name.split("-")[0].split(".")[0]
        assert f'extern "C" int needle_graph_{stem}(void** inputs, void** outputs, char* arena, ' \
               f"cudaStream_t stream)" in text
        assert '__global__' in text and "<<<" in text
    step = (out_dir / "loss_and_grads.cu").read_text()
    assert "tiled GEMM" in step


def test_format_cuda_prints_the_units(capsys, script):
    code, out, err = run(capsys, "--format", "cuda", "--function", "loss_and_grads", script)
    assert code == 0, err
    heads = re.findall(r"^# needle-ir: (\S+) (\(.*\)) target cuda$", out, re.M)
    assert [h[0] for h in heads] == ["loss_and_grads"]
    assert "needle_graph_loss_and_grads(" in out


def test_usage_errors(capsys, script, tmp_path):
    assert run(capsys, "--target", "cuda", "--after", "input", script)[0] == 2
    assert run(capsys, "--target", "cuda", "--format", "llvm", script)[0] == 2
    assert run(capsys, "--out", str(tmp_path), script)[0] == 2
    assert run(capsys, "--target", "cpu", "--format", "cuda", script)[0] == 2


def test_other_formats_still_work(capsys, script):
    code, out, err = run(capsys, "--function", "forward", script)
    assert code == 0, err
    assert out.startswith("# needle-ir: forward (float32[6,4]) after ")
    code, out, err = run(capsys, "--format", "c", "--function", "forward", script)
    assert code == 0, err
    assert "# kernel k" in out or "runs on" in out


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc is not installed")
def test_written_unit_compiles_with_nvcc(tmp_path, capsys, script):
    out_dir = tmp_path / "cu"
    code, _, err = run(capsys, "--target", "cuda", "--out", str(out_dir), "--function", "loss_and_grads", script)
    assert code == 0, err
    messages = compile_object((out_dir / "loss_and_grads.cu").read_text(), "sm_90")
    assert "warning" not in messages.lower(), messages
