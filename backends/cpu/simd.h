// Small AVX2 helpers shared by the elementwise and reduction kernels.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#define NEEDLE_AVX2 1
#include <immintrin.h>

#ifdef NEEDLE_HAVE_LIBMVEC
// glibc libmvec AVX2 variants (link with -lmvec).
extern "C" {
__m256 _ZGVdN8v_expf(__m256);
__m256 _ZGVdN8v_logf(__m256);
__m256 _ZGVdN8v_tanhf(__m256);
__m256 _ZGVdN8v_sinf(__m256);
__m256 _ZGVdN8v_cosf(__m256);
}
#endif

namespace needle {
namespace cpu {

// NaN-propagating maximum (like numpy.maximum).
static inline __m256 v_max_nan(__m256 a, __m256 b) {
  __m256 m = _mm256_max_ps(a, b);  // returns b if either is NaN
  __m256 a_nan = _mm256_cmp_ps(a, a, _CMP_UNORD_Q);
  return _mm256_blendv_ps(m, a, a_nan);
}

// mask of the first n (0..8) lanes
static inline __m256i v_tail_mask(int64_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), idx);
}

static inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  lo = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, lo);
  lo = _mm_add_ss(lo, sh);
  return _mm_cvtss_f32(lo);
}

}  // namespace cpu
}  // namespace needle
#endif

namespace needle {
namespace cpu {

static inline float s_max_nan(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return a > b ? a : b;
}

}  // namespace cpu
}  // namespace needle
