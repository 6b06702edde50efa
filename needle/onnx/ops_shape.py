"""Converters of ONNX's shape, indexing and constant ops (targets and axes known at import)."""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from .. import ops
from ..autograd import Tensor
from .checks import MAX_BYTES
from .errors import UnsupportedModelError
from .registry import Nhwc, NodeInput, attr_is, converter, describe, to_tensor
from .tensor_ops import broadcast, floor, normalize_axes, pad, take


@converter("Constant")
def _constant(n: NodeInput):
    for key, value in n.attrs.items():
        if key == "value":
            return numpy_helper.to_array(value)
        if key in ("value_float", "value_int"):
            return np.array(value, np.float32 if key == "value_float" else np.int64)
        if key in ("value_floats", "value_ints"):
            return np.array(value, np.float32 if key == "value_floats" else np.int64)
    raise UnsupportedModelError([f"{describe(n.node, n.opset)}: no supported value attribute"])


@converter("ConstantOfShape", static=(0,))
def _constant_of_shape(n: NodeInput):
    shape = tuple(n.ints(0))
    value = numpy_helper.to_array(n.attr("value")) if n.attr("value") is not None else np.zeros(1, np.float32)
    if int(np.prod(shape)) * value.itemsize > MAX_BYTES:
        raise UnsupportedModelError([f"{describe(n.node, n.opset)}: shape {shape} is over the size limit"])
    return np.broadcast_to(value.reshape(()), shape)  # zero-strided: no memory per element


@converter("Shape", layout=True)
def _shape(n: NodeInput):
    shape = np.array(n.inputs[0].shape, np.int64)
    return shape[n.attr("start", 0):n.attr("end", len(shape))] if n.since(15) else shape


@converter("Size", layout=True)
def _size(n: NodeInput):
    return np.array(int(np.prod(n.inputs[0].shape)), np.int64)


@converter("Identity", "Dropout")
def _identity(n: NodeInput):
    x = n.inputs[0]
    return (x, np.ones(x.shape, bool)) if len(n.node.output) > 1 else x


_FLOATS = {1, 10, 11, 16}  # float, float16, double, bfloat16
_INTS = {2, 3, 4, 5, 6, 7, 12, 13}


@converter("Cast", check=attr_is("to", _FLOATS | _INTS | {9}))
def _cast(n: NodeInput):
    x, to = n.tensor(0), n.attr("to")
    if to in _FLOATS:
        return x
    if to == 9:  # bool
        return ops.compare(x, 0.0, "ne")
    return ops.where(ops.compare(x, 0.0, "lt"), -floor(-x), floor(x))  # truncation toward zero


@converter("Reshape", static=(1,))
def _reshape(n: NodeInput):
    x = n.tensor(0)
    shape = n.ints(1) if n.since(5) else list(n.attr("shape"))
    if not n.attr("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return ops.reshape(x, tuple(shape))


@converter("Flatten")
def _flatten(n: NodeInput):
    x = n.tensor(0)
    axis = n.attr("axis", 1)
    axis = axis + len(x.shape) if axis < 0 else axis
    return ops.reshape(x, (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))))


@converter("Transpose")
def _transpose(n: NodeInput):
    x = n.tensor(0)
    perm = n.attr("perm") or list(reversed(range(len(x.shape))))
    return ops.permute(x, tuple(perm))


@converter("Squeeze", static=(1,))
def _squeeze(n: NodeInput):
    x = n.tensor(0)
    axes = n.ints(1) if n.since(13) else n.attr("axes")
    axes = normalize_axes(axes, len(x.shape)) if axes else [i for i, d in enumerate(x.shape) if d == 1]
    return ops.reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))


@converter("Unsqueeze", static=(1,))
def _unsqueeze(n: NodeInput):
    x = n.tensor(0)
    axes = n.ints(1) if n.since(13) else n.attr("axes")
    shape = list(x.shape)
    for a in normalize_axes(axes, len(shape) + len(axes)):
        shape.insert(a, 1)
    return ops.reshape(x, tuple(shape))


@converter("Concat", layout=True)
def _concat(n: NodeInput):
    held = [v for v in n.inputs if v is not None]
    if all(isinstance(v, Nhwc) for v in held) and n.attr("axis") % 4 == 1:  # channels, kept NHWC
        return Nhwc(ops.concat([v.t for v in held], 3)) if len(held) > 1 else held[0]
    parts = [n.tensor(i) for i in range(len(n.inputs)) if n.has(i)]
    axis = n.attr("axis") % len(parts[0].shape)
    parts = [p for p in parts if p.shape[axis]] or parts[:1]
    return parts[0] if len(parts) == 1 else ops.concat(parts, axis)


@converter("Split", static=(1,))
def _split(n: NodeInput):
    x = n.tensor(0)
    axis = n.attr("axis", 0) % len(x.shape)
    sizes = n.ints(1) if n.since(13) else n.attr("split")
    if not sizes:
        count = n.attr("num_outputs", len(n.node.output))
        step = -(-x.shape[axis] // count)
        sizes = [min(step, x.shape[axis] - k * step) for k in range(count)]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [ops.get_item(x, (slice(None),) * axis + (slice(int(a), int(b)),)) for a, b in zip(bounds, bounds[1:])]


@converter("Slice", static=(1, 2, 3, 4))
def _slice(n: NodeInput):
    x = n.tensor(0)
    if n.since(10):
        starts, ends, axes, steps = n.ints(1), n.ints(2), n.ints(3), n.ints(4)
    else:
        starts, ends, axes, steps = n.attr("starts"), n.attr("ends"), n.attr("axes"), None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index = [slice(None)] * len(x.shape)
    for s, e, a, k in zip(starts, ends, axes, steps):
        index[a % len(x.shape)] = slice(s, e, k)
    return ops.get_item(x, tuple(index))


@converter("Gather")
def _gather(n: NodeInput):
    x = n.tensor(0)
    return take(x, n.attr("axis", 0) % len(x.shape), n.inputs[1])


@converter("Expand", static=(1,))
def _expand(n: NodeInput):
    x = n.tensor(0)
    return broadcast(x, np.broadcast_shapes(x.shape, tuple(n.ints(1))))


@converter("Tile", static=(1,))
def _tile(n: NodeInput):
    x = n.tensor(0)
    reps = n.ints(1)
    inter = tuple(v for r, d in zip(reps, x.shape) for v in (1, d))
    full = tuple(v for r, d in zip(reps, x.shape) for v in (r, d))
    out = ops.broadcast_to(ops.reshape(x, inter), full)
    return ops.reshape(out, tuple(r * d for r, d in zip(reps, x.shape)))


def _pad_edges(x: Tensor, begin, end, reflect: bool) -> Tensor:
    """Edge or reflect padding, one axis at a time, as a concat of slices."""
    for axis, (b, e) in enumerate(zip(begin, end)):
        d = x.shape[axis]
        if not b and not e:
            continue
        pre = (slice(None),) * axis

        def piece(lo, hi, flip):
            part = ops.get_item(x, pre + (slice(lo, hi),))
            return ops.flip(part, (axis,)) if flip else part

        if reflect:
            left, right = piece(1, b + 1, True), piece(d - 1 - e, d - 1, True)
        else:
            left = broadcast(piece(0, 1, False), x.shape[:axis] + (b,) + x.shape[axis + 1:])
            right = broadcast(piece(d - 1, d, False), x.shape[:axis] + (e,) + x.shape[axis + 1:])
        x = ops.concat([p for p in (left, x, right) if p.shape[axis]], axis)
    return x


@converter("Pad", static=(1, 3), check=attr_is("mode", ("constant", "reflect", "edge"), "constant"))
def _pad(n: NodeInput):
    x = n.tensor(0)
    rank = len(x.shape)
    pads = n.ints(1) if n.since(11) else n.attr("pads")
    value = n.inputs[2] if n.since(11) and n.has(2) else n.attr("value", 0.0)
    axes = normalize_axes(n.ints(3), rank) if n.has(3) else range(rank)
    begin, end = [0] * rank, [0] * rank
    for k, a in enumerate(axes):
        begin[a], end[a] = pads[k], pads[k + len(pads) // 2]
    mode = n.attr("mode", "constant")
    if mode != "constant":
        return _pad_edges(x, begin, end, mode == "reflect")
    if isinstance(value, Tensor):  # padding with a runtime scalar: zeros, then value outside x
        outside = pad(to_tensor(np.zeros(x.shape, np.float32)), begin, end, 1.0)
        return pad(x, begin, end) + outside * broadcast(ops.reshape(value, (1,) * rank), outside.shape)
    return pad(x, begin, end, float(np.asarray(value).reshape(-1)[0]))


@converter("Range", static=(0, 1, 2))
def _range(n: NodeInput):
    start, limit, delta = (n.const(i) for i in range(3))
    return np.arange(start, limit, delta).astype(np.asarray(start).dtype)


@converter("DepthToSpace")
def _depth_to_space(n: NodeInput):
    x = n.tensor(0)
    b, c, h, w = x.shape
    k = n.attr("blocksize")
    if n.attr("mode", "DCR") == "DCR":
        y = ops.permute(ops.reshape(x, (b, k, k, c // k // k, h, w)), (0, 3, 4, 1, 5, 2))
    else:
        y = ops.permute(ops.reshape(x, (b, c // k // k, k, k, h, w)), (0, 1, 4, 2, 5, 3))
    return ops.reshape(y, (b, c // k // k, h * k, w * k))


@converter("SpaceToDepth")
def _space_to_depth(n: NodeInput):
    x = n.tensor(0)
    b, c, h, w = x.shape
    k = n.attr("blocksize")
    perm = (0, 3, 5, 1, 2, 4) if n.attr("mode", "DCR") == "DCR" else (0, 1, 3, 5, 2, 4)
    y = ops.permute(ops.reshape(x, (b, c, h // k, k, w // k, k)), perm)
    return ops.reshape(y, (b, c * k * k, h // k, w // k))

