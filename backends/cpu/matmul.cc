// Matrix multiplication: BLAS (scipy-openblas32, loaded at run time with init_blas) for
// large products, the dispatched small_gemm kernel (kernels_gemm.inc) for products with few
// columns and when no BLAS is loaded; the course's tiled layout kernel matmul_tiled;
// batched matmul with broadcast operands.
#include "common.h"

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
// time, so row blocks split across threads repeat no packing) up to 2^25 multiply-adds (a
// conv block of 256 pixels by 3x3x64 -> 128 ran 17% faster than in the BLAS, which packs
// A and B for each block), products of at most SKINNY_ROWS rows (B streamed once, where the
// BLAS would pack all of it: a fully connected layer at batch 1 or 8), products of at least
// 32 rows and 64 terms below 2^30 multiply-adds (the conv blocks and the 1x1 convs of
// ResNet-50, VGG-19's convs, the Transformer's projections: 3-8% faster end to end, the
// BLAS's packing of A and B not paying off below a large square product), and everything
// when no BLAS is loaded; BLAS takes the rest (large products, and thin ones such as an LSTM
// step's gates, 20 rows against a 400x1600 weight, where packing a strip per 20 rows costs).
bool use_small(int64_t m, int64_t n, int64_t k) {
  const int64_t work = m * n * k;
  return !use_blas() || m <= SKINNY_ROWS || (n <= 128 && work <= (int64_t(1) << 25)) ||
         (m >= 32 && k >= 64 && work < (int64_t(1) << 30));
}

// one (m,n,p) product, compact row-major operands
void gemm(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t p, bool parallel) {
  gemm_ex(false, false, m, p, n, a, n, b, p, c, p, parallel);
}

void matmul(const Array& a, const Array& b, Array& out, int64_t m, int64_t n, int64_t p) {
  check_matmul("matmul", a, b, out, m, n, p);
  gemm(a.ptr, b.ptr, out.ptr, m, n, p, true);
}

void matmul_batched(const Array& a, const Array& b, Array& out, int64_t batch, int64_t m, int64_t n, int64_t p,
                    int64_t a_batch_stride, int64_t b_batch_stride) {
  check_matmul_batched("matmul_batched", a, b, out, batch, m, n, p, a_batch_stride, b_batch_stride);
  const int64_t mp = m * p;
  const float *pa = a.ptr, *pb = b.ptr;
  float* po = out.ptr;
  for_each_product(batch, m, p, n, [&](int64_t i, bool parallel) {
    gemm(pa + i * a_batch_stride, pb + i * b_batch_stride, po + i * mp, m, n, p, parallel);
  });
}

// Tiled layout: a (m/T, n/T, T, T), b (n/T, p/T, T, T), out (m/T, p/T, T, T).
void matmul_tiled(const Array& a, const Array& b, Array& out, int64_t m, int64_t n, int64_t p) {
  check_matmul("matmul_tiled", a, b, out, m, n, p, TILE);
  const int64_t mt = m / TILE, nt = n / TILE, pt = p / TILE, TT = TILE * TILE;
  const auto tiled_row = kernels().tiled_row;
  auto row = [&](int64_t i) { tiled_row(a.ptr + i * nt * TT, b.ptr, out.ptr + i * pt * TT, nt, pt); };
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

bool gemm_split_by_rows(int64_t m, int64_t n, int64_t k) {
  return m >= n || (use_small(m, n, k) && n <= 128 && m >= 12 * pool_num_threads());
}

// a thread's share of n columns: a multiple of 32 (half of small_gemm's strip with AVX-512:
// finer shares balance the threads better, a last 32 columns run as a two-vector strip)
int64_t gemm_column_share(int64_t n) {
  const int64_t nt = pool_num_threads();
  return ((n + nt - 1) / nt + 31) / 32 * 32;
}

// small_gemm's partial tiles cost by the row (a 2-row tile ~1/3 of a 6-row one): fine
// splits balance best; the BLAS is given whole 8-row multiples
int64_t gemm_row_grain(int64_t m, int64_t n, int64_t k) { return use_small(m, n, k) ? 2 : 8; }

void gemm_ex(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
             const float* b, int64_t ldb, float* c, int64_t ldc, bool parallel, bool accumulate) {
  if (m == 0 || n == 0 || (k == 0 && accumulate)) return;
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
      kernels().small_gemm(trans_a, trans_b, i1 - i0, j1 - j0, k, pa, lda, pb, ldb, pc, ldc, accumulate);
    } else {
      g_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(i1 - i0), static_cast<int>(j1 - j0), static_cast<int>(k), 1.0f, pa,
              static_cast<int>(lda), pb, static_cast<int>(ldb), accumulate ? 1.0f : 0.0f, pc,
              static_cast<int>(ldc));
    }
  };
  const int64_t nt = pool_num_threads();
  if (!parallel || !gemm_split_worth(m, n, k)) {
    part(0, m, 0, n);
  } else if (gemm_split_by_rows(m, n, k)) {  // row blocks
    const int64_t grain = gemm_row_grain(m, n, k), r = ((m + nt - 1) / nt + grain - 1) / grain * grain;
    parallel_chunks((m + r - 1) / r, [&](int64_t q) { part(q * r, std::min(m, (q + 1) * r), 0, n); });
  } else {  // column blocks: each thread reads its share of B
    const int64_t r = gemm_column_share(n);
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
