"""needle-train (tools/train.py): output format, data lookup, CIFAR files, PTB, checkpoints."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import needle.nn as nn
from needle.cli import train, train_jobs

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"

FAST_MNIST = ["mnist", "--synthetic", "--train-limit", "300", "--eval-limit", "100",
              "--hidden-size", "16", "--batch-size", "50", "--lr", "0.01", "--no-progress"]


def _run(capsys, argv):
    rc = train.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _result(out):
    lines = [l for l in out.strip().splitlines() if l.strip()]
    return json.loads(lines[-1]), lines[:-1]


def test_help_lists_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["mnist", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for s in ("--epochs", "--batch-size", "default 100", "default adam", "--synthetic",
              "--checkpoint", "--resume", "--seed", "--data-dir", "--device"):
        assert s in text
    with pytest.raises(SystemExit):
        train.main(["ptb", "--help"])
    text = capsys.readouterr().out
    for s in ("--seq-len", "default 35", "--embedding-size", "--num-layers", "transformer"):
        assert s in text


def test_mnist_synthetic_output_format(capsys):
    rc, out, err = _run(capsys, FAST_MNIST + ["--epochs", "2"])
    assert rc == 0, err
    res, summaries = _result(out)
    assert [l.split()[1] for l in summaries] == ["1/2", "2/2"]
    assert set(res) == {"task", "model", "epochs", "train_loss", "eval_loss", "eval_accuracy",
                        "samples_per_s", "steps_per_s", "compiled", "world_size", "global_batch_size", "data"}
    assert res["world_size"] == 1 and res["global_batch_size"] == 50
    assert res["task"] == "mnist" and res["model"] == "mlpresnet" and res["epochs"] == 2
    assert res["compiled"] is True  # compiled is the default
    assert 0.0 <= res["eval_accuracy"] <= 1.0
    assert res["samples_per_s"] > 0 and res["steps_per_s"] > 0
    assert "synthetic" in res["data"]
    assert res["eval_accuracy"] > 0.5  # the synthetic classes are learnable


def test_tqdm_progress_goes_to_stderr(capsys):
    argv = [a for a in FAST_MNIST if a != "--no-progress"]
    rc, out, err = _run(capsys, argv + ["--epochs", "1"])
    assert rc == 0
    assert "epoch 1/1" in err and "loss" in err
    assert "it/s" not in out and "%|" not in out


def test_data_not_found_exit_2(capsys, tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    for task in ("mnist", "cifar10", "ptb"):
        rc, out, err = _run(capsys, [task, "--data-dir", str(empty), "--epochs", "1"])
        assert rc == 2
        assert "looked in" in err and str(empty) in err
        assert out == ""


def _write_cifar(root, n=6, seed=0):
    rng = np.random.RandomState(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        d = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.randint(0, 10, size=n)],
            b"data": rng.randint(0, 256, size=(n, 3072)).astype(np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        with open(base / name, "wb") as f:
            pickle.dump(d, f, protocol=4)
    return base


def test_cifar10_end_to_end_on_written_files(capsys, tmp_path):
    base = _write_cifar(tmp_path)
    rc, out, err = _run(capsys, ["cifar10", "--data-dir", str(tmp_path), "--epochs", "1",
                                 "--batch-size", "16", "--no-progress"])
    assert rc == 0, err
    res, summaries = _result(out)
    assert res["task"] == "cifar10" and res["model"] == "resnet9"
    assert 0.0 <= res["eval_accuracy"] <= 1.0 and np.isfinite(res["train_loss"])
    assert "data_batch_1-5 (30)" in res["data"] and "test_batch (6)" in res["data"]
    assert str(base) in res["data"]
    assert len(summaries) == 1


@pytest.mark.parametrize("compiled", [True, False])
def test_labels_outside_the_classes_stop_training_with_exit_2(capsys, tmp_path, compiled):
    base = _write_cifar(tmp_path)
    with open(base / "data_batch_1", "rb") as f:
        batch = pickle.load(f)
    batch[b"labels"][2] = 99
    with open(base / "data_batch_1", "wb") as f:
        pickle.dump(batch, f, protocol=4)
    rc, out, err = _run(capsys, ["cifar10", "--data-dir", str(tmp_path), "--epochs", "1", "--batch-size", "16",
                                 "--no-progress"] + ([] if compiled else ["--no-compile"]))
    assert rc == 2 and "data_batch_1: label 99 at position 2 is outside [0, 10)" in err, err
    assert out.strip() == ""  # no result line: nothing was trained on corrupt labels


def _write_mnist(root, labels, corrupt=False):
    import gzip
    import struct

    folder = root / "mnist"
    folder.mkdir(parents=True)
    n = len(labels)
    images = struct.pack(">IIII", 2051, n, 28, 28) + bytes(n * 784)
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(images)
    data = gzip.compress(struct.pack(">II", 2049, n) + bytes(labels))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(data[: len(data) // 2] if corrupt else data)


@pytest.mark.parametrize("case, expected", [
    ("mnist label 200", "t10k-labels-idx1-ubyte.gz: label 200 at position 3 is outside [0, 10)"),
    ("mnist corrupt gzip", "t10k-labels-idx1-ubyte.gz: corrupt or truncated gzip data"),
    ("mnist empty eval", "the evaluation split is empty"),
    ("ptb empty", "ptb.valid.txt: holds no words"),
    ("ptb binary", "ptb.valid.txt: not a text file"),
    ("ptb latin-1", "ptb.valid.txt: not UTF-8 text"),
])
def test_bad_data_files_exit_2_naming_the_file(capsys, tmp_path, case, expected):
    args = ["--data-dir", str(tmp_path), "--epochs", "1", "--no-progress"]
    if case.startswith("mnist"):
        labels = [1, 2, 3, 200, 4] * 4 if "200" in case else [1, 2, 3, 4, 5] * 4
        _write_mnist(tmp_path, labels, corrupt="corrupt" in case)
        args = ["mnist"] + args + (["--eval-limit", "0"] if "empty eval" in case else [])
    else:
        _write_ptb(tmp_path)
        valid = tmp_path / "ptb" / "ptb.valid.txt"
        valid.write_bytes({"ptb empty": b"", "ptb binary": b"a b\x00c\n", "ptb latin-1": b"caf\xe9 x\n"}[case])
        args = ["ptb"] + args
    rc, out, err = _run(capsys, args)
    assert rc == 2 and expected in err, err
    assert out == ""


@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--epochs", "-1"), ("--lr", "-1"), ("--lr", "0"),
                                         ("--lr", "nan"), ("--lr", "inf")])
def test_nonsense_epochs_and_learning_rates_are_refused(capsys, flag, value):
    rc, out, err = _run(capsys, FAST_MNIST + [flag, value])
    assert rc == 2 and f"{flag} must be positive" in err, err


def test_a_diverging_run_stops_with_exit_3_and_keeps_the_last_good_checkpoint(capsys, tmp_path):
    ckpt = tmp_path / "run.safetensors"
    rc, out, err = _run(capsys, FAST_MNIST + ["--epochs", "1", "--checkpoint", str(ckpt)])
    assert rc == 0, err
    good = _model_tensors(ckpt)[0]
    rc, out, err = _run(capsys, FAST_MNIST + ["--epochs", "3", "--lr", "1e20", "--resume", str(ckpt)])
    assert rc == 3, err
    assert "loss became nan" in err or "loss became inf" in err, err
    assert f"{ckpt} still holds epoch 1" in err
    assert "NaN" not in out and "Infinity" not in out  # no non-JSON result line
    after = _model_tensors(ckpt)[0]
    assert all(np.array_equal(good[k], after[k]) for k in good)


def _edit_checkpoint(path, tensors=None, metadata=None):
    """Rewrite a checkpoint's tensors/metadata in place, keeping its stored checksums."""
    from safetensors.numpy import save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = dict(f.metadata())
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    arrays.update(tensors or {})
    meta.update(metadata or {})
    save_file(arrays, str(path), metadata=meta)


@pytest.mark.parametrize("damage, expected", [
    ("flipped bytes", "does not match its checksum"),
    ("bad json", "malformed checkpoint metadata"),
    ("missing key", "malformed checkpoint metadata"),
    ("another task", "checkpoint of ptb --model lstm, cannot resume mnist"),
])
def test_damaged_checkpoints_are_refused_with_exit_2(capsys, tmp_path, damage, expected):
    ckpt = tmp_path / "run.safetensors"
    assert _run(capsys, FAST_MNIST + ["--epochs", "1", "--checkpoint", str(ckpt)])[0] == 0
    tensors, meta = _model_tensors(ckpt)
    name = next(iter(tensors))
    if damage == "flipped bytes":
        _edit_checkpoint(ckpt, tensors={name: tensors[name] + 1.0})
    elif damage == "bad json":
        _edit_checkpoint(ckpt, metadata={"options": "{not json"})
    elif damage == "missing key":
        _edit_checkpoint(ckpt, metadata={"rng": "{}"})
    else:
        _edit_checkpoint(ckpt, metadata={"task": "ptb", "model": "lstm"})
    rc, out, err = _run(capsys, FAST_MNIST + ["--epochs", "2", "--resume", str(ckpt)])
    assert rc == 2 and expected in err and str(ckpt) in err, err
    assert len(err.strip().splitlines()) <= 3  # a message, not a traceback


def test_a_checkpoint_without_optimizer_state_warns_or_is_refused_with_strict(capsys, tmp_path):
    ckpt = tmp_path / "run.safetensors"
    assert _run(capsys, FAST_MNIST + ["--epochs", "1", "--checkpoint", str(ckpt)])[0] == 0
    tensors, meta = nn.load_checkpoint(ckpt)
    nn.save_checkpoint(ckpt, {k: v for k, v in tensors.items() if not k.startswith("optim.")}, meta)
    rc, out, err = _run(capsys, FAST_MNIST + ["--epochs", "2", "--resume", str(ckpt), "--strict"])
    assert rc == 2 and "holds no optimizer state" in err and "--strict" in err, err
    rc, out, err = _run(capsys, FAST_MNIST + ["--epochs", "2", "--resume", str(ckpt)])
    assert rc == 0 and "warning" in err and "holds no optimizer state" in err, err


def test_temporaries_of_an_interrupted_checkpoint_write_are_removed(capsys, tmp_path):
    ckpt = tmp_path / "run.safetensors"
    stale = tmp_path / ".run.safetensors.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert _run(capsys, FAST_MNIST + ["--epochs", "1", "--checkpoint", str(ckpt)])[0] == 0
    assert not stale.exists() and ckpt.exists()


def test_training_curves_are_written_beside_the_checkpoint_and_plotted(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    ckpt, png = tmp_path / "run.safetensors", tmp_path / "curves.png"
    assert _run(capsys, FAST_MNIST + ["--epochs", "2", "--checkpoint", str(ckpt)])[0] == 0
    rc, out, err = _run(capsys, FAST_MNIST + ["--epochs", "3", "--resume", str(ckpt), "--plot", str(png)])
    assert rc == 0, err
    records = [json.loads(line) for line in (tmp_path / "run.metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[-1]["eval_accuracy"] == _result(out)[0]["eval_accuracy"]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["eval_loss"]) for r in records)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_into_a_missing_folder_is_refused_before_training(capsys, tmp_path):
    rc, out, err = _run(capsys, FAST_MNIST + ["--checkpoint", str(tmp_path / "no" / "run.safetensors")])
    assert rc == 2 and "does not exist or is not writable" in err and out == ""


def test_resuming_a_finished_run_says_there_is_nothing_to_train(capsys, tmp_path):
    ckpt = tmp_path / "run.safetensors"
    assert _run(capsys, FAST_MNIST + ["--epochs", "1", "--checkpoint", str(ckpt)])[0] == 0
    rc, out, err = _run(capsys, FAST_MNIST + ["--epochs", "1", "--resume", str(ckpt)])
    assert rc == 0 and "nothing to train" in err


def test_cifar10_incomplete_split_not_used(capsys, tmp_path):
    base = _write_cifar(tmp_path)
    (base / "data_batch_3").unlink()
    rc, out, err = _run(capsys, ["cifar10", "--data-dir", str(tmp_path), "--epochs", "1"])
    assert rc == 2 and "looked in" in err


def test_cifar10_synthetic(capsys):
    rc, out, err = _run(capsys, ["cifar10", "--synthetic", "--epochs", "1", "--train-limit", "64",
                                 "--eval-limit", "32", "--batch-size", "32", "--no-progress"])
    assert rc == 0, err
    res, _ = _result(out)
    assert "synthetic cifar10" in res["data"]


def _write_ptb(root, names=("ptb.valid.txt", "ptb.test.txt"), seed=0):
    rng = np.random.RandomState(seed)
    words = [f"w{i}" for i in range(30)]
    p = np.arange(30, 0, -1, dtype=np.float64)
    p /= p.sum()
    base = root / "ptb"
    base.mkdir(parents=True)
    for name in names:
        lines = [" ".join(rng.choice(words, size=8, p=p)) for _ in range(60)]
        (base / name).write_text("\n".join(lines) + "\n")
    return base


@pytest.mark.parametrize("model", ["lstm", "rnn", "transformer"])
def test_ptb_tiny(capsys, tmp_path, model):
    _write_ptb(tmp_path)
    rc, out, err = _run(capsys, ["ptb", "--model", model, "--data-dir", str(tmp_path),
                                 "--epochs", "2", "--batch-size", "4", "--seq-len", "6",
                                 "--embedding-size", "8", "--hidden-size", "8", "--no-progress"])
    assert rc == 0, err
    res, summaries = _result(out)
    assert set(res) == {"task", "model", "epochs", "train_loss", "eval_loss", "eval_perplexity",
                        "unigram_perplexity", "samples_per_s", "steps_per_s", "compiled", "world_size",
                        "global_batch_size", "data"}
    assert res["model"] == model and len(summaries) == 2
    assert res["eval_perplexity"] == pytest.approx(np.exp(res["eval_loss"]), rel=1e-6)
    assert "training on valid" in res["data"] and "ptb.test.txt" in res["data"]
    assert "unigram_perplexity" in summaries[-1]


def test_ptb_uses_train_split_when_present(capsys, tmp_path):
    _write_ptb(tmp_path, names=("train.txt", "test.txt"))
    rc, out, err = _run(capsys, ["ptb", "--data-dir", str(tmp_path), "--epochs", "1",
                                 "--batch-size", "4", "--seq-len", "6", "--embedding-size", "8",
                                 "--hidden-size", "8", "--no-progress"])
    assert rc == 0, err
    res, _ = _result(out)
    assert "train.txt" in res["data"] and "training on valid" not in res["data"]


def test_unigram_perplexity_add_one():
    train_ids = [0, 0, 1, 2]
    vocab = 4
    probs = np.array([3, 2, 2, 1]) / 8.0
    ev = [0, 3, 3, 1]
    expected = np.exp(-np.mean(np.log(probs[ev])))
    assert train_jobs.unigram_perplexity(train_ids, np.array(ev), vocab) == pytest.approx(expected)


def _model_tensors(path):
    tensors, meta = nn.load_checkpoint(path)
    return {k: v for k, v in tensors.items() if not k.startswith("rng.")}, meta


def test_resume_gives_same_weights_as_straight_run(capsys, tmp_path):
    straight = tmp_path / "straight.safetensors"
    half = tmp_path / "half.safetensors"
    rc, out_a, err = _run(capsys, FAST_MNIST + ["--epochs", "2", "--checkpoint", str(straight)])
    assert rc == 0, err
    rc, _, err = _run(capsys, FAST_MNIST + ["--epochs", "1", "--checkpoint", str(half)])
    assert rc == 0, err
    _, meta = nn.load_checkpoint(half)
    assert meta["epoch"] == "1"
    rc, out_b, err = _run(capsys, FAST_MNIST + ["--epochs", "2", "--resume", str(half)])
    assert rc == 0, err
    assert "resumed from" in err
    a, meta_a = _model_tensors(straight)
    b, meta_b = _model_tensors(half)  # --resume keeps saving to the same file
    assert meta_a["epoch"] == meta_b["epoch"] == "2"
    assert set(a) == set(b)
    assert any(k.startswith("optim.") for k in a)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
    ra, rb = _result(out_a)[0], _result(out_b)[0]
    assert ra["eval_accuracy"] == rb["eval_accuracy"]
    assert ra["eval_loss"] == pytest.approx(rb["eval_loss"], abs=1e-6)
    assert len(_result(out_b)[1]) == 1  # only epoch 2 ran


def test_resume_other_model_is_an_error(capsys, tmp_path):
    ck = tmp_path / "c.safetensors"
    assert _run(capsys, FAST_MNIST + ["--epochs", "1", "--checkpoint", str(ck)])[0] == 0
    rc, out, err = _run(capsys, ["cifar10", "--synthetic", "--resume", str(ck)])
    assert rc == 2 and "cannot resume" in err
    rc, out, err = _run(capsys, FAST_MNIST + ["--hidden-size", "32",  # the last value wins
                                              "--resume", str(ck), "--epochs", "2"])
    assert rc == 2 and "shape" in err


def test_ctrl_c_exits_130_and_says_how_to_resume(capsys, tmp_path, monkeypatch):
    ck = tmp_path / "c.safetensors"
    orig = train_jobs.ClassificationJob.train_epoch
    calls = []

    def interrupted(self, bar):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return orig(self, bar)

    monkeypatch.setattr(train_jobs.ClassificationJob, "train_epoch", interrupted)
    rc, out, err = _run(capsys, FAST_MNIST + ["--epochs", "3", "--checkpoint", str(ck)])
    assert rc == 130
    assert "interrupted during epoch 2" in err
    assert f"--resume {ck}" in err and "epoch 1" in err


def test_console_script_module_help():
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "needle.cli.train", "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert "mnist" in out.stdout and "ptb" in out.stdout and "cifar10" in out.stdout


@pytest.mark.skipif(not (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="shared MNIST not available")
def test_mnist_real_t10k_split_named(capsys):
    rc, out, err = _run(capsys, ["mnist", "--data-dir", str(SHARED), "--epochs", "1",
                                 "--train-limit", "200", "--eval-limit", "100", "--hidden-size",
                                 "16", "--no-progress"])
    assert rc == 0, err
    res, _ = _result(out)
    assert "t10k[:8000] (train)" in res["data"] and "t10k[8000:]" in res["data"]


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="shared MNIST not available")
def test_mnist_real_one_epoch_2000_images(capsys):
    rc, out, err = _run(capsys, ["mnist", "--data-dir", str(SHARED), "--epochs", "1",
                                 "--train-limit", "2000", "--no-progress"])
    assert rc == 0, err
    res, _ = _result(out)
    assert res["eval_accuracy"] > 0.5  # 20 Adam steps at the default lr


def test_mnist_eager_training_runs(capsys):
    rc, out, err = _run(capsys, FAST_MNIST + ["--epochs", "2", "--no-compile"])
    assert rc == 0, err
    res, _ = _result(out)
    assert res["compiled"] is False and res["eval_accuracy"] > 0.5


@pytest.mark.parametrize("model", ["lstm", "transformer"])
def test_ptb_compiled_matches_eager(capsys, tmp_path, model):
    """No dropout in these models: compiled and eager training give the same losses."""
    _write_ptb(tmp_path)
    args = ["ptb", "--model", model, "--data-dir", str(tmp_path), "--epochs", "1", "--batch-size", "4",
            "--seq-len", "6", "--embedding-size", "8", "--hidden-size", "8", "--no-progress"]
    results = []
    for flag in ("--no-compile", "--compile"):
        rc, out, err = _run(capsys, args + [flag])
        assert rc == 0, err
        results.append(_result(out)[0])
    assert results[1]["compiled"] is True
    assert results[1]["train_loss"] == pytest.approx(results[0]["train_loss"], rel=1e-4)
    assert results[1]["eval_loss"] == pytest.approx(results[0]["eval_loss"], rel=1e-4)


def test_compiled_resume_gives_same_weights_as_straight_run(capsys, tmp_path):
    """With --compile (counter-based Dropout masks), 2 epochs straight == 1 + resume."""
    straight, part = tmp_path / "straight.safetensors", tmp_path / "part.safetensors"
    base = FAST_MNIST + ["--compile"]
    assert _run(capsys, base + ["--epochs", "2", "--checkpoint", str(straight)])[0] == 0
    assert _run(capsys, base + ["--epochs", "1", "--checkpoint", str(part)])[0] == 0
    assert _run(capsys, base + ["--epochs", "2", "--resume", str(part)])[0] == 0
    a, _ = _model_tensors(straight)
    b, _ = _model_tensors(part)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-6, err_msg=key)
