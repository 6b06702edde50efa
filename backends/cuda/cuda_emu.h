// A tiny host emulation of the subset of CUDA used by ndarray_backend_cuda.cu.
//
// Compiling the .cu as plain C++ with -DNEEDLE_CUDA_EMULATE (see
// tests/cuda/test_cuda_build.py) runs every kernel on the CPU, so the kernels'
// index arithmetic, bounds handling and the pybind11 layer can be tested on a
// machine without a GPU.  It is a test tool only, never used by the real build.
//
//  * device memory is host memory (cudaMalloc = malloc, cudaMemcpy = memcpy);
//  * a launch without __syncthreads runs blocks and threads one after another;
//  * a launch with __syncthreads (NEEDLE_LAUNCH_SYNC) runs the threads of a
//    block as real std::threads meeting at a barrier; blocks run one after
//    another, so `__shared__` (mapped to `static`) is one copy per kernel,
//    shared by the threads of the running block, like on a GPU.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(x)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace needle_emu {

struct Barrier {
  explicit Barrier(size_t n) : count(n) {}
  void wait() {
    std::unique_lock<std::mutex> lk(mu);
    size_t gen = generation;
    if (++arrived == count) {
      arrived = 0;
      ++generation;
      cv.notify_all();
    } else {
      cv.wait(lk, [&] { return gen != generation; });
    }
  }
  std::mutex mu;
  std::condition_variable cv;
  size_t count, arrived = 0, generation = 0;
};

inline thread_local dim3 t_thread_idx(0, 0, 0), t_block_idx(0, 0, 0), t_block_dim, t_grid_dim;
inline thread_local Barrier* t_barrier = nullptr;

template <class F>
void launch(dim3 grid, dim3 block, bool sync, F&& body) {
  const unsigned nt = block.x * block.y * block.z;
  auto set_thread = [&](unsigned t) { t_thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y)); };
  auto for_blocks = [&](auto&& per_block) {
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          t_block_idx = dim3(bx, by, bz);
          per_block();
        }
  };
  if (!sync) {
    t_grid_dim = grid;
    t_block_dim = block;
    for_blocks([&] {
      for (unsigned t = 0; t < nt; ++t) {
        set_thread(t);
        body();
      }
    });
    return;
  }
  Barrier bar(nt);
  std::vector<std::thread> threads;
  threads.reserve(nt);
  for (unsigned t = 0; t < nt; ++t) {
    threads.emplace_back([&, t] {
      t_grid_dim = grid;
      t_block_dim = block;
      t_barrier = &bar;
      for_blocks([&] {
        set_thread(t);
        body();
        bar.wait();  // the block's shared memory is reused by the next block
      });
      t_barrier = nullptr;
    });
  }
  for (auto& th : threads) th.join();
}

}  // namespace needle_emu

#define threadIdx (::needle_emu::t_thread_idx)
#define blockIdx (::needle_emu::t_block_idx)
#define blockDim (::needle_emu::t_block_dim)
#define gridDim (::needle_emu::t_grid_dim)

inline void __syncthreads() {
  if (::needle_emu::t_barrier) ::needle_emu::t_barrier->wait();
}

inline float atomicAdd(float* addr, float v) {
  float old, desired;
  __atomic_load(addr, &old, __ATOMIC_RELAXED);
  do {
    desired = old + v;
  } while (!__atomic_compare_exchange(addr, &old, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
  return old;
}

// ---- runtime API subset ---------------------------------------------------------
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorMemoryAllocation = 2;
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };

inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = std::malloc(bytes ? bytes : 1);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int v, size_t bytes) {
  std::memset(p, v, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "emulated cuda error"; }
