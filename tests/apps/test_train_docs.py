"""docs/training.md's MNIST figures reproduce: each mnist row of its results table is rerun
and its final eval accuracy and per-epoch accuracies must be the ones printed (the np rows'
within NP_TOLERANCE on another CPU model)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
ROW = re.compile(r"^\| `(mnist [^`]*)` \| (nd|np)[^|]*\| eval accuracy ([0-9.]+)(?: \(epochs: ([ .0-9]+)\))? \|", re.M)

pytestmark = pytest.mark.skipif(not (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason=f"MNIST test split not found under {SHARED}")


#: the np rows' final accuracy on other CPU models than the one that wrote docs/training.md
#: (0.9535 on AMD Zen 5, 0.9520 on Intel Sapphire Rapids): numpy's float32 matrix products
#: round differently there; needle's own kernels (the nd rows) do not
NP_TOLERANCE = 0.003


def _rows():
    rows = ROW.findall((REPO / "docs" / "training.md").read_text())
    assert len(rows) >= 3, "docs/training.md lost its mnist results rows"
    return rows


@pytest.mark.parametrize("command, backend, accuracy, epochs", _rows(), ids=lambda v: str(v)[:30])
def test_mnist_row_reproduces(command, backend, accuracy, epochs):
    env = dict(os.environ, NEEDLE_BACKEND=backend, OPENBLAS_NUM_THREADS="1")
    argv = [sys.executable, "-m", "needle.cli.train", *command.split(), "--data-dir", str(SHARED),
            "--no-progress"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    if backend == "np":  # numpy's BLAS picks its GEMM kernels (and their rounding) by CPU model
        assert abs(result["eval_accuracy"] - float(accuracy)) <= NP_TOLERANCE, (result, accuracy)
        return
    assert f"{result['eval_accuracy']:.4f}" == accuracy
    if epochs:
        printed = [float(re.search(r"eval_accuracy ([0-9.]+)", line).group(1)) for line in lines[:-1]]
        assert printed == [float(e) for e in epochs.split()]
