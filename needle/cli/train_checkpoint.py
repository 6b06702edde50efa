"""needle-train's checkpoints: model, optimizer and RNG state in one safetensors file."""
from __future__ import annotations

import json
import sys

import numpy as np

import needle.nn as nn
from needle.ops.random import COMPILED_RNG

from needle.cli.train_options import CheckpointError, options_dict

CHECKPOINT_FORMAT = "needle-train/1"


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
        "options": json.dumps(options_dict(args)),
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
    # command-line hyper-parameters win over the saved ones (the lr as built: scaled for N ranks)
    ostate["lr"] = opt.lr
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
