// Matrix multiplication: BLAS (scipy-openblas32, loaded at run time with init_blas) for
// large products, small_gemm.cc for products with few columns and when no BLAS is loaded;
// the course's tiled layout kernel matmul_tiled; batched matmul with broadcast operands.
#include "common.h"
#include "simd.h"

#include <dlfcn.h>
#include <algorithm>
#include <cstring>

namespace needle {
namespace cpu {

namespace {

// ---- BLAS shim -------------------------------------------------------------
typedef void (*sgemm_fn)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc);
typedef void (*set_threads_fn)(int);
constexpr int CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112;
// m*n*k from which a product is split across the pool, by kernel
constexpr int64_t SMALL_SPLIT = int64_t(1) << 18, BLAS_SPLIT = int64_t(1) << 21;

sgemm_fn g_sgemm = nullptr;
set_threads_fn g_blas_set_threads = nullptr;
bool g_blas_enabled = true;
std::string g_blas_path;

bool init_blas(const std::string& path) {
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) return false;
  sgemm_fn f = nullptr;
  for (const char* name : {"scipy_cblas_sgemm", "cblas_sgemm"}) {
    f = reinterpret_cast<sgemm_fn>(dlsym(h, name));
    if (f) break;
  }
  if (!f) {
    dlclose(h);
    return false;
  }
  set_threads_fn st = nullptr;
  for (const char* name : {"scipy_openblas_set_num_threads", "openblas_set_num_threads"}) {
    st = reinterpret_cast<set_threads_fn>(dlsym(h, name));
    if (st) break;
  }
  g_sgemm = f;
  g_blas_set_threads = st;
  g_blas_path = path;
  // OpenBLAS runs single-threaded: needle's pool splits each product across threads
  // (OpenBLAS's own spinning threads stall badly when another process takes a core).
  if (st) st(1);
  return true;  // the handle stays open for the life of the process
}

inline bool use_blas() { return g_sgemm != nullptr && g_blas_enabled; }

// ---- GEMM dispatch --------------------------------------------------------------
// needle's small_gemm takes products with few columns (it packs at most one strip of B at a
// time, so row blocks split across threads repeat no packing) and everything when no BLAS
// is loaded; BLAS takes the rest.
bool use_small(int64_t m, int64_t n, int64_t k) {
  return !use_blas() || (n <= 128 && m * n * k <= (int64_t(1) << 23));
}

// one (m,n,p) product, compact row-major operands
void gemm(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t p, bool parallel) {
  gemm_ex(false, false, m, p, n, a, n, b, p, c, p, parallel);
}

void check_dims(const char* fn, int64_t m, int64_t n, int64_t p) {
  check_dim(fn, "m", m);
  check_dim(fn, "n", n);
  check_dim(fn, "p", p);
  const int64_t lim = (int64_t(1) << 31) - 1;
  if (m > lim || n > lim || p > lim) value_error(std::string(fn) + ": dimension too large for 32-bit BLAS");
}

void matmul(const Array& a, const Array& b, Array& out, int64_t m, int64_t n, int64_t p) {
  check_dims("matmul", m, n, p);
  check_size("matmul", "a", a, checked_mul("matmul", m, n));
  check_size("matmul", "b", b, checked_mul("matmul", n, p));
  check_size("matmul", "out", out, checked_mul("matmul", m, p));
  if (&out == &a || &out == &b) value_error("matmul: out must not alias an input");
  gemm(a.ptr, b.ptr, out.ptr, m, n, p, true);
}

void matmul_batched(const Array& a, const Array& b, Array& out, int64_t batch, int64_t m, int64_t n, int64_t p,
                    int64_t a_batch_stride, int64_t b_batch_stride) {
  const char* fn = "matmul_batched";
  check_dims(fn, m, n, p);
  check_dim(fn, "batch", batch);
  check_dim(fn, "a_batch_stride", a_batch_stride);
  check_dim(fn, "b_batch_stride", b_batch_stride);
  int64_t mn = checked_mul(fn, m, n), np_ = checked_mul(fn, n, p), mp = checked_mul(fn, m, p);
  check_size(fn, "out", out, checked_mul(fn, batch, mp));
  if (batch == 0) return;
  int64_t a_need = checked_mul(fn, batch - 1, a_batch_stride) + mn;
  int64_t b_need = checked_mul(fn, batch - 1, b_batch_stride) + np_;
  if (static_cast<int64_t>(a.size) < a_need)
    value_error(std::string(fn) + ": a has size " + std::to_string(a.size) + ", needs at least " + std::to_string(a_need));
  if (static_cast<int64_t>(b.size) < b_need)
    value_error(std::string(fn) + ": b has size " + std::to_string(b.size) + ", needs at least " + std::to_string(b_need));
  if (&out == &a || &out == &b) value_error("matmul_batched: out must not alias an input");
  const float *pa = a.ptr, *pb = b.ptr;
  float* po = out.ptr;
  for_each_product(batch, m, p, n, [&](int64_t i, bool parallel) {
    gemm(pa + i * a_batch_stride, pb + i * b_batch_stride, po + i * mp, m, n, p, parallel);
  });
}

// Tiled layout: a (m/T, n/T, T, T), b (n/T, p/T, T, T), out (m/T, p/T, T, T).
void matmul_tiled(const Array& a, const Array& b, Array& out, int64_t m, int64_t n, int64_t p) {
  const char* fn = "matmul_tiled";
  check_dims(fn, m, n, p);
  if (m % TILE || n % TILE || p % TILE)
    value_error(std::string(fn) + ": dimensions (" + std::to_string(m) + ", " + std::to_string(n) + ", " +
                std::to_string(p) + ") must be multiples of the tile size " + std::to_string(TILE));
  check_size(fn, "a", a, checked_mul(fn, m, n));
  check_size(fn, "b", b, checked_mul(fn, n, p));
  check_size(fn, "out", out, checked_mul(fn, m, p));
  if (&out == &a || &out == &b) value_error("matmul_tiled: out must not alias an input");
  const int64_t mt = m / TILE, nt = n / TILE, pt = p / TILE, TT = TILE * TILE;
  const float *pa = a.ptr, *pb = b.ptr;
  float* po = out.ptr;
  auto row = [&](int64_t i) {
    for (int64_t j = 0; j < pt; ++j) {
      float* o = po + (i * pt + j) * TT;
#ifdef NEEDLE_AVX2
      __m256 acc[TILE];
      for (int r = 0; r < TILE; ++r) acc[r] = _mm256_setzero_ps();
      for (int64_t k = 0; k < nt; ++k) {
        const float* at = pa + (i * nt + k) * TT;
        const float* bt = pb + (k * pt + j) * TT;
        __m256 brow[TILE];
        for (int c = 0; c < TILE; ++c) brow[c] = _mm256_loadu_ps(bt + c * TILE);
        for (int r = 0; r < TILE; ++r)
          for (int c = 0; c < TILE; ++c) acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(at + r * TILE + c), brow[c], acc[r]);
      }
      for (int r = 0; r < TILE; ++r) _mm256_storeu_ps(o + r * TILE, acc[r]);
#else
      float acc[TILE * TILE] = {0};
      for (int64_t k = 0; k < nt; ++k) {
        const float* at = pa + (i * nt + k) * TT;
        const float* bt = pb + (k * pt + j) * TT;
        for (int r = 0; r < TILE; ++r)
          for (int c = 0; c < TILE; ++c)
            for (int q = 0; q < TILE; ++q) acc[r * TILE + q] += at[r * TILE + c] * bt[c * TILE + q];
      }
      std::memcpy(o, acc, sizeof(acc));
#endif
    }
  };
  if (m * n * p > (1 << 18)) parallel_chunks(mt, row);
  else for (int64_t i = 0; i < mt; ++i) row(i);
}

}  // namespace

void blas_set_num_threads(int) {
  // OpenBLAS stays single-threaded (see init_blas); needle's pool sets the parallelism.
  if (g_blas_set_threads) g_blas_set_threads(1);
}

bool gemm_split_worth(int64_t m, int64_t n, int64_t k) {
  const int64_t work = m * n * k;
  return pool_num_threads() > 1 && work >= (use_small(m, n, k) ? SMALL_SPLIT : BLAS_SPLIT);
}

// small_gemm's partial tiles cost by the row (a 2-row tile ~1/3 of a 6-row one): fine
// splits balance best; the BLAS is given whole 8-row multiples
int64_t gemm_row_grain(int64_t m, int64_t n, int64_t k) { return use_small(m, n, k) ? 2 : 8; }

void gemm_ex(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
             const float* b, int64_t ldb, float* c, int64_t ldc, bool parallel) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i) std::memset(c + i * ldc, 0, sizeof(float) * n);
    return;
  }
  const bool small = use_small(m, n, k);
  // C[i0:i1, j0:j1] from rows i0:i1 of op(A) and columns j0:j1 of op(B)
  auto part = [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const float* pa = trans_a ? a + i0 : a + i0 * lda;
    const float* pb = trans_b ? b + j0 * ldb : b + j0;
    float* pc = c + i0 * ldc + j0;
    if (small) {
      small_gemm(trans_a, trans_b, i1 - i0, j1 - j0, k, pa, lda, pb, ldb, pc, ldc);
    } else {
      g_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(i1 - i0), static_cast<int>(j1 - j0), static_cast<int>(k), 1.0f, pa,
              static_cast<int>(lda), pb, static_cast<int>(ldb), 0.0f, pc, static_cast<int>(ldc));
    }
  };
  const int64_t nt = pool_num_threads();
  if (!parallel || !gemm_split_worth(m, n, k)) {
    part(0, m, 0, n);
  } else if (small ? m >= 12 * nt : m >= n) {  // row blocks
    const int64_t grain = gemm_row_grain(m, n, k), r = ((m + nt - 1) / nt + grain - 1) / grain * grain;
    parallel_chunks((m + r - 1) / r, [&](int64_t q) { part(q * r, std::min(m, (q + 1) * r), 0, n); });
  } else {  // column blocks (multiples of 16)
    const int64_t r = ((n + nt - 1) / nt + 15) / 16 * 16;
    parallel_chunks((n + r - 1) / r, [&](int64_t q) { part(0, m, q * r, std::min(n, (q + 1) * r)); });
  }
}

void register_matmul(py::module_& m) {
  m.def("init_blas", &init_blas, py::arg("path"),
        "dlopen a CBLAS library (scipy-openblas32) and use its sgemm; returns True on success");
  m.def("blas_loaded", []() { return g_sgemm != nullptr; });
  m.def("blas_path", []() { return g_blas_path; });
  m.def("set_blas_enabled", [](bool on) { g_blas_enabled = on; }, py::arg("enabled"),
        "use BLAS (True) or only needle's own small_gemm kernel (False) for matmul");
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("m"), py::arg("n"), py::arg("p"));
  m.def("matmul_tiled", &matmul_tiled, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("m"), py::arg("n"),
        py::arg("p"));
  m.def("matmul_batched", &matmul_batched, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("batch"), py::arg("m"),
        py::arg("n"), py::arg("p"), py::arg("a_batch_stride"), py::arg("b_batch_stride"));
}

}  // namespace cpu
}  // namespace needle
