// The native executor's program: a compiled graph as a list of steps over buffer slots,
// run by one call from Python (needle.runtime.native builds it).
//
// A slot is a buffer address and its size: the first slots are bound at every run (graph
// inputs, then outputs, of sizes given to the constructor); the others are static (arena
// offsets, constants, scratch), set once with set_slot. Adding a step checks that every slot
// holds all the floats the step's parameters make it read or write there (kernels: the sizes
// of their buffers, which the builder checked their indices against), so a program never
// touches memory outside its buffers, whatever the graph says. Steps, in order:
//   kernel    an LLVM kernel's `name_range(void** args, lo, hi)`, its top-level loop split
//             across the thread pool when the work is large enough;
//   gemm      batched C = op(A) @ op(B) (gemm_ex: BLAS or small_gemm), optionally followed
//             per row block by an epilogue kernel's range (the rows still in cache);
//   conv      NHWC convolution as GEMMs over its patches by cache-sized blocks of output
//             pixels (conv_blocked), or with few output pixels one GEMM split by output
//             channels, the patches read in place from the zero-padded input when a kernel
//             tap has 16 channels or more (InPlace), else gathered first (im2col); or for
//             wide stride-1 convs one GEMM per kernel row and output row over the padded
//             input (conv_rows); optionally followed per block by an epilogue kernel's range
//             (as gemm's); its input gradient as GEMM + col2im, its weight gradient as
//             im2col + one GEMM;
//   random    counter-based uniform floats (RandomUniform's splitmix64 streams);
//   gather / index_add   rows along axis 0 (embedding lookup and its gradient); bad ids
//             are clamped to a row (the graph's id check reports them);
//   copy      a contiguous copy of n floats, or of rows of n floats into a destination with
//             a larger row stride (a piece of a join along an inner axis);
//   callback  a Python function given the slots' addresses (ops with no native step).
#include "common.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <optional>

namespace needle {
namespace cpu {

namespace {

typedef void (*range_fn)(void** args, int64_t lo, int64_t hi);

enum StepKind { KERNEL, GEMM, CONV, CONV_DATA, CONV_FILTER, RANDOM, GATHER, INDEX_ADD, COPY, CALLBACK };

struct Step {
  StepKind kind;
  std::vector<int> slots;
  std::vector<int64_t> p;            // integer parameters (meaning per kind)
  range_fn fn = nullptr;             // KERNEL, or GEMM's / CONV's epilogue
  std::vector<int> epi_slots;        // GEMM's / CONV's epilogue arguments
  std::vector<int64_t> offsets;      // GEMM's per-product operand offsets
  py::object callback;               // CALLBACK
  std::string name;                  // for error messages
};

uint64_t splitmix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// The row an id names, clamped into [0, n_rows) (n_rows > 0; NaN and negatives to 0): a bad
// id never reads or writes out of bounds; the graph's id check reports it after the step.
int64_t clamped_row(float v, int64_t n_rows) {
  if (!(v > 0.0f)) return 0;
  if (!(v < static_cast<float>(n_rows))) return n_rows - 1;
  return std::min(static_cast<int64_t>(v), n_rows - 1);
}

// Runs fn over [0, extent) in at most 4 contiguous chunks per thread (claimed as threads
// finish: a thread held up by another process holds up less) of >= min_chunk iterations
// (boundaries rounded to `align`).
void run_range(range_fn fn, void** args, int64_t extent, int64_t min_chunk, int64_t align) {
  int64_t nt = pool_num_threads();
  int64_t chunks = std::min<int64_t>(4 * nt, extent / std::max<int64_t>(min_chunk, 1));
  if (chunks <= 1) {
    fn(args, 0, extent);
    return;
  }
  int64_t per = (extent + chunks - 1) / chunks;
  per = (per + align - 1) / align * align;
  chunks = (extent + per - 1) / per;
  parallel_chunks(chunks, [&](int64_t c) { fn(args, c * per, std::min(extent, (c + 1) * per)); });
}

// Floats from the first element of a row-major `rows` x `cols` matrix with leading
// dimension ld to its last
int64_t matrix_span(int64_t rows, int64_t cols, int64_t ld) {
  return rows > 0 && cols > 0 ? (rows - 1) * ld + cols : 0;
}

// dst[0:n) = src[0:n): short runs (a patch row of a conv of few channels) inline, by 16-byte
// moves, not by a call to memcpy per run
inline void copy_floats(float* dst, const float* src, int64_t n) {
  if (n > 32) {
    std::memcpy(dst, src, sizeof(float) * n);
    return;
  }
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) std::memcpy(dst + i, src + i, 4 * sizeof(float));
  for (; i < n; ++i) dst[i] = src[i];
}

bool any_negative(const std::vector<int64_t>& v) {
  return std::any_of(v.begin(), v.end(), [](int64_t x) { return x < 0; });
}

class Program {
 public:
  // in_sizes, out_sizes: floats of the graph's inputs and outputs (the first slots)
  Program(int n_slots, const std::vector<int64_t>& in_sizes, std::vector<int64_t> out_sizes)
      : addr_(n_slots, nullptr), size_(n_slots, -1), out_sizes_(std::move(out_sizes)),
        n_io_(static_cast<int>(in_sizes.size() + out_sizes_.size())) {
    if (n_io_ > n_slots) value_error("Program: more inputs and outputs than slots");
    std::copy(in_sizes.begin(), in_sizes.end(), size_.begin());
    std::copy(out_sizes_.begin(), out_sizes_.end(), size_.begin() + in_sizes.size());
  }

  // A static slot: its address and size (floats).
  void set_slot(int slot, size_t address, int64_t size) {
    if (slot < n_io_ || slot >= static_cast<int>(addr_.size()) || size < 0)
      value_error("Program.set_slot: bad static slot " + std::to_string(slot) + " of size " + std::to_string(size));
    addr_[slot] = reinterpret_cast<float*>(address);
    size_[slot] = size;
  }

  // sizes: floats the kernel reads or writes in each slot (its buffers' sizes)
  void add_kernel(const std::string& name, size_t fn, std::vector<int> slots, const std::vector<int64_t>& sizes,
                  int64_t extent, int64_t min_chunk, int64_t align) {
    Step s{KERNEL, check("kernel " + name, slots, sizes), {extent, min_chunk, align}};
    s.fn = reinterpret_cast<range_fn>(fn);
    s.name = name;
    steps_.push_back(std::move(s));
  }

  // slots a, b, c; p = batch, m, n, k, trans_a, trans_b, lda, ldb, batch strides of a, b, c
  // (elements; 0 broadcasts), accumulate (1: C += the product); epilogue: kernel range over
  // [0, epi_extent), split by rows of C. offsets: the element offsets of a and b for each
  // product (a0, b0, a1, b1, ...: any numpy batch broadcasting, or where a single product's
  // operands start); none: products i at i * the batch strides.
  // epi_sizes: floats the epilogue kernel reads or writes in each of epi_slots
  void add_gemm(std::vector<int> slots, std::vector<int64_t> p, size_t epi_fn, std::vector<int> epi_slots,
                const std::vector<int64_t>& epi_sizes, int64_t epi_extent, std::vector<int64_t> offsets) {
    if (slots.size() != 3 || p.size() != 12 || p[11] > 1)
      value_error("Program.add_gemm: expects 3 slots and 12 parameters (the last 0 or 1)");
    const int64_t batch = p[0], m = p[1], n = p[2], k = p[3];
    if (!offsets.empty() && static_cast<int64_t>(offsets.size()) != 2 * batch)
      value_error("Program.add_gemm: expects 2 offsets per product");
    if (any_negative(p) || any_negative(offsets))
      value_error("Program.add_gemm: negative parameter or offset");
    // op(A) is m x k and op(B) k x n (stored transposed when trans_a/trans_b), C is m x n
    const int64_t span_a = p[4] ? matrix_span(k, m, p[6]) : matrix_span(m, k, p[6]);
    const int64_t span_b = p[5] ? matrix_span(n, k, p[7]) : matrix_span(k, n, p[7]);
    std::vector<int64_t> need(3, 0);
    for (int64_t i = 0; i < batch; ++i) {
      const int64_t oa = offsets.empty() ? i * p[8] : offsets[2 * i];
      const int64_t ob = offsets.empty() ? i * p[9] : offsets[2 * i + 1];
      need[0] = std::max(need[0], span_a ? oa + span_a : 0);
      need[1] = std::max(need[1], span_b ? ob + span_b : 0);
      need[2] = std::max(need[2], m * n != 0 ? i * p[10] + m * n : 0);
    }
    Step s{GEMM, check("gemm", slots, need), p};
    s.offsets = std::move(offsets);
    s.p.push_back(epi_extent);
    s.fn = reinterpret_cast<range_fn>(epi_fn);
    s.epi_slots = check("gemm epilogue", epi_slots, epi_sizes);
    steps_.push_back(std::move(s));
  }

  // slots x, w, out, scratch; p = n, h, w, c_in, kh, kw, c_out, stride, padding
  // kind: 0 conv (x, w, out, scratch), 1 its input gradient (g, w, dx, scratch), 2 its
  // weight gradient (x, g, dw, scratch); p = n, h, w, c_in, kh, kw, c_out, stride, padding
  // (h, w: the conv's input size in every case). A conv (kind 0) may have an epilogue: a
  // kernel range over [0, epi_extent), split by output pixels (epi_extent a multiple of them).
  void add_conv(int kind, std::vector<int> slots, std::vector<int64_t> p, size_t epi_fn, std::vector<int> epi_slots,
                const std::vector<int64_t>& epi_sizes, int64_t epi_extent) {
    if (slots.size() != 4 || p.size() != 9 || kind < 0 || kind > 2)
      value_error("Program.add_conv: expects kind 0-2, 4 slots and 9 parameters");
    if (any_negative(p) || p[7] == 0 || p[1] + 2 * p[8] < p[4] || p[2] + 2 * p[8] < p[5])
      value_error("Program.add_conv: negative size, zero stride or a kernel larger than the padded image");
    const ConvDims d(p);
    const int64_t row = d.kh * d.kw * d.ci, pixels = d.n * d.ho * d.wo;
    const int64_t x = d.n * d.h * d.w * d.ci, w = row * d.co, y = pixels * d.co;
    int64_t cols = d.pointwise() ? 0 : kind == 0 ? conv_scratch_rows(d) * row : pixels * row;
    if (kind == 0 && d.pad > 0 && (by_kernel_rows(d) || d.ci >= CONV_IN_PLACE_MIN_CHANNELS))
      cols = std::max(cols, padded_floats(d));   // the padded input (conv_rows, conv_in_place)
    const std::vector<int64_t> need = kind == 0 ? std::vector<int64_t>{x, w, y, cols}
                                      : kind == 1 ? std::vector<int64_t>{y, w, x, cols}
                                                  : std::vector<int64_t>{x, y, w, cols};
    Step s{kind == 0 ? CONV : kind == 1 ? CONV_DATA : CONV_FILTER, check("conv", slots, need), p};
    if (epi_fn != 0) {
      if (kind != 0 || pixels == 0 || epi_extent <= 0 || epi_extent % pixels != 0)
        value_error("Program.add_conv: an epilogue needs a conv (kind 0) and an extent a multiple of its pixels");
      s.fn = reinterpret_cast<range_fn>(epi_fn);
      s.epi_slots = check("conv epilogue", epi_slots, epi_sizes);
      s.p.push_back(epi_extent);
    }
    steps_.push_back(std::move(s));
  }

  // slots counter, base, out; p = size, stream
  void add_random(std::vector<int> slots, int64_t size, int64_t stream) {
    steps_.push_back(Step{RANDOM, check("random", slots, {1, 1, size}), {size, stream}});
  }

  // slots a/values, indices, out; p = n_indices, n_rows, row_size
  void add_gather(std::vector<int> slots, int64_t n_idx, int64_t n_rows, int64_t row) {
    steps_.push_back(Step{GATHER, check("gather", slots, {n_rows * row, n_idx, n_idx * row}), {n_idx, n_rows, row}});
  }
  void add_index_add(std::vector<int> slots, int64_t n_idx, int64_t n_rows, int64_t row) {
    steps_.push_back(
        Step{INDEX_ADD, check("index_add", slots, {n_idx * row, n_idx, n_rows * row}), {n_idx, n_rows, row}});
  }

  // rows rows of n floats: compact in the source, dst_ld floats apart in the destination
  void add_copy(std::vector<int> slots, int64_t n, int64_t rows, int64_t dst_ld) {
    if (n < 0 || rows < 1 || (rows > 1 && dst_ld < n)) value_error("Program.add_copy: bad rows or row stride");
    steps_.push_back(Step{COPY, check("copy", slots, {rows * n, (rows - 1) * dst_ld + n}), {n, rows, dst_ld}});
  }

  // sizes: floats the callback reads or writes in each slot
  void add_callback(py::function f, std::vector<int> slots, const std::vector<int64_t>& sizes,
                    const std::string& name) {
    Step s{CALLBACK, check("callback " + name, slots, sizes), {}};
    s.callback = std::move(f);
    s.name = name;
    steps_.push_back(std::move(s));
  }

  size_t size() const { return steps_.size(); }

  // Allocates the output arrays, binds the inputs (`inputs`: addresses) and the outputs,
  // runs, and returns the outputs (Array objects): one call per step from Python.
  py::list run_alloc(const std::vector<size_t>& inputs) {
    std::vector<size_t> io(inputs);
    py::list outs;
    for (int64_t n : out_sizes_) {
      Array* a = new Array(static_cast<size_t>(std::max<int64_t>(n, 1)));
      io.push_back(reinterpret_cast<size_t>(a->ptr));
      outs.append(py::cast(a, py::return_value_policy::take_ownership));
    }
    run(io);
    return outs;
  }

  // Binds the io slots to `io` (addresses) and runs every step in order. The steps run
  // without the GIL (a callback takes it back), so Python threads run meanwhile: the one
  // that moves a gradient bucket's non-blocking all-reduce along, above all.
  void run(const std::vector<size_t>& io) {
    if (static_cast<int>(io.size()) != n_io_)
      value_error("Program.run: expects " + std::to_string(n_io_) + " addresses, got " + std::to_string(io.size()));
    for (int k = 0; k < n_io_; ++k) addr_[k] = reinterpret_cast<float*>(io[k]);
    std::vector<void*> args;
    if (profile_ && seconds_.size() != steps_.size()) {
      seconds_.assign(steps_.size(), 0.0);
      first_.assign(steps_.size(), 0.0);
      calls_.assign(steps_.size(), 0);
    }
    py::gil_scoped_release no_gil;
    std::lock_guard<std::mutex> one_run_at_a_time(running_);   // the arena is shared by all calls
    for (size_t k = 0; k < steps_.size(); ++k) {
      Step& s = steps_[k];
      auto start = profile_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
      switch (s.kind) {
        case KERNEL:
          gather_args(s.slots, args);
          run_range(s.fn, args.data(), s.p[0], s.p[1], s.p[2]);
          break;
        case GEMM: run_gemm(s, args); break;
        case CONV: run_conv(s, args); break;
        case CONV_DATA: run_conv_data(s); break;
        case CONV_FILTER: run_conv_filter(s); break;
        case RANDOM: run_random(s); break;
        case GATHER: run_gather(s); break;
        case INDEX_ADD: run_index_add(s); break;
        case COPY: run_copy(s); break;
        case CALLBACK: {
          py::gil_scoped_acquire gil;
          py::list a;
          for (int slot : s.slots) a.append(reinterpret_cast<size_t>(addr_[slot]));
          s.callback(a);
          break;
        }
      }
      if (profile_) {
        const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (calls_[k]++ == 0) first_[k] = t;
        seconds_[k] += t;
      }
    }
  }

  // Per-step timing (NEEDLE_PROFILE): on/off, and (seconds, calls) per step so far, the first
  // call left out once there are more (it first touches the arena and scratch: a conv's
  // mean over 13 calls was 3x its steady time)
  void set_profile(bool on) { profile_ = on; }
  std::pair<std::vector<double>, std::vector<int64_t>> profile() const {
    std::vector<double> seconds(seconds_);
    std::vector<int64_t> calls(calls_);
    for (size_t k = 0; k < calls.size(); ++k)
      if (calls[k] > 1) seconds[k] -= first_[k], calls[k] -= 1;
    return {seconds, calls};
  }

 private:
  // The slots of a step that touches need[k] floats from the start of slot k's buffer,
  // after checking that every one holds that many.
  std::vector<int> check(const std::string& step, const std::vector<int>& slots,
                         const std::vector<int64_t>& need) const {
    if (need.size() != slots.size()) value_error("Program: " + step + ": one size per slot expected");
    for (size_t k = 0; k < slots.size(); ++k) {
      const int slot = slots[k];
      if (slot < 0 || slot >= static_cast<int>(addr_.size()) || size_[slot] < 0)
        value_error("Program: " + step + ": slot " + std::to_string(slot) + " is not a buffer");
      if (need[k] < 0 || need[k] > size_[slot])
        value_error("Program: " + step + " would touch " + std::to_string(need[k]) + " floats of slot " +
                    std::to_string(slot) + " (argument " + std::to_string(k) + "), which holds " +
                    std::to_string(size_[slot]));
    }
    return slots;
  }
  float* at(const Step& s, int k) const { return addr_[s.slots[k]]; }
  void gather_args(const std::vector<int>& slots, std::vector<void*>& args) const {
    args.resize(slots.size());
    for (size_t k = 0; k < slots.size(); ++k) args[k] = addr_[slots[k]];
  }

  void run_gemm(const Step& s, std::vector<void*>& args) {
    const int64_t batch = s.p[0], m = s.p[1], n = s.p[2], k = s.p[3];
    const bool ta = s.p[4], tb = s.p[5];
    const int64_t lda = s.p[6], ldb = s.p[7], sa = s.p[8], sb = s.p[9], sc = s.p[10], epi_extent = s.p[12];
    const bool acc = s.p[11];   // C += the product (a product split along K: all but its first part)
    const float *a = at(s, 0), *b = at(s, 1);
    float* c = at(s, 2);
    if (s.fn != nullptr) gather_args(s.epi_slots, args);
    const int64_t nt = pool_num_threads();
    const bool split = gemm_split_worth(m, n, k);
    // The epilogue runs on row blocks of C right after the GEMM writes them, while they are
    // in cache: blocks about the size of L2 when B is small (a BLAS block packs all of B
    // again), else one block per thread. Products gemm_ex splits by columns (few rows, a
    // wide B: each thread then reads its share of B, not all of it; ResNet-50's 1x1 convs
    // at 7x7 ran 2x slower by rows) run as one GEMM split over the threads, then one
    // parallel epilogue pass.
    if (batch == 1 && s.fn != nullptr && m > 0 && epi_extent % m == 0 && (!split || gemm_split_by_rows(m, n, k))) {
      const int64_t per_row = epi_extent / m;
      const int64_t target = std::max<int64_t>(64, (int64_t(1) << 16) / std::max<int64_t>(n, 1));
      int64_t blocks = k * n <= (int64_t(1) << 18) ? (m + target - 1) / target : 1;
      if (split) blocks = (blocks + nt - 1) / nt * nt;
      const int64_t grain = gemm_row_grain(m, n, k), rows = ((m + blocks - 1) / blocks + grain - 1) / grain * grain;
      blocks = (m + rows - 1) / rows;
      auto block = [&](int64_t q) {
        int64_t i0 = q * rows, i1 = std::min(m, i0 + rows);
        const float* pa = (ta ? a + i0 : a + i0 * lda) + (s.offsets.empty() ? 0 : s.offsets[0]);
        const float* pb = b + (s.offsets.empty() ? 0 : s.offsets[1]);
        gemm_ex(ta, tb, i1 - i0, n, k, pa, lda, pb, ldb, c + i0 * n, n, false, acc);
        s.fn(args.data(), i0 * per_row, i1 * per_row);
      };
      if (blocks > 1 && split) parallel_chunks(blocks, block);
      else for (int64_t q = 0; q < blocks; ++q) block(q);
      return;
    }
    for_each_product(batch, m, n, k, [&](int64_t i, bool parallel) {
      const int64_t oa = s.offsets.empty() ? i * sa : s.offsets[2 * i], ob = s.offsets.empty() ? i * sb : s.offsets[2 * i + 1];
      gemm_ex(ta, tb, m, n, k, a + oa, lda, b + ob, ldb, c + i * sc, n, parallel, acc);
    });
    if (s.fn != nullptr) run_range(s.fn, args.data(), epi_extent, 4096, 8);
  }

  struct ConvDims {
    int64_t n, h, w, ci, kh, kw, co, st, pad, ho, wo;
    explicit ConvDims(const std::vector<int64_t>& p)
        : n(p[0]), h(p[1]), w(p[2]), ci(p[3]), kh(p[4]), kw(p[5]), co(p[6]), st(p[7]), pad(p[8]),
          ho((p[1] + 2 * p[8] - p[4]) / p[7] + 1), wo((p[2] + 2 * p[8] - p[5]) / p[7] + 1) {}
    bool pointwise() const { return kh == 1 && kw == 1 && st == 1 && pad == 0; }
  };

  // dst (KH*KW*Ci) = the patch of image b under output pixel (oy, ox) (zero outside x); a
  // kernel row inside the image is one copy (its KW pixels are adjacent in NHWC)
  static void patch(const ConvDims& d, const float* x, int64_t b, int64_t oy, int64_t ox, float* dst) {
    const int64_t ix0 = ox * d.st - d.pad;
    for (int64_t dy = 0; dy < d.kh; ++dy) {
      const int64_t iy = oy * d.st + dy - d.pad;
      if (iy >= 0 && iy < d.h && ix0 >= 0 && ix0 + d.kw <= d.w) {
        copy_floats(dst, x + ((b * d.h + iy) * d.w + ix0) * d.ci, d.kw * d.ci);
        dst += d.kw * d.ci;
        continue;
      }
      for (int64_t dx = 0; dx < d.kw; ++dx, dst += d.ci) {
        const int64_t ix = ox * d.st + dx - d.pad;
        if (iy < 0 || iy >= d.h || ix < 0 || ix >= d.w) std::memset(dst, 0, sizeof(float) * d.ci);
        else copy_floats(dst, x + ((b * d.h + iy) * d.w + ix) * d.ci, d.ci);
      }
    }
  }

  // cols (N*Ho*Wo, KH*KW*Ci) = the patches of x (zero outside it)
  static void im2col(const ConvDims& d, const float* x, float* cols) {
    const int64_t row = d.kh * d.kw * d.ci;
    parallel_range(d.n * d.ho, std::max<int64_t>(1, PAR_THRESHOLD / std::max<int64_t>(d.wo * row, 1)),
                   [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t ox = 0; ox < d.wo; ++ox) patch(d, x, r / d.ho, r % d.ho, ox, cols + ((r * d.wo) + ox) * row);
    }, 1);
  }

  void run_conv(const Step& s, std::vector<void*>& args) {
    const ConvDims d(s.p);
    const float *x = at(s, 0), *wt = at(s, 1);
    float *out = at(s, 2), *cols = at(s, 3);
    if (s.fn != nullptr) gather_args(s.epi_slots, args);
    // the epilogue over output pixels [r0, r1)
    const int64_t per_pixel = s.fn != nullptr ? s.p[9] / (d.n * d.ho * d.wo) : 0;
    auto epilogue = [&](int64_t r0, int64_t r1) {
      if (s.fn != nullptr) s.fn(args.data(), r0 * per_pixel, r1 * per_pixel);
    };
    const int64_t m = d.n * d.ho * d.wo, threads = pool_num_threads(), row = d.kh * d.kw * d.ci;
    // the epilogue over all pixels, split across the pool (after a GEMM split by columns)
    auto epilogue_all = [&]() {
      if (s.fn != nullptr) run_range(s.fn, args.data(), s.p[9], 4096, per_pixel);
    };
    // all pixels' patches `a` (k floats each) times the weight in one GEMM split across the
    // pool, then the epilogue over all pixels
    auto one_gemm = [&](const float* a, int64_t k) {
      gemm_ex(false, false, m, d.co, k, a, k, wt, d.co, out, d.co, true);
      epilogue_all();
    };
    if (d.pointwise()) return one_gemm(x, d.ci);   // the input is the patch matrix
    if (threads > 1 && m < CONV_MIN_ROWS * threads && d.co >= 64 * threads) {
      // few pixels, many channels (a late stage at batch 1): one GEMM over all patches
      // split across the threads by output channels, so that each thread reads its share of
      // the weight rather than all of it; with enough channels a tap, the patches read in
      // place from the padded input (no patch matrix)
      if (d.ci >= CONV_IN_PLACE_MIN_CHANNELS) {
        conv_in_place(d, x, wt, out, cols);
        return epilogue_all();
      }
      im2col(d, x, cols);
      return one_gemm(cols, row);
    }
    if (by_kernel_rows(d)) conv_rows(d, x, wt, out, cols, epilogue);
    else conv_blocked(d, x, wt, out, cols, epilogue);
  }

  // The patches of a conv read in place: the padded input (into `xp` when padded), each
  // output pixel's patch origin in it and each kernel tap's offset from there, for the GEMMs
  // of kernels().conv_gemm, whose passes run over the channels of several taps, a run of A
  // each: below CONV_IN_PLACE_MIN_CHANNELS a run is less than a cache line, and the patches
  // are gathered first (from 16 rather than 64 channels: SqueezeNet 3.5% (batch 1) and 6%
  // (batch 8) faster, its 3x3 conv of 32 -> 128 channels at 27x27 10%).
  static constexpr int64_t CONV_IN_PLACE_MIN_CHANNELS = 16;
  struct InPlace {
    const float* src;
    std::vector<int64_t> off, toff;
    InPlace(const ConvDims& d, const float* x, float* xp)
        : src(d.pad == 0 ? x : pad_input(d, x, xp)), off(d.n * d.ho * d.wo), toff(d.kh * d.kw) {
      const int64_t hp = d.h + 2 * d.pad, wp = d.w + 2 * d.pad;
      int64_t* o = off.data();
      for (int64_t b = 0; b < d.n; ++b)
        for (int64_t oy = 0; oy < d.ho; ++oy)
          for (int64_t ox = 0; ox < d.wo; ++ox) *o++ = ((b * hp + oy * d.st) * wp + ox * d.st) * d.ci;
      for (int64_t t = 0; t < d.kh * d.kw; ++t) toff[t] = ((t / d.kw) * wp + t % d.kw) * d.ci;
    }
    // out[r0:r1, j0:j1) = the conv's output pixels r0:r1, channels j0:j1
    void gemm(const ConvDims& d, const float* wt, float* out, int64_t r0, int64_t r1, int64_t j0, int64_t j1) const {
      kernels().conv_gemm(r1 - r0, j1 - j0, d.kh * d.kw, d.ci, src, off.data() + r0, toff.data(), wt + j0, d.co,
                          out + r0 * d.co + j0, d.co);
    }
  };

  // all output pixels, the channels split across the threads as gemm_ex splits columns:
  // each thread reads its share of the weight
  static void conv_in_place(const ConvDims& d, const float* x, const float* wt, float* out, float* xp) {
    const InPlace patches(d, x, xp);
    const int64_t per = gemm_column_share(d.co);
    parallel_chunks((d.co + per - 1) / per, [&](int64_t q) {
      patches.gemm(d, wt, out, 0, d.n * d.ho * d.wo, q * per, std::min(d.co, (q + 1) * per));
    });
  }

  // xp = x zero-padded by d.pad on each side of its rows and columns; returns xp
  static const float* pad_input(const ConvDims& d, const float* x, float* xp) {
    const int64_t hp = d.h + 2 * d.pad, wp = d.w + 2 * d.pad;
    parallel_range(d.n * hp, std::max<int64_t>(1, PAR_THRESHOLD / std::max<int64_t>(wp * d.ci, 1)),
                   [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float* dst = xp + r * wp * d.ci;
        const int64_t y = r % hp - d.pad;
        if (y < 0 || y >= d.h) {
          std::memset(dst, 0, sizeof(float) * wp * d.ci);
          continue;
        }
        std::memset(dst, 0, sizeof(float) * d.pad * d.ci);
        std::memcpy(dst + d.pad * d.ci, x + ((r / hp) * d.h + y) * d.w * d.ci, sizeof(float) * d.w * d.ci);
        std::memset(dst + (d.pad + d.w) * d.ci, 0, sizeof(float) * d.pad * d.ci);
      }
    }, 1);
    return xp;
  }

  // A conv whose output rows are long enough for a GEMM each runs as KH GEMMs per output
  // row that read the zero-padded input in place: the patch row of output pixel (oy, ox)
  // under kernel row dy is the KW*Ci floats at padded pixel (oy*S + dy, ox*S), so the rows
  // of A for one output row lie S*Ci apart (overlapping when S < KW). No patch matrix is
  // written (im2col writes KH*KW/S^2 times the input), only the padded copy of the input
  // (none without padding): 3x3 convs of 16 -> 64 channels at 55x55 and 64 -> 64 at 224x224
  // ran 13-17% faster, SqueezeNet's first conv (3x3/2, 3 -> 64 at 224x224, K = 27) 25-40%;
  // rows of 27 pixels ran slower (GEMMs of few rows, few rows to share).
  static constexpr int64_t CONV_ROWS_MIN_WIDTH = 48;
  // (and a weight that stays in L2: each output row reads all of it, KH GEMMs of Wo rows)
  static constexpr int64_t CONV_ROWS_MAX_WEIGHT = 512 << 10;
  static bool by_kernel_rows(const ConvDims& d) {
    return !d.pointwise() && d.wo >= CONV_ROWS_MIN_WIDTH &&
           4 * d.kh * d.kw * d.ci * d.co <= CONV_ROWS_MAX_WEIGHT;
  }
  static int64_t padded_floats(const ConvDims& d) { return d.n * (d.h + 2 * d.pad) * (d.w + 2 * d.pad) * d.ci; }

  template <class Epilogue>
  static void conv_rows(const ConvDims& d, const float* x, const float* wt, float* out, float* xp,
                        const Epilogue& epilogue) {
    const int64_t hp = d.h + 2 * d.pad, wp = d.w + 2 * d.pad, run = d.kw * d.ci;
    const float* src = d.pad == 0 ? x : pad_input(d, x, xp);
    // chunks of whole output rows, as many as a multiple of the threads (as conv_blocked);
    // the epilogue runs on each output row while it is in L1 (once per chunk, it read
    // SqueezeNet's first conv output back from L3, 1.5 MB a chunk: the step took 20% longer)
    const int64_t rows = d.n * d.ho, chunks = conv_chunks(rows), per = (rows + chunks - 1) / chunks;
    parallel_chunks((rows + per - 1) / per, [&](int64_t t) {
      const int64_t r0 = t * per, r1 = std::min(rows, r0 + per);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / d.ho, oy = r % d.ho;
        float* c = out + r * d.wo * d.co;
        for (int64_t dy = 0; dy < d.kh; ++dy)
          kernels().small_gemm(false, false, d.wo, d.co, run, src + ((b * hp + oy * d.st + dy) * wp) * d.ci, d.st * d.ci,
                               wt + dy * run * d.co, d.co, c, d.co, dy > 0);
        epilogue(r * d.wo, (r + 1) * d.wo);
      }
    });
  }

  // im2col + GEMM by blocks of output pixels: each chunk (a contiguous range of pixels, at
  // most CONV_THREADS of them) is, block by block, gathered into its own patch buffer and
  // multiplies it at once (K = KH*KW*Ci), so the whole patch matrix never goes to memory;
  // then runs `epilogue(r0, r1)` on the block's pixels, still in cache.
  // A block is a cache-sized buffer of patches, but at least CONV_MIN_ROWS pixels (or a
  // thread's share when fewer): a GEMM of few rows re-reads the whole weight for little
  // work (16 rows of a 3x3x512->512 conv run at 2/3 the speed of 256).
  static constexpr int64_t CONV_THREADS = 8, CONV_BLOCK_BYTES = 256 << 10, CONV_MIN_ROWS = 256;
  static int64_t conv_cache_rows(const ConvDims& d) {
    return std::max<int64_t>(16, CONV_BLOCK_BYTES / (4 * d.kh * d.kw * d.ci));
  }
  static int64_t conv_block_rows(const ConvDims& d, int64_t threads) {
    const int64_t share = (d.n * d.ho * d.wo + threads - 1) / threads;
    return std::max(conv_cache_rows(d), std::min(CONV_MIN_ROWS, share));
  }
  // how many chunks to split `units` of equal work into: a multiple of the threads (each
  // thread then gets as many), up to CONV_THREADS (one patch buffer each) when there are enough
  static int64_t conv_chunks(int64_t units) {
    const int64_t threads = std::min<int64_t>(CONV_THREADS, pool_num_threads());
    const int64_t most = std::max(threads, CONV_THREADS / threads * threads);
    return std::min(most, (units + threads - 1) / threads * threads);
  }
  // the patch rows of all threads' buffers, at most (whatever the thread count)
  static int64_t conv_scratch_rows(const ConvDims& d) {
    const int64_t most = std::max(conv_cache_rows(d), CONV_MIN_ROWS);
    return std::min(CONV_THREADS * most, d.n * d.ho * d.wo + most);
  }
  template <class Epilogue>
  static void conv_blocked(const ConvDims& d, const float* x, const float* wt, float* out, float* scratch,
                           const Epilogue& epilogue) {
    const int64_t threads = std::min<int64_t>(CONV_THREADS, pool_num_threads());
    const int64_t row = d.kh * d.kw * d.ci, m = d.n * d.ho * d.wo, most = conv_block_rows(d, threads);
    // chunks of whole blocks, up to one buffer each, which the threads claim as they finish
    // (a thread held up by another process then holds up less than its static share), each
    // of as many blocks, blocks of equal rows (at most conv_block_rows), so that no thread is
    // left with more work than another
    int64_t blocks = (m + most - 1) / most;
    const int64_t chunks = conv_chunks(blocks);
    blocks = (blocks + chunks - 1) / chunks * chunks;
    const int64_t rb = (m + blocks - 1) / blocks, per = blocks / chunks * rb, nt = (m + per - 1) / per;
    // with enough channels a tap, each block's GEMM reads its patches in place (the scratch
    // then holds the padded input), else they are gathered into the chunk's buffer first
    std::optional<InPlace> in_place;
    if (d.ci >= CONV_IN_PLACE_MIN_CHANNELS) in_place.emplace(d, x, scratch);
    parallel_chunks(nt, [&](int64_t t) {
      float* buf = scratch + t * rb * row;
      for (int64_t r0 = t * per; r0 < std::min(m, (t + 1) * per); r0 += rb) {
        const int64_t r1 = std::min({m, (t + 1) * per, r0 + rb});
        if (in_place) {
          in_place->gemm(d, wt, out, r0, r1, 0, d.co);
        } else {
          int64_t b = r0 / (d.ho * d.wo), oy = (r0 / d.wo) % d.ho, ox = r0 % d.wo;  // pixel r0
          for (int64_t r = r0; r < r1; ++r) {
            patch(d, x, b, oy, ox, buf + (r - r0) * row);
            if (++ox == d.wo) {
              ox = 0;
              if (++oy == d.ho) oy = 0, ++b;
            }
          }
          gemm_ex(false, false, r1 - r0, d.co, row, buf, row, wt, d.co, out + r0 * d.co, d.co, false);
        }
        epilogue(r0, r1);
      }
    });
  }

  // dx = col2im(g @ w^T): the patches' gradients scattered back (summed) into the input
  void run_conv_data(const Step& s) {
    const ConvDims d(s.p);
    const float *g = at(s, 0), *wt = at(s, 1);
    float *dx = at(s, 2), *cols = at(s, 3);
    const int64_t row = d.kh * d.kw * d.ci, m = d.n * d.ho * d.wo;
    if (d.pointwise()) {
      gemm_ex(false, true, m, d.ci, d.co, g, d.co, wt, d.co, dx, d.ci, true);
      return;
    }
    gemm_ex(false, true, m, row, d.co, g, d.co, wt, d.co, cols, row, true);
    parallel_range(d.n, 1, [&](int64_t b0, int64_t b1) {  // images write disjoint rows of dx
      for (int64_t b = b0; b < b1; ++b) {
        float* img = dx + b * d.h * d.w * d.ci;
        std::memset(img, 0, sizeof(float) * d.h * d.w * d.ci);
        for (int64_t oy = 0; oy < d.ho; ++oy)
          for (int64_t ox = 0; ox < d.wo; ++ox) {
            const float* src = cols + ((b * d.ho + oy) * d.wo + ox) * row;
            for (int64_t dy = 0; dy < d.kh; ++dy) {
              const int64_t iy = oy * d.st + dy - d.pad;
              for (int64_t dxx = 0; dxx < d.kw; ++dxx, src += d.ci) {
                const int64_t ix = ox * d.st + dxx - d.pad;
                if (iy < 0 || iy >= d.h || ix < 0 || ix >= d.w) continue;
                float* dst = img + (iy * d.w + ix) * d.ci;
                for (int64_t c = 0; c < d.ci; ++c) dst[c] += src[c];
              }
            }
          }
      }
    }, 1);
  }

  // dw = im2col(x)^T @ g: one GEMM over every output position
  void run_conv_filter(const Step& s) {
    const ConvDims d(s.p);
    const float *x = at(s, 0), *g = at(s, 1);
    float *dw = at(s, 2), *cols = at(s, 3);
    const int64_t row = d.kh * d.kw * d.ci, m = d.n * d.ho * d.wo;
    const float* patches = x;
    if (!d.pointwise()) {
      im2col(d, x, cols);
      patches = cols;
    }
    gemm_ex(true, false, row, d.co, m, patches, row, g, d.co, dw, d.co, true);
  }

  void run_copy(const Step& s) {
    const float* src = at(s, 0);
    float* dst = at(s, 1);
    const int64_t n = s.p[0], rows = s.p[1], ld = s.p[2];
    if (rows == 1) {
      std::memcpy(dst, src, sizeof(float) * n);
      return;
    }
    parallel_range(rows, std::max<int64_t>(1, PAR_THRESHOLD / std::max<int64_t>(n, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) std::memcpy(dst + r * ld, src + r * n, sizeof(float) * n);
    }, 1);
  }

  void run_random(const Step& s) {
    const uint64_t counter = static_cast<uint64_t>(std::llround(*at(s, 0)));
    const uint64_t base = static_cast<uint64_t>(std::llround(*at(s, 1)));
    const uint64_t seed = splitmix64(base) + counter * 0x9E3779B97F4A7C15ULL;
    const uint64_t key = splitmix64(seed + static_cast<uint64_t>(s.p[1]));
    float* out = at(s, 2);
    const int64_t size = s.p[0];
    // splitmix64 costs several times a copy per element: split from 8192 elements on
    parallel_range(size, 8192, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        out[i] = static_cast<float>(splitmix64(static_cast<uint64_t>(i) + key) >> 40) / 16777216.0f;
    }, 4096);
  }

  void run_gather(const Step& s) {
    const float *a = at(s, 0), *idx = at(s, 1);
    float* out = at(s, 2);
    const int64_t k = s.p[0], n_rows = s.p[1], row = s.p[2];
    if (n_rows == 0) {  // no row to read (any id is bad)
      std::memset(out, 0, sizeof(float) * k * row);
      return;
    }
    for (int64_t i = 0; i < k; ++i)
      std::memcpy(out + i * row, a + clamped_row(idx[i], n_rows) * row, sizeof(float) * row);
  }

  void run_index_add(const Step& s) {
    const float *v = at(s, 0), *idx = at(s, 1);
    float* out = at(s, 2);
    const int64_t k = s.p[0], n_rows = s.p[1], row = s.p[2];
    std::memset(out, 0, sizeof(float) * n_rows * row);
    if (n_rows == 0) return;  // no row to add to (any id is bad)
    for (int64_t i = 0; i < k; ++i) {
      float* o = out + clamped_row(idx[i], n_rows) * row;
      const float* x = v + i * row;
      for (int64_t j = 0; j < row; ++j) o[j] += x[j];
    }
  }

  std::vector<float*> addr_;
  std::vector<int64_t> size_;  // floats each slot holds (-1: not set)
  std::vector<int64_t> out_sizes_;
  int n_io_;
  bool profile_ = false;
  std::vector<double> first_;   // each step's first profiled call
  std::mutex running_;
  std::vector<double> seconds_;
  std::vector<int64_t> calls_;
  std::vector<Step> steps_;
};

}  // namespace

void register_program(py::module_& m) {
  py::class_<Program>(m, "Program", "A compiled graph's steps over buffer slots (needle.runtime.native).")
      .def(py::init<int, const std::vector<int64_t>&, std::vector<int64_t>>(), py::arg("n_slots"),
           py::arg("input_sizes"), py::arg("output_sizes"))
      .def("set_slot", &Program::set_slot, py::arg("slot"), py::arg("address"), py::arg("size"))
      .def("add_kernel", &Program::add_kernel, py::arg("name"), py::arg("fn"), py::arg("slots"), py::arg("sizes"),
           py::arg("extent"), py::arg("min_chunk"), py::arg("align"))
      .def("add_gemm", &Program::add_gemm, py::arg("slots"), py::arg("params"), py::arg("epilogue_fn"),
           py::arg("epilogue_slots"), py::arg("epilogue_sizes"), py::arg("epilogue_extent"), py::arg("offsets"))
      .def("add_conv", &Program::add_conv, py::arg("kind"), py::arg("slots"), py::arg("params"),
           py::arg("epilogue_fn") = 0, py::arg("epilogue_slots") = std::vector<int>(),
           py::arg("epilogue_sizes") = std::vector<int64_t>(), py::arg("epilogue_extent") = 0)
      .def("add_random", &Program::add_random, py::arg("slots"), py::arg("size"), py::arg("stream"))
      .def("add_gather", &Program::add_gather, py::arg("slots"), py::arg("n_indices"), py::arg("n_rows"),
           py::arg("row_size"))
      .def("add_index_add", &Program::add_index_add, py::arg("slots"), py::arg("n_indices"), py::arg("n_rows"),
           py::arg("row_size"))
      .def("add_copy", &Program::add_copy, py::arg("slots"), py::arg("n"), py::arg("rows") = 1,
           py::arg("dst_ld") = 0)
      .def("add_callback", &Program::add_callback, py::arg("fn"), py::arg("slots"), py::arg("sizes"),
           py::arg("name"))
      .def("__len__", &Program::size)
      .def("set_profile", &Program::set_profile, py::arg("on"))
      .def("profile", &Program::profile, "(seconds, calls) per step since profiling was turned on, the first call left out once there are more")
      .def("run", &Program::run, py::arg("io"))
      .def("run_alloc", &Program::run_alloc, py::arg("inputs"));
}

}  // namespace cpu
}  // namespace needle
