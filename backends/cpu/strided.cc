// Strided views: compact, ewise_setitem, scalar_setitem, fill.
#include "common.h"

#include <cstring>

namespace needle {
namespace cpu {

// out[i] = a[view(i)] for the compact logical order of the view.
void strided_copy_out(const Array& a, scalar_t* out, const std::vector<int64_t>& shape,
                      const std::vector<int64_t>& strides, int64_t offset, int64_t numel) {
  const scalar_t* src = a.ptr;
  parallel_range(numel, PAR_THRESHOLD, [&](int64_t b, int64_t e) {
    for_each_run(shape, strides, offset, b, e, [&](int64_t i, int64_t pos, int64_t cnt, int64_t st) {
      scalar_t* o = out + i;
      const scalar_t* s = src + pos;
      if (st == 1) {
        std::memcpy(o, s, cnt * ELEM_SIZE);
      } else if (st == 0) {
        scalar_t v = *s;
        for (int64_t k = 0; k < cnt; ++k) o[k] = v;
      } else {
        for (int64_t k = 0; k < cnt; ++k) o[k] = s[k * st];
      }
    });
  });
}

static void compact(const Array& a, Array& out, std::vector<int64_t> shape, std::vector<int64_t> strides,
                    int64_t offset) {
  int64_t numel = check_view("compact", a.size, shape, strides, offset);
  check_size("compact", "out", out, numel);
  if (numel == 0) return;
  if (&a == &out) value_error("compact: a and out must be different buffers");
  strided_copy_out(a, out.ptr, shape, strides, offset, numel);
}

static void ewise_setitem(const Array& a, Array& out, std::vector<int64_t> shape, std::vector<int64_t> strides,
                          int64_t offset) {
  int64_t numel = check_view("ewise_setitem", out.size, shape, strides, offset);
  check_size("ewise_setitem", "a", a, numel);
  if (numel == 0) return;
  const scalar_t* src = a.ptr;
  scalar_t* dst = out.ptr;
  // Writes through a view may alias (stride 0); run serially then.
  bool has_zero = false;
  for (size_t d = 0; d < shape.size(); ++d)
    if (strides[d] == 0 && shape[d] > 1) has_zero = true;
  auto body = [&](int64_t b, int64_t e) {
    for_each_run(shape, strides, offset, b, e, [&](int64_t i, int64_t pos, int64_t cnt, int64_t st) {
      const scalar_t* s = src + i;
      scalar_t* o = dst + pos;
      if (st == 1) {
        std::memmove(o, s, cnt * ELEM_SIZE);
      } else {
        for (int64_t k = 0; k < cnt; ++k) o[k * st] = s[k];
      }
    });
  };
  if (has_zero || &a == &out) body(0, numel);
  else parallel_range(numel, PAR_THRESHOLD, body);
}

static void scalar_setitem(int64_t size, scalar_t val, Array& out, std::vector<int64_t> shape,
                           std::vector<int64_t> strides, int64_t offset) {
  int64_t numel = check_view("scalar_setitem", out.size, shape, strides, offset);
  if (size != numel)
    value_error("scalar_setitem: size " + std::to_string(size) + " does not match shape " + vec_str(shape));
  if (numel == 0) return;
  scalar_t* dst = out.ptr;
  parallel_range(numel, PAR_THRESHOLD, [&](int64_t b, int64_t e) {
    for_each_run(shape, strides, offset, b, e, [&](int64_t, int64_t pos, int64_t cnt, int64_t st) {
      scalar_t* o = dst + pos;
      if (st == 1) {
        for (int64_t k = 0; k < cnt; ++k) o[k] = val;
      } else {
        for (int64_t k = 0; k < cnt; ++k) o[k * st] = val;
      }
    });
  });
}

static void fill(Array& out, scalar_t val) {
  scalar_t* o = out.ptr;
  parallel_range(static_cast<int64_t>(out.size), PAR_THRESHOLD, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) o[i] = val;
  });
}

void register_strided(py::module_& m) {
  m.def("fill", &fill, py::arg("out"), py::arg("val"));
  m.def("compact", &compact, py::arg("a"), py::arg("out"), py::arg("shape"), py::arg("strides"), py::arg("offset"));
  m.def("ewise_setitem", &ewise_setitem, py::arg("a"), py::arg("out"), py::arg("shape"), py::arg("strides"),
        py::arg("offset"));
  m.def("scalar_setitem", &scalar_setitem, py::arg("size"), py::arg("val"), py::arg("out"), py::arg("shape"),
        py::arg("strides"), py::arg("offset"));
}

}  // namespace cpu
}  // namespace needle
