// needle's own single-threaded SGEMM for products with few columns (the MLP, attention and
// small-channel conv shapes): 6x16 AVX2 register tiles that broadcast A where it lies (either
// orientation) against a 16-column strip of B.  A strip is read in place; B^T and the
// narrower edge strip are packed first, one at a time (16 floats a row, zero padded, so
// edges need masks only at C).  Nothing is packed ahead of the tiles, so splitting a product
// across threads by rows repeats little work, unlike the BLAS's full packing.
#include "common.h"
#include "simd.h"

#include <algorithm>

namespace needle {
namespace cpu {

namespace {

constexpr int64_t KC = 256;  // rows of B per pass: their packed 16-column strip (16 KiB) stays in L1

#ifdef NEEDLE_AVX2
// strip[p, c] = op(B)[p0 + p, j + c] for p < kc, c < 16 (zero from column w on);
// op(B)[p, q] is b[q * ldb + p] when trans_b (B stored transposed), else b[p * ldb + q]
void pack_strip(bool trans_b, const float* b, int64_t ldb, int64_t p0, int64_t kc, int64_t j, int w, float* strip) {
  if (trans_b) {
    for (int q = 0; q < 16; ++q)
      if (q < w) {
        const float* col = b + (j + q) * ldb + p0;
        for (int64_t p = 0; p < kc; ++p) strip[16 * p + q] = col[p];
      } else {
        for (int64_t p = 0; p < kc; ++p) strip[16 * p + q] = 0.0f;
      }
    return;
  }
  for (int64_t p = 0; p < kc; ++p) {
    const float* row = b + (p0 + p) * ldb + j;
    for (int q = 0; q < 16; ++q) strip[16 * p + q] = q < w ? row[q] : 0.0f;
  }
}

// C[0:R, 0:16) (=|+=) A(0:R, 0:kc) @ strip[0:kc, 0:16) (row stride ls): two vectors per row
// of the strip (one when !TWO); with MASK, C's columns past the masks are neither read nor
// written.  A(r, p) is a[p * lda + r] when TA (A stored transposed), else a[r * lda + p].
template <int R, bool TA, bool MASK, bool TWO>
void tile(int64_t kc, const float* a, int64_t lda, const float* strip, int64_t ls, float* c, int64_t ldc,
          __m256i m0, __m256i m1, bool accumulate) {
  __m256 c0[R], c1[R];
  for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_loadu_ps(strip + ls * p);
    const __m256 b1 = TWO ? _mm256_loadu_ps(strip + ls * p + 8) : b0;
    for (int r = 0; r < R; ++r) {
      const __m256 x = _mm256_broadcast_ss(TA ? a + p * lda + r : a + r * lda + p);
      c0[r] = _mm256_fmadd_ps(x, b0, c0[r]);
      if (TWO) c1[r] = _mm256_fmadd_ps(x, b1, c1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* cr = c + r * ldc;
    if (MASK) {
      if (accumulate) c0[r] = _mm256_add_ps(c0[r], _mm256_maskload_ps(cr, m0));
      _mm256_maskstore_ps(cr, m0, c0[r]);
      if (TWO) {
        if (accumulate) c1[r] = _mm256_add_ps(c1[r], _mm256_maskload_ps(cr + 8, m1));
        _mm256_maskstore_ps(cr + 8, m1, c1[r]);
      }
    } else {
      if (accumulate) c0[r] = _mm256_add_ps(c0[r], _mm256_loadu_ps(cr));
      _mm256_storeu_ps(cr, c0[r]);
      if (TWO) {
        if (accumulate) c1[r] = _mm256_add_ps(c1[r], _mm256_loadu_ps(cr + 8));
        _mm256_storeu_ps(cr + 8, c1[r]);
      }
    }
  }
}

// all rows (6 at a time) against one packed strip, the tile variant picked by its width
template <bool TA, bool MASK, bool TWO>
void rows(int64_t m, int64_t kc, const float* a, int64_t lda, const float* strip, int64_t ls, float* c,
          int64_t ldc, __m256i m0, __m256i m1, bool accumulate) {
  int64_t i = 0;
  for (; i + 6 <= m; i += 6)
    tile<6, TA, MASK, TWO>(kc, TA ? a + i : a + i * lda, lda, strip, ls, c + i * ldc, ldc, m0, m1, accumulate);
  const float* ai = TA ? a + i : a + i * lda;
  switch (m - i) {
    case 5: tile<5, TA, MASK, TWO>(kc, ai, lda, strip, ls, c + i * ldc, ldc, m0, m1, accumulate); break;
    case 4: tile<4, TA, MASK, TWO>(kc, ai, lda, strip, ls, c + i * ldc, ldc, m0, m1, accumulate); break;
    case 3: tile<3, TA, MASK, TWO>(kc, ai, lda, strip, ls, c + i * ldc, ldc, m0, m1, accumulate); break;
    case 2: tile<2, TA, MASK, TWO>(kc, ai, lda, strip, ls, c + i * ldc, ldc, m0, m1, accumulate); break;
    case 1: tile<1, TA, MASK, TWO>(kc, ai, lda, strip, ls, c + i * ldc, ldc, m0, m1, accumulate); break;
    default: break;
  }
}

template <bool TA>
void tiles(bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
           float* c, int64_t ldc) {
  alignas(64) static thread_local float packed[KC * 16];
  const int64_t step = (k + (k + KC - 1) / KC - 1) / ((k + KC - 1) / KC);  // equal passes of at most KC
  for (int64_t p0 = 0; p0 < k; p0 += step) {
    const int64_t kc = std::min(step, k - p0);
    const bool acc = p0 > 0;
    const float* ap = TA ? a + p0 * lda : a + p0;
    for (int64_t j = 0; j < n; j += 16) {
      const int w = static_cast<int>(std::min<int64_t>(16, n - j));
      const float* strip = b + p0 * ldb + j;
      int64_t ls = ldb;
      if (trans_b || w < 16) {
        pack_strip(trans_b, b, ldb, p0, kc, j, w, packed);
        strip = packed;
        ls = 16;
      }
      float* cj = c + j;
      const __m256i m0 = v_tail_mask(std::min(w, 8)), m1 = v_tail_mask(std::max(w - 8, 0));
      if (w == 16) rows<TA, false, true>(m, kc, ap, lda, strip, ls, cj, ldc, m0, m1, acc);
      else if (w > 8) rows<TA, true, true>(m, kc, ap, lda, strip, ls, cj, ldc, m0, m1, acc);
      else if (w == 8) rows<TA, false, false>(m, kc, ap, lda, strip, ls, cj, ldc, m0, m1, acc);
      else rows<TA, true, false>(m, kc, ap, lda, strip, ls, cj, ldc, m0, m1, acc);
    }
  }
}
#endif

}  // namespace

void small_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                const float* b, int64_t ldb, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
#ifdef NEEDLE_AVX2
  if (trans_a) tiles<true>(trans_b, m, n, k, a, lda, b, ldb, c, ldc);
  else tiles<false>(trans_b, m, n, k, a, lda, b, ldb, c, ldc);
#else
  for (int64_t i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    std::fill(ci, ci + n, 0.0f);
    for (int64_t p = 0; p < k; ++p) {
      const float x = trans_a ? a[p * lda + i] : a[i * lda + p];
      for (int64_t j = 0; j < n; ++j) ci[j] += x * (trans_b ? b[j * ldb + p] : b[p * ldb + j]);
    }
  }
#endif
}

}  // namespace cpu
}  // namespace needle
