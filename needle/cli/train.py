"""needle-train: train the course models on MNIST, CIFAR-10 or Penn Treebank.

    needle-train mnist   [--model mlpresnet] [options]
    needle-train cifar10 [--model resnet9]   [options]
    needle-train ptb     [--model lstm|rnn|transformer] [options]

Progress goes to stderr (a tqdm bar per epoch); stdout gets one summary line per epoch
and, as its very last line, one JSON object with the run's figures. See
docs/training.md.

Exit codes: 0 success, 2 usage or data errors (message on stderr), 3 the loss became NaN or
infinite (training stops; the last checkpoint, of a good epoch, is kept), 130 interrupted
(Ctrl-C; the message says which checkpoint to ``--resume`` from).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

import needle as ndl
import needle.data as ndata
import needle.nn as nn
from needle.ops.random import COMPILED_RNG
import needle.optim as optim
from needle.errors import IdError
from needle.apps import mlp_resnet, models
from needle.cli import train_metrics

try:
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover - tqdm is a declared dependency
    _tqdm = None

__all__ = ["main", "build_parser", "TASK_DEFAULTS", "CheckpointError", "DataNotFound",
           "UsageError"]

CHECKPOINT_FORMAT = "needle-train/1"

#: Per-task defaults of the options left unset on the command line.
TASK_DEFAULTS = {
    "mnist": dict(model="mlpresnet", batch_size=100, lr=1e-3, optimizer="adam",
                  weight_decay=1e-3, momentum=0.0, hidden_size=100),
    "cifar10": dict(model="resnet9", batch_size=128, lr=1e-3, optimizer="adam",
                    weight_decay=1e-3, momentum=0.0),
    "ptb": dict(model="lstm", batch_size=16, lr=3e-3, optimizer="adam", weight_decay=0.0,
                momentum=0.0, seq_len=35, embedding_size=64, hidden_size=128, num_layers=1,
                clip=1.0),
}
TASK_MODELS = {"mnist": ("mlpresnet",), "cifar10": ("resnet9",),
               "ptb": ("lstm", "rnn", "transformer")}
#: Options whose value decides the architecture (restored from a checkpoint on --resume).
ARCH_OPTIONS = {"mnist": ("hidden_size",), "cifar10": (),
                "ptb": ("embedding_size", "hidden_size", "num_layers")}
#: Options restored from the checkpoint on --resume unless given again.
RESUMABLE_OPTIONS = ("model", "batch_size", "lr", "optimizer", "weight_decay", "momentum",
                     "seq_len", "embedding_size", "hidden_size", "num_layers", "clip",
                     "synthetic", "train_limit", "eval_limit")

SYNTHETIC_SIZES = {"mnist": (2000, 500), "cifar10": (512, 128)}
MNIST_T10K_TRAIN = 8000  # MNIST without training images: t10k[:8000] / t10k[8000:]


class DataNotFound(Exception):
    """No usable data set (exit code 2)."""


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed (exit code 2)."""


class UsageError(Exception):
    """Bad option values (exit code 2)."""


class BadData(Exception):
    """A data file that cannot be used (exit code 2)."""


class Diverged(Exception):
    """The loss became NaN or infinite (exit code 3)."""


# ---- command line ---------------------------------------------------------------------


def _fmt(v):
    return "none" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="needle-train",
        description="Train the course models with needle (each step compiled; --no-compile: eager). Progress bars go to "
                    "stderr; stdout gets one summary line per epoch and a final JSON line.",
        epilog="Data lookup: --data-dir, else $NEEDLE_DATA_DIR, else ./data, else "
               "<repo>/../shared/data; each a root holding mnist/, ptb/, cifar-10-batches-py/.",
    )
    sub = parser.add_subparsers(dest="task", metavar="{mnist,cifar10,ptb}", required=True)
    helps = {
        "mnist": "MLPResNet(784, hidden 100) on MNIST",
        "cifar10": "ResNet9 on CIFAR-10",
        "ptb": "LSTM / RNN / Transformer language model on Penn Treebank",
    }
    for task in ("mnist", "cifar10", "ptb"):
        d = TASK_DEFAULTS[task]
        p = sub.add_parser(task, help=helps[task], description=helps[task])
        p.add_argument("--model", choices=TASK_MODELS[task], default=None,
                       help=f"model (default {d['model']})")
        p.add_argument("--epochs", type=int, default=5, help="number of epochs (default 5)")
        p.add_argument("--batch-size", type=int, default=None,
                       help=f"minibatch size{' (sequences per batch)' if task == 'ptb' else ''} "
                            f"(default {d['batch_size']})")
        p.add_argument("--lr", type=float, default=None, help=f"learning rate (default {_fmt(d['lr'])})")
        p.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                       help=f"optimizer (default {d['optimizer']})")
        p.add_argument("--weight-decay", type=float, default=None,
                       help=f"L2 weight decay (default {_fmt(d['weight_decay'])})")
        p.add_argument("--momentum", type=float, default=None,
                       help="SGD momentum (dampened, as needle's SGD; default 0)")
        if task == "mnist":
            p.add_argument("--hidden-size", type=int, default=None,
                           help=f"MLPResNet hidden width (default {d['hidden_size']})")
        if task == "ptb":
            p.add_argument("--seq-len", type=int, default=None,
                           help=f"truncated-BPTT length (default {d['seq_len']})")
            p.add_argument("--embedding-size", type=int, default=None,
                           help=f"word embedding size (default {d['embedding_size']})")
            p.add_argument("--hidden-size", type=int, default=None,
                           help=f"RNN/LSTM hidden size, transformer feed-forward size "
                                f"(default {d['hidden_size']})")
            p.add_argument("--num-layers", type=int, default=None,
                           help=f"recurrent / transformer layers (default {d['num_layers']})")
            p.add_argument("--clip", type=float, default=None,
                           help=f"clip the global gradient norm to this value, 0 for no "
                                f"clipping (default {_fmt(d['clip'])})")
        p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                       help="device (default cpu)")
        p.add_argument("--seed", type=int, default=0,
                       help="seed of numpy's global RNG, set once at start (default 0)")
        p.add_argument("--data-dir", default=None,
                       help="data root (holding mnist/, ptb/, cifar-10-batches-py/); default: "
                            "$NEEDLE_DATA_DIR, ./data, <repo>/../shared/data, first that has "
                            "the data")
        p.add_argument("--checkpoint", metavar="PATH", default=None,
                       help="save model, optimizer and RNG state here at the end of every epoch")
        p.add_argument("--strict", action="store_true",
                       help="with --resume: refuse a checkpoint without optimizer state (by default "
                            "a warning, and momenta/moments restart from zero)")
        p.add_argument("--plot", metavar="PNG", default=None,
                       help="after training, plot train/eval loss and eval accuracy or perplexity per "
                            "epoch to this image (needs matplotlib: pip install 'needle[plot]')")
        p.add_argument("--resume", metavar="PATH", default=None,
                       help="continue from this checkpoint's next epoch (also keeps saving to "
                            "it unless --checkpoint names another file)")
        if task != "ptb":
            p.add_argument("--synthetic", action="store_true", default=None,
                           help="train on generated data of the data set's shapes "
                                f"({SYNTHETIC_SIZES[task][0]} train / "
                                f"{SYNTHETIC_SIZES[task][1]} eval examples)")
        unit = "tokens" if task == "ptb" else "examples"
        p.add_argument("--train-limit", type=int, default=None,
                       help=f"use only the first N training {unit} (quick runs)")
        p.add_argument("--eval-limit", type=int, default=None,
                       help=f"use only the first N evaluation {unit} (quick runs)")
        p.add_argument("--no-progress", action="store_true",
                       help="no tqdm progress bars on stderr")
        p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                       help="run each training step through @needle.compile (the default; "
                            "--no-compile runs eager; compiled Dropout masks come from needle's "
                            "counter-based RNG)")
    return parser


def _resolve_options(args, ckpt_meta=None):
    """Fill unset options from the checkpoint (on --resume), then from TASK_DEFAULTS."""
    saved = {}
    if ckpt_meta is not None:
        saved = json.loads(ckpt_meta.get("options", "{}"))
    for name in RESUMABLE_OPTIONS:
        if not hasattr(args, name):
            continue
        if getattr(args, name) is None:
            if name in saved:
                setattr(args, name, saved[name])
            elif name in TASK_DEFAULTS[args.task]:
                setattr(args, name, TASK_DEFAULTS[args.task][name])
    if getattr(args, "synthetic", None) is None:
        args.synthetic = False
    if getattr(args, "clip", None) == 0:
        args.clip = None
    for name in ("epochs", "batch_size", "seq_len", "embedding_size", "hidden_size", "num_layers"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {v}")
    lr = getattr(args, "lr", None)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"--lr must be positive and finite, got {lr}")
    if args.checkpoint is None and args.resume is not None:
        args.checkpoint = args.resume
    if args.checkpoint is not None:  # fail now, not after an epoch of training
        folder = os.path.dirname(os.path.abspath(args.checkpoint))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UsageError(f"--checkpoint {args.checkpoint}: folder {folder} does not exist or is not writable")
    return args


def _options_dict(args):
    return {k: getattr(args, k) for k in RESUMABLE_OPTIONS if hasattr(args, k)}


# ---- data -------------------------------------------------------------------------------


def _candidate_roots(data_dir):
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    return ndata.data_search_paths(None)


def _not_found(what, looked):
    lines = "\n".join(f"  {p}" for p in looked)
    return DataNotFound(f"no {what} found; looked in:\n{lines}")


def _cifar_files(root):
    base = Path(root) / "cifar-10-batches-py"
    found = {}
    train = [base / f"data_batch_{i}" for i in range(1, 6)]
    if all(p.is_file() for p in train):
        found["train"] = train
    if (base / "test_batch").is_file():
        found["test"] = [base / "test_batch"]
    return found


def _synthetic_images(n, shape, rng, prototypes):
    y = rng.randint(0, 10, size=n).astype(np.uint8)
    noise = rng.rand(n, *shape).astype(np.float32)
    X = np.clip(0.6 * prototypes[y] + 0.4 * noise, 0.0, 1.0).astype(np.float32)
    return X, y


def _synthetic(task, seed):
    """Learnable generated data of the data set's shapes, from a private RNG (the global
    numpy RNG is untouched)."""
    rng = np.random.RandomState(10_000 + seed)
    shape = (28, 28, 1) if task == "mnist" else (3, 32, 32)
    protos = (rng.rand(10, *shape) > 0.5).astype(np.float32)
    n_train, n_eval = SYNTHETIC_SIZES[task]
    Xtr, ytr = _synthetic_images(n_train, shape, rng, protos)
    Xev, yev = _synthetic_images(n_eval, shape, rng, protos)
    return Xtr, ytr, Xev, yev


def _limit(X, y, n):
    return (X, y) if n is None else (X[:n], y[:n])


def load_mnist(args):
    if args.synthetic:
        Xtr, ytr, Xev, yev = _synthetic("mnist", args.seed)
        desc = f"synthetic mnist ({len(ytr)} train / {len(yev)} eval)"
    else:
        looked = []
        for root in _candidate_roots(args.data_dir):
            looked.append(root / "mnist")
            files = ndata.mnist_files(root)
            if "t10k" not in files:
                continue
            test = ndata.MNISTDataset(*files["t10k"])
            if "train" in files:
                train = ndata.MNISTDataset(*files["train"])
                Xtr, ytr, Xev, yev = train.images, train.labels, test.images, test.labels
                desc = (f"mnist train ({len(ytr)}) / t10k ({len(yev)}) from {root / 'mnist'}")
            else:
                k = MNIST_T10K_TRAIN
                Xtr, ytr = test.images[:k], test.labels[:k]
                Xev, yev = test.images[k:], test.labels[k:]
                desc = (f"mnist t10k[:{k}] (train) / t10k[{k}:] ({len(yev)}, eval) from "
                        f"{root / 'mnist'} (no training images)")
            break
        else:
            raise _not_found("MNIST data (mnist/t10k-images-idx3-ubyte.gz and "
                             "t10k-labels-idx1-ubyte.gz at least)", looked)
    Xtr, ytr = _limit(Xtr, ytr, args.train_limit)
    Xev, yev = _limit(Xev, yev, args.eval_limit)
    if args.train_limit is not None or args.eval_limit is not None:
        desc += f"; using {len(ytr)} train / {len(yev)} eval"
    return Xtr, ytr, Xev, yev, desc


def load_cifar10(args):
    if args.synthetic:
        Xtr, ytr, Xev, yev = _synthetic("cifar10", args.seed)
        desc = f"synthetic cifar10 ({len(ytr)} train / {len(yev)} eval)"
    else:
        looked = []
        for root in _candidate_roots(args.data_dir):
            looked.append(root / "cifar-10-batches-py")
            files = _cifar_files(root)
            if "train" in files and "test" in files:
                base = root / "cifar-10-batches-py"
                train = ndata.CIFAR10Dataset(str(base), train=True)
                test = ndata.CIFAR10Dataset(str(base), train=False)
                Xtr, ytr, Xev, yev = train.X, train.y, test.X, test.y
                desc = f"cifar10 data_batch_1-5 ({len(ytr)}) / test_batch ({len(yev)}) from {base}"
                break
        else:
            raise _not_found("CIFAR-10 data (cifar-10-batches-py/data_batch_1..5 and test_batch)",
                             looked)
    Xtr, ytr = _limit(Xtr, ytr, args.train_limit)
    Xev, yev = _limit(Xev, yev, args.eval_limit)
    if args.train_limit is not None or args.eval_limit is not None:
        desc += f"; using {len(ytr)} train / {len(yev)} eval"
    return Xtr, ytr, Xev, yev, desc


def load_ptb(args):
    looked = []
    for root in _candidate_roots(args.data_dir):
        looked.append(root / "ptb")
        files = ndata.ptb_files(root)
        if "test" not in files:
            continue
        if "train" in files:
            train_path, eval_path, note = files["train"], files["test"], ""
        elif "valid" in files:
            train_path, eval_path = files["valid"], files["test"]
            note = " (no training split: training on valid)"
        else:
            continue
        break
    else:
        raise _not_found("PTB data (ptb/ptb.test.txt with ptb.train.txt or ptb.valid.txt)",
                         looked)
    if train_path.parent != eval_path.parent:  # pragma: no cover - ptb_files uses one folder
        raise DataNotFound(f"PTB splits in different folders: {train_path}, {eval_path}")
    corpus = ndata.Corpus(str(train_path.parent), train_file=train_path.name,
                          test_file=eval_path.name)
    train_ids, eval_ids = corpus.train, corpus.test
    if args.train_limit is not None:
        train_ids = train_ids[: args.train_limit]
    if args.eval_limit is not None:
        eval_ids = eval_ids[: args.eval_limit]
    desc = (f"ptb {train_path.name} ({len(train_ids)} tokens, train) / {eval_path.name} "
            f"({len(eval_ids)} tokens, eval) from {train_path.parent}{note}")
    return corpus, train_ids, eval_ids, desc


# ---- models, optimizers -----------------------------------------------------------------


def build_model(args, vocab_size=None, device=None):
    if args.task == "mnist":
        model = mlp_resnet.MLPResNet(784, hidden_dim=args.hidden_size)
        if device is not None and device != ndl.cpu():
            # the course's MLPResNet takes no device argument: move its tensors after building
            from needle.nn.state import named_tensors
            for t in named_tensors(model).values():
                t.data = ndl.Tensor(t.numpy(), device=device, dtype=t.dtype, requires_grad=False)
        return model
    if args.task == "cifar10":
        return models.ResNet9(device=device, dtype="float32")
    return models.LanguageModel(args.embedding_size, vocab_size, args.hidden_size,
                                num_layers=args.num_layers, seq_model=args.model,
                                seq_len=args.seq_len, device=device, dtype="float32")


def build_optimizer(args, model):
    params = model.parameters()
    if args.optimizer == "adam":
        return optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    return optim.SGD(params, lr=args.lr, momentum=args.momentum or 0.0,
                     weight_decay=args.weight_decay)


# ---- checkpoints ------------------------------------------------------------------------


def save_training_checkpoint(path, args, model, opt, epoch, last):
    """Model state_dict, optimizer state, numpy RNG state and the epoch just finished."""
    tensors = {}
    for k, v in model.state_dict().items():
        tensors["model." + k] = np.asarray(v)
    ostate = opt.state_dict()
    scalars = {}
    for k, v in ostate.items():
        if isinstance(v, dict):
            for i, arr in v.items():
                tensors[f"optim.{k}.{int(i)}"] = np.asarray(arr)
        else:
            scalars[k] = v
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.keys"] = np.asarray(keys, dtype=np.uint32)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "task": args.task,
        "model": args.model,
        "epoch": str(epoch),
        "options": json.dumps(_options_dict(args)),
        "optimizer": args.optimizer,
        "optimizer_scalars": json.dumps(scalars),
        "optimizer_buffers": json.dumps(sorted({k for k, v in ostate.items() if isinstance(v, dict)})),
        "rng": json.dumps({"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss),
                           "cached_gaussian": float(cached).hex(),
                           "compiled_base": int(COMPILED_RNG.base),
                           "compiled_counter": int(COMPILED_RNG.counter)}),
        "last_epoch": json.dumps(last),
    }
    nn.save_checkpoint(path, tensors, metadata)


def read_checkpoint(path):
    try:
        tensors, meta = nn.load_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a needle-train checkpoint (format "
                              f"{meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r})")
    return tensors, meta


def restore_checkpoint(path, tensors, meta, args, model, opt):
    """Load model, optimizer and RNG state; return the epoch the checkpoint finished."""
    if meta["task"] != args.task or meta["model"] != args.model:
        raise CheckpointError(f"{path}: checkpoint of {meta['task']} --model {meta['model']}, "
                              f"cannot resume {args.task} --model {args.model}")
    if meta["optimizer"] != args.optimizer:
        raise CheckpointError(f"{path}: checkpoint was trained with --optimizer "
                              f"{meta['optimizer']}, not {args.optimizer}")
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    ostate = dict(json.loads(meta["optimizer_scalars"]))
    buffers = json.loads(meta["optimizer_buffers"])
    keeps_state = bool(opt._buffer_names) and getattr(opt, "momentum", None) != 0  # SGD without momentum keeps none
    if keeps_state and not any(k.startswith("optim.") for k in tensors):
        missing = f"{path} holds no optimizer state ({', '.join(opt._buffer_names)})"
        if args.strict:
            raise CheckpointError(f"{missing} (--strict)")
        print(f"needle-train: warning: {missing}: it restarts from zero (--strict refuses this)", file=sys.stderr)
    for name in buffers:
        prefix = f"optim.{name}."
        ostate[name] = {int(k[len(prefix):]): v for k, v in tensors.items() if k.startswith(prefix)}
    # command-line hyper-parameters win over the saved ones
    ostate["lr"] = args.lr
    ostate["weight_decay"] = args.weight_decay
    if "momentum" in ostate:
        ostate["momentum"] = args.momentum or 0.0
    try:
        opt.load_state_dict(ostate)
    except ValueError as e:
        raise CheckpointError(f"{path}: optimizer state: {e}") from None
    rng = json.loads(meta["rng"])
    np.random.set_state((rng["kind"], np.asarray(tensors["rng.keys"], dtype=np.uint32),
                         rng["pos"], rng["has_gauss"], float.fromhex(rng["cached_gaussian"])))
    COMPILED_RNG.seed(int(rng.get("compiled_base", 0)))  # compiled Dropout's generator
    COMPILED_RNG.counter = int(rng.get("compiled_counter", 0))
    return int(meta["epoch"])


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


def _bar(args, total, desc, unit):
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
        self.train_loader = ndata.DataLoader(ndata.NDArrayDataset(Xtr, ytr), args.batch_size,
                                             shuffle=True, device=device)
        self.eval_loader = ndata.DataLoader(ndata.NDArrayDataset(Xev, yev), args.batch_size,
                                            shuffle=False, device=device)
        step = optim.train_step(model, self.loss_fn, opt)
        self.step = ndl.compile(step) if args.compile else step

    def train_epoch(self, bar):
        """Returns (per-batch mean losses, examples, steps)."""
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
        return {"eval_loss": total_loss / max(n, 1), "eval_accuracy": correct / max(n, 1)}


def _flatten_hidden(h) -> tuple:
    if h is None:
        return ()
    return tuple(h) if isinstance(h, (tuple, list)) else (h,)


def _unflatten_hidden(flat: tuple, kind):
    if not flat:
        return None
    return tuple(flat) if kind == "tuple" else flat[0]


def _detach_hidden(h):
    if h is None:
        return None
    if isinstance(h, (tuple, list)):
        return tuple(_detach_hidden(x) for x in h)
    return h.detach()


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
        if len(train_ids) < 2 * bs or len(eval_ids) < 2 * bs:
            raise DataNotFound(f"PTB: too few tokens ({len(train_ids)} train, {len(eval_ids)} "
                               f"eval) for --batch-size {bs}")
        self.train_data = ndata.batchify(train_ids, bs, device=device, dtype="float32")
        self.eval_data = ndata.batchify(eval_ids, bs, device=device, dtype="float32")
        self.unigram_ppl = unigram_perplexity(train_ids, self.eval_data[1:], vocab_size)
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

    def train_epoch(self, bar):
        self.model.train()
        losses, n, steps, t0, h = [], 0, 0, time.perf_counter(), None
        for i in self._starts(self.train_data):
            X, y = ndata.get_batch(self.train_data, i, self.args.seq_len, device=self.device,
                                   dtype="float32")
            loss, h = self.step(X, y, h)
            h = _detach_hidden(h)
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
                h = _detach_hidden(h)
                total += _scalar(self.loss_fn(out, y)) * y.shape[0]
                n += y.shape[0]
        mean = total / max(n, 1)
        return {"eval_loss": mean, "eval_perplexity": float(math.exp(min(mean, 700.0))),
                "unigram_perplexity": self.unigram_ppl}


# ---- main ---------------------------------------------------------------------------------


def _device(name):
    if name == "cpu":
        return ndl.cpu()
    dev = ndl.cuda()
    if not dev.enabled():
        raise UsageError("--device cuda: the CUDA backend is not available in this build")
    return dev


def _resume_command(argv, path):
    args = [a for a in argv]
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--resume", "--checkpoint"):
            skip = True
            continue
        if a.startswith("--resume=") or a.startswith("--checkpoint="):
            continue
        out.append(a)
    return "needle-train " + " ".join(shlex.quote(a) for a in out + ["--resume", str(path)])


def _summary_line(epoch, epochs, train_loss, ev, seconds, rate, unit):
    parts = [f"epoch {epoch}/{epochs}", "train_loss " + ("n/a" if train_loss is None else f"{train_loss:.4f}"),
             f"eval_loss {ev['eval_loss']:.4f}"]
    if "eval_accuracy" in ev:
        parts.append(f"eval_accuracy {ev['eval_accuracy']:.4f}")
    else:
        parts.append(f"eval_perplexity {ev['eval_perplexity']:.2f}")
        parts.append(f"unigram_perplexity {ev['unigram_perplexity']:.2f}")
    parts.append(f"time {seconds:.1f}s")
    parts.append(f"{rate:.0f} {unit}/s")
    return "  ".join(parts)


def _checked(loader, args):
    """The loader's data; a bad file (its error names the file) becomes BadData."""
    try:
        return loader(args)
    except ValueError as e:
        raise BadData(str(e)) from None


def run(args, argv, state):
    """Train; print the summaries and the JSON line. ``state`` records the last checkpoint."""
    ckpt = None
    if args.resume is not None:
        ckpt = read_checkpoint(args.resume)
    try:
        _resolve_options(args, ckpt[1] if ckpt else None)
    except (KeyError, ValueError, TypeError) as e:  # options metadata that is not ours
        raise CheckpointError(f"{args.resume}: malformed checkpoint metadata ({type(e).__name__}: {e})") from None
    if getattr(args, "plot", None):
        try:
            train_metrics.require_matplotlib()
        except ImportError as e:
            raise UsageError(str(e)) from None
    if args.checkpoint is not None:
        for tmp in nn.stale_temporaries(args.checkpoint):  # left by a run killed mid-write
            os.unlink(tmp)
            print(f"needle-train: removed {tmp}, left by an interrupted checkpoint write", file=sys.stderr)
    device = _device(args.device)

    np.random.seed(args.seed)  # the one seeding; everything after draws from it in order
    COMPILED_RNG.seed(args.seed)  # compiled Dropout: its own counter-based streams
    if args.task == "ptb":
        corpus, train_ids, eval_ids, desc = _checked(load_ptb, args)
        if len(eval_ids) < 2:
            raise BadData(f"the evaluation split is empty ({desc})")
        vocab = len(corpus.dictionary)
        model = build_model(args, vocab_size=vocab, device=device)
        opt = build_optimizer(args, model)
        job = PTBJob(args, model, opt, train_ids, eval_ids, vocab, device)
    else:
        loader = load_mnist if args.task == "mnist" else load_cifar10
        Xtr, ytr, Xev, yev, desc = _checked(loader, args)
        if len(yev) == 0:
            raise BadData(f"the evaluation split is empty ({desc})")
        model = build_model(args, device=device)
        opt = build_optimizer(args, model)
        job = ClassificationJob(args, model, opt, Xtr, ytr, Xev, yev, device)
    print(f"needle-train {args.task} --model {args.model}: data {desc}", file=sys.stderr)

    start_epoch = 0
    last = None
    if ckpt is not None:
        try:
            start_epoch = restore_checkpoint(args.resume, ckpt[0], ckpt[1], args, model, opt)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise CheckpointError(f"{args.resume}: malformed checkpoint metadata "
                                  f"({type(e).__name__}: {e})") from None
        last = json.loads(ckpt[1].get("last_epoch", "null"))
        state["saved_epoch"] = start_epoch
        state["path"] = args.resume
        print(f"resumed from {args.resume} after epoch {start_epoch}", file=sys.stderr)
        if start_epoch >= args.epochs:
            print(f"needle-train: {args.resume} already holds epoch {start_epoch} of --epochs {args.epochs}: "
                  f"nothing to train (raise --epochs to train more)", file=sys.stderr)

    ev = None
    curve_file = train_metrics.metrics_path(args.checkpoint) if args.checkpoint else None
    curves = train_metrics.read_epochs(curve_file, before=start_epoch + 1) if ckpt is not None and curve_file else []
    if curve_file:  # the file holds this run's epochs only (a resumed run keeps the saved ones)
        with open(curve_file, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in curves)
    for epoch in range(start_epoch + 1, args.epochs + 1):
        state["epoch"] = epoch
        bar = _bar(args, job.n_steps(), f"epoch {epoch}/{args.epochs}", job.unit)
        t0 = time.perf_counter()
        try:
            losses, n, steps = job.train_epoch(bar)
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        ev = job.evaluate()
        if not math.isfinite(ev["eval_loss"]):
            raise Diverged(f"the evaluation loss became {ev['eval_loss']}")
        last = {"train_loss": float(np.mean(losses)) if losses else None,
                "samples_per_s": n / seconds if seconds > 0 else 0.0,
                "steps_per_s": steps / seconds if seconds > 0 else 0.0,
                "seconds": seconds}
        print(_summary_line(epoch, args.epochs, last["train_loss"], ev, seconds,
                            last["samples_per_s"], job.unit), flush=True)
        curves.append({"epoch": epoch, "train_loss": last["train_loss"], **ev, "seconds": seconds})
        if args.checkpoint is not None:
            save_training_checkpoint(args.checkpoint, args, model, opt, epoch, last)
            train_metrics.append_epoch(curve_file, curves[-1])
            state["saved_epoch"] = epoch
            state["path"] = args.checkpoint
    if args.plot and curves:
        train_metrics.plot(curves, args.plot)

    if ev is None:  # nothing left to train after --resume
        ev = job.evaluate()
    if last is None:  # --epochs 0: nothing trained
        last = {"train_loss": None, "samples_per_s": 0.0, "steps_per_s": 0.0}
    result = {
        "task": args.task,
        "model": args.model,
        "epochs": args.epochs,
        "train_loss": last["train_loss"],
        "eval_loss": ev["eval_loss"],
    }
    if "eval_accuracy" in ev:
        result["eval_accuracy"] = ev["eval_accuracy"]
    else:
        result["eval_perplexity"] = ev["eval_perplexity"]
        result["unigram_perplexity"] = ev["unigram_perplexity"]
    result.update({
        "samples_per_s": last["samples_per_s"],
        "steps_per_s": last["steps_per_s"],
        "compiled": bool(args.compile),
        "data": desc,
    })
    print(json.dumps(result), flush=True)
    return model, result


def main(argv=None):
    """Entry point of the ``needle-train`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    state = {}
    try:
        run(args, argv, state)
    except (DataNotFound, BadData, CheckpointError, UsageError) as e:
        print(f"needle-train: error: {e}", file=sys.stderr)
        return 2
    except IdError as e:  # labels outside the model's classes (checked in compiled steps too)
        print(f"needle-train: error: the data holds labels or token ids the model cannot take: {e}",
              file=sys.stderr)
        return 2
    except Diverged as e:
        kept = (f"; {state['path']} still holds epoch {state['saved_epoch']}"
                if state.get("saved_epoch") and state.get("path") else "")
        print(f"needle-train: error: {e} (epoch {state.get('epoch', '?')}): training stopped (try a smaller "
              f"--lr){kept}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        msg = f"\nneedle-train: interrupted during epoch {state.get('epoch', '?')}"
        if state.get("saved_epoch") and state.get("path") and os.path.exists(state["path"]):
            msg += (f"; checkpoint {state['path']} holds epoch {state['saved_epoch']}; resume with:\n"
                    f"  {_resume_command(argv, state['path'])}")
        else:
            msg += "; no checkpoint saved (use --checkpoint PATH to save one every epoch)"
        print(msg, file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
