"""WORKLOADS.md M1-M5 and T1-T4: needle eager / compiled (native, kernels, interp) vs peers.

    python benchmarks/bench_workloads.py [--only M1,M2,T1] [--repeats N] [--quick]
                                         [--modes eager,native] [--torch-compile] [--threads 2]
                                         [--device cpu|cuda]

Variants per workload (`--modes`, default eager,native): needle eager; needle compiled with
the native executor (`NEEDLE_EXECUTOR=native`, the default), the kernel executor
(`kernels`) or the reference interpreter (`interp`); and, when importable, PyTorch eager (optionally
torch.compile) and JAX jit. Each compiled variant is a fresh `ndl.compile` object, the env
var set before its first call. float32, 2 threads, seeded inputs, the same batch reused.
A training step is forward + backward + optimizer update + `float(loss)`.

`--device cuda` runs needle on `ndl.cuda()` (eager kernels; compiled graphs on the CUDA
executor, whatever `--modes` names besides eager) against PyTorch on the GPU with TF32 off
(needle's GEMMs are FP32), each call ending in a device synchronisation; JAX is left out.

Median of `--repeats` timed calls after warm-up (default 30 for M1-M5 and T1, calls of
milliseconds whose median over 10 one burst of load can move; 10 for T2-T4). The variants
take turns in five blocks of calls, each block after at least 250 ms of untimed calls (the
steady state a training loop sees), so that slow stretches of a shared machine fall on all
of them alike. `ratio` = median / median of the
best peer measured in this run (lower is better); with no peer installed it is relative to
needle eager, and the column header says so. Progress goes to stderr, the table to stdout.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import needle as ndl  # noqa: E402
import needle.nn as nn  # noqa: E402
import needle.optim as optim  # noqa: E402
from needle.apps.mlp_resnet import MLPResNet  # noqa: E402
from needle.apps.models import LanguageModel, ResNet9  # noqa: E402
from needle.nn.nn_basic import named_tensors  # noqa: E402

MICRO = ("M1", "M2", "M3", "M4", "M5")
TRAIN = ("T1", "T2", "T3", "T4")
ALL = MICRO + TRAIN
HEAVY = ("T2", "T3", "T4")

# (batch, quick batch) of the training workloads
BATCH = {"T1": (100, 100), "T2": (128, 16), "T3": (20, 4), "T4": (16, 4)}
SEQ = {"T3": (35, 35), "T4": (64, 64)}
VOCAB = 10000


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def try_import(name):
    try:
        return __import__(name)
    except Exception:  # noqa: BLE001  (not installed or broken: skip the peer)
        return None


# ---------------------------------------------------------------------------------------
# inputs (seeded, numpy float32; every variant sees the same values)
# ---------------------------------------------------------------------------------------
def micro_inputs(wid):
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s, dtype=np.float32)  # noqa: E731
    if wid == "M1":
        return [f(1024, 1024), f(1024, 1024)]
    if wid == "M2":
        return [f(1 << 24)]
    if wid == "M3":
        return [f(4096, 1024)]
    if wid == "M4":
        return [f(4096, 1024), f(1024), f(1024)]
    if wid == "M5":
        return [f(32, 32, 32, 64), f(3, 3, 64, 64) * np.float32(1 / 24)]
    raise KeyError(wid)


def train_batch(wid, quick):
    rng = np.random.default_rng(1)
    b = BATCH[wid][1 if quick else 0]
    if wid == "T1":
        return rng.standard_normal((b, 784), dtype=np.float32), rng.integers(0, 10, b)
    if wid == "T2":
        return rng.standard_normal((b, 3, 32, 32), dtype=np.float32), rng.integers(0, 10, b)
    s = SEQ[wid][1 if quick else 0]
    return rng.integers(0, VOCAB, (s, b)), rng.integers(0, VOCAB, s * b)


# ---------------------------------------------------------------------------------------
# needle
# ---------------------------------------------------------------------------------------
def _bcast_rows(v, shape):
    return ndl.broadcast_to(ndl.reshape(v, (shape[0], 1)), shape)


def nd_matmul(a, b):
    return a @ b


def nd_gelu(x):
    return x * 0.5 * (1 + ndl.tanh(0.79788456 * (x + 0.044715 * x ** 3)))


def nd_softmax(x):
    e = ndl.exp(x - _bcast_rows(ndl.max(x, axes=(1,)), x.shape))
    return e / _bcast_rows(ndl.summation(e, axes=(1,)), x.shape)


def nd_layernorm(x, w, b):
    n, d = x.shape
    xc = x - _bcast_rows(ndl.summation(x, axes=(1,)) / d, x.shape)
    var = ndl.summation(xc * xc, axes=(1,)) / d
    y = xc / _bcast_rows((var + 1e-5) ** 0.5, x.shape)
    return y * ndl.broadcast_to(ndl.reshape(w, (1, d)), x.shape) \
        + ndl.broadcast_to(ndl.reshape(b, (1, d)), x.shape)


def nd_conv(x, w):
    return ndl.conv(x, w, stride=1, padding=1)


ND_MICRO = {"M1": nd_matmul, "M2": nd_gelu, "M3": nd_softmax, "M4": nd_layernorm, "M5": nd_conv}


def nd_model(wid, device=None):
    """(model, optimizer) of a training workload, built from a fixed seed (on the cpu, then
    moved to `device`, so every device starts from the same values)."""
    model, opt_cls, kw = _nd_model_on_cpu(wid)
    if device is not None and device != ndl.cpu():
        for t in named_tensors(model).values():
            t.data = ndl.Tensor(t.numpy(), device=device, dtype=t.dtype, requires_grad=False)
    return model, opt_cls(model.parameters(), **kw)


def _nd_model_on_cpu(wid):
    np.random.seed(0)
    if wid == "T1":
        model = MLPResNet(784, hidden_dim=100, num_blocks=3, num_classes=10, drop_prob=0.1)
        return model, optim.SGD, {"lr": 0.01}
    if wid == "T2":
        return ResNet9(), optim.SGD, {"lr": 0.01}
    if wid == "T3":
        return LanguageModel(400, VOCAB, 400, num_layers=2, seq_model="lstm"), optim.SGD, {"lr": 0.01}
    if wid == "T4":
        model = LanguageModel(256, VOCAB, 512, num_layers=2, seq_model="transformer")
        model.seq_model = nn.Transformer(256, 512, 2, num_head=4, dim_head=64, dropout=0.0,
                                         causal=True)
        return model, optim.Adam, {"lr": 1e-3}
    raise KeyError(wid)


def nd_variant(wid, mode, quick, device_name="cpu"):
    """Returns (call, compiled function or None). mode: eager | native | kernels | interp
    (on cuda every compiled mode is the CUDA executor)."""
    device = ndl.cuda() if device_name == "cuda" else ndl.cpu()
    if mode != "eager":  # read at the first call (the compile)
        os.environ["NEEDLE_EXECUTOR"] = "cuda" if device_name == "cuda" else mode
    if wid in MICRO:
        args = [ndl.Tensor(a, device=device, requires_grad=False) for a in micro_inputs(wid)]
        fn = ND_MICRO[wid] if mode == "eager" else ndl.compile(ND_MICRO[wid])
        if device_name == "cuda":
            sync = device.mod.synchronize
            return (lambda: (fn(*args), sync())), (None if mode == "eager" else fn)
        return (lambda: fn(*args)), (None if mode == "eager" else fn)
    model, opt = nd_model(wid, device)
    model.train()
    loss_fn = nn.SoftmaxLoss()
    step = optim.train_step(model, loss_fn, opt)

    fn = step if mode == "eager" else ndl.compile(step)
    x, y = train_batch(wid, quick)
    xt = ndl.Tensor(x.astype(np.float32), device=device, requires_grad=False)
    yt = ndl.Tensor(y.astype(np.float32), device=device, requires_grad=False)
    return (lambda: float(fn(xt, yt).numpy())), (None if mode == "eager" else fn)


# ---------------------------------------------------------------------------------------
# PyTorch (eager; torch.compile behind --torch-compile)
# ---------------------------------------------------------------------------------------
def torch_variant(wid, quick, use_compile=False, device_name="cpu"):
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    torch.set_num_threads(2)
    torch.manual_seed(0)
    dev = torch.device(device_name)
    if device_name == "cuda":  # FP32 as needle computes it
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    sync = torch.cuda.synchronize if device_name == "cuda" else (lambda: None)
    maybe = (lambda f: torch.compile(f)) if use_compile else (lambda f: f)  # noqa: E731
    if wid in MICRO:
        a = [torch.from_numpy(v).to(dev) for v in micro_inputs(wid)]
        if wid == "M1":
            f = lambda x, y: x @ y  # noqa: E731
        elif wid == "M2":
            f = lambda x: x * 0.5 * (1 + torch.tanh(0.79788456 * (x + 0.044715 * x ** 3)))  # noqa: E731
        elif wid == "M3":
            f = lambda x: torch.softmax(x, dim=1)  # noqa: E731
        elif wid == "M4":
            f = lambda x, w, b: F.layer_norm(x, (x.shape[1],), w, b, 1e-5)  # noqa: E731
        else:  # NHWC input and HWIO weight as channels_last NCHW / OIHW
            x = a[0].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
            w = a[1].permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
            a = [x, w]
            f = lambda x, w: F.conv2d(x, w, stride=1, padding=1)  # noqa: E731
        f = maybe(f)

        def call():
            with torch.no_grad():
                out = f(*a)
            sync()
            return out
        return call

    x, y = train_batch(wid, quick)
    if wid == "T1":
        def block(d, h):
            return tnn.Sequential(tnn.Linear(d, h), tnn.BatchNorm1d(h), tnn.ReLU(), tnn.Dropout(0.1),
                                  tnn.Linear(h, d), tnn.BatchNorm1d(d))

        class Res(tnn.Module):
            def __init__(self, fn):
                super().__init__()
                self.fn = fn

            def forward(self, v):
                return torch.relu(v + self.fn(v))
        model = tnn.Sequential(tnn.Flatten(), tnn.Linear(784, 100), tnn.ReLU(),
                               *[Res(block(100, 50)) for _ in range(3)], tnn.Linear(100, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        fwd = model
    elif wid == "T2":
        def cbn(a_, b_, k, s):
            return tnn.Sequential(tnn.Conv2d(a_, b_, k, s, k // 2), tnn.BatchNorm2d(b_), tnn.ReLU())

        class Res(tnn.Module):
            def __init__(self, fn):
                super().__init__()
                self.fn = fn

            def forward(self, v):
                return v + self.fn(v)
        model = tnn.Sequential(cbn(3, 16, 7, 4), cbn(16, 32, 3, 2),
                               Res(tnn.Sequential(cbn(32, 32, 3, 1), cbn(32, 32, 3, 1))),
                               cbn(32, 64, 3, 2), cbn(64, 128, 3, 2),
                               Res(tnn.Sequential(cbn(128, 128, 3, 1), cbn(128, 128, 3, 1))),
                               tnn.Flatten(), tnn.Linear(128, 128), tnn.ReLU(), tnn.Linear(128, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        fwd = model
    elif wid == "T3":
        class LM(tnn.Module):
            def __init__(self):
                super().__init__()
                self.emb = tnn.Embedding(VOCAB, 400)
                self.rnn = tnn.LSTM(400, 400, 2)
                self.out = tnn.Linear(400, VOCAB)

            def forward(self, v):
                h, _ = self.rnn(self.emb(v))
                return self.out(h.reshape(-1, 400))
        model = LM()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        fwd = model
    else:
        class LM(tnn.Module):
            def __init__(self):
                super().__init__()
                self.emb = tnn.Embedding(VOCAB, 256)
                self.pos = tnn.Embedding(2048, 256)
                layer = tnn.TransformerEncoderLayer(256, 4, 512, dropout=0.0, activation="relu",
                                                    norm_first=True, batch_first=True)
                self.enc = tnn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
                self.out = tnn.Linear(256, VOCAB)

            def forward(self, v):  # v: (seq, batch)
                v = v.t()
                s = v.shape[1]
                h = self.emb(v) + self.pos(torch.arange(s, device=v.device))[None]
                mask = tnn.Transformer.generate_square_subsequent_mask(s, device=v.device)
                h = self.enc(h, mask=mask, is_causal=True)
                return self.out(h.transpose(0, 1).reshape(-1, 256))
        model = LM()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        fwd = model
    model.to(dev).train()
    xt = (torch.from_numpy(x) if wid in ("T1", "T2") else torch.from_numpy(x.astype(np.int64))).to(dev)
    yt = torch.from_numpy(y.astype(np.int64)).to(dev)
    fwd = maybe(fwd)

    def call():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(fwd(xt), yt)
        loss.backward()
        opt.step()
        return float(loss)
    return call


# ---------------------------------------------------------------------------------------
# JAX (jit; micro workloads and T1 — the other training steps need hand-written models)
# ---------------------------------------------------------------------------------------
def jax_variant(wid, quick):
    import jax
    import jax.numpy as jnp

    if wid in MICRO:
        a = [jnp.asarray(v) for v in micro_inputs(wid)]
        if wid == "M1":
            f = lambda x, y: x @ y  # noqa: E731
        elif wid == "M2":
            f = lambda x: x * 0.5 * (1 + jnp.tanh(0.79788456 * (x + 0.044715 * x ** 3)))  # noqa: E731
        elif wid == "M3":
            f = lambda x: jax.nn.softmax(x, axis=1)  # noqa: E731
        elif wid == "M4":
            def f(x, w, b):
                m = x.mean(axis=1, keepdims=True)
                v = ((x - m) ** 2).mean(axis=1, keepdims=True)
                return (x - m) / jnp.sqrt(v + 1e-5) * w + b
        else:
            f = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
                x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        jf = jax.jit(f)
        return lambda: jf(*a).block_until_ready()
    if wid != "T1":
        return None
    x, y = train_batch(wid, quick)
    key = jax.random.PRNGKey(0)

    def lin(k, i, o):
        b = 1 / np.sqrt(i)
        return {"w": jax.random.uniform(k, (i, o), minval=-b, maxval=b), "b": jnp.zeros(o)}
    ks = jax.random.split(key, 8)
    params = {"in": lin(ks[0], 784, 100), "out": lin(ks[1], 100, 10),
              "blocks": [{"l1": lin(ks[2 + 2 * i], 100, 50), "l2": lin(ks[3 + 2 * i], 50, 100),
                          "g1": jnp.ones(50), "b1": jnp.zeros(50),
                          "g2": jnp.ones(100), "b2": jnp.zeros(100)} for i in range(3)]}

    def bn(h, g, b):
        m = h.mean(0)
        v = ((h - m) ** 2).mean(0)
        return (h - m) / jnp.sqrt(v + 1e-5) * g + b

    def loss_fn(p, xb, yb, k):
        h = jax.nn.relu(xb @ p["in"]["w"] + p["in"]["b"])
        for i, blk in enumerate(p["blocks"]):
            z = jax.nn.relu(bn(h @ blk["l1"]["w"] + blk["l1"]["b"], blk["g1"], blk["b1"]))
            keep = jax.random.bernoulli(jax.random.fold_in(k, i), 0.9, z.shape)
            z = jnp.where(keep, z / 0.9, 0.0)
            z = bn(z @ blk["l2"]["w"] + blk["l2"]["b"], blk["g2"], blk["b2"])
            h = jax.nn.relu(h + z)
        logits = h @ p["out"]["w"] + p["out"]["b"]
        return jnp.mean(jax.nn.logsumexp(logits, 1) - jnp.take_along_axis(logits, yb[:, None], 1)[:, 0])

    @jax.jit
    def step(p, xb, yb, k):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb, k)
        return jax.tree_util.tree_map(lambda a, b: a - 0.01 * b, p, g), loss

    xj, yj = jnp.asarray(x), jnp.asarray(y.astype(np.int32))
    state = {"p": params, "k": key}

    def call():
        state["k"], sub = jax.random.split(state["k"])
        state["p"], loss = step(state["p"], xj, yj, sub)
        return float(loss)
    return call


# ---------------------------------------------------------------------------------------
#: untimed calls before each block: onnxruntime's idle workers spin for about 60 ms after its
#: last call, and SqueezeNet's needle calls ran twice slower for that long (on 2 cores)
SETTLE_S = 0.25


def timed(calls: dict, repeats: int, warmup: int, rounds: int = 5) -> dict:
    """{name: (median, min) ms} of `repeats` calls of each variant after `warmup` ones. The
    variants take turns in `rounds` blocks of calls, so that slow stretches of this shared
    machine fall on all of them alike. Each block starts with untimed calls for at least
    SETTLE_S: a call right after another framework's (whose data now fills the caches and
    whose worker threads may still be spinning) or after idling runs up to twice slower,
    and the steady state is what a training loop sees. The garbage collector is off while
    timing (as timeit does)."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    rounds = max(1, min(rounds, repeats))
    per_round = [repeats // rounds + (r < repeats % rounds) for r in range(rounds)]
    times = {name: [] for name in calls}
    gc.collect()  # once: a collection walks every object and leaves the caches cold
    gc.disable()
    try:
        for count in per_round:
            for name, call in calls.items():
                start = time.perf_counter()
                while True:
                    call()
                    if time.perf_counter() - start >= SETTLE_S:
                        break
                for _ in range(count):
                    t = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - t)
    finally:
        gc.enable()
    return {name: (statistics.median(ts) * 1e3, min(ts) * 1e3) for name, ts in times.items()}


def build(wid, name, make, compiled) -> tuple:
    """(call, compile seconds or None) of one variant, its first (compiling) call made."""
    log(f"[{wid}] {name}: building")
    t = time.perf_counter()
    call, fn = make()
    if call is None:
        return None, None
    call()
    first = time.perf_counter() - t
    compile_s = (fn.stats.get("compile_seconds", first) if fn is not None
                 else first if compiled else None)
    if compile_s is not None:
        ran = f", executor {fn.stats['executor']}" if fn is not None and "executor" in fn.stats else ""
        log(f"[{wid}] {name}: first call {first:.2f} s (compile {compile_s:.2f} s{ran})")
    return call, compile_s


def run_workload(wid, args, peers):
    rows = []  # (variant, median ms, min ms, compile seconds or None, is_peer)
    heavy = wid in HEAVY
    repeats = args.repeats or (3 if args.quick else (10 if heavy else 30))
    warmup = 1 if (heavy or args.quick) else 2
    variants = []  # (name, make, is_peer, counts compile time)
    for mode in args.modes.split(","):
        name = ("needle eager" if mode == "eager"
                else f"needle compiled ({'cuda' if args.device == 'cuda' else mode})")
        variants.append((name, lambda mode=mode: nd_variant(wid, mode, args.quick, args.device),
                         False, False))
    for pname, maker in peers:
        variants.append((pname, lambda maker=maker: (maker(wid, args.quick), None), True,
                         "compile" in pname or "jit" in pname))
    calls, meta = {}, {}
    for name, make, is_peer, compiled in variants:
        try:
            call, compile_s = build(wid, name, make, compiled)
            if call is None:
                log(f"[{wid}] {name}: not implemented for this workload, skipped")
                continue
            calls[name], meta[name] = call, (compile_s, is_peer)
        except Exception as e:  # noqa: BLE001  (report and go on with the other variants)
            log(f"[{wid}] {name}: FAILED {type(e).__name__}: {e}")
            if not is_peer:
                rows.append((name + f" FAILED: {type(e).__name__}", float("nan"), float("nan"), None, False))
        finally:
            os.environ.pop("NEEDLE_EXECUTOR", None)
            gc.collect()
    log(f"[{wid}] timing {', '.join(calls)} in turn, {repeats} calls each in blocks")
    for name, (med, mn) in timed(calls, repeats, warmup).items():
        rows.append((name, med, mn, *meta[name]))
        log(f"[{wid}] {name}: median {med:.2f} ms over {repeats}")
    return rows, repeats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated workload ids (default: all)")
    ap.add_argument("--repeats", type=int, default=0,
                    help="timed calls per variant (default 30; 10 for T2-T4; 3 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="3 repeats and small T2/T3/T4 batches: a smoke run")
    ap.add_argument("--modes", default="eager,native",
                    help="needle variants, comma-separated: eager, native, kernels, interp")
    ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where needle and PyTorch run (cuda: TF32 off, no JAX)")
    args = ap.parse_args(argv)
    ids = [w.strip().upper() for w in args.only.split(",") if w.strip()] or list(ALL)
    for w in ids:
        if w not in ALL:
            ap.error(f"unknown workload {w!r}; choose from {','.join(ALL)}")

    ndl.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    peers = []
    torch = try_import("torch")
    if torch is not None:
        peers.append(("pytorch eager", lambda w, q: torch_variant(w, q, device_name=args.device)))
        if args.torch_compile:
            peers.append(("torch.compile", lambda w, q: torch_variant(w, q, use_compile=True,
                                                                      device_name=args.device)))
    jax = try_import("jax") if args.device == "cpu" else None
    if jax is not None:
        peers.append(("jax jit", jax_variant))
    missing = [n for n, m in (("torch", torch), ("jax", jax))
               if m is None and (n == "torch" or args.device == "cpu")]
    log(f"needle threads={ndl.get_num_threads()}  peers: {', '.join(p for p, _ in peers) or 'none'}"
        + (f"  (not installed: {', '.join(missing)})" if missing else ""))

    results = []
    for wid in ids:
        t = time.perf_counter()
        rows, reps = run_workload(wid, args, peers)
        results.append((wid, rows, reps))
        log(f"[{wid}] done in {time.perf_counter() - t:.1f} s")

    ref_name = "best peer" if peers else "needle eager"
    print(f"\nmedian ms of timed calls; ratio = median / {ref_name} in this run (lower is better)"
          + ("" if peers else "; no peer installed"))
    if args.quick:
        print(f"--quick: T2 batch {BATCH['T2'][1]}, T3 batch {BATCH['T3'][1]}, "
              f"T4 batch {BATCH['T4'][1]} (not the WORKLOADS.md sizes)")
    print(f"| id | variant | median ms | min ms | x {ref_name} | compile s | repeats |")
    print("|---|---|---|---|---|---|---|")
    for wid, rows, reps in results:
        peer_ms = [r[1] for r in rows if r[4] and r[1] == r[1]]
        if peers and peer_ms:
            ref = min(peer_ms)
        else:
            ref = rows[0][1] if rows and not rows[0][4] else float("nan")
        for name, med, mn, cs, _ in rows:
            ratio = med / ref if ref == ref and ref > 0 else float("nan")
            print(f"| {wid} | {name} | {med:.2f} | {mn:.2f} | {ratio:.2f} | "
                  f"{'' if cs is None else f'{cs:.2f}'} | {reps} |")
    return results


if __name__ == "__main__":
    main()
