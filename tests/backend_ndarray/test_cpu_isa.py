"""The cpu module's kernels in every instruction set built and usable here (baseline, avx2,
avx512; backends/cpu/dispatch.cc picks one at import, NEEDLE_CPU_ISA forces one): each
computes the same results as numpy, tails and NaNs included (convs reading their patches in
place: the baseline set's plain loop too)."""
import os
import subprocess
import sys
import textwrap

import pytest

import needle.backend_ndarray as nd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.skipif(not nd.CPU_BACKEND_COMPILED, reason="the C++ cpu backend is not built")

KERNELS = textwrap.dedent("""
    import numpy as np
    import needle.backend_ndarray as nd

    mod = nd.cpu().mod
    assert mod.cpu_isa() == ISA, (mod.cpu_isa(), ISA)
    rng = np.random.default_rng(0)

    def close(got, want, rtol=1e-5, atol=1e-6):
        np.testing.assert_allclose(got.numpy(), want, rtol=rtol, atol=atol, equal_nan=True)

    for n in (1, 7, 8, 9, 33, 1000, 70001):
        A = rng.uniform(-3, 3, n).astype(np.float32)
        B = rng.uniform(-3, 3, n).astype(np.float32)
        if n > 5:
            A[::5] = np.nan
        B[::7] = A[::7]
        a, b = nd.array(A), nd.array(B)
        with np.errstate(all="ignore"):
            close(a + b, A + B)
            close(a * b, A * B)
            close(a / b, A / B)
            close(a.maximum(b), np.maximum(A, B))
            close(a == b, (A == B).astype(np.float32))
            close(a >= b, (A >= B).astype(np.float32))
            close(a - 1.5, A - 1.5)
            close(a.maximum(0.0), np.maximum(A, 0))
            for p in (0.0, 0.5, 1.0, 2.0, -1.0, 3.0):
                close(abs(a) ** p, np.abs(A) ** np.float32(p))
            close(-a, -A)
            close(a.exp(), np.exp(A))
            close(a.tanh(), np.tanh(A))
            close(a.sin(), np.sin(A))
            close(a.cos(), np.cos(A))
            close(abs(a).log(), np.log(np.abs(A)))
            close(abs(a).sqrt(), np.sqrt(np.abs(A)))
            close(nd.where(b, a, b), np.where(B != 0, A, B))
        close(b.sum(), np.float32(B.astype(np.float64).sum()), rtol=1e-4, atol=1e-3)
        close(b.max(), B.max(), rtol=0, atol=0)
        close(a.max(), A.max(), rtol=0, atol=0)
    W = rng.uniform(-1e4, 1e4, 10001).astype(np.float32)
    close(nd.array(W).sin(), np.sin(W), rtol=0, atol=5e-7)
    close(nd.array(W).cos(), np.cos(W), rtol=0, atol=5e-7)
    C = rng.standard_normal((37, 5, 130)).astype(np.float32)
    c = nd.array(C)
    close(c.sum(axis=1), C.sum(axis=1), rtol=1e-5, atol=1e-5)
    close(c.max(axis=1), C.max(axis=1), rtol=0, atol=0)
    close(c.max(axis=2), C.max(axis=2), rtol=0, atol=0)
    mod.set_blas_enabled(False)  # every product on the gemm kernel
    # (few rows: B streamed row by row, with column tails and a K not a multiple of 4; strips
    # of every width in vectors, with and without a tail; B exactly one strip wide, read in
    # place, over one pass and several)
    for m, k, n in ((1, 1, 1), (5, 7, 3), (13, 300, 17), (64, 64, 128), (67, 30, 45), (1, 259, 1043), (8, 6, 33),
                    (9, 5, 48), (25, 129, 61), (20, 70, 64), (30, 300, 64), (17, 40, 16), (11, 3, 8)):
        X = rng.standard_normal((m, k)).astype(np.float32)
        Y = rng.standard_normal((k, n)).astype(np.float32)
        close(nd.array(X) @ nd.array(Y), X @ Y, rtol=1e-4, atol=1e-4)
        close(nd.array(X.T).permute((1, 0)) @ nd.array(Y), X @ Y, rtol=1e-4, atol=1e-4)
    X = rng.standard_normal((16, 24)).astype(np.float32)
    Y = rng.standard_normal((24, 32)).astype(np.float32)
    close(nd.matmul_tiled(nd.array(X), nd.array(Y)), X @ Y, rtol=1e-4, atol=1e-4)
    # convs whose GEMMs read the patches in place (conv_gemm): few pixels split by channels,
    # a blocked one at stride 2, one whose weight is one strip wide (read in place too), and
    # passes over the channels of several taps (16 or 20 channels a tap; 5x5 taps of 100
    # channels in pairs, the last alone)
    import needle as ndl
    from needle.threads import set_num_threads
    set_num_threads(2)
    for n, h, ci, co, st, k in ((1, 7, 64, 130, 1, 3), (2, 9, 72, 40, 2, 3), (1, 8, 64, 64, 1, 3),
                                (1, 20, 16, 24, 1, 3), (2, 13, 20, 70, 1, 3), (1, 9, 100, 36, 1, 5)):
        X = rng.standard_normal((n, h, h, ci)).astype(np.float32)
        K = (rng.standard_normal((k, k, ci, co)) * 0.1).astype(np.float32)
        p = k // 2
        P = np.pad(X.astype(np.float64), ((0, 0), (p, p), (p, p), (0, 0)))
        ho = (h - 1) // st + 1
        want = sum(P[:, dy:dy + st * ho:st, dx:dx + st * ho:st, :] @ K[dy, dx] for dy in range(k) for dx in range(k))
        conv = ndl.compile(lambda x, w: ndl.ops.conv(x, w, stride=st, padding=p))
        np.testing.assert_allclose(conv(ndl.Tensor(X), ndl.Tensor(K)).numpy(), want, rtol=1e-4, atol=1e-4)
    print("ok", ISA)
""")


def run_with(isa, code):
    env = dict(os.environ, NEEDLE_CPU_ISA=isa, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", f"ISA = {isa!r}\n" + code], capture_output=True, text=True,
                          env=env, timeout=600, cwd=ROOT)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_kernels_of_each_instruction_set(isa):
    usable = nd.cpu().mod.cpu_isas()
    if isa not in usable:
        pytest.skip(f"{isa} kernels are not built or this CPU lacks them (usable: {usable})")
    res = run_with(isa, KERNELS)
    assert res.returncode == 0 and f"ok {isa}" in res.stdout, res.stderr[-4000:]


def test_default_is_the_widest_usable():
    mod = nd.cpu().mod
    usable = mod.cpu_isas()
    assert usable[0] == "baseline"
    assert os.environ.get("NEEDLE_CPU_ISA") or mod.cpu_isa() == usable[-1]


def test_an_unknown_instruction_set_is_a_clear_error():
    res = run_with("sse9", "import needle")
    assert res.returncode != 0
    assert ("NEEDLE_CPU_ISA=sse9 is not an instruction set this module was built for "
            "(usable here: baseline") in res.stderr


PRODUCTS = textwrap.dedent("""
    import sys
    import numpy as np
    import needle.backend_ndarray as nd

    nd.cpu().mod.set_blas_enabled(False)
    rng = np.random.default_rng(1)
    for m, k, n in ((9, 700, 70), (40, 300, 64), (30, 513, 200), (3, 900, 50)):
        X = rng.standard_normal((m, k)).astype(np.float32)
        Y = rng.standard_normal((k, n)).astype(np.float32)
        sys.stdout.buffer.write((nd.array(X) @ nd.array(Y)).numpy().tobytes())
""")


def test_avx2_and_avx512_products_round_alike():
    """needle's GEMM kernel sums each product's terms in the same order with AVX2 as with
    AVX-512 (passes of the same KC rows, whatever the strip width), so results, and the
    training figures docs/training.md prints, are bit for bit the same on either CPU."""
    usable = nd.cpu().mod.cpu_isas()
    if "avx512" not in usable:
        pytest.skip(f"needs the avx2 and avx512 kernels (usable: {usable})")
    outs = {}
    for isa in ("avx2", "avx512"):
        env = dict(os.environ, NEEDLE_CPU_ISA=isa, PYTHONPATH=ROOT)
        res = subprocess.run([sys.executable, "-c", PRODUCTS], capture_output=True, env=env, timeout=600, cwd=ROOT)
        assert res.returncode == 0, res.stderr[-4000:]
        outs[isa] = res.stdout
    assert len(outs["avx2"]) == 4 * (9 * 70 + 40 * 64 + 30 * 200 + 3 * 50)
    assert outs["avx2"] == outs["avx512"]
