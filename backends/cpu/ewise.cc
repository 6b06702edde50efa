// Elementwise and scalar ops: argument checks and the split across threads; the loops are
// the dispatched kernels (kernels.h).
#include "common.h"

#include <cmath>

namespace needle {
namespace cpu {

namespace {

// Outputs this large (elements) are written with non-temporal stores: they do
// not fit in cache anyway, and streaming saves the read-for-ownership traffic.
// Buffers are 64-byte aligned and chunks start at multiples of 16 elements.
constexpr size_t STREAM_MIN = size_t(2) << 20;
// exp, log, tanh, sin, cos cost more per element: split them across threads sooner
constexpr int64_t TRANSCENDENTAL_THRESHOLD = 16384;

void binary(Binary op, const char* fn, const Array& a, const Array& b, Array& out) {
  check_size(fn, "b", b, static_cast<int64_t>(a.size));
  check_size(fn, "out", out, static_cast<int64_t>(a.size));
  const auto kernel = kernels().binary[op];
  const bool stream = a.size >= STREAM_MIN;
  parallel_range(static_cast<int64_t>(a.size), PAR_THRESHOLD, [&](int64_t s, int64_t e) {
    kernel(a.ptr + s, b.ptr + s, out.ptr + s, e - s, stream);
  });
}

void scalar(Binary op, const char* fn, const Array& a, float val, Array& out) {
  check_size(fn, "out", out, static_cast<int64_t>(a.size));
  const auto kernel = kernels().scalar[op];
  const bool stream = a.size >= STREAM_MIN;
  parallel_range(static_cast<int64_t>(a.size), PAR_THRESHOLD, [&](int64_t s, int64_t e) {
    kernel(a.ptr + s, val, out.ptr + s, e - s, stream);
  });
}

void unary(Unary op, const char* fn, const Array& a, Array& out, int64_t threshold = PAR_THRESHOLD) {
  check_size(fn, "out", out, static_cast<int64_t>(a.size));
  const auto kernel = kernels().unary[op];
  const bool stream = a.size >= STREAM_MIN;
  parallel_range(static_cast<int64_t>(a.size), threshold, [&](int64_t s, int64_t e) {
    kernel(a.ptr + s, out.ptr + s, e - s, stream);
  });
}

// out[i] = f(i) for a function with no vector kernel
template <class F>
void scalar_loop(const char* fn, const Array& a, Array& out, F f) {
  check_size(fn, "out", out, static_cast<int64_t>(a.size));
  parallel_range(static_cast<int64_t>(a.size), 4096, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) out.ptr[i] = f(i);
  });
}

void ewise_power(const Array& a, const Array& b, Array& out) {
  check_size("ewise_power", "b", b, static_cast<int64_t>(a.size));
  scalar_loop("ewise_power", a, out, [&](int64_t i) { return std::pow(a.ptr[i], b.ptr[i]); });
}

void scalar_power(const Array& a, float val, Array& out) {
  // fast paths like numpy's (exact for 1, 2; sqrt for 0.5; reciprocal for -1)
  const char* fn = "scalar_power";
  if (val == 1.0f) unary(COPY, fn, a, out);
  else if (val == 2.0f) unary(SQUARE, fn, a, out);
  else if (val == 0.5f) unary(SQRT, fn, a, out);
  else if (val == -1.0f) unary(RECIPROCAL, fn, a, out);
  else if (val == 0.0f) unary(ONES, fn, a, out);
  else scalar_loop(fn, a, out, [&](int64_t i) { return std::pow(a.ptr[i], val); });
}

void ewise_where(const Array& cond, const Array& a, const Array& b, Array& out) {
  check_size("ewise_where", "a", a, static_cast<int64_t>(cond.size));
  check_size("ewise_where", "b", b, static_cast<int64_t>(cond.size));
  check_size("ewise_where", "out", out, static_cast<int64_t>(cond.size));
  const auto kernel = kernels().where;
  parallel_range(static_cast<int64_t>(cond.size), PAR_THRESHOLD, [&](int64_t s, int64_t e) {
    kernel(cond.ptr + s, a.ptr + s, b.ptr + s, out.ptr + s, e - s);
  });
}

struct BinaryName {
  const char *ewise, *scalar;
  Binary op;
};
constexpr BinaryName BINARY[] = {{"ewise_add", "scalar_add", ADD},       {"ewise_mul", "scalar_mul", MUL},
                                 {"ewise_div", "scalar_div", DIV},       {"ewise_maximum", "scalar_maximum", MAXIMUM},
                                 {"ewise_eq", "scalar_eq", EQ},          {"ewise_ge", "scalar_ge", GE}};

struct UnaryName {
  const char* name;
  Unary op;
  int64_t threshold;
};
constexpr UnaryName UNARY[] = {{"ewise_neg", NEG, PAR_THRESHOLD},
                               {"ewise_sqrt", SQRT, PAR_THRESHOLD},
                               {"ewise_exp", EXP, TRANSCENDENTAL_THRESHOLD},
                               {"ewise_log", LOG, TRANSCENDENTAL_THRESHOLD},
                               {"ewise_tanh", TANH, TRANSCENDENTAL_THRESHOLD},
                               {"ewise_sin", SIN, TRANSCENDENTAL_THRESHOLD},
                               {"ewise_cos", COS, TRANSCENDENTAL_THRESHOLD}};

}  // namespace

void register_ewise(py::module_& m) {
  for (const BinaryName& b : BINARY) {
    m.def(b.ewise, [b](const Array& x, const Array& y, Array& out) { binary(b.op, b.ewise, x, y, out); },
          py::arg("a"), py::arg("b"), py::arg("out"));
    m.def(b.scalar, [b](const Array& x, float val, Array& out) { scalar(b.op, b.scalar, x, val, out); },
          py::arg("a"), py::arg("val"), py::arg("out"));
  }
  for (const UnaryName& u : UNARY)
    m.def(u.name, [u](const Array& x, Array& out) { unary(u.op, u.name, x, out, u.threshold); }, py::arg("a"),
          py::arg("out"));
  m.def("ewise_power", &ewise_power, py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("scalar_power", &scalar_power, py::arg("a"), py::arg("val"), py::arg("out"));
  m.def("ewise_where", &ewise_where, py::arg("cond"), py::arg("a"), py::arg("b"), py::arg("out"));
}

}  // namespace cpu
}  // namespace needle
