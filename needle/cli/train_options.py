"""needle-train's options: the parser, per-task defaults, validation, and the errors that
end a run with exit code 2 or 3."""
from __future__ import annotations

import argparse
import json
import math
import os

import needle as ndl




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
               "<checkout>/../shared/data (from a source checkout); each a root holding mnist/, ptb/, "
               "cifar-10-batches-py/.",
    )
    parser.add_argument("--version", action="version", version=f"needle-train (needle {ndl.__version__})")
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
        p.add_argument("--nproc", type=int, default=None, metavar="N",
                       help="train data-parallel on N processes (starts mpiexec; needs "
                            "'needle[distributed]'); --batch-size stays per process")
        p.add_argument("--lr-scaling", action=argparse.BooleanOptionalAction, default=True,
                       help="on N processes, use N x --lr for the N x larger global batch (the default; "
                            "--no-lr-scaling keeps --lr)")
        p.add_argument("--no-progress", action="store_true",
                       help="no tqdm progress bars on stderr")
        p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                       help="run each training step through @needle.compile (the default; "
                            "--no-compile runs eager; compiled Dropout masks come from needle's "
                            "counter-based RNG)")
    return parser


def without_options(argv, names) -> list:
    """argv without the options `names` (each with its value, as `--name v` or `--name=v`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in names:
            skip = True
        elif not any(a.startswith(n + "=") for n in names):
            out.append(a)
    return out


def resolve_options(args, ckpt_meta=None):
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


def options_dict(args):
    return {k: getattr(args, k) for k in RESUMABLE_OPTIONS if hasattr(args, k)}
