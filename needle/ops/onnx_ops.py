"""Elementwise ops that ONNX models need and needle's core lacks, declared the usual way (an
`element` formula in the scalar vocabulary, a VJP written with needle ops)."""
from __future__ import annotations

import math

from . import scalar as S
from .elementwise import Elementwise, exp

#: Taylor coefficients of erf(x) * sqrt(pi) / 2 = x - x^3/3 + x^5/10 - ... (used for |x| < 0.5)
_ERF_TAYLOR = (1.0, -1.0 / 3, 1.0 / 10, -1.0 / 42, 1.0 / 216, -1.0 / 1320)
#: Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7, used for |x| >= 0.5)
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


class Erf(Elementwise):
    """erf(a): a Taylor series below |a| = 0.5, Abramowitz-Stegun 7.1.26 above (float32-accurate)."""

    def element(self, a):
        x2 = a * a
        series = 0.0
        for c in reversed(_ERF_TAYLOR):
            series = series * x2 + c
        small = series * a * (2.0 / math.sqrt(math.pi))
        ax = S.abs(a)
        t = 1.0 / (1.0 + _AS_P * ax)
        poly = 0.0
        for c in reversed(_AS_A):
            poly = (poly + c) * t
        large = 1.0 - poly * S.exp(-x2)
        return S.where(ax < 0.5, small, S.where(a < 0.0, -large, large))

    def gradient(self, out_grad, node):
        a = node.inputs[0]
        return out_grad * exp(-(a * a)) * (2.0 / math.sqrt(math.pi))


def erf(a):
    return Erf()(a)


__all__ = ["Erf", "erf"]
