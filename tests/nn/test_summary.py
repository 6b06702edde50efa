"""Module.summary: output shapes and parameter counts of one example pass, with no side effects."""
import numpy as np

import needle as ndl
import needle.nn as nn


def _rows(table: str) -> dict:
    lines = table.splitlines()
    return {line.split()[0]: line for line in lines[2:-2]}


def test_summary_shapes_counts_and_no_side_effects():
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 3))
    model.train()
    x = rng.standard_normal((4, 6)).astype(np.float32)
    before = {k: v.copy() for k, v in model.state_dict().items()}

    table = model.summary(x)

    rows = _rows(table)
    expected = model.eval()(ndl.Tensor(x)).shape
    model.train()
    assert f"{tuple(expected)}" in rows["(model)"] and rows["(model)"].split()[1] == "Sequential"
    assert "(4, 5)" in rows["modules.0"] and rows["modules.0"].endswith(f"{6 * 5 + 5}")
    assert rows["modules.1"].split()[1] == "BatchNorm1d" and rows["modules.1"].endswith("10")
    assert rows["modules.4"].endswith(f"{5 * 3 + 3}")
    assert table.splitlines()[-1] == f"parameters: {model.num_parameters():,} ({model.num_parameters():,} trainable)"
    # nothing changed: BatchNorm statistics, training flags, no leftover instance attributes
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(m.training for _, m in model.named_modules())
    assert all("forward" not in m.__dict__ for _, m in model.named_modules())


def test_summary_counts_calls_and_tuple_outputs():
    layer = nn.Linear(3, 3)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(self.layer(x)), x

    table = Twice().summary(ndl.Tensor(np.ones((2, 3), dtype=np.float32)))
    rows = _rows(table)
    assert "((2, 3), (2, 3))" in rows["(model)"]
    assert "x2 calls" in rows["layer"]


def test_summary_of_lstm_marks_cells_used_by_parent():
    lstm = nn.LSTM(4, 5, num_layers=2)
    table = lstm.summary(ndl.Tensor(np.zeros((3, 2, 4), dtype=np.float32)))
    rows = _rows(table)
    assert "(3, 2, 5)" in rows["(model)"]
    assert "(no call of its own)" in rows["lstm_cells.1"]
