"""The compiled training steps of the four course models as CUDA programs.

For MLPResNet, ResNet9, the LSTM LM and the Transformer LM (small shapes, SGD with
momentum, as in tests/compile/test_models.py): the graph's translation unit is compiled with
`nvcc -arch=sm_90 -c` (no warnings; skipped without nvcc; one nvcc per model, at most two at
a time, running while the emulation tests do), and every kernel of the program is emulated
on the CPU end to end, each value a fusion group writes compared with the reference
interpreter. SGD rather than Adam: Adam turns the rounding noise of exactly-zero gradients
(a bias before a BatchNorm) into lr-sized updates that no two summation orders share.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
import needle.optim as optim
from needle.codegen.cuda import build_program
from needle.codegen.cuda.build import compile_object, find_nvcc
from tests.compile.test_models import MODELS, OPTIMIZERS
from tests.gpu_emulator import check_program

NAMES = list(MODELS)
#: ResNet9's BatchNorm2d over 4 images (1x1 maps in the last blocks) amplifies reassociated sums
TOLERANCE = {"resnet9": 3e-5}


def training_step(name: str, opt_name: str = "sgd_momentum"):
    """(final graph, input values) of one compiled training step of model `name`."""
    np.random.seed(0)
    rng = np.random.RandomState(1)
    model, batches, _ = MODELS[name](rng)
    opt_cls, kw = OPTIMIZERS[opt_name]
    opt = opt_cls(model.parameters(), **kw)
    step = ndl.compile(optim.train_step(model, nn.SoftmaxLoss(), opt))
    x, y = batches[0]
    args = (ndl.Tensor(x.astype(np.float32)), ndl.Tensor(y.astype(np.float32)))
    step(*args)
    entry = step._cache[step._last_key]
    # the values the graph's inputs were bound to (parameters, optimizer state, batch...)
    values, _ = step._inputs(entry, args, {})
    return entry.graph, [np.asarray(v.numpy() if hasattr(v, "numpy") else v, np.float32) for v in values]


@pytest.fixture(scope="module")
def programs():
    saved = os.environ.get("NEEDLE_EXECUTOR")
    os.environ["NEEDLE_EXECUTOR"] = "interp"   # the graph is what matters, not how it runs here
    try:
        built = {}
        for name in NAMES:
            graph, inputs = training_step(name)
            built[name] = (graph, inputs, build_program(graph))
    finally:
        if saved is None:
            os.environ.pop("NEEDLE_EXECUTOR", None)
        else:
            os.environ["NEEDLE_EXECUTOR"] = saved
    pool = ThreadPoolExecutor(max_workers=2) if find_nvcc() else None
    jobs = {name: pool.submit(compile_object, prog.source(), "sm_90") for name, (_, _, prog) in built.items()} \
        if pool else {}
    yield built, jobs
    if pool:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("name", NAMES)
def test_training_step_emulated(programs, name):
    built, _ = programs
    graph, inputs, prog = built[name]
    assert all(r.how != "split" or "lower" in r.detail for r in prog.groups)
    outs = check_program(prog, graph, inputs, tol=TOLERANCE.get(name, 1e-5))
    assert len(outs) == len(graph.outputs)


@pytest.mark.parametrize("name", NAMES)
def test_training_step_nvcc(programs, name):
    built, jobs = programs
    if not jobs:
        pytest.skip("nvcc is not installed")
    messages = jobs[name].result()
    low = messages.lower()
    assert "uninitialized" not in low and "used before its value is set" not in low, messages
    assert "warning" not in low, messages


def test_every_group_has_kernels(programs):
    """No group of the four steps is left out: each is a kernel (lowered, split, GEMM, conv,
    RNG, scatter-add) or a view its consumers recompute."""
    built, _ = programs
    for name, (graph, _, prog) in built.items():
        kinds = {r.how for r in prog.groups}
        assert kinds <= {"lowered", "split", "gemm", "conv", "conv_grad", "rng", "index_add", "copy", "view",
                         "skipped"}, kinds
        assert any(r.how in ("gemm", "conv") for r in prog.groups)
        assert prog.launches
