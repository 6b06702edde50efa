"""Extern primitives: batched matmul and convolution (both lower to a library GEMM)."""
from __future__ import annotations

from ..backend_selection import array_api
from .registry import TensorOp, broadcast_shapes
from .shape import GetItem, dilate, flip, permute, sum_to_shape, transpose


class MatMul(TensorOp):
    """a @ b for 2-D or batched N-D inputs; batch axes broadcast numpy-style."""

    kind = "extern"

    def infer(self, a, b):
        sa, sb = a.shape, b.shape
        if len(sa) < 2 or len(sb) < 2 or sa[-1] != sb[-2]:
            raise self.error(f"cannot multiply shapes {sa} and {sb}")
        batch = broadcast_shapes(self, sa[:-2], sb[:-2])
        return batch + (sa[-2], sb[-1]), a.dtype

    def compute(self, a, b):
        return array_api.matmul(a, b)

    def gradient(self, out_grad, node):
        a, b = node.inputs
        return (sum_to_shape(out_grad @ transpose(b), a.shape),
                sum_to_shape(transpose(a) @ out_grad, b.shape))


class Conv(TensorOp):
    """2-D cross-correlation: a NHWC, b (K, K, C_in, C_out), zero padding, stride."""

    kind = "extern"

    def __init__(self, stride: int = 1, padding: int = 0):
        self.stride = stride
        self.padding = padding

    def infer(self, a, b):
        if len(a.shape) != 4 or len(b.shape) != 4 or b.shape[0] != b.shape[1] or a.shape[3] != b.shape[2]:
            raise self.error(f"expects input NHWC and weight (K, K, C_in, C_out) with matching C_in; "
                             f"got {a.shape} and {b.shape}")
        n, h, w, _ = a.shape
        k, p, s = b.shape[0], self.padding, self.stride
        if s < 1 or p < 0 or h + 2 * p < k or w + 2 * p < k:
            raise self.error(f"kernel {k} with padding {p} and stride {s} does not fit input {a.shape}")
        return (n, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1, b.shape[3]), a.dtype

    def compute(self, a, b):
        (n, ho, wo, c_out), _ = self.infer(a, b)
        k, c_in = b.shape[0], b.shape[2]
        p = self.padding
        if p:
            a = array_api.pad(a, ((0, 0), (p, p), (p, p), (0, 0)))
        cols = array_api.im2col(a, k, self.stride)
        cols = array_api.reshape(cols, (n * ho * wo, k * k * c_in))
        w = array_api.reshape(b.compact() if hasattr(b, "compact") else b, (k * k * c_in, c_out))
        return array_api.reshape(array_api.matmul(cols, w), (n, ho, wo, c_out))

    def gradient(self, out_grad, node):
        a, b = node.inputs
        n, h, w, c_in = a.shape
        k, s, p = b.shape[0], self.stride, self.padding
        ho, wo = out_grad.shape[1:3]
        # stride-1 output grid, trimmed to the positions the kernel reached
        g = dilate(out_grad, (1, 2), s - 1) if s > 1 else out_grad
        hd, wd = (ho - 1) * s + 1, (wo - 1) * s + 1
        if g.shape[1:3] != (hd, wd):
            g = GetItem([(0, n, 1), (0, hd, 1), (0, wd, 1), (0, g.shape[3], 1)])(g)
        # d/da: full correlation with the flipped, transposed kernel, then crop the padding
        rh, rw = h + 2 * p - k + 1 - hd, w + 2 * p - k + 1 - wd
        w_t = transpose(flip(b, (0, 1)), (2, 3))
        grad_a = conv(g, w_t, stride=1, padding=k - 1)
        # grad_a covers rows 0..h+2p-1-rh of the padded input: pad the remainder, crop p
        grad_a = _crop_pad(grad_a, p, h, w, rh, rw)
        # d/db: correlate the padded input (channels as batch) with the gradient
        a_t = permute(a, (3, 1, 2, 0))
        g_t = permute(g, (1, 2, 0, 3))
        grad_b = conv(a_t, g_t, stride=1, padding=p)
        if grad_b.shape[1] != k or grad_b.shape[2] != k:
            grad_b = GetItem([(0, c_in, 1), (0, k, 1), (0, k, 1), (0, grad_b.shape[3], 1)])(grad_b)
        return grad_a, permute(grad_b, (1, 2, 0, 3))


def _crop_pad(t, p, h, w, rh, rw):
    """From the gradient of the padded input minus (rh, rw) trailing rows/cols, take the
    (h, w) interior: trailing rows the conv never reached get zero gradient."""
    from .shape import UnSlice

    n, hp, wp, c = t.shape
    if rh or rw:
        t = UnSlice([(0, n, 1), (0, hp, 1), (0, wp, 1), (0, c, 1)], (n, hp + rh, wp + rw, c))(t)
    if p:
        t = GetItem([(0, n, 1), (p, p + h, 1), (p, p + w, 1), (0, c, 1)])(t)
    return t


def matmul(a, b):
    return MatMul()(a, b)


def conv(a, b, stride: int = 1, padding: int = 1):
    return Conv(stride, padding)(a, b)


__all__ = ["MatMul", "Conv", "matmul", "conv"]
