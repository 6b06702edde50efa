// Argument checks shared by the cpu and cuda backends (backends/cpu, backends/cuda):
// every entry point validates sizes, shapes, strides and offsets against its buffers
// before touching memory, and raises ValueError / IndexError with the same message on
// every device.  `Buf` is a backend's Array type (a `size` in elements).
#pragma once

#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace needle {

[[noreturn]] inline void value_error(const std::string& msg) { throw pybind11::value_error(msg); }
[[noreturn]] inline void index_error(const std::string& msg) { throw pybind11::index_error(msg); }

inline std::string vec_str(const std::vector<int64_t>& v) {
  std::string s = "(";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);
  }
  if (v.size() == 1) s += ",";
  return s + ")";
}

// a * b for sizes, raising on overflow (or past 2**48 elements)
inline int64_t checked_mul(const char* fn, int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r) || r > (int64_t(1) << 48)) value_error(std::string(fn) + ": size overflow");
  return r;
}

// A dimension argument in [0, 2**40].
inline void check_dim(const char* fn, const char* what, int64_t v) {
  if (v < 0 || v > (int64_t(1) << 40)) value_error(std::string(fn) + ": invalid " + what + " = " + std::to_string(v));
}

// Buffer `a` holds exactly `expected` elements.
template <class Buf>
void check_size(const char* fn, const char* what, const Buf& a, int64_t expected) {
  if (expected < 0 || a.size != static_cast<size_t>(expected))
    value_error(std::string(fn) + ": " + what + " has size " + std::to_string(a.size) + ", expected " +
                std::to_string(expected));
}

// A strided view (shape, strides in elements, offset) of a buffer of `buf_size` elements:
// every reachable index lies in [0, buf_size).  Strides may be negative (flip) or zero
// (broadcast).  Returns the number of elements of the view.
inline int64_t check_view(const char* fn, size_t buf_size, const std::vector<int64_t>& shape,
                          const std::vector<int64_t>& strides, int64_t offset) {
  if (shape.size() != strides.size())
    value_error(std::string(fn) + ": shape " + vec_str(shape) + " and strides " + vec_str(strides) +
                " have different lengths");
  if (offset < 0) value_error(std::string(fn) + ": negative offset " + std::to_string(offset));
  int64_t numel = 1;
  for (int64_t s : shape) {
    if (s < 0) value_error(std::string(fn) + ": negative dimension in shape " + vec_str(shape));
    numel = checked_mul(fn, numel, s);
  }
  if (numel == 0) return 0;
  int64_t lo = offset, hi = offset;
  for (size_t i = 0; i < shape.size(); ++i) {
    const int64_t st = strides[i];
    if (st > (int64_t(1) << 40) || st < -(int64_t(1) << 40))
      value_error(std::string(fn) + ": invalid stride in " + vec_str(strides));
    const int64_t ext = checked_mul(fn, shape[i] - 1, st < 0 ? -st : st);
    if (st < 0) lo -= ext;
    else hi += ext;
  }
  if (lo < 0 || hi >= static_cast<int64_t>(buf_size))
    index_error(std::string(fn) + ": view (shape " + vec_str(shape) + ", strides " + vec_str(strides) +
                ", offset " + std::to_string(offset) + ") reaches elements [" + std::to_string(lo) + ", " +
                std::to_string(hi) + "] outside the buffer of size " + std::to_string(buf_size));
  return numel;
}

// A reduction of consecutive groups of n elements of `a` into `out`; returns the groups.
template <class Buf>
int64_t check_reduce(const char* fn, const Buf& a, const Buf& out, int64_t n) {
  if (n < 0) value_error(std::string(fn) + ": negative reduction size " + std::to_string(n));
  const int64_t groups = static_cast<int64_t>(out.size);
  if (n == 0) {
    if (a.size != 0)
      value_error(std::string(fn) + ": reduction size 0 with a non-empty input of size " + std::to_string(a.size));
  } else {
    check_size(fn, "a", a, checked_mul(fn, groups, n));
  }
  return groups;
}

// A reduction over the middle axis of a compact (outer, n, inner) array; returns the groups.
template <class Buf>
int64_t check_reduce_axis(const char* fn, const Buf& a, const Buf& out, int64_t outer, int64_t n, int64_t inner) {
  check_dim(fn, "outer", outer);
  check_dim(fn, "n", n);
  check_dim(fn, "inner", inner);
  const int64_t groups = checked_mul(fn, outer, inner);
  check_size(fn, "out", out, groups);
  check_size(fn, "a", a, checked_mul(fn, groups, n));
  return groups;
}

// (m, n) @ (n, p) dimensions, each a 32-bit int (what BLAS and the CUDA grid take).
inline void check_matmul_dims(const char* fn, int64_t m, int64_t n, int64_t p) {
  check_dim(fn, "m", m);
  check_dim(fn, "n", n);
  check_dim(fn, "p", p);
  const int64_t lim = (int64_t(1) << 31) - 1;
  if (m > lim || n > lim || p > lim)
    value_error(std::string(fn) + ": dimension too large (at most 2**31 - 1): " + vec_str({m, n, p}));
}

// Compact operands of an (m, n) @ (n, p) product; `tile` > 1: every dimension a multiple of it.
template <class Buf>
void check_matmul(const char* fn, const Buf& a, const Buf& b, const Buf& out, int64_t m, int64_t n, int64_t p,
                  int64_t tile = 1) {
  check_matmul_dims(fn, m, n, p);
  if (m % tile || n % tile || p % tile)
    value_error(std::string(fn) + ": dimensions (" + std::to_string(m) + ", " + std::to_string(n) + ", " +
                std::to_string(p) + ") must be multiples of the tile size " + std::to_string(tile));
  check_size(fn, "a", a, checked_mul(fn, m, n));
  check_size(fn, "b", b, checked_mul(fn, n, p));
  check_size(fn, "out", out, checked_mul(fn, m, p));
  if (&out == &a || &out == &b) value_error(std::string(fn) + ": out must not alias an input");
}

// `batch` products of (m, n) @ (n, p), operand i at i * its batch stride (0 broadcasts).
template <class Buf>
void check_matmul_batched(const char* fn, const Buf& a, const Buf& b, const Buf& out, int64_t batch, int64_t m,
                          int64_t n, int64_t p, int64_t a_batch_stride, int64_t b_batch_stride) {
  check_matmul_dims(fn, m, n, p);
  check_dim(fn, "batch", batch);
  check_dim(fn, "a_batch_stride", a_batch_stride);
  check_dim(fn, "b_batch_stride", b_batch_stride);
  check_size(fn, "out", out, checked_mul(fn, batch, checked_mul(fn, m, p)));
  if (&out == &a || &out == &b) value_error(std::string(fn) + ": out must not alias an input");
  if (batch == 0) return;
  const int64_t a_need = checked_mul(fn, batch - 1, a_batch_stride) + checked_mul(fn, m, n);
  const int64_t b_need = checked_mul(fn, batch - 1, b_batch_stride) + checked_mul(fn, n, p);
  if (static_cast<int64_t>(a.size) < a_need)
    value_error(std::string(fn) + ": a has size " + std::to_string(a.size) + ", needs at least " +
                std::to_string(a_need));
  if (static_cast<int64_t>(b.size) < b_need)
    value_error(std::string(fn) + ": b has size " + std::to_string(b.size) + ", needs at least " +
                std::to_string(b_need));
}

// Rows of a (n_rows, row_size) table picked by the k float indices idx[0..k) (host memory):
// sizes checked (`rows` is the buffer with k rows, `table` the one with n_rows), then every
// index converted to an int row, IndexError for a non-integral, NaN or out-of-range one.
template <class Buf>
std::vector<int64_t> checked_rows(const char* fn, const float* idx, const Buf& table, const char* table_name,
                                  const Buf& rows_buf, const char* rows_name, int64_t k, int64_t n_rows,
                                  int64_t row_size) {
  check_dim(fn, "n_rows", n_rows);
  check_dim(fn, "row_size", row_size);
  check_size(fn, table_name, table, checked_mul(fn, n_rows, row_size));
  check_size(fn, rows_name, rows_buf, checked_mul(fn, k, row_size));
  std::vector<int64_t> rows(k);
  for (int64_t i = 0; i < k; ++i) {
    const float v = idx[i];
    if (!(v >= 0.0f) || !(v < static_cast<float>(n_rows)) || std::floor(v) != v)
      index_error(std::string(fn) + ": index " + (std::isnan(v) ? std::string("nan") : std::to_string(v)) +
                  " at position " + std::to_string(i) + " is out of bounds for axis 0 with size " +
                  std::to_string(n_rows));
    rows[i] = static_cast<int64_t>(v);
    if (rows[i] >= n_rows) index_error(std::string(fn) + ": index out of bounds");
  }
  return rows;
}

}  // namespace needle
