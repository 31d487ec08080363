// The building blocks of lstmkit's C++ kernels: branch-free activations, the BLAS GEMMs
// (plain and with weights packed once per call), the step-row bookkeeping and the small
// vector loops of the masks. The whole of csrc/ is one translation unit (engine.cpp, see
// lstmkit/ops/extension.py); everything here has internal linkage.

#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

// C (m×n, row-major) = beta·C + A (m×k) · op(W), for a weight W used at every step:
// op(W) = Wᵀ with W stored (n×k) when `transposed`, else W stored (k×n); W's rows are
// `ldw` apart (0: dense). m ≤ max_m. A null W (or max_m = 0) makes an unused object.
template <typename T>
class WeightGemm {
 public:
  WeightGemm(const T* W, bool transposed, int64_t max_m, int64_t n, int64_t k, int64_t ldw = 0)
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

template <>
class WeightGemm<float> {
 public:
  WeightGemm(const float* W, bool transposed, int64_t max_m, int64_t n, int64_t k,
             int64_t ldw = 0)
      : W_(W), transposed_(transposed), n_(n), k_(k), ldw_(ldw ? ldw : (transposed ? k : n)) {
    if (W && n * k >= kPackMinElements && max_m > 0 && ldw_ == (transposed ? k : n) &&
        cblas_sgemm_pack_get_size && cblas_sgemm_pack && cblas_sgemm_compute) {
      const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, max_m, n, k);
      packed_.resize(bytes / sizeof(float) + 1);
      cblas_sgemm_pack(kRowMajor, kBMatrix, transposed ? kTrans : kNoTrans, max_m, n, k, 1.0f,
                       W, ldw_, packed_.data());
    }
  }
  void operator()(int64_t m, const float* A, int64_t lda, float beta, float* C,
                  int64_t ldc) const {
    if (m == 0) return;
    if (!packed_.empty()) {
      cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, m, n_, k_, A, lda, packed_.data(),
                          ldw_, beta, C, ldc);
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
  const float* W_;
  bool transposed_;
  int64_t n_, k_, ldw_;
  std::vector<float> packed_;
};

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
