// pybind11 entry point of needle.backend_ndarray.ndarray_backend_cpu:
// the Array buffer type, numpy conversion, threading control.
#include "common.h"

#include <sys/mman.h>
#include <cstring>
#include <deque>
#include <mutex>
#include <new>

namespace needle {
namespace cpu {

constexpr size_t HUGE_BYTES = size_t(4) << 20;  // like numpy: madvise >= 4 MiB
constexpr size_t HUGE_ALIGN = size_t(2) << 20;
constexpr size_t CACHE_MIN_BYTES = size_t(256) << 10;

// Cache of freed large buffers (like numpy's/PyTorch's allocators): reusing
// already-faulted pages avoids paying page faults on every new result array.
namespace {
struct BlockCache {
  std::mutex mu;
  std::deque<std::pair<size_t, void*>> blocks;  // (bytes, ptr), oldest first
  size_t cached = 0;
  size_t limit = size_t(512) << 20;
};
BlockCache& block_cache() {
  static BlockCache* c = new BlockCache();  // never destroyed (arrays may outlive statics)
  return *c;
}

size_t round_bytes(size_t bytes) {
  if (bytes < CACHE_MIN_BYTES) return (bytes + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT;
  size_t q = bytes >= HUGE_BYTES ? HUGE_ALIGN : (size_t(64) << 10);
  return (bytes + q - 1) / q * q;
}

void* alloc_block(size_t bytes) {
  if (bytes >= CACHE_MIN_BYTES) {
    BlockCache& c = block_cache();
    std::lock_guard<std::mutex> lk(c.mu);
    for (auto it = c.blocks.rbegin(); it != c.blocks.rend(); ++it) {
      if (it->first == bytes) {
        void* p = it->second;
        c.cached -= bytes;
        c.blocks.erase(std::next(it).base());
        return p;
      }
    }
  }
  bool huge = bytes >= HUGE_BYTES;
  void* p = nullptr;
  if (posix_memalign(&p, huge ? HUGE_ALIGN : ALIGNMENT, bytes) != 0 || p == nullptr) {
    release_cache();
    if (posix_memalign(&p, huge ? HUGE_ALIGN : ALIGNMENT, bytes) != 0 || p == nullptr) throw std::bad_alloc();
  }
#ifdef MADV_HUGEPAGE
  if (huge && getenv("NEEDLE_NO_HUGEPAGE") == nullptr) madvise(p, bytes, MADV_HUGEPAGE);
#endif
  return p;
}

void free_block(void* p, size_t bytes) {
  if (bytes >= CACHE_MIN_BYTES) {
    BlockCache& c = block_cache();
    std::lock_guard<std::mutex> lk(c.mu);
    if (bytes <= c.limit) {
      while (c.cached + bytes > c.limit && !c.blocks.empty()) {
        free(c.blocks.front().second);
        c.cached -= c.blocks.front().first;
        c.blocks.pop_front();
      }
      c.blocks.emplace_back(bytes, p);
      c.cached += bytes;
      return;
    }
  }
  free(p);
}
}  // namespace

size_t release_cache() {
  BlockCache& c = block_cache();
  std::lock_guard<std::mutex> lk(c.mu);
  size_t freed = c.cached;
  for (auto& b : c.blocks) free(b.second);
  c.blocks.clear();
  c.cached = 0;
  return freed;
}

Array::Array(size_t size_) : ptr(nullptr), size(size_) {
  if (size > (size_t(1) << 40)) throw py::value_error("Array: size too large: " + std::to_string(size));
  ptr = static_cast<scalar_t*>(alloc_block(round_bytes((size ? size : 1) * ELEM_SIZE)));
}

Array::~Array() { free_block(ptr, round_bytes((size ? size : 1) * ELEM_SIZE)); }

void strided_copy_out(const Array& a, scalar_t* out, const std::vector<int64_t>& shape,
                      const std::vector<int64_t>& strides, int64_t offset, int64_t numel);

static py::array_t<scalar_t> to_numpy(const Array& a, std::vector<int64_t> shape,
                                      std::vector<int64_t> strides, int64_t offset) {
  int64_t numel = check_view("to_numpy", a.size, shape, strides, offset);
  std::vector<py::ssize_t> np_shape(shape.begin(), shape.end());
  py::array_t<scalar_t> result(np_shape);
  if (numel > 0) strided_copy_out(a, result.mutable_data(), shape, strides, offset, numel);
  return result;
}

static void from_numpy(py::array_t<scalar_t, py::array::c_style | py::array::forcecast> a, Array& out) {
  if (static_cast<size_t>(a.size()) != out.size)
    value_error("from_numpy: array has " + std::to_string(a.size()) + " elements, buffer has " +
                std::to_string(out.size));
  if (out.size) std::memcpy(out.ptr, a.data(), out.size * ELEM_SIZE);
}

static void set_num_threads(int n) {
  if (n < 1) value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
  pool_set_num_threads(n);
  blas_set_num_threads(n);
}

static int get_num_threads() { return pool_num_threads(); }

}  // namespace cpu
}  // namespace needle

PYBIND11_MODULE(ndarray_backend_cpu, m) {
  namespace py = pybind11;
  using namespace needle::cpu;
  m.attr("__device_name__") = "cpu";
  m.attr("__tile_size__") = TILE;

  // the buffer protocol: numpy and mpi4py read and write an Array's memory directly
  // (np.asarray(handle), an MPI message [handle, MPI.FLOAT]) without a Python call for its address
  py::class_<Array>(m, "Array", py::buffer_protocol())
      .def(py::init<size_t>(), py::return_value_policy::take_ownership)
      .def_buffer([](Array& a) {
        return py::buffer_info(a.ptr, sizeof(scalar_t), py::format_descriptor<scalar_t>::format(), 1,
                               {py::ssize_t(a.size)}, {py::ssize_t(sizeof(scalar_t))});
      })
      .def("ptr", &Array::ptr_as_int)
      .def_readonly("size", &Array::size)
      .def("__repr__", [](const Array& a) { return "<ndarray_backend_cpu.Array size=" + std::to_string(a.size) + ">"; });

  m.def("to_numpy", &to_numpy, py::arg("a"), py::arg("shape"), py::arg("strides"), py::arg("offset"));
  m.def("from_numpy", &from_numpy, py::arg("a"), py::arg("out"));
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_num_threads", &get_num_threads);
  m.def("release_cached_memory", &release_cache, "free the cached large buffers; returns the bytes freed");

  register_dispatch(m);
  register_strided(m);
  register_ewise(m);
  register_reduce(m);
  register_matmul(m);
  register_gather(m);
  register_program(m);
}
