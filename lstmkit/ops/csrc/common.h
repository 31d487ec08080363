// Shared by every lstmkit C++ extension (csrc/<name>.cpp, each built on its own; see
// lstmkit/ops/extension.py, which hashes this header into every build name): the
// branch-free activations, the BLAS GEMMs and the step-row bookkeeping. Included once
// per translation unit, inside no namespace; everything here has internal linkage.

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
using Rows = std::vector<std::pair<int64_t, int64_t>>;      // (first row, active rows)

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

// (first row, active rows) of every step, in processing order (reversed for `reverse`).
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

template <typename T>
const T* ptr_or_null(const c10::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

}  // namespace
