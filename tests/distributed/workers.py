"""Programs the distributed tests run under `mpiexec -n N python -m tests.distributed.workers CASE`.

Each case prints "OK" on every rank when its checks hold (an AssertionError aborts the job)."""
from __future__ import annotations

import sys

import numpy as np

import needle as ndl
import needle.distributed as dist
from needle import nn


def _close(a, b, what, tol=1e-5):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    err = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)
    assert err <= tol, f"rank {dist.rank()}: {what}: relative error {err:.3g} > {tol}"


def collectives() -> None:
    """Eager collectives and their gradients against numpy over every rank's data."""
    r, n = dist.rank(), dist.world_size()
    data = [np.random.default_rng(k).standard_normal((2, 3)).astype(np.float32) for k in range(n)]
    x = ndl.Tensor(data[r], requires_grad=True)
    _close(dist.all_reduce(x).numpy(), sum(data), "all_reduce sum")
    _close(dist.all_reduce(x, "mean").numpy(), sum(data) / n, "all_reduce mean")
    _close(dist.all_reduce(x, "max").numpy(), np.max(data, axis=0), "all_reduce max")
    strided = ndl.Tensor(np.tile(data[r], (1, 500))).transpose()   # a non-compact view, 3000 x 2
    _close(dist.all_reduce(strided).numpy(), np.tile(sum(data), (1, 500)).T, "all_reduce of a strided view")
    _close(dist.broadcast(x, n - 1).numpy(), data[n - 1], "broadcast")
    _close(dist.all_gather(x).numpy(), np.concatenate(data), "all_gather")
    stacked = ndl.Tensor(np.concatenate(data) * (r + 1))
    _close(dist.reduce_scatter(stacked).numpy(), sum(np.concatenate(data) * (k + 1) for k in range(n))[2 * r:2 * r + 2],
           "reduce_scatter")
    # gradients: loss = sum over ranks of sum(w_r * f(x_r)); d/dx_r by hand
    weights = [np.random.default_rng(100 + k).standard_normal((2, 3)).astype(np.float32) for k in range(n)]
    w = ndl.Tensor(weights[r])
    (dist.all_reduce(x, "sum") * w).sum().backward()
    _close(x.grad.numpy(), sum(weights), "all_reduce sum grad")
    x.grad = None
    (dist.broadcast(x, 0) * w).sum().backward()
    _close(x.grad.numpy(), sum(weights) if r == 0 else np.zeros((2, 3)), "broadcast grad")
    x.grad = None
    wg = [np.random.default_rng(200 + k).standard_normal((2 * n, 3)).astype(np.float32) for k in range(n)]
    (dist.all_gather(x) * ndl.Tensor(wg[r])).sum().backward()
    _close(x.grad.numpy(), sum(wg)[2 * r:2 * r + 2], "all_gather grad")
    # compiled: the same collectives as graph nodes
    f = ndl.compile(lambda t: dist.all_reduce(t, "mean") + dist.all_gather(t).sum(axes=(0,)))
    t = ndl.Tensor(data[r])
    for _ in range(2):
        _close(f(t).numpy(), sum(data) / n + np.concatenate(data).sum(0), "compiled collectives")
    if f.stats["executor"] == "native":  # host steps on the program's buffers, not interpreter callbacks
        assert f.stats["native"]["callbacks"] == 0, f.stats["native"]
    # broadcast_parameters: every rank ends with rank 0's values, buffers included
    np.random.seed(r)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model.modules[1].running_mean = ndl.Tensor(np.full(4, float(r), np.float32))
    dist.broadcast_parameters(model)
    np.random.seed(0)
    ref = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    _close(model.modules[0].weight.numpy(), ref.modules[0].weight.numpy(), "broadcast_parameters weight")
    _close(model.modules[1].running_mean.numpy(), np.zeros(4), "broadcast_parameters buffer", tol=0)


def _mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


class _LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.lstm = nn.LSTM(6, 8)
        self.head = nn.Linear(8, 11)

    def forward(self, x):
        out, _ = self.lstm(self.embed(x))
        return self.head(out.reshape((out.shape[0] * out.shape[1], 8)))


def _batches(kind: str, global_batch: int, steps: int):
    rng = np.random.default_rng(7)
    if kind == "mlp":
        return [(rng.standard_normal((global_batch, 6)).astype(np.float32),
                 rng.integers(0, 4, global_batch).astype(np.float32)) for _ in range(steps)]
    seq = 5   # LSTM LM: inputs (seq, batch), targets flattened (seq * batch)
    return [(rng.integers(0, 11, (seq, global_batch)).astype(np.float32),
             rng.integers(0, 11, (seq, global_batch)).astype(np.float32)) for _ in range(steps)]


def _shard(kind: str, x, y, r: int, n: int):
    b = (x.shape[0] if kind == "mlp" else x.shape[1]) // n
    if kind == "mlp":
        return x[r * b:(r + 1) * b], y[r * b:(r + 1) * b]
    return x[:, r * b:(r + 1) * b], y[:, r * b:(r + 1) * b]


def _train(kind: str, optimizer: str, compiled: bool, batches, distributed: bool):
    np.random.seed(3)
    model = _mlp() if kind == "mlp" else _LM()
    opt = (ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if optimizer == "sgd"
           else ndl.optim.Adam(model.parameters(), lr=0.01))
    if distributed:
        opt = dist.DistributedOptimizer(opt)
    loss_fn = nn.SoftmaxLoss()

    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y.reshape((int(np.prod(y.shape)),)))
        loss.backward()
        opt.step()
        return loss

    run = ndl.compile(step) if compiled else step
    for x, y in batches:
        run(ndl.Tensor(x), ndl.Tensor(y))
    return [p.numpy() for p in model.parameters()] + [p.grad.numpy() for p in model.parameters()]


def equivalence() -> None:
    """N ranks x batch b give the parameters of 1 rank x batch N*b after 5 steps."""
    r, n = dist.rank(), dist.world_size()
    for kind in ("mlp", "lstm"):
        batches = _batches(kind, 4 * n, 5)
        mine = [_shard(kind, x, y, r, n) for x, y in batches]
        for optimizer in ("sgd", "adam"):
            for compiled in (False, True):
                got = _train(kind, optimizer, compiled, mine, distributed=True)
                want = _train(kind, optimizer, compiled, batches, distributed=False)
                for k, (g, w) in enumerate(zip(got, want)):
                    what = "parameter" if k < len(got) // 2 else "averaged gradient"
                    _close(g, w, f"{kind} {optimizer} {'compiled' if compiled else 'eager'} {what} {k}")


def sync_batchnorm() -> None:
    """With convert_sync_batchnorm, N ranks x batch b train (parameters, running statistics,
    gradients) like 1 rank x batch N*b with plain BatchNorm, eager and compiled; BatchNorm1d
    in an MLP and BatchNorm2d in a small conv net."""
    r, n = dist.rank(), dist.world_size()
    rng = np.random.default_rng(7)
    for kind in ("bn1d", "bn2d"):
        shape = (4 * n, 6) if kind == "bn1d" else (4 * n, 3, 5, 5)
        batches = [(rng.standard_normal(shape).astype(np.float32), rng.integers(0, 4, 4 * n).astype(np.float32))
                   for _ in range(3)]
        mine = [(x[4 * r:4 * r + 4], y[4 * r:4 * r + 4]) for x, y in batches]
        for compiled in (False, True):
            got = _train_bn(kind, compiled, mine, synced=True)
            want = _train_bn(kind, compiled, batches, synced=False)
            for k, (g, w) in enumerate(zip(got, want)):
                _close(g, w, f"{kind} {'compiled' if compiled else 'eager'} value {k}")


def _train_bn(kind: str, compiled: bool, batches, synced: bool) -> list:
    np.random.seed(5)   # (no bias before a BatchNorm: its gradient is zero up to rounding)
    if kind == "bn1d":
        model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    else:
        model = nn.Sequential(nn.Conv(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                              nn.Linear(100, 4))
    opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if synced:
        dist.convert_sync_batchnorm(model)
        opt = dist.DistributedOptimizer(opt)
    step = ndl.optim.train_step(model, nn.SoftmaxLoss(), opt)
    run = ndl.compile(step) if compiled else step
    for x, y in batches:
        run(ndl.Tensor(x), ndl.Tensor(y))
    bn = model.modules[1]
    return ([p.numpy() for p in model.parameters()] + [p.grad.numpy() for p in model.parameters()]
            + [bn.running_mean.numpy(), bn.running_var.numpy()])


def buckets() -> None:
    """A compiled step's gradient all-reduces in several buckets (NEEDLE_BUCKET_CAP_MB is
    small): each bucket one in-place all-reduce started in the backward pass, no gradient
    copied, and the step trains as the eager one does."""
    from needle.codegen.cpu.steps import CollectiveStartStep, CollectiveWaitStep

    r, n = dist.rank(), dist.world_size()
    batches = _batches("mlp", 4 * n, 3)
    mine = [_shard("mlp", x, y, r, n) for x, y in batches]
    want = _train("mlp", "sgd", False, mine, distributed=True)
    np.random.seed(3)
    model = _mlp()
    opt = dist.DistributedOptimizer(ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    step = ndl.compile(ndl.optim.train_step(model, nn.SoftmaxLoss(), opt))
    for x, y in mine:
        step(ndl.Tensor(x), ndl.Tensor(y.reshape(-1)))
    got = [p.numpy() for p in model.parameters()] + [p.grad.numpy() for p in model.parameters()]
    for k, (g, w) in enumerate(zip(got, want)):
        _close(g, w, f"bucketed compiled step, value {k}")
    program = next(iter(step._cache.values())).runner.built
    kinds = [type(s) for s in program.steps]
    starts, waits = kinds.count(CollectiveStartStep), kinds.count(CollectiveWaitStep)
    assert starts >= 2 and starts == waits, (starts, waits)
    assert program.stats["copies"] == 0, program.stats
    if r == 0:
        print(" ".join(getattr(s, "name", type(s).__name__[:-4]) for s in program.steps), flush=True)
    # the first bucket starts before the backward pass ends, and no wait comes before the last start
    first_start, first_wait = kinds.index(CollectiveStartStep), kinds.index(CollectiveWaitStep)
    assert first_start < first_wait - starts, kinds


def raises() -> None:
    """Rank 1 raises before the collective the others wait in."""
    if dist.rank() == 1:
        raise RuntimeError("deliberate failure on rank 1")
    dist.all_reduce(ndl.Tensor(np.ones(3, np.float32)))


def stalls() -> None:
    """The last rank never reaches the collective: the others abort the job naming it."""
    if dist.rank() == dist.world_size() - 1:
        import time
        time.sleep(60)
        return
    dist.all_reduce(ndl.Tensor(np.ones(3, np.float32)))


def mismatch() -> None:
    """Ranks compile the same step on different shapes: a clear error, not a deadlock."""
    f = ndl.compile(lambda t: dist.all_reduce(t * 2.0))
    f(ndl.Tensor(np.ones((2 + dist.rank(), 3), np.float32)))


CASES = {f.__name__: f for f in (collectives, equivalence, buckets, sync_batchnorm, raises, stalls, mismatch)}

if __name__ == "__main__":
    dist.init()
    CASES[sys.argv[1]]()
    print(f"OK rank {dist.rank()}", flush=True)
