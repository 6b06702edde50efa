// Reductions over consecutive groups: reduce_sum, reduce_max, reduce_argmax.
#include "common.h"
#include "simd.h"

#include <cmath>
#include <algorithm>
#include <limits>

namespace needle {
namespace cpu {

namespace {

constexpr int64_t SUM_BLOCK = 4096;

// float sum of a short block with 4 vector accumulators
inline float sum_block(const float* p, int64_t n) {
  int64_t i = 0;
  float s = 0.0f;
#ifdef NEEDLE_AVX2
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
  s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
  for (; i < n; ++i) s += p[i];
  return s;
}

// sum with float blocks accumulated in double (accurate and fast)
inline double sum_range(const float* p, int64_t n) {
  if (n <= SUM_BLOCK) return sum_block(p, n);
  double total = 0.0;
  for (int64_t i = 0; i < n; i += SUM_BLOCK) total += sum_block(p + i, std::min(SUM_BLOCK, n - i));
  return total;
}

// NaN-propagating max of p[0..n), n >= 1
inline float max_range(const float* p, int64_t n) {
  int64_t i = 0;
  float m = p[0];
#ifdef NEEDLE_AVX2
  if (n >= 8) {
    __m256 a0 = _mm256_loadu_ps(p), a1 = a0, a2 = a0, a3 = a0;
    __m256 nan0 = _mm256_setzero_ps(), nan1 = nan0;
    i = 8;
    for (; i + 32 <= n; i += 32) {
      __m256 x0 = _mm256_loadu_ps(p + i), x1 = _mm256_loadu_ps(p + i + 8);
      __m256 x2 = _mm256_loadu_ps(p + i + 16), x3 = _mm256_loadu_ps(p + i + 24);
      a0 = _mm256_max_ps(a0, x0);
      a1 = _mm256_max_ps(a1, x1);
      a2 = _mm256_max_ps(a2, x2);
      a3 = _mm256_max_ps(a3, x3);
      nan0 = _mm256_or_ps(nan0, _mm256_cmp_ps(x0, x1, _CMP_UNORD_Q));
      nan1 = _mm256_or_ps(nan1, _mm256_cmp_ps(x2, x3, _CMP_UNORD_Q));
    }
    for (; i + 8 <= n; i += 8) {
      __m256 x = _mm256_loadu_ps(p + i);
      a0 = _mm256_max_ps(a0, x);
      nan0 = _mm256_or_ps(nan0, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    }
    // first vector was loaded into the accumulators directly; check it too
    __m256 first = _mm256_loadu_ps(p);
    nan0 = _mm256_or_ps(nan0, _mm256_cmp_ps(first, first, _CMP_UNORD_Q));
    if (_mm256_movemask_ps(_mm256_or_ps(nan0, nan1))) return std::numeric_limits<float>::quiet_NaN();
    a0 = _mm256_max_ps(_mm256_max_ps(a0, a1), _mm256_max_ps(a2, a3));
    alignas(32) float buf[8];
    _mm256_store_ps(buf, a0);
    m = buf[0];
    for (int k = 1; k < 8; ++k) m = buf[k] > m ? buf[k] : m;
  }
#endif
  for (; i < n; ++i) m = s_max_nan(m, p[i]);
  return m;
}

inline float argmax_range(const float* p, int64_t n) {
  int64_t best = 0;
  float m = p[0];
  if (m != m) return 0.0f;
  for (int64_t i = 1; i < n; ++i) {
    float x = p[i];
    if (x > m) {
      m = x;
      best = i;
    } else if (x != x) {
      return static_cast<float>(i);
    }
  }
  return static_cast<float>(best);
}

// Check sizes; returns number of groups.
int64_t check_reduce(const char* fn, const Array& a, const Array& out, int64_t n) {
  if (n < 0) value_error(std::string(fn) + ": negative reduction size " + std::to_string(n));
  int64_t groups = static_cast<int64_t>(out.size);
  if (n == 0) {
    if (a.size != 0)
      value_error(std::string(fn) + ": reduction size 0 with a non-empty input of size " + std::to_string(a.size));
  } else {
    check_size(fn, "a", a, checked_mul(fn, groups, n));
  }
  return groups;
}

// Run op over every group, parallelising over groups or, for few large groups,
// within each group (combine merges the per-chunk results in order).
template <class R, class C>
void reduce_groups(const float* pa, float* po, int64_t groups, int64_t n, R range_op, C combine) {
  int nt = pool_num_threads();
  int64_t total = groups * n;
  if (nt == 1 || total < PAR_THRESHOLD) {
    for (int64_t g = 0; g < groups; ++g) po[g] = static_cast<float>(range_op(pa + g * n, n));
    return;
  }
  if (groups >= 4 * nt) {
    parallel_range(groups, 0, [&](int64_t b, int64_t e) {
      for (int64_t g = b; g < e; ++g) po[g] = static_cast<float>(range_op(pa + g * n, n));
    }, (16384 + n - 1) / n);
    return;
  }
  const int64_t chunk = std::max<int64_t>(16384, ((n + nt * 8 - 1) / (nt * 8) + 15) & ~int64_t(15));
  const int64_t n_chunks = (n + chunk - 1) / chunk;
  std::vector<double> partial(n_chunks);
  for (int64_t g = 0; g < groups; ++g) {
    const float* p = pa + g * n;
    parallel_chunks(n_chunks, [&](int64_t c) {
      int64_t b = c * chunk, e = std::min(n, b + chunk);
      partial[c] = range_op(p + b, e - b);
    });
    po[g] = combine(partial);
  }
}

void reduce_sum(const Array& a, Array& out, int64_t n) {
  int64_t groups = check_reduce("reduce_sum", a, out, n);
  if (n == 0) {
    for (int64_t g = 0; g < groups; ++g) out.ptr[g] = 0.0f;
    return;
  }
  reduce_groups(a.ptr, out.ptr, groups, n, [](const float* p, int64_t k) { return sum_range(p, k); },
                [](const std::vector<double>& part) {
                  double s = 0.0;
                  for (double v : part) s += v;
                  return static_cast<float>(s);
                });
}

void reduce_max(const Array& a, Array& out, int64_t n) {
  int64_t groups = check_reduce("reduce_max", a, out, n);
  if (n == 0) {
    if (groups > 0) value_error("reduce_max: zero-size reduction has no identity");
    return;
  }
  reduce_groups(a.ptr, out.ptr, groups, n, [](const float* p, int64_t k) { return double(max_range(p, k)); },
                [](const std::vector<double>& part) {
                  float m = static_cast<float>(part[0]);
                  for (double v : part) m = s_max_nan(m, static_cast<float>(v));
                  return m;
                });
}

void reduce_argmax(const Array& a, Array& out, int64_t n) {
  int64_t groups = check_reduce("reduce_argmax", a, out, n);
  if (n == 0) {
    if (groups > 0) value_error("reduce_argmax: attempt to get argmax of an empty sequence");
    return;
  }
  const float* pa = a.ptr;
  float* po = out.ptr;
  parallel_range(groups, PAR_THRESHOLD / n + 1, [&](int64_t b, int64_t e) {
    for (int64_t g = b; g < e; ++g) po[g] = argmax_range(pa + g * n, n);
  }, 16384 / n + 1);
}

// out[o, j] = reduce_k a[o, k, j] for a compact (outer, n, inner) array:
// rows are combined elementwise, so memory is read contiguously.
template <bool IS_MAX>
void reduce_axis(const char* fn, const Array& a, Array& out, int64_t outer, int64_t n, int64_t inner) {
  check_dim(fn, "outer", outer);
  check_dim(fn, "n", n);
  check_dim(fn, "inner", inner);
  int64_t groups = checked_mul(fn, outer, inner);
  check_size(fn, "out", out, groups);
  check_size(fn, "a", a, checked_mul(fn, groups, n));
  if (n == 0) {
    if (IS_MAX && groups > 0) value_error(std::string(fn) + ": zero-size reduction has no identity");
    for (int64_t g = 0; g < groups; ++g) out.ptr[g] = 0.0f;
    return;
  }
  const float* pa = a.ptr;
  float* po = out.ptr;
  // work items: (o, inner chunk of 1024)
  const int64_t JC = 1024;
  const int64_t jchunks = (inner + JC - 1) / JC;
  auto item = [&](int64_t it) {
    int64_t o = it / jchunks, j0 = (it % jchunks) * JC, j1 = std::min(inner, j0 + JC);
    float* dst = po + o * inner;
    const float* src = pa + o * n * inner;
    for (int64_t j = j0; j < j1; ++j) dst[j] = src[j];
    int64_t k = 1;
#ifdef NEEDLE_AVX2
    // four rows per pass over dst: a quarter of the accumulator loads and stores
    for (; k + 4 <= n; k += 4) {
      const float* r0 = src + k * inner;
      const float* r1 = r0 + inner;
      const float* r2 = r1 + inner;
      const float* r3 = r2 + inner;
      int64_t j = j0;
      for (; j + 8 <= j1; j += 8) {
        __m256 acc = _mm256_loadu_ps(dst + j);
        __m256 x0 = _mm256_loadu_ps(r0 + j), x1 = _mm256_loadu_ps(r1 + j);
        __m256 x2 = _mm256_loadu_ps(r2 + j), x3 = _mm256_loadu_ps(r3 + j);
        if (IS_MAX) {
          acc = v_max_nan(v_max_nan(acc, x0), x1);
          acc = v_max_nan(v_max_nan(acc, x2), x3);
        } else {
          acc = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(_mm256_add_ps(acc, x0), x1), x2), x3);
        }
        _mm256_storeu_ps(dst + j, acc);
      }
      for (; j < j1; ++j) {
        float v = dst[j];
        v = IS_MAX ? s_max_nan(s_max_nan(v, r0[j]), r1[j]) : v + r0[j] + r1[j];
        v = IS_MAX ? s_max_nan(s_max_nan(v, r2[j]), r3[j]) : v + r2[j] + r3[j];
        dst[j] = v;
      }
    }
#endif
    for (; k < n; ++k) {
      const float* row = src + k * inner;
      int64_t j = j0;
#ifdef NEEDLE_AVX2
      for (; j + 8 <= j1; j += 8) {
        __m256 x = _mm256_loadu_ps(row + j), acc = _mm256_loadu_ps(dst + j);
        _mm256_storeu_ps(dst + j, IS_MAX ? v_max_nan(acc, x) : _mm256_add_ps(acc, x));
      }
#endif
      for (; j < j1; ++j) dst[j] = IS_MAX ? s_max_nan(dst[j], row[j]) : dst[j] + row[j];
    }
  };
  int64_t items = outer * jchunks;
  if (items > 1 && groups * n >= PAR_THRESHOLD) {
    parallel_range(items, 0, [&](int64_t b, int64_t e) {
      for (int64_t it = b; it < e; ++it) item(it);
    }, 1);
  } else {
    for (int64_t it = 0; it < items; ++it) item(it);
  }
}

void reduce_sum_axis(const Array& a, Array& out, int64_t outer, int64_t n, int64_t inner) {
  reduce_axis<false>("reduce_sum_axis", a, out, outer, n, inner);
}
void reduce_max_axis(const Array& a, Array& out, int64_t outer, int64_t n, int64_t inner) {
  reduce_axis<true>("reduce_max_axis", a, out, outer, n, inner);
}

}  // namespace

void register_reduce(py::module_& m) {
  m.def("reduce_sum", &reduce_sum, py::arg("a"), py::arg("out"), py::arg("n"));
  m.def("reduce_max", &reduce_max, py::arg("a"), py::arg("out"), py::arg("n"));
  m.def("reduce_sum_axis", &reduce_sum_axis, py::arg("a"), py::arg("out"), py::arg("outer"), py::arg("n"),
        py::arg("inner"));
  m.def("reduce_max_axis", &reduce_max_axis, py::arg("a"), py::arg("out"), py::arg("outer"), py::arg("n"),
        py::arg("inner"));
  m.def("reduce_argmax", &reduce_argmax, py::arg("a"), py::arg("out"), py::arg("n"));
}

}  // namespace cpu
}  // namespace needle
