"""Extern primitives: batched matmul and convolution (both lower to a library GEMM)."""
from __future__ import annotations

from ..backend_selection import array_api
from ..errors import OpError
from .registry import TensorOp, broadcast_shapes
from .shape import GetItem, dilate, flip, permute, sum_to_shape, transpose


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
        n, h, w, c_in = a.shape
        kh, kw = b.shape[:2]
        s, p = self.stride, self.padding
        ho, wo = out_grad.shape[1:3]
        # stride-1 output grid, trimmed to the positions the kernel reached
        g = dilate(out_grad, (1, 2), s - 1) if s > 1 else out_grad
        hd, wd = (ho - 1) * s + 1, (wo - 1) * s + 1
        if g.shape[1:3] != (hd, wd):
            g = GetItem([(0, n, 1), (0, hd, 1), (0, wd, 1), (0, g.shape[3], 1)])(g)
        # d/da: full correlation with the flipped, transposed kernel, then crop the padding
        rh, rw = h + 2 * p - kh + 1 - hd, w + 2 * p - kw + 1 - wd
        w_t = transpose(flip(b, (0, 1)), (2, 3))
        grad_a = _conv_asym_pad(g, w_t, kh - 1, kw - 1)
        # grad_a covers rows 0..h+2p-1-rh of the padded input: pad the remainder, crop p
        grad_a = _crop_pad(grad_a, p, h, w, rh, rw)
        # d/db: correlate the padded input (channels as batch) with the gradient
        a_t = permute(a, (3, 1, 2, 0))
        g_t = permute(g, (1, 2, 0, 3))
        grad_b = conv(a_t, g_t, stride=1, padding=p)
        if grad_b.shape[1:3] != (kh, kw):
            grad_b = GetItem([(0, c_in, 1), (0, kh, 1), (0, kw, 1), (0, grad_b.shape[3], 1)])(grad_b)
        return grad_a, permute(grad_b, (1, 2, 0, 3))


def _conv_asym_pad(g, w, ph, pw):
    """Stride-1 conv with padding ph on H and pw on W (Conv pads both equally)."""
    if ph == pw:
        return conv(g, w, stride=1, padding=ph)
    from .shape import UnSlice

    n, h, wd, c = g.shape
    padded = UnSlice([(0, n, 1), (ph, ph + h, 1), (pw, pw + wd, 1), (0, c, 1)],
                     (n, h + 2 * ph, wd + 2 * pw, c))(g)
    return conv(padded, w, stride=1, padding=0)


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
