// Work-sharing thread pool, see threadpool.h.
#include "threadpool.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define NEEDLE_PAUSE() _mm_pause()
#else
#define NEEDLE_PAUSE() std::this_thread::yield()
#endif

namespace needle {
namespace cpu {

namespace {

struct Pool {
  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<int> sleeping{0};
  std::atomic<bool> stop{false};
  std::atomic<uint32_t> posted{0};  // generation of the latest job
  std::atomic<uint64_t> next{0};    // generation << 32 | next chunk index
  std::atomic<int64_t> done{0};
  std::atomic<int64_t> total{0};
  std::atomic<void (*)(void*, int64_t)> call{nullptr};
  std::atomic<void*> ctx{nullptr};
  uint32_t gen = 0;
  int nthreads = 1;
  pid_t pid = 0;
  std::mutex dispatch;  // one job at a time
};

Pool*& pool_ptr() {
  static Pool* p = new Pool();  // never destroyed: workers may outlive static destructors
  return p;
}

Pool& pool() { return *pool_ptr(); }

thread_local bool t_in_job = false;
constexpr std::chrono::microseconds kSpin{1000};  // how long an idle worker spins

// Claim and run chunks of whatever job is current; returns when none are left.
void run_chunks(Pool& P) {
  for (;;) {
    uint64_t v = P.next.load(std::memory_order_acquire);
    int64_t idx = static_cast<int64_t>(v & 0xffffffffu);
    int64_t total = P.total.load(std::memory_order_relaxed);
    auto call = P.call.load(std::memory_order_relaxed);
    void* ctx = P.ctx.load(std::memory_order_relaxed);
    if (idx >= total || call == nullptr) return;
    // the CAS fails if a new job was posted since `v` was read, so call/ctx/total belong to v's job
    if (!P.next.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel)) continue;
    call(ctx, idx);
    P.done.fetch_add(1, std::memory_order_release);
  }
}

void worker_main(Pool* P) {
  t_in_job = true;  // nested parallel calls from a chunk run serially
  uint32_t seen = P->posted.load();
  while (!P->stop.load()) {
    // spin for the next job for kSpin, then sleep: a compiled step's parallel kernels come
    // tens to hundreds of microseconds apart, and a futex wake-up costs about as much
    bool got = false;
    const auto until = std::chrono::steady_clock::now() + kSpin;
    for (uint32_t i = 1;; ++i) {
      if (P->posted.load(std::memory_order_acquire) != seen || P->stop.load(std::memory_order_relaxed)) {
        got = true;
        break;
      }
      NEEDLE_PAUSE();
      if (i % 64 == 0 && std::chrono::steady_clock::now() > until) break;
    }
    if (!got) {
      std::unique_lock<std::mutex> lk(P->mu);
      P->sleeping.fetch_add(1);
      P->cv.wait(lk, [&] { return P->stop.load() || P->posted.load() != seen; });
      P->sleeping.fetch_sub(1);
    }
    if (P->stop.load()) break;
    seen = P->posted.load(std::memory_order_acquire);
    run_chunks(*P);
  }
}

void stop_workers(Pool& P) {
  {
    std::lock_guard<std::mutex> lk(P.mu);
    P.stop.store(true);
  }
  P.cv.notify_all();
  for (auto& t : P.workers) t.join();
  P.workers.clear();
  P.stop.store(false);
}

void start_workers(Pool& P, int n) {
  P.nthreads = n < 1 ? 1 : n;
  P.pid = getpid();
  for (int i = 1; i < P.nthreads; ++i) P.workers.emplace_back(worker_main, &P);
}

void ensure_started() {
  static std::once_flag once;
  std::call_once(once, [] {
    unsigned hc = std::thread::hardware_concurrency();
    start_workers(pool(), hc ? static_cast<int>(hc) : 1);
  });
  Pool* P = pool_ptr();
  if (P->pid != getpid()) {
    // forked child: the parent's workers do not exist here.  Leak the old pool
    // (its thread handles must not be destroyed) and start a fresh one.
    int n = P->nthreads;
    Pool* fresh = new Pool();
    start_workers(*fresh, n);
    pool_ptr() = fresh;
  }
}

}  // namespace

int pool_num_threads() {
  ensure_started();
  return pool().nthreads;
}

void pool_set_num_threads(int n) {
  ensure_started();
  Pool& P = pool();
  std::lock_guard<std::mutex> lk(P.dispatch);
  stop_workers(P);
  start_workers(P, n);
}

void pool_run(int64_t n_chunks, void (*call)(void*, int64_t), void* ctx) {
  ensure_started();
  Pool& P = pool();
  if (t_in_job || n_chunks >= (int64_t(1) << 31) || !P.dispatch.try_lock()) {
    for (int64_t c = 0; c < n_chunks; ++c) call(ctx, c);
    return;
  }
  t_in_job = true;
  P.done.store(0, std::memory_order_relaxed);
  P.total.store(n_chunks, std::memory_order_relaxed);
  P.call.store(call, std::memory_order_relaxed);
  P.ctx.store(ctx, std::memory_order_relaxed);
  P.gen += 1;
  P.next.store(static_cast<uint64_t>(P.gen) << 32, std::memory_order_release);
  P.posted.store(P.gen);  // seq_cst: pairs with `sleeping` below
  if (P.sleeping.load() > 0) {
    std::lock_guard<std::mutex> lk(P.mu);
    P.cv.notify_all();
  }
  run_chunks(P);
  for (int spins = 0; P.done.load(std::memory_order_acquire) < n_chunks; ++spins) {
    if (spins < 20000) NEEDLE_PAUSE();
    else std::this_thread::yield();
  }
  // retire the job so late helpers find nothing to do
  P.call.store(nullptr, std::memory_order_relaxed);
  t_in_job = false;
  P.dispatch.unlock();
}

}  // namespace cpu
}  // namespace needle
