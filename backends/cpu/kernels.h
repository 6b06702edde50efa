// The vector kernels, compiled once per instruction set and picked at import by what the
// CPU has (dispatch.cc): kernels_baseline.cc runs on any CPU the module is built for
// (x86-64-v2 on x86), kernels_avx2.cc needs AVX2 + FMA, kernels_avx512.cc AVX-512
// (F, VL, BW, DQ).  Each fills one table of this type (kernels_table.h); the kernels are
// plain loops over pointers: argument checks and the split across threads stay in the
// baseline code that calls them.
#pragma once

#include <cstdint>

namespace needle {
namespace cpu {

constexpr int TILE = 8;  // tile size of matmul_tiled's layout
// small_gemm streams B once, row by row, for products of at most this many rows (kernels_gemm.inc)
constexpr int64_t SKINNY_ROWS = 8;

enum Binary { ADD, MUL, DIV, MAXIMUM, EQ, GE, N_BINARY };
// SQUARE .. ONES: scalar_power's fast paths (x**2, x**-1, x**1, x**0)
enum Unary { NEG, SQRT, EXP, LOG, TANH, SIN, COS, SQUARE, RECIPROCAL, COPY, ONES, N_UNARY };

struct Kernels {
  // out[i] = op(a[i], b[i]) / op(a[i], val) / op(a[i]) for i < n; `stream`: write `out` with
  // non-temporal stores (then it must be 32-byte aligned)
  void (*binary[N_BINARY])(const float* a, const float* b, float* out, int64_t n, bool stream);
  void (*scalar[N_BINARY])(const float* a, float val, float* out, int64_t n, bool stream);
  void (*unary[N_UNARY])(const float* a, float* out, int64_t n, bool stream);
  // out[i] = cond[i] != 0 ? a[i] : b[i] (a NaN condition is true)
  void (*where)(const float* cond, const float* a, const float* b, float* out, int64_t n);
  // sum of p[0..n) (float blocks accumulated in double); NaN-propagating max of p[0..n), n >= 1
  double (*sum)(const float* p, int64_t n);
  float (*max)(const float* p, int64_t n);
  // dst[j] = sum / max over k < n of src[k * inner + j], for j0 <= j < j1 (n >= 1)
  void (*sum_rows)(const float* src, float* dst, int64_t n, int64_t inner, int64_t j0, int64_t j1);
  void (*max_rows)(const float* src, float* dst, int64_t n, int64_t inner, int64_t j0, int64_t j1);
  // needle's small_gemm: C[m, n] (row stride ldc) = op(A) @ op(B), or += with `accumulate`,
  // on the calling thread (kernels_gemm.inc)
  void (*small_gemm)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                     const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate);
  // a convolution's GEMM over its patches read in place (kernels_gemm.inc): C[m, n] = the
  // sum over taps t and channels q < ci of x[off[r] + toff[t] + q] * w[(t * ci + q) * ldw + j]
  void (*conv_gemm)(int64_t m, int64_t n, int64_t taps, int64_t ci, const float* x, const int64_t* off,
                    const int64_t* toff, const float* w, int64_t ldw, float* c, int64_t ldc);
  // one row of output tiles of the course's tiled-layout matmul: a (nt, T, T) tiles of A's
  // row, b (nt, pt, T, T), out (pt, T, T)
  void (*tiled_row)(const float* a, const float* b, float* out, int64_t nt, int64_t pt);
};

// the table of each instruction set built (kernels_<isa>.cc)
namespace baseline { extern const Kernels table; }
namespace avx2 { extern const Kernels table; }
namespace avx512 { extern const Kernels table; }

// the table picked at import (dispatch.cc)
const Kernels& kernels();

}  // namespace cpu
}  // namespace needle
