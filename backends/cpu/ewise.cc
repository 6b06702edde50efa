// Elementwise and scalar kernels (vectorised with AVX2, libmvec for exp/log/tanh,
// OpenMP across threads for large arrays).
#include "common.h"
#include "simd.h"

#include <cmath>

namespace needle {
namespace cpu {

namespace {

// Outputs this large (elements) are written with non-temporal stores: they do
// not fit in cache anyway, and streaming saves the read-for-ownership traffic.
// Buffers are 64-byte aligned and chunks start at multiples of 16 elements.
constexpr size_t STREAM_MIN = size_t(2) << 20;

// ---- generic drivers ------------------------------------------------------
// V: vector functor (on __m256), S: scalar functor.  All buffers must have equal size.

template <class V, class S>
void map_unary(const char* fn, const Array& a, Array& out, V vf, S sf, int64_t threshold = PAR_THRESHOLD) {
  check_size(fn, "out", out, static_cast<int64_t>(a.size));
  const float* pa = a.ptr;
  float* po = out.ptr;
  const bool stream = a.size >= STREAM_MIN;
  parallel_range(static_cast<int64_t>(a.size), threshold, [&](int64_t b, int64_t e) {
    int64_t i = b;
#ifdef NEEDLE_AVX2
    if (stream) {
      for (; i + 8 <= e; i += 8) _mm256_stream_ps(po + i, vf(_mm256_loadu_ps(pa + i)));
      _mm_sfence();
    }
    for (; i + 8 <= e; i += 8) _mm256_storeu_ps(po + i, vf(_mm256_loadu_ps(pa + i)));
    if (i < e) {
      __m256i mask = v_tail_mask(e - i);
      __m256 x = _mm256_maskload_ps(pa + i, mask);
      // pad inactive lanes with a harmless value (1.0)
      x = _mm256_blendv_ps(_mm256_set1_ps(1.0f), x, _mm256_castsi256_ps(mask));
      _mm256_maskstore_ps(po + i, mask, vf(x));
      i = e;
    }
#endif
    for (; i < e; ++i) po[i] = sf(pa[i]);
  });
}

template <class V, class S>
void map_binary(const char* fn, const Array& a, const Array& b, Array& out, V vf, S sf,
                int64_t threshold = PAR_THRESHOLD) {
  check_size(fn, "b", b, static_cast<int64_t>(a.size));
  check_size(fn, "out", out, static_cast<int64_t>(a.size));
  const float* pa = a.ptr;
  const float* pb = b.ptr;
  float* po = out.ptr;
  const bool stream = a.size >= STREAM_MIN;
  parallel_range(static_cast<int64_t>(a.size), threshold, [&](int64_t s, int64_t e) {
    int64_t i = s;
#ifdef NEEDLE_AVX2
    if (stream) {
      for (; i + 8 <= e; i += 8) _mm256_stream_ps(po + i, vf(_mm256_loadu_ps(pa + i), _mm256_loadu_ps(pb + i)));
      _mm_sfence();
    }
    for (; i + 8 <= e; i += 8) _mm256_storeu_ps(po + i, vf(_mm256_loadu_ps(pa + i), _mm256_loadu_ps(pb + i)));
#endif
    for (; i < e; ++i) po[i] = sf(pa[i], pb[i]);
  });
}

template <class S>
void map_binary_scalar_only(const char* fn, const Array& a, const Array& b, Array& out, S sf) {
  check_size(fn, "b", b, static_cast<int64_t>(a.size));
  check_size(fn, "out", out, static_cast<int64_t>(a.size));
  const float* pa = a.ptr;
  const float* pb = b.ptr;
  float* po = out.ptr;
  parallel_range(static_cast<int64_t>(a.size), 4096, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) po[i] = sf(pa[i], pb[i]);
  });
}

template <class S>
void map_unary_scalar_only(const char* fn, const Array& a, Array& out, S sf) {
  check_size(fn, "out", out, static_cast<int64_t>(a.size));
  const float* pa = a.ptr;
  float* po = out.ptr;
  parallel_range(static_cast<int64_t>(a.size), 4096, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) po[i] = sf(pa[i]);
  });
}

#ifdef NEEDLE_AVX2
#define VEC2(expr) [](__m256 x, __m256 y) { return expr; }
#define VECS(expr) [=](__m256 x) { return expr; }
#define VEC1(expr) [](__m256 x) { return expr; }
#else
#define VEC2(expr) 0
#define VECS(expr) 0
#define VEC1(expr) 0
#endif

// ---- binary ops -------------------------------------------------------------
#define DEF_BINARY(name, vexpr, sexpr)                                                   \
  void ewise_##name(const Array& a, const Array& b, Array& out) {                        \
    map_binary("ewise_" #name, a, b, out, VEC2(vexpr), [](float x, float y) { return sexpr; }); \
  }                                                                                      \
  void scalar_##name(const Array& a, float val, Array& out) {                            \
    MAKE_VS;                                                                             \
    map_unary("scalar_" #name, a, out, VECS_B(vexpr), [=](float x) { float y = val; return sexpr; }); \
  }

#ifdef NEEDLE_AVX2
#define MAKE_VS const __m256 vy = _mm256_set1_ps(val)
#define VECS_B(expr) [=](__m256 x) { __m256 y = vy; return expr; }
#else
#define MAKE_VS (void)0
#define VECS_B(expr) 0
#endif

DEF_BINARY(add, _mm256_add_ps(x, y), x + y)
DEF_BINARY(mul, _mm256_mul_ps(x, y), x* y)
DEF_BINARY(div, _mm256_div_ps(x, y), x / y)
DEF_BINARY(maximum, v_max_nan(x, y), s_max_nan(x, y))
DEF_BINARY(eq, _mm256_and_ps(_mm256_cmp_ps(x, y, _CMP_EQ_OQ), _mm256_set1_ps(1.0f)), x == y ? 1.0f : 0.0f)
DEF_BINARY(ge, _mm256_and_ps(_mm256_cmp_ps(x, y, _CMP_GE_OQ), _mm256_set1_ps(1.0f)), x >= y ? 1.0f : 0.0f)

// ---- powers -------------------------------------------------------------------
void ewise_power(const Array& a, const Array& b, Array& out) {
  map_binary_scalar_only("ewise_power", a, b, out, [](float x, float y) { return std::pow(x, y); });
}

void scalar_power(const Array& a, float val, Array& out) {
  // fast paths like numpy's (exact for 1, 2; sqrt for 0.5; reciprocal for -1)
  if (val == 1.0f) {
    map_unary("scalar_power", a, out, VEC1(x), [](float x) { return x; });
  } else if (val == 2.0f) {
    map_unary("scalar_power", a, out, VEC1(_mm256_mul_ps(x, x)), [](float x) { return x * x; });
  } else if (val == 0.5f) {
    map_unary("scalar_power", a, out, VEC1(_mm256_sqrt_ps(x)), [](float x) { return std::sqrt(x); });
  } else if (val == -1.0f) {
    map_unary("scalar_power", a, out, VEC1(_mm256_div_ps(_mm256_set1_ps(1.0f), x)), [](float x) { return 1.0f / x; });
  } else if (val == 0.0f) {
    map_unary("scalar_power", a, out, VEC1(_mm256_set1_ps(1.0f)), [](float) { return 1.0f; });
  } else {
    map_unary_scalar_only("scalar_power", a, out, [=](float x) { return std::pow(x, val); });
  }
}

// ---- unary ----------------------------------------------------------------------
#if defined(NEEDLE_AVX2) && defined(NEEDLE_HAVE_LIBMVEC)
void ewise_exp(const Array& a, Array& out) {
  map_unary("ewise_exp", a, out, [](__m256 x) { return _ZGVdN8v_expf(x); }, [](float x) { return std::exp(x); }, 16384);
}
void ewise_log(const Array& a, Array& out) {
  map_unary("ewise_log", a, out, [](__m256 x) { return _ZGVdN8v_logf(x); }, [](float x) { return std::log(x); }, 16384);
}
void ewise_tanh(const Array& a, Array& out) {
  map_unary("ewise_tanh", a, out, [](__m256 x) { return _ZGVdN8v_tanhf(x); }, [](float x) { return std::tanh(x); }, 16384);
}
#else
void ewise_exp(const Array& a, Array& out) {
  map_unary_scalar_only("ewise_exp", a, out, [](float x) { return std::exp(x); });
}
void ewise_log(const Array& a, Array& out) {
  map_unary_scalar_only("ewise_log", a, out, [](float x) { return std::log(x); });
}
void ewise_tanh(const Array& a, Array& out) {
  map_unary_scalar_only("ewise_tanh", a, out, [](float x) { return std::tanh(x); });
}
#endif

void ewise_sqrt(const Array& a, Array& out) {
  map_unary("ewise_sqrt", a, out, VEC1(_mm256_sqrt_ps(x)), [](float x) { return std::sqrt(x); });
}
void ewise_neg(const Array& a, Array& out) {
  map_unary("ewise_neg", a, out, VEC1(_mm256_xor_ps(x, _mm256_set1_ps(-0.0f))), [](float x) { return -x; });
}

// out = cond != 0 ? a : b
void ewise_where(const Array& cond, const Array& a, const Array& b, Array& out) {
  check_size("ewise_where", "a", a, static_cast<int64_t>(cond.size));
  check_size("ewise_where", "b", b, static_cast<int64_t>(cond.size));
  check_size("ewise_where", "out", out, static_cast<int64_t>(cond.size));
  const float *pc = cond.ptr, *pa = a.ptr, *pb = b.ptr;
  float* po = out.ptr;
  parallel_range(static_cast<int64_t>(cond.size), PAR_THRESHOLD, [&](int64_t s, int64_t e) {
    int64_t i = s;
#ifdef NEEDLE_AVX2
    const __m256 zero = _mm256_setzero_ps();
    for (; i + 8 <= e; i += 8) {
      // NaN condition counts as true (NaN != 0), like numpy's truthiness
      __m256 m = _mm256_cmp_ps(_mm256_loadu_ps(pc + i), zero, _CMP_NEQ_UQ);
      _mm256_storeu_ps(po + i, _mm256_blendv_ps(_mm256_loadu_ps(pb + i), _mm256_loadu_ps(pa + i), m));
    }
#endif
    for (; i < e; ++i) po[i] = (pc[i] != 0.0f) ? pa[i] : pb[i];
  });
}

}  // namespace

void register_ewise(py::module_& m) {
#define B(name)                                                                         \
  m.def("ewise_" #name, &ewise_##name, py::arg("a"), py::arg("b"), py::arg("out"));     \
  m.def("scalar_" #name, &scalar_##name, py::arg("a"), py::arg("val"), py::arg("out"));
  B(add) B(mul) B(div) B(maximum) B(eq) B(ge)
#undef B
  m.def("ewise_power", &ewise_power, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("scalar_power", &scalar_power, py::arg("a"), py::arg("val"), py::arg("out"));
  m.def("ewise_exp", &ewise_exp, py::arg("a"), py::arg("out"));
  m.def("ewise_log", &ewise_log, py::arg("a"), py::arg("out"));
  m.def("ewise_tanh", &ewise_tanh, py::arg("a"), py::arg("out"));
  m.def("ewise_sqrt", &ewise_sqrt, py::arg("a"), py::arg("out"));
  m.def("ewise_neg", &ewise_neg, py::arg("a"), py::arg("out"));
  m.def("ewise_where", &ewise_where, py::arg("cond"), py::arg("a"), py::arg("b"), py::arg("out"));
}

}  // namespace cpu
}  // namespace needle
