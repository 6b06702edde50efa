// Row gather / scatter-add along axis 0 (take and its gradient index_add).
#include "common.h"

#include <cmath>
#include <cstring>

namespace needle {
namespace cpu {

namespace {

// Converts every float index to an int row, raising IndexError for a
// non-integral, NaN or out-of-range one.  Done before any write.
std::vector<int64_t> checked_rows(const char* fn, const Array& idx, int64_t n_rows) {
  std::vector<int64_t> rows(idx.size);
  for (size_t i = 0; i < idx.size; ++i) {
    float v = idx.ptr[i];
    if (!(v >= 0.0f) || !(v < static_cast<float>(n_rows)) || std::floor(v) != v)
      index_error(std::string(fn) + ": index " + (std::isnan(v) ? std::string("nan") : std::to_string(v)) +
                  " at position " + std::to_string(i) + " is out of bounds for axis 0 with size " +
                  std::to_string(n_rows));
    rows[i] = static_cast<int64_t>(v);
    if (rows[i] >= n_rows) index_error(std::string(fn) + ": index out of bounds");
  }
  return rows;
}

// out[i, :] = a[idx[i], :]
void take_rows(const Array& a, const Array& idx, Array& out, int64_t n_rows, int64_t row_size) {
  const char* fn = "take_rows";
  check_dim(fn, "n_rows", n_rows);
  check_dim(fn, "row_size", row_size);
  check_size(fn, "a", a, checked_mul(fn, n_rows, row_size));
  int64_t k = static_cast<int64_t>(idx.size);
  check_size(fn, "out", out, checked_mul(fn, k, row_size));
  std::vector<int64_t> rows = checked_rows(fn, idx, n_rows);
  const float* pa = a.ptr;
  float* po = out.ptr;
  parallel_range(k, row_size > 0 ? PAR_THRESHOLD / row_size + 1 : (int64_t(1) << 62), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::memcpy(po + i * row_size, pa + rows[i] * row_size, row_size * sizeof(float));
  });
}

// out[idx[i], :] += values[i, :]   (serial: indices may repeat)
void index_add_rows(const Array& values, const Array& idx, Array& out, int64_t n_rows, int64_t row_size) {
  const char* fn = "index_add_rows";
  check_dim(fn, "n_rows", n_rows);
  check_dim(fn, "row_size", row_size);
  check_size(fn, "out", out, checked_mul(fn, n_rows, row_size));
  int64_t k = static_cast<int64_t>(idx.size);
  check_size(fn, "values", values, checked_mul(fn, k, row_size));
  std::vector<int64_t> rows = checked_rows(fn, idx, n_rows);
  const float* pv = values.ptr;
  float* po = out.ptr;
  for (int64_t i = 0; i < k; ++i) {
    float* o = po + rows[i] * row_size;
    const float* v = pv + i * row_size;
    for (int64_t j = 0; j < row_size; ++j) o[j] += v[j];
  }
}

}  // namespace

void register_gather(py::module_& m) {
  m.def("take_rows", &take_rows, py::arg("a"), py::arg("idx"), py::arg("out"), py::arg("n_rows"), py::arg("row_size"));
  m.def("index_add_rows", &index_add_rows, py::arg("values"), py::arg("idx"), py::arg("out"), py::arg("n_rows"),
        py::arg("row_size"));
}

}  // namespace cpu
}  // namespace needle
