// The building blocks of lstmkit's C++ kernels: branch-free activations, the BLAS GEMMs
// (plain and with weights packed once per call), the step-row bookkeeping and the small
// vector loops of the masks. The whole of csrc/ is one translation unit (engine.cpp, see
// lstmkit/ops/extension.py); everything here has internal linkage.

#pragma once

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;

// ---- activations -------------------------------------------------------------------
// float: exp by range reduction x = k·ln2 + r and a degree-6 polynomial on |r| ≤ ln2/2
// (Cephes' expf coefficients, ≈1 ulp); branch-free, so loops over it vectorise.
inline float exp_fast(float x) {
  x = x < -87.0f ? -87.0f : x;                      // clamp (ternaries keep the loop
  x = x > 88.0f ? 88.0f : x;                        // branch-free for the vectoriser)
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_fast(-x)); }
inline float tanh_(float x) { return 2.0f / (1.0f + exp_fast(-2.0f * x)) - 1.0f; }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

// ---- row-major GEMMs, straight into the BLAS that torch links (MKL on x86) -----------
// Declared weak: a torch built without these symbols makes the module refuse to load,
// and lstmkit falls back to its torch loops (see lstmkit/ops/extension.py).
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*,
            const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*) __attribute__((weak));
}

// Column-major C (m×n) = alpha·op(A)·op(B) + beta·C.
inline void blas_gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha,
                      const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                      float* C, int64_t ldc) {
  const int m_ = m, n_ = n, k_ = k, lda_ = lda, ldb_ = ldb, ldc_ = ldc;
  sgemm_(&ta, &tb, &m_, &n_, &k_, &alpha, A, &lda_, B, &ldb_, &beta, C, &ldc_);
}
inline void blas_gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, double alpha,
                      const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                      double* C, int64_t ldc) {
  const int m_ = m, n_ = n, k_ = k, lda_ = lda, ldb_ = ldb, ldc_ = ldc;
  dgemm_(&ta, &tb, &m_, &n_, &k_, &alpha, A, &lda_, B, &ldb_, &beta, C, &ldc_);
}

// Row-major C (m×n) = beta·C + A (m×k) · Bᵀ, B stored (n×k).
template <typename T>
inline void gemm_abt(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B,
                     int64_t ldb, T beta, T* C, int64_t ldc) {
  if (m == 0) return;
  blas_gemm('T', 'N', n, m, k, T(1), B, ldb, A, lda, beta, C, ldc);
}
// Row-major C (m×n) = beta·C + A (m×k) · B, B stored (k×n).
template <typename T>
inline void gemm_ab(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B,
                    int64_t ldb, T beta, T* C, int64_t ldc) {
  if (m == 0) return;
  blas_gemm('N', 'N', n, m, k, T(1), B, ldb, A, lda, beta, C, ldc);
}

// Row-major C (m×n) = beta·C + A (m×k) · Wᵀ, W stored (n×k) densely.
template <typename T>
inline void gemm_awt(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* W, T beta,
                     T* C, int64_t ldc) {
  gemm_abt<T>(m, n, k, A, lda, W, k, beta, C, ldc);
}
// Row-major C (m×n) = beta·C + A (m×k) · W, W stored (k×n) densely.
template <typename T>
inline void gemm_aw(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* W, T beta,
                    T* C, int64_t ldc) {
  gemm_ab<T>(m, n, k, A, lda, W, n, beta, C, ldc);
}

// MKL's packed GEMM: a weight matrix is packed once per call and reused at every step
// (plain sgemm re-packs it at each call). Measured here (2 cores, fwd+bwd, same process):
// it pays for weights of ≥ 1M elements (LSTM H=512: 0.95×) and costs at small ones
// (LSTM H=64, B=1: 1.7×; H=128: 1.08×), so it is used from kPackMinElements on.
// Constants are MKL's CBLAS enums.
extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k,
                         const float* a, int lda, const float* b, int ldb, float beta, float* c,
                         int ldc) __attribute__((weak));
}
constexpr int64_t kPackMinElements = 1 << 20;
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

// How a float32 weight GEMM runs at each step:
//  * kBrgemm: ATen's batch-reduce GEMM (at::native::cpublas::brgemm), which runs oneDNN's
//    micro-kernel generated at run time for the CPU it finds (AVX2, AVX-512, …) and falls back
//    to the BLAS where oneDNN's micro-kernels are unavailable. The weight is laid out once per
//    call as its (k×n) row-major right operand (transposed if needed), the kernel for each
//    (m, n, k) is generated once per process. The weight is packed once per call in column
//    panels (pack_panels below); from kTinyWork multiply-adds on, the panels are shared
//    out over torch's threads.
//  * kPacked / kBlas: MKL, which splits a GEMM over torch's threads.
// Which of the two a product takes is decided in Python, once per layer call
// (lstmkit/ops/gemm.py, the only reader of LSTMKIT_GEMM): blas puts every class on MKL
// (packed from kPackMinElements on), brgemm every class on brgemm, unset or auto the route
// measured faster on this machine for the product's size class. It is passed in through
// set_gemm_routes (g_step_route below) before the loop runs. Which is faster differs
// between machines (brgemm 2x faster on one AVX-512 EPYC, MKL faster on an AVX2 one:
// docs/performance.md), so gemm.py times both (gemm_probe) once per machine and thread count.
enum class GemmKind { kBlas, kPacked, kBrgemm };
// brgemm keeps a row block of A in cache across the whole K: with K = 4096 (LSTM H = 1024,
// backward) one call took 10.7 ms against MKL's 7.9, cut into K blocks of 2048 2.5 ms
// (benchmarks/small_gemm_probe.py, one thread; noisy).
constexpr int64_t kKBlock = 2048;

inline bool mkl_pack_available() {
  return cblas_sgemm_pack_get_size && cblas_sgemm_pack && cblas_sgemm_compute;
}

// Size classes of a per-step product (m rows at most), by its multiply-adds: 0 tiny
// (< kTinyWork: a batch of one or a few rows; brgemm runs it on the calling thread), 1 small
// (< kLargeWork), 2 large; brgemm shares the panels of small and large ones out over the
// threads. Splitting from 2¹⁸ on was measured faster than from 2²⁰ or 2²² (GRU (100,16,128),
// whose 16×128·128×384 has 786k, 0.36 vs 0.41 of torch.nn's time; LSTM 0.92 vs 0.97; 2
// threads, AVX2 EPYC); below it the fork and join cost what the second thread saves.
// Routes are chosen per class because they were measured to differ: before the panels,
// brgemm on an AVX2 EPYC was 4× faster than MKL at 1×64·64×256 but 1.4–1.6× slower at
// 16×128·128×512.
constexpr int64_t kTinyWork = int64_t(1) << 18;
constexpr int64_t kLargeWork = int64_t(1) << 22;
// The weights (floats) up to which a row-parallel cell's step runs in parts of rows, one per
// thread (row_parts in engine.h, which says why).
constexpr int64_t kRowSplitWeights = int64_t(1) << 18;
// Does a per-step product of up to m rows with an (n·k) weight run in parts of rows, one per
// thread, each on its own thread (a row-parallel step, engine.h)? Yes if it is not tiny, its
// weight is at most kRowSplitWeights floats and each of the threads' parts has 4 rows.
inline bool runs_in_parts(int64_t m, int64_t n, int64_t k) {
  const int64_t threads = at::get_num_threads();
  return threads > 1 && m * n * k >= kTinyWork && n * k <= kRowSplitWeights && m / 4 >= threads;
}
// The class of a per-step product: 3 ("parts") if it runs in parts of rows — each thread
// then runs a single-threaded product of its rows, which is not the same race as one product
// shared out over the threads: on the Xeon (AVX-512, 2 threads) brgemm was 0.79× MKL's time
// at 32×256·256×1024 on one thread but 1.10× at the whole 64-row step shared out, so the
// class measured whole sent the parts to the slower library (forward at (150,64,256)
// 1.15-1.2× slower) — else tiny, small or large by its multiply-adds.
// `whole`: a product the loop never runs in parts (the inference path's block projection).
inline int step_class(int64_t max_m, int64_t n, int64_t k, bool whole = false) {
  const int64_t work = max_m * n * k;
  if (work < kTinyWork) return 0;
  if (!whole && runs_in_parts(max_m, n, k)) return 3;
  return work < kLargeWork ? 1 : 2;
}
constexpr int kStepClasses = 4;
// The route of each size class: 1 brgemm, 0 MKL (set_gemm_routes, before every layer call).
inline std::atomic<int> g_step_route[kStepClasses] = {1, 1, 1, 1};

// `force`: 1 brgemm, 0 MKL, -1 the route set for the product's size class (gemm_probe
// forces one to time it).
inline GemmKind choose_gemm(int64_t max_m, int64_t n, int64_t k, bool dense, int force = -1,
                            bool whole = false) {
  const bool brgemm = force >= 0 ? force == 1
                                 : g_step_route[step_class(max_m, n, k, whole)].load(
                                       std::memory_order_relaxed) != 0;
  if (brgemm) return GemmKind::kBrgemm;
  return (n * k >= kPackMinElements && dense && mkl_pack_available()) ? GemmKind::kPacked
                                                                      : GemmKind::kBlas;
}

// brgemm's right operand in column panels: panel q holds columns [q·pw, q·pw + w_q) of the
// (k×n) matrix B, B(p, j) = B[p·b_row + j·b_col], as a row-major (k × w_q) block at offset
// q·pw·k. A panel's K block (kPanelFloats, 32 KB, up to K = 512; beyond, panels are 16
// columns wide and a K block of 2048 rows is 128 KB) stays in L1/L2 while the micro-kernel
// runs over it. With B row-major and n wide instead (one panel of n columns, the layout before),
// each K row of the block is a separate run of cache lines and the kernel ran up to 4×
// slower: 32×1024·1024×4096 at 44 against 161 GFLOP/s, 64×512·512×2048 at 77 against 193,
// two threads on an AVX2 EPYC, where MKL ran them at 89 and 141 (benchmarks/gemm_panels.py;
// panels of 4–32k floats were alike, 8k as good as any in three runs).
constexpr int64_t kPanelFloats = int64_t(1) << 13;
inline int64_t panel_width(int64_t n, int64_t k, int64_t parts = 1,
                           int64_t panel_floats = kPanelFloats) {
  const int64_t kb = std::max<int64_t>(1, std::min(k, kKBlock));
  int64_t pw = std::max<int64_t>(16, panel_floats / kb / 16 * 16);
  if (parts > 1)                                   // at least one panel per part
    pw = std::min(pw, ((n + parts - 1) / parts + 15) / 16 * 16);
  return std::max<int64_t>(1, std::min(n, pw));
}

// How many threads share a per-step product of m rows (see step_class).
inline int64_t step_parts(int64_t m, int64_t n, int64_t k) {
  const int64_t threads = at::get_num_threads();
  return threads > 1 && m * n * k >= kTinyWork ? threads : 1;
}

inline void pack_panels(int64_t k, int64_t n, const float* B, int64_t b_row, int64_t b_col,
                        int64_t pw, float* out) {
  const int64_t panels = (n + pw - 1) / pw;
  at::parallel_for(0, panels, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t j0 = q * pw, w = std::min(pw, n - j0);
      float* panel = out + j0 * k;
      if (b_col == 1) {
        for (int64_t p = 0; p < k; ++p)
          std::memcpy(panel + p * w, B + p * b_row + j0, sizeof(float) * w);
        continue;
      }
      constexpr int64_t kTile = 32;                      // read along B's unit stride
      for (int64_t p0 = 0; p0 < k; p0 += kTile) {
        const int64_t p1 = std::min(k, p0 + kTile);
        for (int64_t j = 0; j < w; ++j) {
          const float* col = B + (j0 + j) * b_col;
          for (int64_t p = p0; p < p1; ++p) panel[p * w + j] = col[p * b_row];
        }
      }
    }
  });
}

// C (m × n, ldc) = beta·C + A (m × k, lda) · B for the columns of panels [q0, q1) of B
// packed by pack_panels, K in blocks of kKBlock.
inline void brgemm_panels(int64_t m, int64_t n, int64_t k, int64_t pw, int64_t q0, int64_t q1,
                          const float* A, int64_t lda, const float* packed, bool accumulate,
                          float* C, int64_t ldc, int64_t kblock = kKBlock) {
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t j0 = q * pw, w = std::min(pw, n - j0);
    const float* panel = packed + j0 * k;
    for (int64_t k0 = 0; k0 < k; k0 += kblock)
      at::native::cpublas::brgemm(m, w, std::min(kblock, k - k0), lda, w, ldc,
                                  accumulate || k0 > 0, A + k0, panel + k0 * w, C + j0, false);
  }
}

// C (m×n, row-major) = beta·C + A (m×k) · op(W), for a weight W used at every step:
// op(W) = Wᵀ with W stored (n×k) when `transposed`, else W stored (k×n); W's rows are
// `ldw` apart (0: dense). m ≤ max_m. A null W (or max_m = 0) makes an unused object.
template <typename T>
class WeightGemm {
 public:
  WeightGemm(const T* W, bool transposed, int64_t max_m, int64_t n, int64_t k, int64_t ldw = 0,
             int = -1, int64_t = kPanelFloats, bool = false)
      : W_(W), transposed_(transposed), n_(n), k_(k), ldw_(ldw ? ldw : (transposed ? k : n)) {}
  void operator()(int64_t m, const T* A, int64_t lda, T beta, T* C, int64_t ldc) const {
    if (transposed_) gemm_abt<T>(m, n_, k_, A, lda, W_, ldw_, beta, C, ldc);
    else gemm_ab<T>(m, n_, k_, A, lda, W_, ldw_, beta, C, ldc);
  }
  // The same product restricted to the first n columns of C (rows of W when transposed).
  void cols(int64_t m, int64_t n, const T* A, int64_t lda, T beta, T* C, int64_t ldc) const {
    if (transposed_) gemm_abt<T>(m, n, k_, A, lda, W_, ldw_, beta, C, ldc);
    else gemm_ab<T>(m, n, k_, A, lda, W_, ldw_, beta, C, ldc);
  }

 private:
  const T* W_;
  bool transposed_;
  int64_t n_, k_, ldw_;
};

// ---- weight layouts kept across the chunks of one backward ----------------------------
// A layer's backward calls the loop once per time chunk (lstmkit/ops/fused.py,
// backward_chunks: up to 8), and each call builds its cell and WeightGemms anew. Without
// this, each chunk laid out (or MKL-packed) W_hh again, into a new buffer: at H = 1024 a
// 16 MB allocation, zero-filled by std::vector and faulted in page by page, 8 times per
// backward — 86–97 % of the step's page faults (perf, LSTM (100,32,1024), Intel Xeon).
// Between keep_weight_layouts(true) and (false) (the Python backward's chunk loop), the
// layouts this thread prepares are kept and found again by what they were made from; the
// weights do not change within that scope. Thread-local: each thread's backward has its
// own; nested scopes share them until the outermost ends.
struct KeptLayout {
  const float* W;
  bool transposed;
  int64_t n, k, ldw, max_m, pw;
  GemmKind kind;
  std::shared_ptr<float[]> data;
};
inline thread_local int g_layout_scope = 0;
inline thread_local std::vector<KeptLayout> g_kept_layouts;

inline void keep_weight_layouts(bool keep) {
  if (keep) {
    ++g_layout_scope;
  } else if (g_layout_scope > 0 && --g_layout_scope == 0) {
    g_kept_layouts.clear();
  }
}

template <>
class WeightGemm<float> {
 public:
  // force: see choose_gemm; panel_floats: brgemm's panel size (benchmarks/gemm_panels.py)
  // whole: never run in parts of rows (step_class)
  WeightGemm(const float* W, bool transposed, int64_t max_m, int64_t n, int64_t k,
             int64_t ldw = 0, int force = -1, int64_t panel_floats = kPanelFloats,
             bool whole = false)
      : W_(W), transposed_(transposed), n_(n), k_(k), ldw_(ldw ? ldw : (transposed ? k : n)),
        max_m_(max_m) {
    if (W && max_m > 0)
      kind_ = choose_gemm(max_m, n, k, ldw_ == (transposed ? k : n), force, whole);
    pw_ = panel_width(n, k, step_parts(max_m, n, k), panel_floats);
  }
  void operator()(int64_t m, const float* A, int64_t lda, float beta, float* C,
                  int64_t ldc) const {
    if (m == 0) return;
    if (!ready_) {                        // on first use: a cell builds some it never calls
      // not thread-safe: parts of a step run at once only after a whole first step
      // (engine.h, row_parallel), which has prepared every product a step calls
      TORCH_INTERNAL_ASSERT(!at::in_parallel_region(),
                            "lstmkit WeightGemm: first used inside a parallel region");
      prepare();
    }
    if (kind_ == GemmKind::kBrgemm && (beta == 0.0f || beta == 1.0f)) {
      const int64_t panels = (n_ + pw_ - 1) / pw_;
      const int64_t parts = std::min(step_parts(m, n_, k_), panels);
      if (parts <= 1) {
        brgemm_panels(m, 0, panels, A, lda, beta, C, ldc);
      } else {                                     // a share of the panels per thread
        at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p)
            brgemm_panels(m, p * panels / parts, (p + 1) * panels / parts, A, lda, beta, C, ldc);
        });
      }
    } else if (kind_ == GemmKind::kPacked) {
      cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, m, n_, k_, A, lda, B_, ldw_, beta, C,
                          ldc);
    } else {
      cols(m, n_, A, lda, beta, C, ldc);
    }
  }
  void cols(int64_t m, int64_t n, const float* A, int64_t lda, float beta, float* C,
            int64_t ldc) const {
    if (transposed_) gemm_abt<float>(m, n, k_, A, lda, W_, ldw_, beta, C, ldc);
    else gemm_ab<float>(m, n, k_, A, lda, W_, ldw_, beta, C, ldc);
  }

 private:
  void brgemm_panels(int64_t m, int64_t q0, int64_t q1, const float* A, int64_t lda, float beta,
                     float* C, int64_t ldc) const {
    ::brgemm_panels(m, n_, k_, pw_, q0, q1, A, lda, B_, beta != 0.0f, C, ldc);
  }

  // brgemm: op(W) in column panels (pack_panels); packed: MKL's packed W. Once per object,
  // i.e. once per layer call.
  void prepare() const {
    ready_ = true;
    if (kind_ != GemmKind::kBrgemm && kind_ != GemmKind::kPacked) return;
    if (g_layout_scope > 0) {
      for (const KeptLayout& e : g_kept_layouts)
        if (e.W == W_ && e.transposed == transposed_ && e.n == n_ && e.k == k_ &&
            e.ldw == ldw_ && e.max_m == max_m_ && e.pw == pw_ && e.kind == kind_) {
          right_ = e.data;
          B_ = right_.get();
          return;
        }
    }
    // new float[]: default-initialised, so no zero-filling pass before the layout's writes
    if (kind_ == GemmKind::kBrgemm) {
      right_ = std::shared_ptr<float[]>(new float[k_ * n_]);
      if (transposed_) pack_panels(k_, n_, W_, 1, ldw_, pw_, right_.get());
      else pack_panels(k_, n_, W_, ldw_, 1, pw_, right_.get());
    } else {
      const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, max_m_, n_, k_);
      right_ = std::shared_ptr<float[]>(new float[bytes / sizeof(float) + 1]);
      cblas_sgemm_pack(kRowMajor, kBMatrix, transposed_ ? kTrans : kNoTrans, max_m_, n_, k_,
                       1.0f, W_, ldw_, right_.get());
    }
    B_ = right_.get();
    if (g_layout_scope > 0)
      g_kept_layouts.push_back({W_, transposed_, n_, k_, ldw_, max_m_, pw_, kind_, right_});
  }

  const float* W_;
  bool transposed_;
  int64_t n_, k_, ldw_, max_m_;
  GemmKind kind_ = GemmKind::kBlas;
  mutable bool ready_ = false;
  mutable std::shared_ptr<float[]> right_;   // the layout (shared with g_kept_layouts)
  mutable const float* B_ = nullptr;
  int64_t pw_ = 0;                     // brgemm: columns per panel
};

// ---- the large GEMMs of a layer call ---------------------------------------------------------
// C (m×n, row-major, ldc) = C·[accumulate] + op(A) · op(B), float32. op(A)(i, p) is
// A[i·a_row + p·a_col] (a_col = 1: row-major in place; else A is copied row-major once), and
// op(B)(p, j) = B[p·b_row + j·b_col], packed in column panels (pack_panels). Run as brgemm
// micro-kernels on blocks of kBigRows rows × one panel of C, split over torch's threads,
// panels outermost so that each thread's B panel stays in cache.
constexpr int64_t kBigRows = 64;
// Panels of the large GEMMs: 64 columns, K in blocks of 512 (a 128 KB block of a panel). The
// per-step panels (kPanelFloats: 16–32 columns at these K) suit a product of a few rows;
// with blocks of 64 rows these ran the input gradient dA·W_ih at 139–171 GFLOP/s against
// 190–215 (2 threads, AVX-512 EPYC, N = 1600–3200 rows, H = 512–1024), and the projection
// 181–205 against 199–207 (docs/performance.md).
constexpr int64_t kBigPanel = 64, kBigKBlock = 512;

inline void big_gemm(int64_t m, int64_t n, int64_t k, const float* A, int64_t a_row,
                     int64_t a_col, const float* B, int64_t b_row, int64_t b_col,
                     bool accumulate, float* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i) std::fill(C + i * ldc, C + i * ldc + n, 0.0f);
    return;
  }
  std::unique_ptr<float[]> b_copy;                  // default-initialised: no zero fill
  const float* a = A;
  int64_t lda = a_row;
  at::Tensor a_copy;
  if (a_col != 1) {
    // ATen's copy of a transposed matrix (blocked, vectorised, threaded): the weight
    // gradient's dAᵀ (2048 × 1600) took 6 ms this way against 28 ms in the scalar tiled
    // copy used before, which made brgemm's dW slower than MKL's
    a_copy = at::from_blob(const_cast<float*>(A), {m, k}, {a_row, a_col}, at::kFloat)
                 .contiguous();
    a = a_copy.data_ptr<float>();
    lda = k;
  }
  const int64_t pw = std::min(n, kBigPanel);
  const float* packed = B;                         // one dense row-major panel: B itself
  if (!(pw == n && b_col == 1 && b_row == n)) {
    b_copy.reset(new float[k * n]);
    pack_panels(k, n, B, b_row, b_col, pw, b_copy.get());
    packed = b_copy.get();
  }
  const int64_t mb = (m + kBigRows - 1) / kBigRows, nb = (n + pw - 1) / pw;
  at::parallel_for(0, mb * nb, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i0 = (t % mb) * kBigRows, q = t / mb;
      brgemm_panels(std::min(kBigRows, m - i0), n, k, pw, q, q + 1, a + i0 * lda,
                    lda, packed, accumulate, C + i0 * ldc, ldc, kBigKBlock);
    }
  });
}

// (first row, active rows) of every step, in processing order (reversed for `reverse`).
using Rows = std::vector<std::pair<int64_t, int64_t>>;
Rows step_rows(const std::vector<int64_t>& batch_sizes, bool reverse) {
  Rows rows;
  int64_t offset = 0;
  for (int64_t n : batch_sizes) {
    rows.emplace_back(offset, n);
    offset += n;
  }
  if (reverse) std::reverse(rows.begin(), rows.end());
  return rows;
}

// ---- small vector loops --------------------------------------------------------------
// y = x ⊙ m (k elements)
template <typename T>
inline void mul_into(int64_t k, const T* x, const T* m, T* y) {
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) y[j] = x[j] * m[j];
}

// y += x ⊙ m
template <typename T>
inline void add_mul(int64_t k, T* y, const T* x, const T* m) {
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) y[j] += x[j] * m[j];
}

// y += x
template <typename T>
inline void add_inplace(int64_t k, T* y, const T* x) {
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) y[j] += x[j];
}

// zoneout: fresh ← d ⊙ old + (1 − d) ⊙ fresh
template <typename T>
inline void zone_mix(int64_t k, const T* d, const T* old, T* fresh) {
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) fresh[j] += d[j] * (old[j] - fresh[j]);
}

// BPTT through a zoneout mix: direct ← d ⊙ g (to the previous state), g ← (1 − d) ⊙ g
template <typename T>
inline void zone_split(int64_t k, const T* d, T* g, T* direct) {
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) {
    direct[j] = d[j] * g[j];
    g[j] -= direct[j];
  }
}

}  // namespace
