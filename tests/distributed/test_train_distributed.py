"""needle-train data-parallel under mpiexec: accuracy band, rank-0 output and checkpoint,
resume on 2 ranks, --nproc, and a failing run that stops every rank."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.distributed.test_distributed import MPIEXEC, ROOT, needs_mpi

DATA = Path(os.environ.get("NEEDLE_DATA_DIR") or ROOT.parent / "shared" / "data")
needs_mnist = pytest.mark.skipif(not (DATA / "mnist" / "t10k-images-idx3-ubyte.gz").is_file(),
                                 reason=f"MNIST test split not found under {DATA} (set NEEDLE_DATA_DIR)")
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", NEEDLE_NUM_THREADS="1")


def train(*args: str, nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "needle.cli.train", *args, "--data-dir", str(DATA), "--no-progress"]
    if nproc > 1:
        command = [MPIEXEC, "-n", str(nproc), *command]
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def result_of(run: subprocess.CompletedProcess) -> dict:
    assert run.returncode == 0, run.stderr
    json_lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1, f"rank 0 alone prints the JSON line:\n{run.stdout}"
    return json.loads(json_lines[0])


@needs_mpi
@needs_mnist
def test_two_ranks_train_mnist_checkpoint_once_and_resume(tmp_path):
    ckpt = tmp_path / "mnist.safetensors"
    first = result_of(train("mnist", "--epochs", "1", "--checkpoint", str(ckpt)))
    assert first["world_size"] == 2 and first["global_batch_size"] == 200
    assert first["eval_accuracy"] >= 0.88
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist.metrics.jsonl", "mnist.safetensors"]
    assert len((tmp_path / "mnist.metrics.jsonl").read_text().splitlines()) == 1
    resumed = result_of(train("mnist", "--epochs", "2", "--resume", str(ckpt)))
    straight = result_of(train("mnist", "--epochs", "2"))
    assert resumed["eval_accuracy"] == straight["eval_accuracy"]
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-5)


@needs_mpi
@needs_mnist
def test_nproc_starts_mpiexec_itself():
    run = train("mnist", "--epochs", "1", "--train-limit", "2000", "--eval-limit", "500", "--nproc", "2", nproc=1)
    assert result_of(run)["world_size"] == 2


@needs_mpi
def test_a_usage_error_stops_every_rank_with_the_message(tmp_path):
    start = time.monotonic()
    run = train("mnist", "--epochs", "1", "--checkpoint", str(tmp_path / "missing" / "x.safetensors"), timeout=60)
    assert run.returncode != 0
    assert time.monotonic() - start < 30
    assert "does not exist or is not writable" in run.stderr
