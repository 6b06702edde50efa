"""Module state_dict / load_state_dict and safetensors checkpoints."""
import os

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
import needle.optim as optim
from needle.nn import load_checkpoint, save_checkpoint


def _model():
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(),
                         nn.Residual(nn.Sequential(nn.Linear(5, 5), nn.LayerNorm1d(5))), nn.Linear(5, 2))


def _x():
    return ndl.Tensor(np.random.randn(6, 4).astype("float32"), requires_grad=False)


def test_state_dict_names_and_buffers():
    model = _model()
    model(_x())  # update running statistics
    sd = model.state_dict()
    assert list(sd) == [
        "modules.0.weight", "modules.0.bias",
        "modules.1.weight", "modules.1.bias", "modules.1.running_mean", "modules.1.running_var",
        "modules.3.fn.modules.0.weight", "modules.3.fn.modules.0.bias",
        "modules.3.fn.modules.1.weight", "modules.3.fn.modules.1.bias",
        "modules.4.weight", "modules.4.bias"]
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    assert sd["modules.0.bias"].shape == (1, 5)
    np.testing.assert_array_equal(sd["modules.1.running_mean"], model.modules[1].running_mean.numpy())
    assert not np.all(sd["modules.1.running_var"] == 1)
    # a copy: changing the array does not change the model
    sd["modules.0.weight"][...] = 0
    assert not np.all(model.modules[0].weight.numpy() == 0)


def test_sequence_and_transformer_state_names():
    lstm = nn.LSTM(3, 4, num_layers=2)
    assert list(lstm.state_dict())[:4] == ["lstm_cells.0.W_ih", "lstm_cells.0.W_hh", "lstm_cells.0.bias_ih",
                                           "lstm_cells.0.bias_hh"]
    tr = nn.Transformer(4, 6, 1, num_head=2, dim_head=2, sequence_len=8)
    names = list(tr.state_dict())
    assert names[0] == "positional_embedding.weight"
    assert "layers.modules.0.attention.q_projection.weight" in names


def test_load_state_dict_round_trip():
    np.random.seed(0)
    a = _model()
    a(_x())
    np.random.seed(1)
    b = _model()
    params_before = b.parameters()
    b.load_state_dict(a.state_dict())
    # the same Parameter objects are updated (optimizers keep working)
    assert all(p is q for p, q in zip(params_before, b.parameters()))
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(v, v2)
        assert v2.dtype == np.float32
    a.eval()
    b.eval()
    x = _x()
    np.testing.assert_allclose(a(x).numpy(), b(x).numpy(), rtol=1e-6, atol=1e-6)
    # Tensors are accepted as values too
    b.load_state_dict({k: ndl.Tensor(v) for k, v in a.state_dict().items()})


def _snapshot(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def _unchanged(model, snap):
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, snap[k])


def test_load_state_dict_shape_mismatch_changes_nothing():
    model = _model()
    snap = _snapshot(model)
    state = {k: v + 1 for k, v in model.state_dict().items()}
    state["modules.4.weight"] = np.zeros((5, 3), dtype="float32")
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    msg = str(info.value)
    assert "modules.4.weight" in msg and "(5, 3)" in msg and "(5, 2)" in msg
    _unchanged(model, snap)


def test_load_state_dict_missing_and_unexpected_keys():
    model = _model()
    snap = _snapshot(model)
    state = {k: v + 1 for k, v in model.state_dict().items()}
    missing = dict(state)
    del missing["modules.1.running_var"]
    with pytest.raises(ValueError, match="modules.1.running_var"):
        model.load_state_dict(missing)
    _unchanged(model, snap)
    extra = dict(state)
    extra["modules.9.weight"] = np.zeros((2, 2), dtype="float32")
    with pytest.raises(ValueError, match=r"modules\.9\.weight.*\(2, 2\)"):
        model.load_state_dict(extra)
    _unchanged(model, snap)
    # strict=False ignores missing and unexpected keys but still checks shapes
    model.load_state_dict(missing, strict=False)
    np.testing.assert_array_equal(model.state_dict()["modules.0.weight"], state["modules.0.weight"])
    np.testing.assert_array_equal(model.state_dict()["modules.1.running_var"], snap["modules.1.running_var"])
    bad = dict(missing)
    bad["modules.0.bias"] = np.zeros((5,), dtype="float32")
    with pytest.raises(ValueError, match=r"modules\.0\.bias"):
        model.load_state_dict(bad, strict=False)


def test_checkpoint_round_trip_atomic(tmp_path):
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "model.safetensors"
    meta = {"epoch": "3", "note": "hello"}
    save_checkpoint(path, model.state_dict(), meta)
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temporary files left
    tensors, metadata = load_checkpoint(path)
    assert metadata == meta
    assert list(tensors) == list(model.state_dict()) or set(tensors) == set(model.state_dict())
    np.random.seed(5)
    other = _model()
    other.load_state_dict(tensors)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)
    # overwrite in place (os.replace) with new content
    save_checkpoint(str(path), {"a": np.arange(6, dtype="float32").reshape(2, 3)}, {})
    tensors, metadata = load_checkpoint(str(path))
    assert list(tensors) == ["a"] and metadata == {}
    np.testing.assert_array_equal(tensors["a"], np.arange(6).reshape(2, 3))
    assert os.listdir(tmp_path) == ["model.safetensors"]
    assert opt.lr == 0.1


def test_checkpoint_failed_save_leaves_no_temp_and_keeps_old(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"w": np.ones(3, dtype="float32")}, {"v": "1"})
    with pytest.raises(TypeError):
        save_checkpoint(path, {"w": np.ones(3, dtype="float32")}, {"v": 2})
    with pytest.raises(Exception):
        save_checkpoint(path, {"w": np.array(["not", "numeric"], dtype=object)}, {})
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]
    tensors, meta = load_checkpoint(path)
    assert meta == {"v": "1"}
    np.testing.assert_array_equal(tensors["w"], np.ones(3))


def test_corrupt_checkpoint_raises_value_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_checkpoint(bad)
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, {"w": np.ones((4, 4), dtype="float32")}, {})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        load_checkpoint(truncated)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors")
