// Row gather / scatter-add along axis 0 (take and its gradient index_add).
#include "common.h"

#include <cstring>

namespace needle {
namespace cpu {

namespace {

// out[i, :] = a[idx[i], :]
void take_rows(const Array& a, const Array& idx, Array& out, int64_t n_rows, int64_t row_size) {
  const int64_t k = static_cast<int64_t>(idx.size);
  const std::vector<int64_t> rows = checked_rows("take_rows", idx.ptr, a, "a", out, "out", k, n_rows, row_size);
  const float* pa = a.ptr;
  float* po = out.ptr;
  parallel_range(k, row_size > 0 ? PAR_THRESHOLD / row_size + 1 : (int64_t(1) << 62), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::memcpy(po + i * row_size, pa + rows[i] * row_size, row_size * sizeof(float));
  });
}

// out[idx[i], :] += values[i, :]   (serial: indices may repeat)
void index_add_rows(const Array& values, const Array& idx, Array& out, int64_t n_rows, int64_t row_size) {
  const int64_t k = static_cast<int64_t>(idx.size);
  const std::vector<int64_t> rows =
      checked_rows("index_add_rows", idx.ptr, out, "out", values, "values", k, n_rows, row_size);
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
