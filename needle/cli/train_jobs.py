"""needle-train's training loops: one job per task family (classification, language model).

Under MPI (world size N > 1) each rank trains on its share of every epoch (a
DistributedSampler for images, a contiguous 1/N of the token stream for PTB) with the
per-rank batch size, and evaluates its share; the evaluation sums are added over ranks."""
from __future__ import annotations

import math
import sys
import time

import numpy as np

import needle as ndl
import needle.data as ndata
import needle.distributed as dist
import needle.nn as nn
import needle.optim as optim

from needle.cli.train_options import DataNotFound, Diverged
from needle.cli.train_ranks import shard, sum_over_ranks

try:
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover - tqdm is a declared dependency
    _tqdm = None


# ---- training loops ---------------------------------------------------------------------


class _NullBar:
    def __init__(self, *a, **k):
        pass

    def update(self, n=1):
        pass

    def set_postfix(self, *a, **k):
        pass

    def close(self):
        pass


def progress_bar(args, total, desc, unit):
    if args.no_progress or _tqdm is None:
        return _NullBar()
    return _tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=True,
                 dynamic_ncols=True, mininterval=0.5)


def _record_step(bar, losses, loss, n, t0, rate_name):
    """Append the step's loss and show it with the running rate on the progress bar; a
    NaN or infinite loss stops training (`Diverged`)."""
    losses.append(_scalar(loss))
    if not math.isfinite(losses[-1]):
        raise Diverged(f"the training loss became {losses[-1]} at step {len(losses)}")
    bar.update(1)
    bar.set_postfix(loss=f"{losses[-1]:.4f}",
                    **{rate_name: f"{n / max(time.perf_counter() - t0, 1e-9):.0f}"}, refresh=False)


def _scalar(t):
    return float(np.asarray(t.numpy()).reshape(-1)[0])


class ClassificationJob:
    """MNIST / CIFAR-10: minibatches of (images, labels), softmax loss, accuracy."""

    unit = "samples"

    def __init__(self, args, model, opt, Xtr, ytr, Xev, yev, device):
        self.args, self.model, self.opt, self.device = args, model, opt, device
        self.loss_fn = nn.SoftmaxLoss()
        train = ndata.NDArrayDataset(Xtr, ytr)
        if dist.world_size() > 1:  # every rank: the same permutation, its own disjoint share
            self.sampler = ndata.DistributedSampler(train, seed=args.seed)
            self.train_loader = ndata.DataLoader(train, args.batch_size, sampler=self.sampler, device=device)
        else:  # one np.random.permutation per pass, as the course's loaders
            self.sampler = None
            self.train_loader = ndata.DataLoader(train, args.batch_size, shuffle=True, device=device)
        mine = shard(len(yev)) if dist.world_size() > 1 else slice(None)
        self.eval_loader = ndata.DataLoader(ndata.NDArrayDataset(Xev[mine], yev[mine]), args.batch_size,
                                            shuffle=False, device=device)
        step = optim.train_step(model, self.loss_fn, opt)
        self.step = ndl.compile(step) if args.compile else step

    def set_epoch(self, epoch: int) -> None:
        """Train epoch `epoch` (1-based) next: its permutation of the ranks' shares."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch - 1)

    def train_epoch(self, bar):
        """Returns (per-batch mean losses, examples, steps) of this rank."""
        self.model.train()
        losses, n, steps, t0 = [], 0, 0, time.perf_counter()
        for X, y in self.train_loader:  # one np.random.permutation per pass
            loss = self.step(X, y)
            n += X.shape[0]
            steps += 1
            _record_step(bar, losses, loss, n, t0, "samples_s")
        return losses, n, steps

    def n_steps(self):
        return len(self.train_loader)

    def evaluate(self):
        self.model.eval()
        total_loss, correct, n = 0.0, 0, 0
        with ndl.no_grad():
            for X, y in self.eval_loader:
                out = self.model(X)
                loss = self.loss_fn(out, y)
                yn = y.numpy().reshape(-1).astype(np.int64)
                total_loss += _scalar(loss) * len(yn)
                correct += int((out.numpy().argmax(axis=1) == yn).sum())
                n += len(yn)
        if dist.world_size() > 1:
            total_loss, correct, n = sum_over_ranks([total_loss, correct, n])
        return {"eval_loss": total_loss / max(n, 1), "eval_accuracy": correct / max(n, 1)}


def _flatten_hidden(h) -> tuple:
    if h is None:
        return ()
    return tuple(h) if isinstance(h, (tuple, list)) else (h,)


def _unflatten_hidden(flat: tuple, kind):
    if not flat:
        return None
    return tuple(flat) if kind == "tuple" else flat[0]


def unigram_perplexity(train_ids, eval_targets, vocab_size):
    """exp(mean NLL of ``eval_targets`` under the add-one smoothed unigram of ``train_ids``)."""
    counts = np.bincount(np.asarray(train_ids, dtype=np.int64), minlength=vocab_size)
    probs = (counts + 1.0) / (counts.sum() + vocab_size)
    nll = -np.log(probs[np.asarray(eval_targets, dtype=np.int64).reshape(-1)])
    return float(np.exp(nll.mean()))


class PTBJob:
    """PTB: truncated BPTT over batchified ids, the hidden state carried detached."""

    unit = "tokens"

    def __init__(self, args, model, opt, train_ids, eval_ids, vocab_size, device):
        self.args, self.model, self.opt, self.device = args, model, opt, device
        self.loss_fn = nn.SoftmaxLoss()
        bs = args.batch_size
        self.unigram_ppl = unigram_perplexity(train_ids, ndata.batchify(eval_ids, bs * dist.world_size())[1:],
                                              vocab_size)
        if dist.world_size() > 1:  # each rank: a contiguous 1/N of the stream, in bs columns
            train_ids, eval_ids = train_ids[shard(len(train_ids))], eval_ids[shard(len(eval_ids))]
        if len(train_ids) < 2 * bs or len(eval_ids) < 2 * bs:
            raise DataNotFound(f"PTB: too few tokens ({len(train_ids)} train, {len(eval_ids)} "
                               f"eval) for --batch-size {bs}")
        self.train_data = ndata.batchify(train_ids, bs, device=device, dtype="float32")
        self.eval_data = ndata.batchify(eval_ids, bs, device=device, dtype="float32")
        self._h_kind = None
        self.step = self._compiled_step() if args.compile else self._step

    def _step(self, X, y, h):
        """One truncated-BPTT step: (loss, new hidden state)."""
        self.opt.reset_grad()
        out, h = self.model(X, h)
        loss = self.loss_fn(out, y)
        loss.backward()
        if self.args.clip:
            self.opt.clip_grad_norm(self.args.clip)
        self.opt.step()
        return loss, h

    def _compiled_step(self):
        """The step through @needle.compile: the hidden state travels as flat tensors."""
        def flat_step(X, y, *h_flat):
            h = _unflatten_hidden(h_flat, self._h_kind)
            loss, h_new = self._step(X, y, h)
            return (loss,) + _flatten_hidden(h_new)

        compiled = ndl.compile(flat_step)

        def step(X, y, h):
            self._h_kind = None if h is None else ("tuple" if isinstance(h, tuple) else "tensor")
            out = compiled(X, y, *_flatten_hidden(h))
            return out[0], _unflatten_hidden(tuple(out[1:]), "tuple" if len(out) == 3 else "tensor")

        return step

    def _starts(self, data):
        return range(0, data.shape[0] - 1, self.args.seq_len)

    def n_steps(self):
        return len(self._starts(self.train_data))

    def set_epoch(self, epoch: int) -> None:
        """Epochs all read the same stream (no shuffle)."""

    def train_epoch(self, bar):
        self.model.train()
        losses, n, steps, t0, h = [], 0, 0, time.perf_counter(), None
        for i in self._starts(self.train_data):
            X, y = ndata.get_batch(self.train_data, i, self.args.seq_len, device=self.device,
                                   dtype="float32")
            loss, h = self.step(X, y, h)
            h = nn.detach_hidden(h)
            n += y.shape[0]
            steps += 1
            _record_step(bar, losses, loss, n, t0, "tokens_s")
        return losses, n, steps

    def evaluate(self):
        self.model.eval()
        total, n, h = 0.0, 0, None
        with ndl.no_grad():
            for i in self._starts(self.eval_data):
                X, y = ndata.get_batch(self.eval_data, i, self.args.seq_len, device=self.device,
                                       dtype="float32")
                out, h = self.model(X, h)
                h = nn.detach_hidden(h)
                total += _scalar(self.loss_fn(out, y)) * y.shape[0]
                n += y.shape[0]
        if dist.world_size() > 1:
            total, n = sum_over_ranks([total, n])
        mean = total / max(n, 1)
        return {"eval_loss": mean, "eval_perplexity": float(math.exp(min(mean, 700.0))),
                "unigram_perplexity": self.unigram_ppl}
