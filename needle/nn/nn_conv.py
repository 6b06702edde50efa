"""Convolution layer: NCHW in and out, over ops.conv (NHWC)."""
from __future__ import annotations

import math

import numpy as np

from .. import init, ops
from ..autograd import Tensor
from .nn_basic import Module, Parameter


class Conv(Module):
    """2-D convolution, square kernel.

    `padding=None` (the default) pads (k-1)//2 on every side ("same" for odd k at stride 1),
    as the course's Conv does; an explicit int pads that many zeros on each side of H and W
    (PyTorch's Conv2d(padding=p)). Passed by keyword, so the positional signature is unchanged."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, bias=True,
                 device=None, dtype="float32", *, padding=None):
        super().__init__()
        if isinstance(kernel_size, tuple):
            kernel_size = kernel_size[0]
        if isinstance(stride, tuple):
            stride = stride[0]
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        if isinstance(padding, tuple):
            if len(set(padding)) != 1:
                raise ValueError(f"Conv: padding must be the same on both axes, got {padding}")
            padding = padding[0]
        if padding is None:
            padding = (kernel_size - 1) // 2
        elif isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"Conv: padding must be None or a non-negative int, got {padding!r}")
        self.padding = int(padding)
        k = kernel_size
        self.weight = Parameter(init.kaiming_uniform(
            in_channels * k * k, out_channels * k * k, shape=(k, k, in_channels, out_channels),
            device=device, dtype=dtype))
        if bias:
            bound = 1.0 / math.sqrt(in_channels * k * k)
            self.bias = Parameter(init.rand(out_channels, low=-bound, high=bound, device=device, dtype=dtype))
        else:
            self.bias = None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={getattr(self, 'bias', None) is not None}")

    def forward(self, x: Tensor) -> Tensor:
        nhwc = ops.permute(x, (0, 2, 3, 1))
        out = ops.conv(nhwc, self.weight, stride=self.stride, padding=self.padding)
        if self.bias is not None:
            out = out + ops.reshape(self.bias, (1, 1, 1, self.out_channels))
        return ops.permute(out, (0, 3, 1, 2))
