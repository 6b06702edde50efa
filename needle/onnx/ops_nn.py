"""Converters of ONNX's convolution, pooling and normalization ops. ONNX lays activations out
NCHW, needle's Conv NHWC: a 2-D conv's output is held NHWC (`Nhwc`, see layout.py) and the
pools and BatchNormalization work in their input's layout."""
from __future__ import annotations

import itertools
from collections import Counter
from math import ceil, floor, prod

import numpy as np
import onnx

from .. import ops
from ..autograd import Tensor
from .errors import UnsupportedModelError
from .layout import as_nhwc
from .registry import Nhwc, NodeInput, attr_is, converter, describe, node_attrs, to_tensor
from .tensor_ops import broadcast, fold, keepdims, maximum, pad, strided

_AUTO_PAD = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


def _window(n: NodeInput, spatial, kernel, ceil_mode: bool = False):
    """(pads begin, pads end, output sizes) of a sliding window over `spatial` sizes, from
    the node's pads, strides, dilations and auto_pad."""
    k = len(spatial)
    strides = n.attr("strides") or [1] * k
    dilations = n.attr("dilations") or [1] * k
    spans = [(kk - 1) * d + 1 for kk, d in zip(kernel, dilations)]
    auto = n.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-i // s) for i, s in zip(spatial, strides)]
        total = [max((o - 1) * s + sp - i, 0) for o, s, sp, i in zip(out, strides, spans, spatial)]
        small = [t // 2 for t in total]
        begin = small if auto == "SAME_UPPER" else [t - m for t, m in zip(total, small)]
        return begin, [t - b for t, b in zip(total, begin)], out, strides, dilations
    pads = [0] * 2 * k if auto == "VALID" else (n.attr("pads") or [0] * 2 * k)
    begin, end = list(pads[:k]), list(pads[k:])
    rnd = ceil if ceil_mode else floor
    out = [rnd((i + b + e - sp) / s) + 1 for i, b, e, sp, s in zip(spatial, begin, end, spans, strides)]
    if ceil_mode:  # a window must start inside the input or its leading padding
        out = [o - 1 if (o - 1) * s >= i + b else o for o, s, i, b in zip(out, strides, spatial, begin)]
    # the padding a window reaches past the end (ceil mode), counted as padding, never read
    end = [max(e, (o - 1) * s + sp - i - b) for o, s, sp, i, b, e in zip(out, strides, spans, spatial, begin, end)]
    return begin, end, out, strides, dilations


def _windows(x: Tensor, axes, offsets_of, out, strides):
    """The strided view of `x` for each kernel offset (over the spatial `axes`)."""
    rank = len(x.shape)
    for offsets in offsets_of:
        yield strided(x, _place(rank, axes, offsets, 0), _place(rank, axes, strides, 1),
                      _place(rank, axes, out, None, x.shape))


def _place(rank: int, axes, values, fill, default=None) -> list:
    """`values` at `axes` of a list of `rank` entries, the others `fill` (or `default[i]`)."""
    out = list(default) if default is not None else [fill] * rank
    for a, v in zip(axes, values):
        out[a] = v
    return out


def _spatial(v) -> tuple:
    """(Tensor, its spatial axes, its channel axis) of an N, C, spatial... value (NHWC when
    held so)."""
    if isinstance(v, Nhwc):
        return v.t, [1, 2], 3
    t = to_tensor(v)
    return t, list(range(2, len(t.shape))), 1


def _like(y: Tensor, v):
    """`y`, computed in the layout of the input `v`, as a graph value."""
    return Nhwc(y) if isinstance(v, Nhwc) else y


def _offsets(kernel, dilations):
    return itertools.product(*[range(0, kk * d, d) for kk, d in zip(kernel, dilations)])


@converter("Conv", check=attr_is("auto_pad", _AUTO_PAD, "NOTSET"), layout=True)
def _conv(n: NodeInput):
    """A 2-D conv gives an `Nhwc` value (its input in any layout); a 1-D conv, as a 2-D one
    of height 1, gives NCW."""
    x, w = n.inputs[0], n.inputs[1]
    rank = len(x.shape) - 2
    if rank not in (1, 2):
        raise UnsupportedModelError([f"{describe(n.node, n.opset)}: {rank}-D convolution (1-D and 2-D only)"])
    kernel = list(w.shape[2:])
    begin, end, out, strides, dilations = _window(n, list(x.shape[2:]), kernel)
    if rank == 1:
        x = n.tensor(0)
        x = ops.reshape(x, x.shape[:2] + (1,) + x.shape[2:])
        w = w.reshape(w.shape[:2] + (1,) + w.shape[2:]) if isinstance(w, np.ndarray) else \
            ops.reshape(w, w.shape[:2] + (1,) + w.shape[2:])
        begin, end, strides, dilations = [0] + begin, [0] + end, [1] + strides, [1] + dilations
    x = as_nhwc(x)
    groups = n.attr("group", 1)
    if groups > 1 and isinstance(w, np.ndarray):  # block-diagonal dense weight
        w, groups = _dense_grouped(w, groups), 1
    if isinstance(w, np.ndarray) and w.size and not any(w.strides):
        # one value everywhere (ConstantOfShape): every output channel is the same, computed once
        y = _grouped_conv(x, w[:1], 1, begin, end, strides, dilations)
        y = ops.broadcast_to(y, y.shape[:3] + (w.shape[0],))
    else:
        y = _grouped_conv(x, w, groups, begin, end, strides, dilations)
    if n.has(2):
        b = n.inputs[2]
        b = to_tensor(b.reshape(1, 1, 1, -1)) if isinstance(b, np.ndarray) else ops.reshape(b, (1, 1, 1, b.shape[0]))
        y = y + broadcast(b, y.shape)
    if rank == 1:
        y = Nhwc(y).nchw()
        return ops.reshape(y, y.shape[:2] + y.shape[3:])
    return Nhwc(y)


def _dense_grouped(w: np.ndarray, groups: int) -> np.ndarray:
    c_out, c_in = w.shape[:2]
    dense = np.zeros((c_out, c_in * groups) + w.shape[2:], np.float32)
    step = c_out // groups
    for g in range(groups):
        dense[g * step:(g + 1) * step, g * c_in:(g + 1) * c_in] = w[g * step:(g + 1) * step]
    return dense


def _grouped_conv(x: Tensor, w, groups: int, begin, end, strides, dilations) -> Tensor:
    """ONNX's 2-D Conv of groups (OIHW weight) on the NHWC `x`, NHWC out."""
    if groups == 1:
        return _conv2d(x, w, begin, end, strides, dilations)
    cin, cout = x.shape[3] // groups, w.shape[0] // groups
    wt = to_tensor(w)
    channels = (slice(None),) * 3
    parts = [_conv2d(ops.get_item(x, channels + (slice(g * cin, (g + 1) * cin),)),
                     ops.get_item(wt, (slice(g * cout, (g + 1) * cout),)), begin, end, strides, dilations)
             for g in range(groups)]
    return ops.concat(parts, 3)


def _conv2d(x: Tensor, w, begin, end, strides, dilations) -> Tensor:
    """ONNX's 2-D Conv (OIHW weight) with needle's Conv, NHWC in and out."""
    if isinstance(w, np.ndarray):
        hwio = to_tensor(np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0))))
    else:
        hwio = ops.permute(w, (2, 3, 1, 0))
    if any(d > 1 for d in dilations):
        hwio = _dilate(hwio, dilations)
    same = begin[0] == begin[1] == end[0] == end[1]
    if not same:
        x = pad(x, [0] + list(begin) + [0], [0] + list(end) + [0])
    stride = strides[0] if strides[0] == strides[1] else 1
    y = ops.conv(x, hwio, stride=stride, padding=begin[0] if same else 0)
    if strides[0] != strides[1]:
        y = ops.get_item(y, (slice(None), slice(None, None, strides[0]), slice(None, None, strides[1])))
    return y


def _dilate(hwio: Tensor, dilations) -> Tensor:
    """The kernel with dilation-1 zeros between its taps (and none after the last)."""
    (kh, kw), (dh, dw) = hwio.shape[:2], dilations
    size = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    slices = ((0, size[0], dh), (0, size[1], dw), (0, hwio.shape[2], 1), (0, hwio.shape[3], 1))
    return ops.UnSlice(slices, size + hwio.shape[2:])(hwio)


@converter("MaxPool", check=attr_is("auto_pad", _AUTO_PAD, "NOTSET"), layout=True)
def _max_pool(n: NodeInput):
    if len(n.node.output) > 1 and n.node.output[1]:
        raise UnsupportedModelError([f"{describe(n.node, n.opset)}: MaxPool's Indices output"])
    x, axes, _ = _spatial(n.inputs[0])
    kernel, rank = n.attr("kernel_shape"), len(x.shape)
    begin, end, out, strides, dilations = _window(n, [x.shape[a] for a in axes], kernel, bool(n.attr("ceil_mode", 0)))
    xp = pad(x, _place(rank, axes, begin, 0), _place(rank, axes, end, 0), float("-inf"))
    return _like(fold(maximum, _windows(xp, axes, _offsets(kernel, dilations), out, strides)), n.inputs[0])


@converter("AveragePool", check=attr_is("auto_pad", _AUTO_PAD, "NOTSET"), layout=True)
def _average_pool(n: NodeInput):
    x, axes, _ = _spatial(n.inputs[0])
    kernel, rank = n.attr("kernel_shape"), len(x.shape)
    spatial = [x.shape[a] for a in axes]
    explicit = _window(n, spatial, kernel)[:2]
    begin, end, out, strides, dilations = _window(n, spatial, kernel, bool(n.attr("ceil_mode", 0)))
    xp = pad(x, _place(rank, axes, begin, 0), _place(rank, axes, end, 0))
    total = fold(ops.add, _windows(xp, axes, _offsets(kernel, dilations), out, strides))
    # the divisor: how many counted elements each window covers (the input, and the explicit
    # padding when count_include_pad)
    counted = np.zeros([s + b + e for s, b, e in zip(spatial, begin, end)], np.float32)
    lo = begin if not n.attr("count_include_pad", 0) else [b - eb for b, eb in zip(begin, explicit[0])]
    hi = [b + s for b, s in zip(begin, spatial)] if not n.attr("count_include_pad", 0) else \
        [b + s + ee for b, s, ee in zip(begin, spatial, explicit[1])]
    counted[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1.0
    count = sum(counted[tuple(slice(o, o + (k - 1) * s + 1, s) for o, k, s in zip(off, out, strides))]
                for off in _offsets(kernel, dilations))
    count = count.reshape(_place(rank, axes, count.shape, 1))
    return _like(total / broadcast(to_tensor(count), total.shape), n.inputs[0])


def _global(fn):
    def convert(n: NodeInput):
        x, axes, _ = _spatial(n.inputs[0])
        return _like(keepdims(fn(x, tuple(axes)), x.shape, axes, True), n.inputs[0])
    return convert


converter("GlobalAveragePool", layout=True)(
    _global(lambda x, axes: ops.summation(x, axes) / float(prod(x.shape[a] for a in axes))))
converter("GlobalMaxPool", layout=True)(_global(ops.max))


def _per_channel(v, rank: int, axis: int = 1):
    """A (C,) vector shaped with C at `axis` and 1s elsewhere, for an input of `rank` axes."""
    shape = _place(rank, [axis], [-1], 1)
    return v.reshape(shape) if isinstance(v, np.ndarray) else ops.reshape(v, tuple(_place(rank, [axis], v.shape, 1)))


@converter("BatchNormalization", check=attr_is("training_mode", (0,), 0), layout=True)
def _batch_norm(n: NodeInput):
    x, _, channel = _spatial(n.inputs[0])
    rank = len(x.shape)
    scale, bias, mean, var = n.inputs[1:5]
    eps = n.attr("epsilon", 1e-5)
    if all(isinstance(v, np.ndarray) for v in (scale, bias, mean, var)):
        a, b = bn_affine(scale, bias, mean, var, eps)
        a, b = to_tensor(_per_channel(a, rank, channel)), to_tensor(_per_channel(b, rank, channel))
    else:
        scale, bias, mean, var = (to_tensor(_per_channel(v, rank, channel)) for v in (scale, bias, mean, var))
        a = scale / ops.sqrt(var + eps)
        b = bias - mean * a
    return _like(x * broadcast(a, x.shape) + broadcast(b, x.shape), n.inputs[0])


def bn_affine(scale, bias, mean, var, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of inference BatchNormalization as y = a * x + b per channel."""
    a = (scale / np.sqrt(var.astype(np.float64) + eps)).astype(np.float32)
    return a, (bias - mean * a).astype(np.float32)


def _normalize(x: Tensor, axes, eps: float):
    """(x - mean) / sqrt(var + eps) over `axes`, with the mean and 1/std kept (keepdims)."""
    count = float(prod(x.shape[a] for a in axes))
    mean = keepdims(ops.summation(x, axes) / count, x.shape, axes, True)
    centered = x - broadcast(mean, x.shape)
    var = keepdims(ops.summation(centered * centered, axes) / count, x.shape, axes, True)
    inv_std = ops.power_scalar(var + eps, -0.5)
    return centered * broadcast(inv_std, x.shape), mean, inv_std


@converter("InstanceNormalization")
def _instance_norm(n: NodeInput):
    x = n.tensor(0)
    y, _, _ = _normalize(x, tuple(range(2, len(x.shape))), n.attr("epsilon", 1e-5))
    scale, bias = (to_tensor(_per_channel(n.inputs[i], len(x.shape))) for i in (1, 2))
    return y * broadcast(scale, x.shape) + broadcast(bias, x.shape)


@converter("LayerNormalization")
def _layer_norm(n: NodeInput):
    x = n.tensor(0)
    axis = n.attr("axis", -1) % len(x.shape)
    y, mean, inv_std = _normalize(x, tuple(range(axis, len(x.shape))), n.attr("epsilon", 1e-5))
    y = y * broadcast(n.tensor(1), x.shape)
    if n.has(2):
        y = y + broadcast(n.tensor(2), x.shape)
    return [y, mean, inv_std][:len(n.node.output)]


@converter("LRN")
def _lrn(n: NodeInput):
    x = n.tensor(0)
    size = n.attr("size")
    alpha, beta, bias = n.attr("alpha", 1e-4), n.attr("beta", 0.75), n.attr("bias", 1.0)
    rank = len(x.shape)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = pad(x * x, [0, before] + [0] * (rank - 2), [0, after] + [0] * (rank - 2))
    channels = x.shape[1]
    total = fold(ops.add, [ops.get_item(sq, (slice(None), slice(k, k + channels))) for k in range(size)])
    return x * ops.power_scalar(total * (alpha / size) + bias, -beta)


def conv_batch_norm_pairs(graph: onnx.GraphProto, known: set) -> dict[int, int]:
    """{BatchNormalization node index: Conv node index} for each inference normalization of a
    Conv's output used nowhere else, the conv's weight and bias and the normalization's
    parameters known at import: folded into the conv's weight and bias (`fold_batch_norm`)."""
    uses = Counter(i for node in graph.node for i in node.input)
    uses.update(v.name for v in graph.output)
    producer = {out: k for k, node in enumerate(graph.node) for out in node.output}
    pairs = {}
    for k, node in enumerate(graph.node):
        if node.op_type != "BatchNormalization" or any(node.output[1:]) or node_attrs(node).get("training_mode"):
            continue
        c = producer.get(node.input[0])
        conv = graph.node[c] if c is not None else None
        if conv is not None and conv.op_type == "Conv" and uses[node.input[0]] == 1 \
                and conv.input[0] not in known and all(i in known for i in list(conv.input[1:]) + list(node.input[1:])):
            pairs[k] = c
    return pairs


def fold_batch_norm(conv_inputs: list, bn_params: list, eps: float) -> list:
    """The inputs (x, weight, bias) of one Conv computing a Conv of `conv_inputs` followed by
    an inference BatchNormalization of `bn_params` (scale, bias, mean, var)."""
    x, w = conv_inputs[:2]
    b = conv_inputs[2] if len(conv_inputs) > 2 and conv_inputs[2] is not None else np.zeros(w.shape[0], np.float32)
    a, shift = bn_affine(*bn_params, eps)
    return [x, (w * a.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32), (b * a + shift).astype(np.float32)]
