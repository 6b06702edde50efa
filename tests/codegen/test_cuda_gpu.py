"""Compiled graphs on a real GPU through CudaGraphExecutor (marked `cuda`; skipped without
the cuda device, i.e. unless `needle.backend_ndarray.cuda().enabled()`, or without nvcc).

Each graph's translation unit is compiled by nvcc for the GPU's compute capability, loaded,
and run on device arrays; its outputs are compared with the reference interpreter like the
emulated runs in test_cuda_codegen.py / test_cuda_models.py.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import needle as ndl
from needle.codegen.cuda.build import find_nvcc

pytestmark = pytest.mark.cuda


def _gpu_ready() -> bool:
    try:
        return bool(ndl.backend_ndarray.cuda().enabled()) and find_nvcc() is not None
    except Exception:  # noqa: BLE001
        return False


if not _gpu_ready():
    pytest.skip("no CUDA GPU (cuda().enabled() is False) or no nvcc", allow_module_level=True)

from needle.runtime.cuda_executor import CudaGraphExecutor  # noqa: E402
from tests.gpu_emulator import group_scales, reference_values, scaled_error  # noqa: E402

from .test_cuda_codegen import compiled, rnd  # noqa: E402


@pytest.fixture(autouse=True)
def _interpreted(monkeypatch):
    monkeypatch.setenv("NEEDLE_EXECUTOR", "interp")


def run_on_gpu(graph, inputs, tol=1e-5):
    runner = CudaGraphExecutor(graph)
    dev = ndl.backend_ndarray.cuda()
    outs = runner([ndl.backend_ndarray.NDArray(x, device=dev) for x in inputs])
    ref = reference_values(graph, inputs)
    scales = group_scales(runner.program, graph, ref)
    producer = {v: gid for gid, vs in runner.program.writes.items() for v in vs}
    for k, (o, v) in enumerate(zip(outs, graph.outputs)):
        got = o.numpy()
        err = scaled_error(got, ref[v], scales.get(producer.get(v), 0.0))
        assert err <= tol, f"output {k} (%{v} {graph.node(v).op}) off by {err:.3g}"
    return runner, outs


def test_elementwise_and_reductions():
    def f(a, b):
        e = ndl.ops.exp(a - ndl.ops.max(a, axes=(1,)).reshape((37, 1)).broadcast_to((37, 53)).detach())
        s = ndl.ops.summation(e, axes=(1,))
        return e / s.reshape((37, 1)).broadcast_to((37, 53)), ndl.ops.summation(a * b, axes=(0,)), ndl.ops.tanh(b)
    g, ins = compiled(f, rnd(37, 53), rnd(37, 53))
    run_on_gpu(g, ins)


@pytest.mark.parametrize("m,k,n", [(37, 53, 29), (130, 70, 67), (5, 20, 70), (256, 256, 256)])
def test_gemm(m, k, n):
    g, ins = compiled(lambda a, b: ndl.ops.relu(a @ b + 1.0), rnd(m, k), rnd(k, n))
    run_on_gpu(g, ins)


def test_batched_and_transposed_gemm():
    g, ins = compiled(lambda a, b: ndl.ops.transpose(a @ b) * 2.0, rnd(3, 17, 9), rnd(3, 9, 13))
    run_on_gpu(g, ins)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1)])
def test_conv_and_its_gradient(stride, padding):
    def f(a, b):
        a.requires_grad = True
        b.requires_grad = True
        out = ndl.ops.conv(a, b, stride=stride, padding=padding)
        (out * out).sum().backward()
        return out, a.grad, b.grad
    g, ins = compiled(f, rnd(2, 9, 11, 3), rnd(3, 3, 3, 5))
    run_on_gpu(g, ins)


@pytest.mark.parametrize("name", ["mlpresnet", "resnet9", "lstm_lm", "transformer_lm"])
def test_training_step_on_the_gpu(name):
    from .test_cuda_models import TOLERANCE, training_step
    graph, inputs = training_step(name)
    runner, _ = run_on_gpu(graph, inputs, TOLERANCE.get(name, 1e-5))
    # a second call reuses the arena and gives the same results
    dev = ndl.backend_ndarray.cuda()
    again = runner([ndl.backend_ndarray.NDArray(x, device=dev) for x in inputs])
    first = runner([ndl.backend_ndarray.NDArray(x, device=dev) for x in inputs])
    for a, b in zip(again, first):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_library_cache_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("NEEDLE_CACHE_DIR", str(tmp_path))
    g, ins = compiled(lambda a: a * 3.0 + 1.0, rnd(10, 10))
    first = CudaGraphExecutor(g)
    assert first.library.path.startswith(str(tmp_path))
    second = CudaGraphExecutor(g)
    assert second.library.path == first.library.path and os.path.isfile(first.library.path)


def test_compile_on_cuda_tensors_matches_eager(monkeypatch):
    """`@ndl.compile` on cuda() tensors runs the CUDA executor and gives eager cuda's values
    and gradients."""
    monkeypatch.delenv("NEEDLE_EXECUTOR", raising=False)
    dev = ndl.cuda()

    def f(a, w):
        a.requires_grad = True
        w.requires_grad = True
        y = ndl.ops.tanh(a @ w).sum(axes=(1,))
        (y * y).sum().backward()
        return y, a.grad, w.grad
    x, w = rnd(33, 17), rnd(17, 9)
    step = ndl.compile(f)
    got = step(ndl.Tensor(x, device=dev), ndl.Tensor(w, device=dev))
    assert step.stats["executor"] == "cuda"
    want = f(ndl.Tensor(x, device=dev), ndl.Tensor(w, device=dev))
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_.numpy(), w_.numpy(), rtol=1e-4, atol=1e-5)


def test_profile_times_every_launch(monkeypatch):
    monkeypatch.setenv("NEEDLE_PROFILE", "1")
    g, ins = compiled(lambda a, b: ndl.ops.relu(a @ b + 1.0), rnd(256, 256), rnd(256, 256))
    runner, _ = run_on_gpu(g, ins)
    dev = ndl.backend_ndarray.cuda()
    for _ in range(3):
        runner([ndl.backend_ndarray.NDArray(x, device=dev) for x in ins])
    assert len(runner.profile) == len(runner.program.launches)
    assert all(p.calls == 3 and p.seconds > 0 for p in runner.profile)  # the first call left out
    from needle.runtime.profile import format_table
    assert "MatMul" in format_table(runner.profile, "gemm")
