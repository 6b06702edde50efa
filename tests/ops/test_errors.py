"""Bad input raises a clear error naming the op, the shapes and the user's line."""
from __future__ import annotations

import numpy as np
import pytest

import needle as ndl
from tests.conftest import tensor

HERE = __file__


def x(*shape):
    return tensor(np.random.randn(*shape))


@pytest.mark.parametrize("fn,op,fragments", [
    (lambda: x(3, 4) @ x(5, 6), "MatMul", ["(3, 4)", "(5, 6)"]),
    (lambda: ndl.matmul(x(2, 3, 4), x(3, 4, 5)), "MatMul", ["(2, 3, 4)", "(3, 4, 5)"]),
    (lambda: ndl.reshape(x(3, 4), (5, 2)), "Reshape", ["(3, 4)", "(5, 2)"]),
    (lambda: ndl.reshape(x(3, 4), (-1, 5)), "Reshape", ["(3, 4)", "(-1, 5)"]),
    (lambda: ndl.broadcast_to(x(3, 4), (3, 5)), "BroadcastTo", ["(3, 4)", "(3, 5)"]),
    (lambda: x(3, 4) + x(2, 4), "EWiseAdd", ["(3, 4)", "(2, 4)"]),
    (lambda: ndl.ops.EWiseMul()(x(3, 4), x(4)), "EWiseMul", ["(3, 4)", "(4,)"]),
    (lambda: ndl.summation(x(3, 4), axes=2), "Summation", ["axis 2"]),
    (lambda: ndl.max(x(3, 4), axes=(0, 0)), "Max", ["repeated axis"]),
    (lambda: ndl.transpose(x(3, 4), (0, 5)), "Transpose", ["(0, 5)"]),
    (lambda: ndl.permute(x(3, 4), (0, 0)), "Permute", ["(0, 0)", "(3, 4)"]),
    (lambda: ndl.logsoftmax(x(3, 4, 5)), "LogSoftmax", ["(3, 4, 5)"]),
    (lambda: ndl.conv(x(1, 5, 5, 3), x(3, 3, 2, 4)), "Conv", ["(1, 5, 5, 3)", "(3, 3, 2, 4)"]),
    (lambda: ndl.stack([x(2, 3), x(3, 2)], 0), "Stack", ["(2, 3)", "(3, 2)"]),
    (lambda: ndl.concat([x(2, 3), x(3, 2)], 1), "Concat", ["(2, 3)", "(3, 2)"]),
    (lambda: ndl.where(x(3, 1) > 0, x(3, 4), x(2, 4)), "Where", ["(3, 1)", "(3, 4)", "(2, 4)"]),
], ids=["matmul", "bmm", "reshape", "reshape_infer", "broadcast", "add", "ewise_mul", "sum_axis",
        "max_repeat", "transpose", "permute", "logsoftmax", "conv", "stack", "concat", "where"])
def test_error_names_op_shapes_and_user_line(fn, op, fragments):
    with pytest.raises(ValueError) as info:
        fn()
    msg = str(info.value)
    assert msg.startswith(op + ":"), msg
    for frag in fragments:
        assert frag in msg, msg
    assert "test_errors.py:" in msg, msg


def test_gather_index_out_of_range_is_an_index_error():
    w = x(4, 3)
    with pytest.raises(IndexError) as info:
        ndl.gather(w, tensor(np.array([0.0, 7.0]), requires_grad=False))
    assert "Gather" in str(info.value)
