// Shared definitions for the needle CPU NDArray backend (pybind11 module
// needle.backend_ndarray.ndarray_backend_cpu).
//
// Every entry point validates its arguments against the buffer sizes before
// touching memory (../common/checks.h, shared with the cuda backend) and raises a
// Python exception (ValueError / IndexError) instead of crashing.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "../common/checks.h"
#include "kernels.h"
#include "threadpool.h"

namespace needle {
namespace cpu {

namespace py = pybind11;

typedef float scalar_t;
constexpr size_t ELEM_SIZE = sizeof(scalar_t);
constexpr size_t ALIGNMENT = 64;

// Element counts above which loops are split across OpenMP threads.
constexpr int64_t PAR_THRESHOLD = 1 << 16;

// Float buffer, 64-byte aligned (2 MiB aligned + MADV_HUGEPAGE when large).
struct Array {
  explicit Array(size_t size);
  ~Array();
  Array(const Array&) = delete;
  Array& operator=(const Array&) = delete;
  size_t ptr_as_int() const { return reinterpret_cast<size_t>(ptr); }
  scalar_t* ptr;
  size_t size;
};

size_t release_cache();  // frees cached buffers, returns bytes freed

// Iterate over the elements [begin, end) (row-major logical order) of a
// strided view, calling f(logical_index_start, pointer_offset, count, inner_stride)
// for each contiguous run along the last axis.
template <typename F>
inline void for_each_run(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides,
                         int64_t offset, int64_t begin, int64_t end, F&& f) {
  const int nd = static_cast<int>(shape.size());
  if (begin >= end) return;
  if (nd == 0) {
    f(begin, offset, int64_t(1), int64_t(1));
    return;
  }
  std::vector<int64_t> idx(nd, 0);
  int64_t rem = begin, pos = offset;
  for (int d = nd - 1; d >= 0; --d) {
    idx[d] = rem % shape[d];
    rem /= shape[d];
    pos += idx[d] * strides[d];
  }
  const int64_t inner = shape[nd - 1], inner_stride = strides[nd - 1];
  int64_t i = begin;
  while (i < end) {
    int64_t cnt = inner - idx[nd - 1];
    if (cnt > end - i) cnt = end - i;
    f(i, pos, cnt, inner_stride);
    i += cnt;
    if (i >= end) break;
    // advance to the start of the next run
    pos += (cnt)*inner_stride;
    idx[nd - 1] += cnt;
    for (int d = nd - 1; d > 0 && idx[d] == shape[d]; --d) {
      pos -= idx[d] * strides[d];
      idx[d] = 0;
      idx[d - 1] += 1;
      pos += strides[d - 1];
    }
  }
}

// Run f(begin, end) over [0, n), split into chunks across the thread pool
// when n >= threshold.  Chunk boundaries are multiples of 16 elements.
template <typename F>
inline void parallel_range(int64_t n, int64_t threshold, F&& f, int64_t min_chunk = 16384) {
  int nt = pool_num_threads();
  if (n < threshold || nt <= 1 || n <= 16) {
    f(int64_t(0), n);
    return;
  }
  int64_t chunk = (n + nt * 8 - 1) / (nt * 8);
  if (chunk < min_chunk) chunk = min_chunk;
  chunk = (chunk + 15) & ~int64_t(15);
  int64_t n_chunks = (n + chunk - 1) / chunk;
  parallel_chunks(n_chunks, [&](int64_t c) {
    int64_t b = c * chunk, e = b + chunk;
    f(b, e < n ? e : n);
  });
}

void register_dispatch(py::module_& m);  // picks the kernels (dispatch.cc)
void register_strided(py::module_& m);
void register_ewise(py::module_& m);
void register_reduce(py::module_& m);
void register_matmul(py::module_& m);
void register_program(py::module_& m);
// C[m,n] (row stride ldc) = op(A) @ op(B), or += with `accumulate`, op = transpose when
// trans_*; row-major operands with row strides lda/ldb (of the stored, untransposed
// matrices); split across the pool when `parallel` and the product is worth it.
void gemm_ex(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
             const float* b, int64_t ldb, float* c, int64_t ldc, bool parallel, bool accumulate = false);
// whether gemm_ex would split an (m, n, k) product across the pool's threads
bool gemm_split_worth(int64_t m, int64_t n, int64_t k);
// whether it splits it by blocks of rows (each thread reading all of B), not by columns
bool gemm_split_by_rows(int64_t m, int64_t n, int64_t k);
// product(i, parallel) for the i < batch (m, n, k) products of a batch: side by side on the
// pool's threads (each on one) when each is too small to split but all together are worth
// it, else one after another, each split across the pool
template <class F>
void for_each_product(int64_t batch, int64_t m, int64_t n, int64_t k, F&& product) {
  if (batch > 1 && !gemm_split_worth(m, n, k) && gemm_split_worth(batch * m, n, k)) {
    parallel_chunks(batch, [&](int64_t i) { product(i, false); });
  } else {
    for (int64_t i = 0; i < batch; ++i) product(i, true);
  }
}
// the columns of each thread's block when gemm_ex splits n columns across the pool
int64_t gemm_column_share(int64_t n);
// the multiple of rows gemm_ex's row blocks of an (m, n, k) product keep
int64_t gemm_row_grain(int64_t m, int64_t n, int64_t k);
void register_gather(py::module_& m);
void blas_set_num_threads(int n);

}  // namespace cpu
}  // namespace needle
