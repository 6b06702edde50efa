// Matrix multiplication: BLAS (scipy-openblas32, loaded at run time with
// init_blas) with a blocked AVX2 fallback kernel; the course's tiled layout
// kernel matmul_tiled; batched matmul with broadcast operands.
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
constexpr int CblasRowMajor = 101, CblasNoTrans = 111;

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

// ---- fallback GEMM ------------------------------------------------------------
// C[m,p] = A[m,n] @ B[n,p], all row-major compact.  B is packed into column
// panels of width NR; micro-kernel computes MR x NR tiles.
constexpr int MR = 4, NR = 16;
constexpr int64_t KC = 256, MC = 64;

// Packs B into panels: panel j holds B[:, j*NR : j*NR+NR] as n rows of NR (zero padded).
void pack_b(const float* b, float* bp, int64_t n, int64_t p, bool parallel) {
  int64_t panels = (p + NR - 1) / NR;
  auto body = [&](int64_t jp) {
    int64_t j0 = jp * NR, w = std::min<int64_t>(NR, p - j0);
    float* dst = bp + jp * n * NR;
    for (int64_t k = 0; k < n; ++k) {
      const float* src = b + k * p + j0;
      int64_t c = 0;
      for (; c < w; ++c) dst[k * NR + c] = src[c];
      for (; c < NR; ++c) dst[k * NR + c] = 0.0f;
    }
  };
  if (parallel && n * p > (1 << 16)) parallel_chunks(panels, body);
  else for (int64_t jp = 0; jp < panels; ++jp) body(jp);
}

// acc(MR x NR) = A[rows, k0:k0+kc] @ panel[k0:k0+kc]; then C tile (=|+=) acc
inline void micro_kernel(const float* a, int64_t lda, const float* bpanel, int64_t kc, float* c, int64_t ldc,
                         int rows, int cols, bool accumulate) {
  alignas(32) float acc[MR][NR];
#ifdef NEEDLE_AVX2
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  const float* a0 = a;
  const float* a1 = a + (rows > 1 ? 1 : 0) * lda;
  const float* a2 = a + (rows > 2 ? 2 : 0) * lda;
  const float* a3 = a + (rows > 3 ? 3 : 0) * lda;
  for (int64_t k = 0; k < kc; ++k) {
    __m256 b0 = _mm256_load_ps(bpanel + k * NR), b1 = _mm256_load_ps(bpanel + k * NR + 8);
    __m256 x = _mm256_broadcast_ss(a0 + k);
    c00 = _mm256_fmadd_ps(x, b0, c00);
    c01 = _mm256_fmadd_ps(x, b1, c01);
    x = _mm256_broadcast_ss(a1 + k);
    c10 = _mm256_fmadd_ps(x, b0, c10);
    c11 = _mm256_fmadd_ps(x, b1, c11);
    x = _mm256_broadcast_ss(a2 + k);
    c20 = _mm256_fmadd_ps(x, b0, c20);
    c21 = _mm256_fmadd_ps(x, b1, c21);
    x = _mm256_broadcast_ss(a3 + k);
    c30 = _mm256_fmadd_ps(x, b0, c30);
    c31 = _mm256_fmadd_ps(x, b1, c31);
  }
  _mm256_store_ps(acc[0], c00); _mm256_store_ps(acc[0] + 8, c01);
  _mm256_store_ps(acc[1], c10); _mm256_store_ps(acc[1] + 8, c11);
  _mm256_store_ps(acc[2], c20); _mm256_store_ps(acc[2] + 8, c21);
  _mm256_store_ps(acc[3], c30); _mm256_store_ps(acc[3] + 8, c31);
#else
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) acc[r][j] = 0.0f;
  for (int r = 0; r < rows; ++r)
    for (int64_t k = 0; k < kc; ++k) {
      float x = a[r * lda + k];
      for (int j = 0; j < NR; ++j) acc[r][j] += x * bpanel[k * NR + j];
    }
#endif
  for (int r = 0; r < rows; ++r) {
    float* cr = c + r * ldc;
    if (accumulate)
      for (int j = 0; j < cols; ++j) cr[j] += acc[r][j];
    else
      for (int j = 0; j < cols; ++j) cr[j] = acc[r][j];
  }
}

void gemm_fallback(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t p, bool parallel) {
  if (m == 0 || p == 0) return;
  if (n == 0) {
    std::memset(c, 0, sizeof(float) * m * p);
    return;
  }
  int64_t panels = (p + NR - 1) / NR;
  float* bp = nullptr;
  if (posix_memalign(reinterpret_cast<void**>(&bp), 64, sizeof(float) * panels * n * NR) != 0) throw std::bad_alloc();
  pack_b(b, bp, n, p, parallel);
  int64_t mblocks = (m + MC - 1) / MC;
  auto block = [&](int64_t ib) {
    int64_t i0 = ib * MC, i1 = std::min(m, i0 + MC);
    for (int64_t jp = 0; jp < panels; ++jp) {
      int64_t j0 = jp * NR;
      int cols = static_cast<int>(std::min<int64_t>(NR, p - j0));
      for (int64_t k0 = 0; k0 < n; k0 += KC) {
        int64_t kc = std::min(KC, n - k0);
        const float* panel = bp + jp * n * NR + k0 * NR;
        for (int64_t i = i0; i < i1; i += MR) {
          int rows = static_cast<int>(std::min<int64_t>(MR, i1 - i));
          micro_kernel(a + i * n + k0, n, panel, kc, c + i * p + j0, p, rows, cols, k0 > 0);
        }
      }
    }
  };
  if (parallel && m * n * p > (1 << 18)) parallel_chunks(mblocks, block);
  else for (int64_t ib = 0; ib < mblocks; ++ib) block(ib);
  free(bp);
}

// one (m,n,p) product through BLAS if loaded, otherwise the fallback
void gemm(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t p, bool parallel) {
  if (m == 0 || p == 0) return;
  if (n == 0) {
    std::memset(c, 0, sizeof(float) * m * p);
    return;
  }
  if (use_blas()) {
    const int nt = pool_num_threads();
    auto sgemm = [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
      g_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(i1 - i0), static_cast<int>(j1 - j0),
              static_cast<int>(n), 1.0f, a + i0 * n, static_cast<int>(n), b + j0, static_cast<int>(p), 0.0f,
              c + i0 * p + j0, static_cast<int>(p));
    };
    if (!parallel || nt <= 1 || m * n * p < (int64_t(1) << 18)) {
      sgemm(0, m, 0, p);
    } else if (m >= p) {  // row blocks of A and C (multiples of 16 rows)
      int64_t rows = ((m + nt - 1) / nt + 15) / 16 * 16;
      int64_t chunks = (m + rows - 1) / rows;
      parallel_chunks(chunks, [&](int64_t k) { sgemm(k * rows, std::min(m, (k + 1) * rows), 0, p); });
    } else {  // column blocks of B and C (multiples of 16 columns)
      int64_t cols = ((p + nt - 1) / nt + 15) / 16 * 16;
      int64_t chunks = (p + cols - 1) / cols;
      parallel_chunks(chunks, [&](int64_t k) { sgemm(0, m, k * cols, std::min(p, (k + 1) * cols)); });
    }
  } else {
    gemm_fallback(a, b, c, m, n, p, parallel);
  }
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
  bool small = m * n * p < 48 * 48 * 48;
  if (small && batch > 1) {
    parallel_range(batch, (1 << 16) / (m * n * p + 1) + 2, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i)
        gemm_fallback(pa + i * a_batch_stride, pb + i * b_batch_stride, po + i * mp, m, n, p, false);
    }, 1);
  } else {
    for (int64_t i = 0; i < batch; ++i) gemm(pa + i * a_batch_stride, pb + i * b_batch_stride, po + i * mp, m, n, p, true);
  }
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

void gemm_ex(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
             const float* b, int64_t ldb, float* c, int64_t ldc, bool parallel, float beta) {
  if (m == 0 || n == 0) return;
  if (!trans_a && !trans_b && lda == k && ldb == n && ldc == n && beta == 0.0f) {
    gemm(a, b, c, m, k, n, parallel);
    return;
  }
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] *= beta;
    if (beta == 0.0f) for (int64_t i = 0; i < m; ++i) std::memset(c + i * ldc, 0, sizeof(float) * n);
    return;
  }
  if (use_blas()) {
    const int ta = trans_a ? 112 : CblasNoTrans, tb = trans_b ? 112 : CblasNoTrans;
    const int nt = pool_num_threads();
    auto rows = [&](int64_t i0, int64_t i1) {
      const float* pa = trans_a ? a + i0 : a + i0 * lda;
      g_sgemm(CblasRowMajor, ta, tb, static_cast<int>(i1 - i0), static_cast<int>(n), static_cast<int>(k), 1.0f, pa,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c + i0 * ldc, static_cast<int>(ldc));
    };
    auto cols = [&](int64_t j0, int64_t j1) {
      const float* pb = trans_b ? b + j0 * ldb : b + j0;
      g_sgemm(CblasRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(j1 - j0), static_cast<int>(k), 1.0f, a,
              static_cast<int>(lda), pb, static_cast<int>(ldb), beta, c + j0, static_cast<int>(ldc));
    };
    if (!parallel || nt <= 1 || m * n * k < (int64_t(1) << 18)) {
      rows(0, m);
    } else if (m >= n) {
      int64_t r = ((m + nt - 1) / nt + 15) / 16 * 16, chunks = (m + r - 1) / r;
      parallel_chunks(chunks, [&](int64_t q) { rows(q * r, std::min(m, (q + 1) * r)); });
    } else {
      int64_t r = ((n + nt - 1) / nt + 15) / 16 * 16, chunks = (n + r - 1) / r;
      parallel_chunks(chunks, [&](int64_t q) { cols(q * r, std::min(n, (q + 1) * r)); });
    }
    return;
  }
  // no BLAS: compact copies of the operands, then the fallback kernel
  std::vector<float> ca(m * k), cb(k * n), cc(m * n);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t p = 0; p < k; ++p) ca[i * k + p] = trans_a ? a[p * lda + i] : a[i * lda + p];
  for (int64_t p = 0; p < k; ++p)
    for (int64_t j = 0; j < n; ++j) cb[p * n + j] = trans_b ? b[j * ldb + p] : b[p * ldb + j];
  gemm_fallback(ca.data(), cb.data(), cc.data(), m, k, n, parallel);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = cc[i * n + j] + (beta == 0.0f ? 0.0f : beta * c[i * ldc + j]);
}

void register_matmul(py::module_& m) {
  m.def("init_blas", &init_blas, py::arg("path"),
        "dlopen a CBLAS library (scipy-openblas32) and use its sgemm; returns True on success");
  m.def("blas_loaded", []() { return g_sgemm != nullptr; });
  m.def("blas_path", []() { return g_blas_path; });
  m.def("set_blas_enabled", [](bool on) { g_blas_enabled = on; }, py::arg("enabled"),
        "use BLAS (True) or the built-in fallback kernel (False) for matmul");
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("m"), py::arg("n"), py::arg("p"));
  m.def("matmul_tiled", &matmul_tiled, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("m"), py::arg("n"),
        py::arg("p"));
  m.def("matmul_batched", &matmul_batched, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("batch"), py::arg("m"),
        py::arg("n"), py::arg("p"), py::arg("a_batch_stride"), py::arg("b_batch_stride"));
}

}  // namespace cpu
}  // namespace needle
