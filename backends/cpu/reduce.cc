// Reductions over consecutive groups (reduce_sum, reduce_max, reduce_argmax) and over the
// middle axis (reduce_sum_axis, reduce_max_axis): argument checks and the split across
// threads; the loops are the dispatched kernels (kernels.h).
#include "common.h"
#include "simd.h"

#include <algorithm>

namespace needle {
namespace cpu {

namespace {

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
  const auto sum = kernels().sum;
  reduce_groups(a.ptr, out.ptr, groups, n, [sum](const float* p, int64_t k) { return sum(p, k); },
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
  const auto max = kernels().max;
  reduce_groups(a.ptr, out.ptr, groups, n, [max](const float* p, int64_t k) { return double(max(p, k)); },
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
  const int64_t groups = check_reduce_axis(fn, a, out, outer, n, inner);
  if (n == 0) {
    if (IS_MAX && groups > 0) value_error(std::string(fn) + ": zero-size reduction has no identity");
    for (int64_t g = 0; g < groups; ++g) out.ptr[g] = 0.0f;
    return;
  }
  const auto combine = IS_MAX ? kernels().max_rows : kernels().sum_rows;
  // work items: (o, inner chunk of 1024)
  const int64_t JC = 1024;
  const int64_t jchunks = (inner + JC - 1) / JC;
  auto item = [&](int64_t it) {
    const int64_t o = it / jchunks, j0 = (it % jchunks) * JC, j1 = std::min(inner, j0 + JC);
    combine(a.ptr + o * n * inner, out.ptr + o * inner, n, inner, j0, j1);
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
