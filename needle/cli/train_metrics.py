"""needle-train's training curves: a JSON-lines file of per-epoch figures beside the
checkpoint, and a plot of them (matplotlib, the optional extra `needle[plot]`)."""
from __future__ import annotations

import json
import os
from typing import Optional


def metrics_path(checkpoint: str) -> str:
    """`run.safetensors` -> `run.metrics.jsonl` (beside the checkpoint)."""
    root, _ = os.path.splitext(checkpoint)
    return root + ".metrics.jsonl"


def append_epoch(path: str, record: dict) -> None:
    """Add one epoch's figures (a JSON object on its own line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_epochs(path: str, before: Optional[int] = None) -> list[dict]:
    """The epochs recorded in `path` (those numbered below `before`, when given; a missing
    file or an unreadable line gives none)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (before is None or record.get("epoch", before) < before):
            records.append(record)
    return records


def require_matplotlib() -> None:
    """Raise ImportError with the install command when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'needle[plot]'") from None


def plot(records: list[dict], out: str) -> None:
    """Train and eval loss, and eval accuracy or perplexity, per epoch, written to `out`."""
    import matplotlib  # lazy: optional (needle[plot]), and only --plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in records]
    metric = "eval_accuracy" if any("eval_accuracy" in r for r in records) else "eval_perplexity"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "eval_loss"):
        left.plot(epochs, [r.get(key) for r in records], marker="o", label=key.replace("_", " "))
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    right.plot(epochs, [r.get(metric) for r in records], marker="o", color="tab:green")
    right.set_xlabel("epoch")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_ylabel(metric.replace("_", " "))
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
