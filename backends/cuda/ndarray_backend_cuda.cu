// pybind11 module needle.backend_ndarray.ndarray_backend_cuda: the eager CUDA
// NDArray device.  Same low-level interface as ndarray_backend_cpu (see
// backends/cpu/module.cc): Array (a device float32 buffer), to_numpy /
// from_numpy, fill, compact, ewise_setitem / scalar_setitem, the ewise_ /
// scalar_ kernels, reductions, matmul (tiled shared-memory kernel: there is no
// cuBLAS), matmul_batched, matmul_tiled, take_rows / index_add_rows, plus
// device_count().
//
// Every entry point validates its arguments on the host exactly like the CPU
// module (ValueError / IndexError) before launching anything; CUDA errors raise
// RuntimeError.  cudart is linked statically and nothing touches the driver at
// import time, so the module imports on a machine without a GPU or a driver
// (device_count() is then 0 and Array() raises RuntimeError).
//
// All kernels run on the legacy default stream, so they are ordered with each
// other and with cudaMemcpy; to_numpy's copy back is the synchronisation point.
//
// Built with nvcc by setup.py.  With -DNEEDLE_CUDA_EMULATE the same file
// compiles as plain C++ against cuda_emu.h (kernels run on the CPU): used by the
// tests to check the kernels without a GPU.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "../common/checks.h"

#ifdef NEEDLE_CUDA_EMULATE
#include "cuda_emu.h"
#define NEEDLE_LAUNCH(kernel, grid, block, ...) \
  ::needle_emu::launch(grid, block, false, [&] { kernel(__VA_ARGS__); })
#define NEEDLE_LAUNCH_SYNC(kernel, grid, block, ...) \
  ::needle_emu::launch(grid, block, true, [&] { kernel(__VA_ARGS__); })
#else
#include <cuda_runtime.h>
#define NEEDLE_LAUNCH(kernel, grid, block, ...) kernel<<<(grid), (block)>>>(__VA_ARGS__)
#define NEEDLE_LAUNCH_SYNC(kernel, grid, block, ...) kernel<<<(grid), (block)>>>(__VA_ARGS__)
#endif

namespace needle {
namespace gpu {

namespace py = pybind11;

typedef float scalar_t;
constexpr size_t ELEM_SIZE = sizeof(scalar_t);
constexpr int TILE = 8;          // layout of matmul_tiled (same as the cpu module)
constexpr int MAX_DIMS = 16;     // strided views, after merging contiguous axes
constexpr int THREADS = 256;     // block size of the elementwise kernels
constexpr int RED_THREADS = 256; // block size of the block reductions (power of 2)
constexpr int64_t MAX_GRID = 1 << 16;

// ---------------------------------------------------------------------------
// CUDA errors (argument checks: ../common/checks.h, shared with the cpu module)
// ---------------------------------------------------------------------------
void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error
    throw std::runtime_error(std::string("needle cuda: ") + what + ": " + cudaGetErrorString(e));
  }
}

void check_launch(const char* what) { check_cuda(cudaGetLastError(), what); }

// ---------------------------------------------------------------------------
// device memory: a cache of freed blocks (cudaMalloc/cudaFree synchronise the device)
// ---------------------------------------------------------------------------
namespace {
struct BlockCache {
  std::mutex mu;
  std::multimap<size_t, void*> blocks;  // bytes -> pointer
  size_t cached = 0;
  size_t limit = size_t(1) << 30;
};
BlockCache& block_cache() {
  static BlockCache* c = new BlockCache();  // never destroyed: arrays may outlive statics
  return *c;
}

size_t round_bytes(size_t bytes) {
  size_t q = bytes < (size_t(1) << 20) ? 512 : (size_t(128) << 10);
  return (bytes + q - 1) / q * q;
}
}  // namespace

size_t release_cache() {
  BlockCache& c = block_cache();
  std::lock_guard<std::mutex> lk(c.mu);
  size_t freed = c.cached;
  for (auto& b : c.blocks) cudaFree(b.second);
  c.blocks.clear();
  c.cached = 0;
  return freed;
}

void* dev_alloc(size_t bytes) {
  {
    BlockCache& c = block_cache();
    std::lock_guard<std::mutex> lk(c.mu);
    auto it = c.blocks.find(bytes);
    if (it != c.blocks.end()) {
      void* p = it->second;
      c.blocks.erase(it);
      c.cached -= bytes;
      return p;
    }
  }
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    release_cache();
    e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      throw std::bad_alloc();
    }
  }
  check_cuda(e, "cudaMalloc");
  return p;
}

void dev_free(void* p, size_t bytes) {
  if (p == nullptr) return;
  BlockCache& c = block_cache();
  std::lock_guard<std::mutex> lk(c.mu);
  if (bytes <= c.limit) {
    if (c.cached + bytes > c.limit) {
      for (auto& b : c.blocks) cudaFree(b.second);
      c.blocks.clear();
      c.cached = 0;
    }
    c.blocks.emplace(bytes, p);
    c.cached += bytes;
    return;
  }
  cudaFree(p);  // errors ignored: may run at interpreter exit, after cudart unloads
}

// Float buffer in device memory.
struct Array {
  explicit Array(size_t size_) : ptr(nullptr), size(size_), bytes(0) {
    if (size > (size_t(1) << 40)) value_error("Array: size too large: " + std::to_string(size));
    bytes = round_bytes((size ? size : 1) * ELEM_SIZE);
    ptr = static_cast<scalar_t*>(dev_alloc(bytes));
  }
  ~Array() { dev_free(ptr, bytes); }
  Array(const Array&) = delete;
  Array& operator=(const Array&) = delete;
  size_t ptr_as_int() const { return reinterpret_cast<size_t>(ptr); }
  scalar_t* ptr;
  size_t size;
  size_t bytes;
};

// Temporary device buffer (returned to the cache when it goes out of scope; the
// default stream orders its reuse after the kernels that read it).
struct DeviceBuffer {
  explicit DeviceBuffer(size_t bytes_) : bytes(round_bytes(bytes_ ? bytes_ : 1)), ptr(dev_alloc(bytes)) {}
  ~DeviceBuffer() { dev_free(ptr, bytes); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class T>
  T* as() const { return static_cast<T*>(ptr); }
  size_t bytes;
  void* ptr;
};

inline unsigned grid_for(int64_t n, int threads = THREADS) {
  int64_t g = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(g, MAX_GRID)));
}

// ---------------------------------------------------------------------------
// strided copies: one logical index space, a source and a destination view
// ---------------------------------------------------------------------------
struct PairView {
  int nd;
  int64_t shape[MAX_DIMS];
  int64_t src_strides[MAX_DIMS];
  int64_t dst_strides[MAX_DIMS];
  int64_t src_offset;
  int64_t dst_offset;
};

// Drops size-1 axes and merges axes that are contiguous in both views, so that
// common cases become 1-d copies.
PairView make_pair_view(const char* fn, const std::vector<int64_t>& shape, const std::vector<int64_t>& src_strides,
                        int64_t src_offset, const std::vector<int64_t>& dst_strides, int64_t dst_offset) {
  std::vector<int64_t> sh, ss, ds;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (!sh.empty() && ss.back() == src_strides[d] * shape[d] && ds.back() == dst_strides[d] * shape[d]) {
      sh.back() *= shape[d];
      ss.back() = src_strides[d];
      ds.back() = dst_strides[d];
    } else {
      sh.push_back(shape[d]);
      ss.push_back(src_strides[d]);
      ds.push_back(dst_strides[d]);
    }
  }
  if (sh.size() > static_cast<size_t>(MAX_DIMS))
    value_error(std::string(fn) + ": view of shape " + vec_str(shape) + " has more than " +
                std::to_string(MAX_DIMS) + " non-mergeable axes");
  PairView v;
  std::memset(&v, 0, sizeof(v));
  v.nd = static_cast<int>(sh.size());
  for (int d = 0; d < v.nd; ++d) {
    v.shape[d] = sh[d];
    v.src_strides[d] = ss[d];
    v.dst_strides[d] = ds[d];
  }
  v.src_offset = src_offset;
  v.dst_offset = dst_offset;
  return v;
}

std::vector<int64_t> compact_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> st(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    st[i] = s;
    s *= shape[i];
  }
  return st;
}

// dst[view_dst(i)] = src[view_src(i)] for i in [0, n)
template <typename I>
__global__ void strided_copy_kernel(const scalar_t* __restrict__ src, scalar_t* __restrict__ dst, PairView v, I n) {
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += static_cast<I>(gridDim.x) * blockDim.x) {
    I rem = i, ps = static_cast<I>(v.src_offset), pd = static_cast<I>(v.dst_offset);
    for (int d = v.nd - 1; d >= 0; --d) {
      I sd = static_cast<I>(v.shape[d]);
      I k = rem % sd;
      rem /= sd;
      ps += k * static_cast<I>(v.src_strides[d]);
      pd += k * static_cast<I>(v.dst_strides[d]);
    }
    dst[pd] = src[ps];
  }
}

// dst[view_dst(i)] = val
template <typename I>
__global__ void strided_fill_kernel(scalar_t val, scalar_t* __restrict__ dst, PairView v, I n) {
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += static_cast<I>(gridDim.x) * blockDim.x) {
    I rem = i, pd = static_cast<I>(v.dst_offset);
    for (int d = v.nd - 1; d >= 0; --d) {
      I sd = static_cast<I>(v.shape[d]);
      I k = rem % sd;
      rem /= sd;
      pd += k * static_cast<I>(v.dst_strides[d]);
    }
    dst[pd] = val;
  }
}

__global__ void fill_kernel(scalar_t* __restrict__ out, scalar_t val, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = val;
}

// 32-bit index arithmetic when every index fits
// (with room for the grid-stride step: i + gridDim.x * blockDim.x must not overflow)
bool fits_int32(int64_t n, size_t src_size, size_t dst_size) {
  const int64_t lim = int64_t(1) << 30;
  return n < lim && static_cast<int64_t>(src_size) < lim && static_cast<int64_t>(dst_size) < lim;
}

void launch_strided_copy(const scalar_t* src, size_t src_size, scalar_t* dst, size_t dst_size, const PairView& v,
                         int64_t n) {
  if (n == 0) return;
  if (v.nd == 0 || (v.nd == 1 && v.src_strides[0] == 1 && v.dst_strides[0] == 1)) {
    check_cuda(cudaMemcpy(dst + v.dst_offset, src + v.src_offset, n * ELEM_SIZE, cudaMemcpyDeviceToDevice),
               "cudaMemcpy");
    return;
  }
  if (fits_int32(n, src_size, dst_size)) {
    NEEDLE_LAUNCH(strided_copy_kernel<int32_t>, grid_for(n), THREADS, src, dst, v, static_cast<int32_t>(n));
  } else {
    NEEDLE_LAUNCH(strided_copy_kernel<int64_t>, grid_for(n), THREADS, src, dst, v, n);
  }
  check_launch("strided copy");
}

void fill_device(scalar_t* out, scalar_t val, int64_t n) {
  if (n <= 0) return;
  NEEDLE_LAUNCH(fill_kernel, grid_for(n), THREADS, out, val, n);
  check_launch("fill");
}

// ---------------------------------------------------------------------------
// to_numpy / from_numpy / fill / compact / setitem
// ---------------------------------------------------------------------------
py::array_t<scalar_t> to_numpy(const Array& a, std::vector<int64_t> shape, std::vector<int64_t> strides,
                               int64_t offset) {
  int64_t numel = check_view("to_numpy", a.size, shape, strides, offset);
  std::vector<py::ssize_t> np_shape(shape.begin(), shape.end());
  py::array_t<scalar_t> result(np_shape);
  if (numel == 0) return result;
  PairView v = make_pair_view("to_numpy", shape, strides, offset, compact_strides(shape), 0);
  scalar_t* host = result.mutable_data();
  if (v.nd == 0 || (v.nd == 1 && v.src_strides[0] == 1)) {
    check_cuda(cudaMemcpy(host, a.ptr + offset, numel * ELEM_SIZE, cudaMemcpyDeviceToHost), "to_numpy");
    return result;
  }
  DeviceBuffer tmp(numel * ELEM_SIZE);
  launch_strided_copy(a.ptr, a.size, tmp.as<scalar_t>(), numel, v, numel);
  check_cuda(cudaMemcpy(host, tmp.ptr, numel * ELEM_SIZE, cudaMemcpyDeviceToHost), "to_numpy");
  return result;
}

void from_numpy(py::array_t<scalar_t, py::array::c_style | py::array::forcecast> a, Array& out) {
  if (static_cast<size_t>(a.size()) != out.size)
    value_error("from_numpy: array has " + std::to_string(a.size()) + " elements, buffer has " +
                std::to_string(out.size));
  if (out.size) check_cuda(cudaMemcpy(out.ptr, a.data(), out.size * ELEM_SIZE, cudaMemcpyHostToDevice), "from_numpy");
}

void fill(Array& out, scalar_t val) { fill_device(out.ptr, val, static_cast<int64_t>(out.size)); }

void compact(const Array& a, Array& out, std::vector<int64_t> shape, std::vector<int64_t> strides, int64_t offset) {
  int64_t numel = check_view("compact", a.size, shape, strides, offset);
  check_size("compact", "out", out, numel);
  if (numel == 0) return;
  if (&a == &out) value_error("compact: a and out must be different buffers");
  PairView v = make_pair_view("compact", shape, strides, offset, compact_strides(shape), 0);
  launch_strided_copy(a.ptr, a.size, out.ptr, out.size, v, numel);
}

void ewise_setitem(const Array& a, Array& out, std::vector<int64_t> shape, std::vector<int64_t> strides,
                   int64_t offset) {
  int64_t numel = check_view("ewise_setitem", out.size, shape, strides, offset);
  check_size("ewise_setitem", "a", a, numel);
  if (numel == 0) return;
  // Axes of stride 0 write one element many times; like the cpu module's serial
  // loop, the last write wins: take the source's last index along them.
  std::vector<int64_t> src_strides = compact_strides(shape);
  int64_t src_offset = 0;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (strides[d] == 0 && shape[d] > 1) {
      src_offset += (shape[d] - 1) * src_strides[d];
      shape[d] = 1;
    }
  }
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  PairView v = make_pair_view("ewise_setitem", shape, src_strides, src_offset, strides, offset);
  if (&a == &out) {  // overlapping source and destination: copy the source first
    DeviceBuffer tmp(a.size * ELEM_SIZE);
    check_cuda(cudaMemcpy(tmp.ptr, a.ptr, a.size * ELEM_SIZE, cudaMemcpyDeviceToDevice), "cudaMemcpy");
    launch_strided_copy(tmp.as<scalar_t>(), a.size, out.ptr, out.size, v, n);
    return;
  }
  launch_strided_copy(a.ptr, a.size, out.ptr, out.size, v, n);
}

void scalar_setitem(int64_t size, scalar_t val, Array& out, std::vector<int64_t> shape, std::vector<int64_t> strides,
                    int64_t offset) {
  int64_t numel = check_view("scalar_setitem", out.size, shape, strides, offset);
  if (size != numel)
    value_error("scalar_setitem: size " + std::to_string(size) + " does not match shape " + vec_str(shape));
  if (numel == 0) return;
  PairView v = make_pair_view("scalar_setitem", shape, strides, offset, strides, offset);
  if (v.nd == 0 || (v.nd == 1 && v.dst_strides[0] == 1)) {
    fill_device(out.ptr + offset, val, numel);
    return;
  }
  if (fits_int32(numel, out.size, out.size)) {
    NEEDLE_LAUNCH(strided_fill_kernel<int32_t>, grid_for(numel), THREADS, val, out.ptr, v,
                  static_cast<int32_t>(numel));
  } else {
    NEEDLE_LAUNCH(strided_fill_kernel<int64_t>, grid_for(numel), THREADS, val, out.ptr, v, numel);
  }
  check_launch("scalar_setitem");
}

// ---------------------------------------------------------------------------
// elementwise and scalar kernels
// ---------------------------------------------------------------------------
__device__ __forceinline__ float max_nan(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return a > b ? a : b;
}

struct AddOp { __device__ __forceinline__ float operator()(float x, float y) const { return x + y; } };
struct MulOp { __device__ __forceinline__ float operator()(float x, float y) const { return x * y; } };
struct DivOp { __device__ __forceinline__ float operator()(float x, float y) const { return x / y; } };
struct MaximumOp { __device__ __forceinline__ float operator()(float x, float y) const { return max_nan(x, y); } };
struct EqOp { __device__ __forceinline__ float operator()(float x, float y) const { return x == y ? 1.0f : 0.0f; } };
struct GeOp { __device__ __forceinline__ float operator()(float x, float y) const { return x >= y ? 1.0f : 0.0f; } };
struct PowOp { __device__ __forceinline__ float operator()(float x, float y) const { return powf(x, y); } };

struct ExpOp { __device__ __forceinline__ float operator()(float x) const { return expf(x); } };
struct LogOp { __device__ __forceinline__ float operator()(float x) const { return logf(x); } };
struct TanhOp { __device__ __forceinline__ float operator()(float x) const { return tanhf(x); } };
struct SinOp { __device__ __forceinline__ float operator()(float x) const { return sinf(x); } };
struct CosOp { __device__ __forceinline__ float operator()(float x) const { return cosf(x); } };
struct SqrtOp { __device__ __forceinline__ float operator()(float x) const { return sqrtf(x); } };
struct NegOp { __device__ __forceinline__ float operator()(float x) const { return -x; } };
struct CopyOp { __device__ __forceinline__ float operator()(float x) const { return x; } };
struct SquareOp { __device__ __forceinline__ float operator()(float x) const { return x * x; } };
struct RecipOp { __device__ __forceinline__ float operator()(float x) const { return 1.0f / x; } };
struct OneOp { __device__ __forceinline__ float operator()(float) const { return 1.0f; } };

template <class Op>
__global__ void ewise_kernel(const scalar_t* a, const scalar_t* b, scalar_t* out, int64_t n) {
  Op op;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = op(a[i], b[i]);
}

template <class Op>
__global__ void scalar_kernel(const scalar_t* a, scalar_t val, scalar_t* out, int64_t n) {
  Op op;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = op(a[i], val);
}

template <class Op>
__global__ void unary_kernel(const scalar_t* a, scalar_t* out, int64_t n) {
  Op op;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = op(a[i]);
}

__global__ void where_kernel(const scalar_t* c, const scalar_t* a, const scalar_t* b, scalar_t* out, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = (c[i] != 0.0f) ? a[i] : b[i];  // NaN counts as true, like numpy
}

template <class Op>
void ewise(const char* fn, const Array& a, const Array& b, Array& out) {
  check_size(fn, "b", b, static_cast<int64_t>(a.size));
  check_size(fn, "out", out, static_cast<int64_t>(a.size));
  int64_t n = static_cast<int64_t>(a.size);
  if (n == 0) return;
  NEEDLE_LAUNCH(ewise_kernel<Op>, grid_for(n), THREADS, a.ptr, b.ptr, out.ptr, n);
  check_launch(fn);
}

template <class Op>
void scalar_op(const char* fn, const Array& a, scalar_t val, Array& out) {
  check_size(fn, "out", out, static_cast<int64_t>(a.size));
  int64_t n = static_cast<int64_t>(a.size);
  if (n == 0) return;
  NEEDLE_LAUNCH(scalar_kernel<Op>, grid_for(n), THREADS, a.ptr, val, out.ptr, n);
  check_launch(fn);
}

template <class Op>
void unary(const char* fn, const Array& a, Array& out) {
  check_size(fn, "out", out, static_cast<int64_t>(a.size));
  int64_t n = static_cast<int64_t>(a.size);
  if (n == 0) return;
  NEEDLE_LAUNCH(unary_kernel<Op>, grid_for(n), THREADS, a.ptr, out.ptr, n);
  check_launch(fn);
}

void scalar_power(const Array& a, scalar_t val, Array& out) {
  // the cpu module's fast paths (exact for 1 and 2, sqrt for 0.5, reciprocal for -1)
  const char* fn = "scalar_power";
  if (val == 1.0f) unary<CopyOp>(fn, a, out);
  else if (val == 2.0f) unary<SquareOp>(fn, a, out);
  else if (val == 0.5f) unary<SqrtOp>(fn, a, out);
  else if (val == -1.0f) unary<RecipOp>(fn, a, out);
  else if (val == 0.0f) unary<OneOp>(fn, a, out);
  else scalar_op<PowOp>(fn, a, val, out);
}

void ewise_where(const Array& cond, const Array& a, const Array& b, Array& out) {
  const char* fn = "ewise_where";
  check_size(fn, "a", a, static_cast<int64_t>(cond.size));
  check_size(fn, "b", b, static_cast<int64_t>(cond.size));
  check_size(fn, "out", out, static_cast<int64_t>(cond.size));
  int64_t n = static_cast<int64_t>(cond.size);
  if (n == 0) return;
  NEEDLE_LAUNCH(where_kernel, grid_for(n), THREADS, cond.ptr, a.ptr, b.ptr, out.ptr, n);
  check_launch(fn);
}

// ---------------------------------------------------------------------------
// reductions
// ---------------------------------------------------------------------------
struct SumR {
  __device__ __forceinline__ static float identity() { return 0.0f; }
  __device__ __forceinline__ float operator()(float x, float y) const { return x + y; }
};
struct MaxR {
  __device__ __forceinline__ static float identity() { return -INFINITY; }
  __device__ __forceinline__ float operator()(float x, float y) const { return max_nan(x, y); }
};

// out[g] = reduce(a[g*n : g*n+n]) with one thread per group (short groups)
template <class Op>
__global__ void reduce_small_kernel(const scalar_t* __restrict__ a, scalar_t* __restrict__ out, int64_t groups,
                                    int64_t n) {
  Op op;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const scalar_t* p = a + g * n;
    float acc = p[0];
    for (int64_t k = 1; k < n; ++k) acc = op(acc, p[k]);
    out[g] = acc;
  }
}

// One block per row r of `rows` = groups * chunks: row r reduces chunk r % chunks
// (elements [c*kc, min(n, c*kc+kc))) of group r / chunks; out[r] = result.
template <class Op>
__global__ void __launch_bounds__(RED_THREADS)
    reduce_block_kernel(const scalar_t* __restrict__ a, scalar_t* __restrict__ out, int64_t rows, int64_t n,
                        int64_t chunks, int64_t kc) {
  __shared__ float sdata[RED_THREADS];
  Op op;
  const int tid = threadIdx.x;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t g = r / chunks, c = r % chunks;
    const int64_t begin = c * kc, end = (begin + kc < n) ? begin + kc : n;
    const scalar_t* p = a + g * n;
    float acc = Op::identity();
    for (int64_t k = begin + tid; k < end; k += RED_THREADS) acc = op(acc, p[k]);
    sdata[tid] = acc;
    __syncthreads();
    for (int s = RED_THREADS / 2; s > 0; s >>= 1) {
      if (tid < s) sdata[tid] = op(sdata[tid], sdata[tid + s]);
      __syncthreads();
    }
    if (tid == 0) out[r] = sdata[0];
    __syncthreads();
  }
}

// out[o, c, j] = reduce over k in chunk c of a[o, k, j] (a is (outer, n, inner))
template <class Op>
__global__ void reduce_axis_kernel(const scalar_t* __restrict__ a, scalar_t* __restrict__ out, int64_t outer,
                                   int64_t n, int64_t inner, int64_t chunks, int64_t kc) {
  Op op;
  const int64_t total = outer * chunks * inner;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = t % inner, oc = t / inner;
    const int64_t c = oc % chunks, o = oc / chunks;
    const int64_t begin = c * kc, end = (begin + kc < n) ? begin + kc : n;
    const scalar_t* p = a + o * n * inner + j;
    float acc = p[begin * inner];
    for (int64_t k = begin + 1; k < end; ++k) acc = op(acc, p[k * inner]);
    out[t] = acc;
  }
}

// groups >= 1, n >= 1
template <class Op>
void reduce_last(const scalar_t* a, scalar_t* out, int64_t groups, int64_t n) {
  if (n <= 32) {
    NEEDLE_LAUNCH(reduce_small_kernel<Op>, grid_for(groups), THREADS, a, out, groups, n);
    check_launch("reduce");
    return;
  }
  int64_t chunks = 1;
  if (groups < 512 && n > 16384) chunks = std::min<int64_t>(n / 8192, std::max<int64_t>(2, 2048 / groups));
  int64_t kc = (n + chunks - 1) / chunks;
  chunks = (n + kc - 1) / kc;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(groups * chunks, MAX_GRID));
  if (chunks > 1) {
    DeviceBuffer tmp(groups * chunks * ELEM_SIZE);
    NEEDLE_LAUNCH_SYNC(reduce_block_kernel<Op>, grid, RED_THREADS, a, tmp.as<scalar_t>(), groups * chunks, n, chunks,
                       kc);
    check_launch("reduce");
    reduce_last<Op>(tmp.as<scalar_t>(), out, groups, chunks);
    return;
  }
  NEEDLE_LAUNCH_SYNC(reduce_block_kernel<Op>, grid, RED_THREADS, a, out, groups, n, int64_t(1), n);
  check_launch("reduce");
}

// outer * inner >= 1, n >= 1
template <class Op>
void reduce_axis_dev(const scalar_t* a, scalar_t* out, int64_t outer, int64_t n, int64_t inner) {
  const int64_t cols = outer * inner;
  int64_t chunks = 1;
  if (n > 64 && cols < 65536) chunks = std::max<int64_t>(1, std::min<int64_t>(n / 32, (65536 + cols - 1) / cols));
  int64_t kc = (n + chunks - 1) / chunks;
  chunks = (n + kc - 1) / kc;
  if (chunks > 1) {
    DeviceBuffer tmp(outer * chunks * inner * ELEM_SIZE);
    NEEDLE_LAUNCH(reduce_axis_kernel<Op>, grid_for(outer * chunks * inner), THREADS, a, tmp.as<scalar_t>(), outer, n,
                  inner, chunks, kc);
    check_launch("reduce");
    reduce_axis_dev<Op>(tmp.as<scalar_t>(), out, outer, chunks, inner);
    return;
  }
  NEEDLE_LAUNCH(reduce_axis_kernel<Op>, grid_for(cols), THREADS, a, out, outer, n, inner, int64_t(1), n);
  check_launch("reduce");
}

void reduce_sum(const Array& a, Array& out, int64_t n) {
  int64_t groups = check_reduce("reduce_sum", a, out, n);
  if (groups == 0) return;
  if (n == 0) return fill_device(out.ptr, 0.0f, groups);
  reduce_last<SumR>(a.ptr, out.ptr, groups, n);
}

void reduce_max(const Array& a, Array& out, int64_t n) {
  int64_t groups = check_reduce("reduce_max", a, out, n);
  if (n == 0) {
    if (groups > 0) value_error("reduce_max: zero-size reduction has no identity");
    return;
  }
  if (groups == 0) return;
  reduce_last<MaxR>(a.ptr, out.ptr, groups, n);
}

template <class Op, bool IS_MAX>
void reduce_axis(const char* fn, const Array& a, Array& out, int64_t outer, int64_t n, int64_t inner) {
  const int64_t groups = check_reduce_axis(fn, a, out, outer, n, inner);
  if (n == 0) {
    if (IS_MAX && groups > 0) value_error(std::string(fn) + ": zero-size reduction has no identity");
    return fill_device(out.ptr, 0.0f, groups);
  }
  if (groups == 0) return;
  reduce_axis_dev<Op>(a.ptr, out.ptr, outer, n, inner);
}

void reduce_sum_axis(const Array& a, Array& out, int64_t outer, int64_t n, int64_t inner) {
  reduce_axis<SumR, false>("reduce_sum_axis", a, out, outer, n, inner);
}
void reduce_max_axis(const Array& a, Array& out, int64_t outer, int64_t n, int64_t inner) {
  reduce_axis<MaxR, true>("reduce_max_axis", a, out, outer, n, inner);
}

// argmax: the first maximum, or the first NaN if there is one (like numpy)
__device__ __forceinline__ bool arg_better(float v, int64_t i, float w, int64_t j) {
  // true if (v, i) wins over (w, j)
  const bool vn = v != v, wn = w != w;
  if (vn || wn) return vn && (!wn || i < j);
  if (v != w) return v > w;
  return i < j;
}

__global__ void __launch_bounds__(RED_THREADS)
    argmax_kernel(const scalar_t* __restrict__ a, scalar_t* __restrict__ out, int64_t groups, int64_t n) {
  __shared__ float sval[RED_THREADS];
  __shared__ int64_t sidx[RED_THREADS];
  const int tid = threadIdx.x;
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const scalar_t* p = a + g * n;
    float best = 0.0f;
    int64_t bi = -1;
    for (int64_t k = tid; k < n; k += RED_THREADS) {
      float x = p[k];
      if (bi < 0 || arg_better(x, k, best, bi)) {
        best = x;
        bi = k;
      }
    }
    sval[tid] = best;
    sidx[tid] = bi;
    __syncthreads();
    for (int s = RED_THREADS / 2; s > 0; s >>= 1) {
      if (tid < s) {
        const int64_t oi = sidx[tid + s];
        if (oi >= 0 && (sidx[tid] < 0 || arg_better(sval[tid + s], oi, sval[tid], sidx[tid]))) {
          sval[tid] = sval[tid + s];
          sidx[tid] = oi;
        }
      }
      __syncthreads();
    }
    if (tid == 0) out[g] = static_cast<scalar_t>(sidx[0]);
    __syncthreads();
  }
}

__global__ void argmax_small_kernel(const scalar_t* __restrict__ a, scalar_t* __restrict__ out, int64_t groups,
                                    int64_t n) {
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const scalar_t* p = a + g * n;
    float best = p[0];
    int64_t bi = 0;
    for (int64_t k = 1; k < n; ++k)
      if (arg_better(p[k], k, best, bi)) {
        best = p[k];
        bi = k;
      }
    out[g] = static_cast<scalar_t>(bi);
  }
}

void reduce_argmax(const Array& a, Array& out, int64_t n) {
  int64_t groups = check_reduce("reduce_argmax", a, out, n);
  if (n == 0) {
    if (groups > 0) value_error("reduce_argmax: attempt to get argmax of an empty sequence");
    return;
  }
  if (groups == 0) return;
  if (n <= 64) {
    NEEDLE_LAUNCH(argmax_small_kernel, grid_for(groups), THREADS, a.ptr, out.ptr, groups, n);
  } else {
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(groups, MAX_GRID));
    NEEDLE_LAUNCH_SYNC(argmax_kernel, grid, RED_THREADS, a.ptr, out.ptr, groups, n);
  }
  check_launch("reduce_argmax");
}

// ---------------------------------------------------------------------------
// matmul: 64x64 output tile per block of 256 threads, 4x4 outputs per thread,
// k in steps of 16 through shared memory.  Batched over blockIdx.z.
// ---------------------------------------------------------------------------
constexpr int MM_BM = 64, MM_BN = 64, MM_BK = 16, MM_THREADS = 256;

__global__ void __launch_bounds__(MM_THREADS)
    matmul_kernel(const scalar_t* __restrict__ A, const scalar_t* __restrict__ B, scalar_t* __restrict__ C,
                  int64_t batch, int64_t M, int64_t N, int64_t P, int64_t a_bs, int64_t b_bs) {
  __shared__ float As[MM_BK][MM_BM + 1];  // As[k][i]: A tile transposed
  __shared__ float Bs[MM_BK][MM_BN];
  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int64_t mtiles = (M + MM_BM - 1) / MM_BM;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * MM_BN;
  for (int64_t bz = blockIdx.z; bz < batch; bz += gridDim.z) {
    const scalar_t* a = A + bz * a_bs;
    const scalar_t* b = B + bz * b_bs;
    scalar_t* c = C + bz * M * P;
    for (int64_t by = blockIdx.y; by < mtiles; by += gridDim.y) {
      const int64_t row0 = by * MM_BM;
      float acc[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
      for (int64_t k0 = 0; k0 < N; k0 += MM_BK) {
#pragma unroll
        for (int l = 0; l < (MM_BM * MM_BK) / MM_THREADS; ++l) {
          const int idx = tid + l * MM_THREADS;
          const int ra = idx / MM_BK, ca = idx % MM_BK;  // A tile: 64 rows x 16 columns
          const int64_t gi = row0 + ra, gk = k0 + ca;
          As[ca][ra] = (gi < M && gk < N) ? a[gi * N + gk] : 0.0f;
          const int rb = idx / MM_BN, cb = idx % MM_BN;  // B tile: 16 rows x 64 columns
          const int64_t gkb = k0 + rb, gj = col0 + cb;
          Bs[rb][cb] = (gkb < N && gj < P) ? b[gkb * P + gj] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < MM_BK; ++kk) {
          float ar[4], br[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) ar[i] = As[kk][ty + 16 * i];
#pragma unroll
          for (int j = 0; j < 4; ++j) br[j] = Bs[kk][tx + 16 * j];
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] += ar[i] * br[j];
        }
        __syncthreads();
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t gi = row0 + ty + 16 * i;
        if (gi >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t gj = col0 + tx + 16 * j;
          if (gj < P) c[gi * P + gj] = acc[i][j];
        }
      }
    }
  }
}

void gemm(const scalar_t* a, const scalar_t* b, scalar_t* c, int64_t batch, int64_t m, int64_t n, int64_t p,
          int64_t a_bs, int64_t b_bs) {
  if (batch == 0 || m == 0 || p == 0) return;
  if (n == 0) return fill_device(c, 0.0f, batch * m * p);
  const int64_t ptiles = (p + MM_BN - 1) / MM_BN, mtiles = (m + MM_BM - 1) / MM_BM;
  if (ptiles > (int64_t(1) << 31) - 1) value_error("matmul: p too large");
  dim3 grid(static_cast<unsigned>(ptiles), static_cast<unsigned>(std::min<int64_t>(mtiles, 65535)),
            static_cast<unsigned>(std::min<int64_t>(batch, 65535)));
  NEEDLE_LAUNCH_SYNC(matmul_kernel, grid, MM_THREADS, a, b, c, batch, m, n, p, a_bs, b_bs);
  check_launch("matmul");
}

void matmul(const Array& a, const Array& b, Array& out, int64_t m, int64_t n, int64_t p) {
  check_matmul("matmul", a, b, out, m, n, p);
  gemm(a.ptr, b.ptr, out.ptr, 1, m, n, p, 0, 0);
}

void matmul_batched(const Array& a, const Array& b, Array& out, int64_t batch, int64_t m, int64_t n, int64_t p,
                    int64_t a_batch_stride, int64_t b_batch_stride) {
  check_matmul_batched("matmul_batched", a, b, out, batch, m, n, p, a_batch_stride, b_batch_stride);
  gemm(a.ptr, b.ptr, out.ptr, batch, m, n, p, a_batch_stride, b_batch_stride);
}

// Tiled layout: a (m/T, n/T, T, T), b (n/T, p/T, T, T), out (m/T, p/T, T, T); one thread per output.
__global__ void matmul_tiled_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                    scalar_t* __restrict__ out, int64_t nt, int64_t pt, int64_t total) {
  constexpr int TT = TILE * TILE;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t cidx = t % TILE, r = (t / TILE) % TILE, tile = t / TT;
    const int64_t j = tile % pt, i = tile / pt;
    float acc = 0.0f;
    for (int64_t k = 0; k < nt; ++k) {
      const scalar_t* at = a + (i * nt + k) * TT + r * TILE;
      const scalar_t* bt = b + (k * pt + j) * TT + cidx;
#pragma unroll
      for (int q = 0; q < TILE; ++q) acc += at[q] * bt[q * TILE];
    }
    out[t] = acc;
  }
}

void matmul_tiled(const Array& a, const Array& b, Array& out, int64_t m, int64_t n, int64_t p) {
  const char* fn = "matmul_tiled";
  check_matmul(fn, a, b, out, m, n, p, TILE);
  const int64_t total = m * p;
  if (total == 0) return;
  NEEDLE_LAUNCH(matmul_tiled_kernel, grid_for(total), THREADS, a.ptr, b.ptr, out.ptr, n / TILE, p / TILE, total);
  check_launch(fn);
}

// ---------------------------------------------------------------------------
// row gather / scatter-add (take and its gradient)
// ---------------------------------------------------------------------------
// The indices, copied to the host (they are checked there: IndexError before any write).
std::vector<float> host_indices(const Array& idx) {
  std::vector<float> host(idx.size);
  if (idx.size)
    check_cuda(cudaMemcpy(host.data(), idx.ptr, idx.size * ELEM_SIZE, cudaMemcpyDeviceToHost), "cudaMemcpy");
  return host;
}

__global__ void take_rows_kernel(const scalar_t* __restrict__ a, const int64_t* __restrict__ rows,
                                 scalar_t* __restrict__ out, int64_t k, int64_t row_size) {
  const int64_t total = k * row_size;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t / row_size, j = t % row_size;
    out[t] = a[rows[i] * row_size + j];
  }
}

__global__ void index_add_rows_kernel(const scalar_t* __restrict__ values, const int64_t* __restrict__ rows,
                                      scalar_t* out, int64_t k, int64_t row_size) {
  const int64_t total = k * row_size;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t / row_size, j = t % row_size;
    atomicAdd(out + rows[i] * row_size + j, values[t]);  // indices may repeat
  }
}

void take_rows(const Array& a, const Array& idx, Array& out, int64_t n_rows, int64_t row_size) {
  const char* fn = "take_rows";
  const int64_t k = static_cast<int64_t>(idx.size);
  const std::vector<int64_t> rows =
      checked_rows(fn, host_indices(idx).data(), a, "a", out, "out", k, n_rows, row_size);
  if (k == 0 || row_size == 0) return;
  DeviceBuffer drows(k * sizeof(int64_t));
  check_cuda(cudaMemcpy(drows.ptr, rows.data(), k * sizeof(int64_t), cudaMemcpyHostToDevice), "cudaMemcpy");
  NEEDLE_LAUNCH(take_rows_kernel, grid_for(k * row_size), THREADS, a.ptr, drows.as<int64_t>(), out.ptr, k, row_size);
  check_launch(fn);
}

void index_add_rows(const Array& values, const Array& idx, Array& out, int64_t n_rows, int64_t row_size) {
  const char* fn = "index_add_rows";
  const int64_t k = static_cast<int64_t>(idx.size);
  const std::vector<int64_t> rows =
      checked_rows(fn, host_indices(idx).data(), out, "out", values, "values", k, n_rows, row_size);
  if (k == 0 || row_size == 0) return;
  if (&values == &out) value_error("index_add_rows: values and out must be different buffers");
  DeviceBuffer drows(k * sizeof(int64_t));
  check_cuda(cudaMemcpy(drows.ptr, rows.data(), k * sizeof(int64_t), cudaMemcpyHostToDevice), "cudaMemcpy");
  NEEDLE_LAUNCH(index_add_rows_kernel, grid_for(k * row_size), THREADS, values.ptr, drows.as<int64_t>(), out.ptr, k,
                row_size);
  check_launch(fn);
}

// ---------------------------------------------------------------------------
// device queries
// ---------------------------------------------------------------------------
int device_count() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

void synchronize() { check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

}  // namespace gpu
}  // namespace needle

PYBIND11_MODULE(ndarray_backend_cuda, m) {
  namespace py = pybind11;
  using namespace needle::gpu;
  m.attr("__device_name__") = "cuda";
  m.attr("__tile_size__") = TILE;
#ifdef NEEDLE_CUDA_EMULATE
  m.attr("__emulated__") = true;
#else
  m.attr("__emulated__") = false;
#endif

#ifdef NEEDLE_CUDA_EMULATE
  // module-local: the emulated module may be loaded next to the real one
  py::class_<Array>(m, "Array", py::module_local())
#else
  py::class_<Array>(m, "Array")
#endif
      .def(py::init<size_t>(), py::return_value_policy::take_ownership)
      .def("ptr", &Array::ptr_as_int)
      .def_readonly("size", &Array::size)
      .def("__repr__", [](const Array& a) { return "<ndarray_backend_cuda.Array size=" + std::to_string(a.size) + ">"; });

  m.def("device_count", &device_count, "number of CUDA devices; 0 on any error (no driver, no GPU)");
  m.def("synchronize", &synchronize, "wait for every queued kernel");
  m.def("release_cached_memory", &release_cache, "free the cached device buffers; returns the bytes freed");

  m.def("to_numpy", &to_numpy, py::arg("a"), py::arg("shape"), py::arg("strides"), py::arg("offset"));
  m.def("from_numpy", &from_numpy, py::arg("a"), py::arg("out"));
  m.def("fill", &fill, py::arg("out"), py::arg("val"));
  m.def("compact", &compact, py::arg("a"), py::arg("out"), py::arg("shape"), py::arg("strides"), py::arg("offset"));
  m.def("ewise_setitem", &ewise_setitem, py::arg("a"), py::arg("out"), py::arg("shape"), py::arg("strides"),
        py::arg("offset"));
  m.def("scalar_setitem", &scalar_setitem, py::arg("size"), py::arg("val"), py::arg("out"), py::arg("shape"),
        py::arg("strides"), py::arg("offset"));

#define NEEDLE_BINARY(name, Op)                                                                                   \
  m.def(                                                                                                          \
      "ewise_" #name, [](const Array& a, const Array& b, Array& out) { ewise<Op>("ewise_" #name, a, b, out); },   \
      py::arg("a"), py::arg("b"), py::arg("out"));                                                                \
  m.def(                                                                                                          \
      "scalar_" #name, [](const Array& a, scalar_t val, Array& out) { scalar_op<Op>("scalar_" #name, a, val, out); }, \
      py::arg("a"), py::arg("val"), py::arg("out"));
  NEEDLE_BINARY(add, AddOp)
  NEEDLE_BINARY(mul, MulOp)
  NEEDLE_BINARY(div, DivOp)
  NEEDLE_BINARY(maximum, MaximumOp)
  NEEDLE_BINARY(eq, EqOp)
  NEEDLE_BINARY(ge, GeOp)
#undef NEEDLE_BINARY
  m.def(
      "ewise_power", [](const Array& a, const Array& b, Array& out) { ewise<PowOp>("ewise_power", a, b, out); },
      py::arg("a"), py::arg("b"), py::arg("out"));
  m.def("scalar_power", &scalar_power, py::arg("a"), py::arg("val"), py::arg("out"));
#define NEEDLE_UNARY(name, Op) \
  m.def("ewise_" #name, [](const Array& a, Array& out) { unary<Op>("ewise_" #name, a, out); }, py::arg("a"), py::arg("out"));
  NEEDLE_UNARY(exp, ExpOp)
  NEEDLE_UNARY(log, LogOp)
  NEEDLE_UNARY(tanh, TanhOp)
  NEEDLE_UNARY(sin, SinOp)
  NEEDLE_UNARY(cos, CosOp)
  NEEDLE_UNARY(sqrt, SqrtOp)
  NEEDLE_UNARY(neg, NegOp)
#undef NEEDLE_UNARY
  m.def("ewise_where", &ewise_where, py::arg("cond"), py::arg("a"), py::arg("b"), py::arg("out"));

  m.def("reduce_sum", &reduce_sum, py::arg("a"), py::arg("out"), py::arg("n"));
  m.def("reduce_max", &reduce_max, py::arg("a"), py::arg("out"), py::arg("n"));
  m.def("reduce_sum_axis", &reduce_sum_axis, py::arg("a"), py::arg("out"), py::arg("outer"), py::arg("n"),
        py::arg("inner"));
  m.def("reduce_max_axis", &reduce_max_axis, py::arg("a"), py::arg("out"), py::arg("outer"), py::arg("n"),
        py::arg("inner"));
  m.def("reduce_argmax", &reduce_argmax, py::arg("a"), py::arg("out"), py::arg("n"));

  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("m"), py::arg("n"), py::arg("p"));
  m.def("matmul_tiled", &matmul_tiled, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("m"), py::arg("n"),
        py::arg("p"));
  m.def("matmul_batched", &matmul_batched, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("batch"), py::arg("m"),
        py::arg("n"), py::arg("p"), py::arg("a_batch_stride"), py::arg("b_batch_stride"));

  m.def("take_rows", &take_rows, py::arg("a"), py::arg("idx"), py::arg("out"), py::arg("n_rows"), py::arg("row_size"));
  m.def("index_add_rows", &index_add_rows, py::arg("values"), py::arg("idx"), py::arg("out"), py::arg("n_rows"),
        py::arg("row_size"));
}
