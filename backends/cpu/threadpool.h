// A small work-sharing thread pool (no OpenMP).
//
// The calling thread always takes part and helpers join when they wake up:
// chunks are claimed from an atomic counter, so a helper that is descheduled
// (the machine is shared) never holds up more than the chunk it is running,
// and one that wakes after the work is gone simply goes back to sleep.
#pragma once

#include <cstdint>
#include <type_traits>

namespace needle {
namespace cpu {

int pool_num_threads();
void pool_set_num_threads(int n);

// Runs call(ctx, c) for every chunk c in [0, n_chunks) on the pool; returns when all are done.
void pool_run(int64_t n_chunks, void (*call)(void*, int64_t), void* ctx);

template <class F>
inline void parallel_chunks(int64_t n_chunks, F&& f) {
  if (n_chunks <= 0) return;
  if (n_chunks == 1 || pool_num_threads() <= 1) {
    for (int64_t c = 0; c < n_chunks; ++c) f(c);
    return;
  }
  using Fn = typename std::remove_reference<F>::type;
  pool_run(n_chunks, [](void* ctx, int64_t c) { (*static_cast<Fn*>(ctx))(c); },
           const_cast<void*>(static_cast<const void*>(&f)));
}

}  // namespace cpu
}  // namespace needle
