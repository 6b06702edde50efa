// The kernel table of one instruction set: a translation unit defines NEEDLE_ISA (its
// namespace: baseline, avx2 or avx512) and includes this file; setup.py compiles it with
// that instruction set's flags.  Everything here has internal linkage but the table, and
// nothing from a shared header is instantiated here (no pybind11, no std templates), so
// no function built for a wider instruction set can stand in for a baseline one.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels.h"
#include "simd.h"

namespace needle {
namespace cpu {
namespace NEEDLE_ISA {
namespace {

#include "kernels_ewise.inc"
#include "kernels_reduce.inc"
#include "kernels_gemm.inc"

}  // namespace

extern const Kernels table = {
    {ewise_add, ewise_mul, ewise_div, ewise_maximum, ewise_eq, ewise_ge},
    {scalar_add, scalar_mul, scalar_div, scalar_maximum, scalar_eq, scalar_ge},
    {unary_neg, unary_sqrt, unary_exp, unary_log, unary_tanh, unary_sin, unary_cos, unary_square, unary_reciprocal, unary_copy,
     unary_ones},
    where,
    sum,
    max,
    combine_rows<false>,
    combine_rows<true>,
    small_gemm,
    conv_gemm,
    tiled_row,
};

}  // namespace NEEDLE_ISA
}  // namespace cpu
}  // namespace needle
