"""needle-train: train the course models on MNIST, CIFAR-10 or Penn Treebank.

    needle-train mnist   [--model mlpresnet] [options]
    needle-train cifar10 [--model resnet9]   [options]
    needle-train ptb     [--model lstm|rnn|transformer] [options]

Progress goes to stderr (a tqdm bar per epoch); stdout gets one summary line per epoch
and, as its very last line, one JSON object with the run's figures. See
docs/training.md.

Data-parallel: `mpiexec -n N needle-train ...` (or `--nproc N`) trains on N processes, each
with --batch-size examples per step; rank 0 alone prints and writes checkpoints (see
docs/distributed.md).

Exit codes: 0 success, 2 usage or data errors (message on stderr), 3 the loss became NaN or
infinite (training stops; the last checkpoint, of a good epoch, is kept), 130 interrupted
(Ctrl-C; the message says which checkpoint to ``--resume`` from).
"""
from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time

import numpy as np

import needle as ndl
import needle.distributed as dist
import needle.nn as nn
from needle.ops.random import COMPILED_RNG
import needle.optim as optim
from needle.errors import IdError
from needle.nn.nn_basic import named_tensors
from needle.apps import mlp_resnet, models
from needle.cli import train_metrics, train_ranks

from needle.cli.train_checkpoint import read_checkpoint, restore_checkpoint, save_training_checkpoint
from needle.cli.train_data import load_images, load_ptb
from needle.cli.train_jobs import ClassificationJob, PTBJob, progress_bar
from needle.cli.train_options import (BadData, CheckpointError, DataNotFound, Diverged,
                                      UsageError, build_parser, resolve_options, without_options)

__all__ = ["main", "run", "build_model", "build_optimizer"]

# ---- models, optimizers -----------------------------------------------------------------


def build_model(args, vocab_size=None, device=None):
    if args.task == "mnist":
        model = mlp_resnet.MLPResNet(784, hidden_dim=args.hidden_size)
        if device is not None and device != ndl.cpu():
            # the course's MLPResNet takes no device argument: move its tensors after building
            for t in named_tensors(model).values():
                t.data = ndl.Tensor(t.numpy(), device=device, dtype=t.dtype, requires_grad=False)
        return model
    if args.task == "cifar10":
        return models.ResNet9(device=device, dtype="float32")
    return models.LanguageModel(args.embedding_size, vocab_size, args.hidden_size,
                                num_layers=args.num_layers, seq_model=args.model,
                                seq_len=args.seq_len, device=device, dtype="float32")


def build_optimizer(args, model, world_size=1):
    """The optimizer of --optimizer. On N > 1 ranks it averages gradients over them first, and
    its learning rate is N x --lr (the linear scaling rule for an N x larger global batch, as in
    Horovod's examples) unless --no-lr-scaling."""
    params = model.parameters()
    lr = args.lr * world_size if getattr(args, "lr_scaling", True) else args.lr
    if args.optimizer == "adam":
        opt = optim.Adam(params, lr=lr, weight_decay=args.weight_decay)
    else:
        opt = optim.SGD(params, lr=lr, momentum=args.momentum or 0.0, weight_decay=args.weight_decay)
    return dist.DistributedOptimizer(opt) if world_size > 1 else opt


# ---- main ---------------------------------------------------------------------------------


def _device(name):
    if name == "cpu":
        return ndl.cpu()
    dev = ndl.cuda()
    if not dev.enabled():
        raise UsageError("--device cuda: the CUDA backend is not available in this build")
    return dev


def _resume_command(argv, path):
    out = without_options(argv, ("--resume", "--checkpoint"))
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
    """Train; print the summaries and the JSON line. ``state`` records the last checkpoint.

    Under MPI every rank runs this; only rank 0 prints and writes files."""
    rank, world_size = train_ranks.world()
    main_rank = rank == 0
    say = print if main_rank else (lambda *a, **k: None)
    if not main_rank:
        args.no_progress = True
    ckpt = None
    if args.resume is not None:
        ckpt = read_checkpoint(args.resume)
    try:
        resolve_options(args, ckpt[1] if ckpt else None)
    except (KeyError, ValueError, TypeError) as e:  # options metadata that is not ours
        raise CheckpointError(f"{args.resume}: malformed checkpoint metadata ({type(e).__name__}: {e})") from None
    if getattr(args, "plot", None):
        try:
            train_metrics.require_matplotlib()
        except ImportError as e:
            raise UsageError(str(e)) from None
    if args.checkpoint is not None and main_rank:
        for tmp in nn.stale_temporaries(args.checkpoint):  # left by a run killed mid-write
            os.unlink(tmp)
            say(f"needle-train: removed {tmp}, left by an interrupted checkpoint write", file=sys.stderr)
    device = _device(args.device)

    np.random.seed(args.seed)  # the one seeding; everything after draws from it in order
    COMPILED_RNG.seed(args.seed)  # compiled Dropout: its own counter-based streams
    if args.task == "ptb":
        corpus, train_ids, eval_ids, desc = _checked(load_ptb, args)
        if len(eval_ids) < 2:
            raise BadData(f"the evaluation split is empty ({desc})")
        vocab = len(corpus.dictionary)
        model = build_model(args, vocab_size=vocab, device=device)
        opt = build_optimizer(args, model, world_size)
        job = PTBJob(args, model, opt, train_ids, eval_ids, vocab, device)
    else:
        Xtr, ytr, Xev, yev, desc = _checked(load_images, args)
        if len(yev) == 0:
            raise BadData(f"the evaluation split is empty ({desc})")
        model = build_model(args, device=device)
        opt = build_optimizer(args, model, world_size)
        job = ClassificationJob(args, model, opt, Xtr, ytr, Xev, yev, device)
    say(f"needle-train {args.task} --model {args.model}: data {desc}"
        + (f" ({world_size} processes)" if world_size > 1 else ""), file=sys.stderr)

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
        say(f"resumed from {args.resume} after epoch {start_epoch}", file=sys.stderr)
        if start_epoch >= args.epochs:
            say(f"needle-train: {args.resume} already holds epoch {start_epoch} of --epochs {args.epochs}: "
                  f"nothing to train (raise --epochs to train more)", file=sys.stderr)

    dist.broadcast_parameters(model)  # every rank starts from rank 0's model
    ev = None
    curve_file = train_metrics.metrics_path(args.checkpoint) if args.checkpoint and main_rank else None
    curves = train_metrics.read_epochs(curve_file, before=start_epoch + 1) if ckpt is not None and curve_file else []
    if curve_file:  # the file holds this run's epochs only (a resumed run keeps the saved ones)
        with open(curve_file, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in curves)
    for epoch in range(start_epoch + 1, args.epochs + 1):
        state["epoch"] = epoch
        job.set_epoch(epoch)
        bar = progress_bar(args, job.n_steps(), f"epoch {epoch}/{args.epochs}", job.unit)
        t0 = time.perf_counter()
        try:
            losses, n, steps = job.train_epoch(bar)
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        n *= world_size  # every rank trains on the same number of examples
        dist.broadcast_parameters(model)  # rank 0's BatchNorm statistics are the model's (as DDP's buffers)
        ev = job.evaluate()
        if not math.isfinite(ev["eval_loss"]):
            raise Diverged(f"the evaluation loss became {ev['eval_loss']}")
        last = {"train_loss": float(np.mean(losses)) if losses else None,
                "samples_per_s": n / seconds if seconds > 0 else 0.0,
                "steps_per_s": steps / seconds if seconds > 0 else 0.0,
                "seconds": seconds}
        say(_summary_line(epoch, args.epochs, last["train_loss"], ev, seconds,
                            last["samples_per_s"], job.unit), flush=True)
        curves.append({"epoch": epoch, "train_loss": last["train_loss"], **ev, "seconds": seconds})
        if args.checkpoint is not None and main_rank:
            save_training_checkpoint(args.checkpoint, args, model, opt, epoch, last)
            train_metrics.append_epoch(curve_file, curves[-1])
            state["saved_epoch"] = epoch
            state["path"] = args.checkpoint
    if args.plot and curves and main_rank:
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
        "world_size": world_size,
        "global_batch_size": args.batch_size * world_size,
        "data": desc,
    })
    say(json.dumps(result), flush=True)
    return model, result


def main(argv=None):
    """Entry point of the ``needle-train`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.nproc is not None and not dist.under_mpiexec():
        if args.nproc < 1:
            print(f"needle-train: error: --nproc must be positive, got {args.nproc}", file=sys.stderr)
            return 2
        try:
            return train_ranks.launch(args.nproc, argv)
        except FileNotFoundError as e:
            print(f"needle-train: error: {e}", file=sys.stderr)
            return 2
    state = {}
    code = _run_reporting(args, argv, state)
    if code and dist.world_size() > 1:
        dist.abort(code)   # the other ranks may be waiting in a collective: stop them all
    return code


def _run_reporting(args, argv, state):
    """run(), with its failures reported on stderr as an exit code."""
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
