"""Extern primitives: batched matmul and convolution with its two gradients (all lower to a
library GEMM: conv as im2col @ weight, its input gradient as (g @ weight^T) scattered back
by col2im, its weight gradient as im2col^T @ g)."""
from __future__ import annotations

from ..backend_selection import array_api
from ..errors import OpError
from math import prod

from .registry import Cost, TensorOp, broadcast_shapes
from .shape import sum_to_shape, transpose


class MatMul(TensorOp):
    """a @ b for 2-D or batched N-D inputs; batch axes broadcast numpy-style."""

    kind = "extern"

    def infer(self, a, b):
        sa, sb = a.shape, b.shape
        if len(sa) == 2 and len(sb) == 2 and sa[1] == sb[0]:
            return (sa[0], sb[1]), a.dtype
        if len(sa) < 2 or len(sb) < 2 or sa[-1] != sb[-2]:
            raise self.error(f"cannot multiply shapes {sa} and {sb}")
        try:
            batch = broadcast_shapes(self, sa[:-2], sb[:-2])
        except OpError:
            raise self.error(f"batch dimensions of shapes {sa} and {sb} do not broadcast") from None
        return batch + (sa[-2], sb[-1]), a.dtype

    def compute(self, a, b):
        return array_api.matmul(a, b)

    def cost(self, out_shape, in_shapes):
        return _gemm_cost(prod(out_shape) * in_shapes[0][-1], out_shape, in_shapes)

    def gradient(self, out_grad, node):
        a, b = node.inputs
        return (sum_to_shape(out_grad @ transpose(b), a.shape),
                sum_to_shape(transpose(a) @ out_grad, b.shape))


class Conv(TensorOp):
    """2-D cross-correlation: a NHWC, b (KH, KW, C_in, C_out), zero padding, stride."""

    kind = "extern"

    def __init__(self, stride: int = 1, padding: int = 0):
        self.stride = stride
        self.padding = padding

    def infer(self, a, b):
        if len(a.shape) != 4 or len(b.shape) != 4 or a.shape[3] != b.shape[2]:
            raise self.error(f"expects input NHWC and weight (KH, KW, C_in, C_out) with matching C_in; "
                             f"got {a.shape} and {b.shape}")
        n, h, w, _ = a.shape
        kh, kw = b.shape[:2]
        p, s = self.padding, self.stride
        if s < 1 or p < 0 or h + 2 * p < kh or w + 2 * p < kw:
            raise self.error(f"kernel {b.shape[:2]} with padding {p} and stride {s} does not fit input {a.shape}")
        return (n, (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1, b.shape[3]), a.dtype

    def cost(self, out_shape, in_shapes):
        return _gemm_cost(prod(out_shape) * prod(in_shapes[1][:3]), out_shape, in_shapes)

    def compute(self, a, b):
        (n, ho, wo, c_out), _ = self.infer(a, b)
        kh, kw, c_in = b.shape[:3]
        p = self.padding
        if p:
            a = array_api.pad(a, ((0, 0), (p, p), (p, p), (0, 0)))
        cols = array_api.im2col(a, (kh, kw), self.stride)
        cols = array_api.reshape(cols, (n * ho * wo, kh * kw * c_in))
        w = array_api.reshape(b.compact() if hasattr(b, "compact") else b, (kh * kw * c_in, c_out))
        return array_api.reshape(array_api.matmul(cols, w), (n, ho, wo, c_out))

    def gradient(self, out_grad, node):
        a, b = node.inputs
        s, p = self.stride, self.padding
        return (ConvBackwardData(s, p, a.shape[1:3])(out_grad, b),
                ConvBackwardFilter(s, p, b.shape[:2])(a, out_grad))


def _gemm_cost(products: int, out_shape, in_shapes) -> Cost:
    """A multiply-add per product; every operand and the result moved once."""
    return Cost(2 * products, 4 * (prod(out_shape) + sum(prod(s) for s in in_shapes)))


def _conv_dims(op, n, h, w, kh, kw):
    s, p = op.stride, op.padding
    if s < 1 or p < 0 or h + 2 * p < kh or w + 2 * p < kw:
        raise op.error(f"kernel {(kh, kw)} with padding {p} and stride {s} does not fit an input of {(h, w)}")
    return (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1


class ConvBackwardData(TensorOp):
    """The gradient of Conv for its input: g (N, Ho, Wo, C_out) and the weight
    (KH, KW, C_in, C_out) -> (N, H, W, C_in), i.e. g @ weight^T scattered back through the
    patches (col2im). `size` is the input's (H, W), which a strided conv does not determine."""

    kind = "extern"

    def __init__(self, stride: int, padding: int, size):
        self.stride = stride
        self.padding = padding
        self.size = tuple(size)

    def infer(self, g, w):
        if len(g.shape) != 4 or len(w.shape) != 4 or g.shape[3] != w.shape[3]:
            raise self.error(f"expects the output gradient NHWC and weight (KH, KW, C_in, C_out) with "
                             f"matching C_out; got {g.shape} and {w.shape}")
        h, wd = self.size
        if _conv_dims(self, g.shape[0], h, wd, w.shape[0], w.shape[1]) != tuple(g.shape[1:3]):
            raise self.error(f"output gradient {g.shape} does not fit an input of {self.size} "
                             f"with kernel {w.shape[:2]}, stride {self.stride}, padding {self.padding}")
        return (g.shape[0], h, wd, w.shape[2]), g.dtype

    def cost(self, out_shape, in_shapes):  # the products of the conv it differentiates
        return _gemm_cost(prod(in_shapes[0]) * prod(in_shapes[1][:3]), out_shape, in_shapes)

    def compute(self, g, w):
        n, ho, wo, c_out = g.shape
        kh, kw, c_in, _ = w.shape
        h, wd = self.size
        p = self.padding
        w2 = array_api.reshape(w.compact() if hasattr(w, "compact") else w, (kh * kw * c_in, c_out))
        g2 = array_api.reshape(g.compact() if hasattr(g, "compact") else g, (n * ho * wo, c_out))
        cols = array_api.matmul(g2, array_api.transpose(w2, (1, 0)))
        cols = array_api.reshape(cols, (n, ho, wo, kh, kw, c_in))
        out = array_api.col2im(cols, (n, h + 2 * p, wd + 2 * p, c_in), self.stride)
        if p:
            out = out[:, p:p + h, p:p + wd, :]
        return out.compact() if hasattr(out, "compact") else out.copy()

    def gradient(self, out_grad, node):
        g, w = node.inputs
        s, p = self.stride, self.padding
        return Conv(s, p)(out_grad, w), ConvBackwardFilter(s, p, w.shape[:2])(out_grad, g)


class ConvBackwardFilter(TensorOp):
    """The gradient of Conv for its weight: the input a (N, H, W, C_in) and g (N, Ho, Wo,
    C_out) -> (KH, KW, C_in, C_out), i.e. im2col(a)^T @ g, one GEMM. `kernel` is (KH, KW)."""

    kind = "extern"

    def __init__(self, stride: int, padding: int, kernel):
        self.stride = stride
        self.padding = padding
        self.kernel = tuple(kernel)

    def cost(self, out_shape, in_shapes):
        return _gemm_cost(prod(in_shapes[1]) * prod(out_shape[:3]), out_shape, in_shapes)

    def infer(self, a, g):
        if len(a.shape) != 4 or len(g.shape) != 4 or a.shape[0] != g.shape[0]:
            raise self.error(f"expects the input NHWC and the output gradient NHWC with the same batch; "
                             f"got {a.shape} and {g.shape}")
        kh, kw = self.kernel
        n, h, w, c_in = a.shape
        if _conv_dims(self, n, h, w, kh, kw) != tuple(g.shape[1:3]):
            raise self.error(f"output gradient {g.shape} does not fit input {a.shape} with kernel "
                             f"{self.kernel}, stride {self.stride}, padding {self.padding}")
        return (kh, kw, c_in, g.shape[3]), a.dtype

    def compute(self, a, g):
        n, ho, wo, c_out = g.shape
        kh, kw = self.kernel
        c_in = a.shape[3]
        p = self.padding
        if p:
            a = array_api.pad(a, ((0, 0), (p, p), (p, p), (0, 0)))
        cols = array_api.reshape(array_api.im2col(a, (kh, kw), self.stride), (n * ho * wo, kh * kw * c_in))
        g2 = array_api.reshape(g.compact() if hasattr(g, "compact") else g, (n * ho * wo, c_out))
        dw = array_api.matmul(array_api.transpose(cols, (1, 0)), g2)
        return array_api.reshape(dw, (kh, kw, c_in, c_out))

    def gradient(self, out_grad, node):
        a, g = node.inputs
        s, p = self.stride, self.padding
        return ConvBackwardData(s, p, a.shape[1:3])(g, out_grad), Conv(s, p)(a, out_grad)


def matmul(a, b):
    return MatMul()(a, b)


def conv(a, b, stride: int = 1, padding: int = 1):
    return Conv(stride, padding)(a, b)


__all__ = ["MatMul", "Conv", "ConvBackwardData", "ConvBackwardFilter", "matmul", "conv"]
