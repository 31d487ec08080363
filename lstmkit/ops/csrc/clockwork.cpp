// lstmkit Clockwork RNN kernels (Koutník et al. 2014): the recurrence of
// lstmkit/ops/fused_clockwork.py in C++ for the case where every row's active modules are a
// prefix (periods each dividing the next, e.g. 1, 2, 4, ...): same results as its
// clockwork_forward / clockwork_backward. ``act`` (N,) int64 gives, per flat row, the
// number of leading units updated at that row's step (its own clock); the others hold.
// Per step: one BLAS GEMM over the first a_max = max(act) units only, and one pointwise pass.
//
// Buffers are row-major and contiguous: xw/out (N, H), W_hh (H, H) already masked.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using at::Tensor;
using Rows = std::vector<std::pair<int64_t, int64_t>>;      // (first row, active rows)

// float exp: x = k·ln2 + r, degree-6 polynomial in r (Cephes expf coefficients); written
// without branches so that the pointwise loops vectorise. tanh x = 2σ(2x) − 1.
inline float exp_fast(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
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
inline float tanh_(float x) { return 2.0f / (1.0f + exp_fast(-2.0f * x)) - 1.0f; }
inline double tanh_(double x) { return std::tanh(x); }

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*,
            const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*) __attribute__((weak));
}

// Column-major BLAS: C (m×n) = op(A)·op(B) + beta·C.
inline void gemm(char ta, char tb, int m, int n, int k, const float* A, int lda, const float* B,
                 int ldb, float beta, float* C, int ldc) {
  const float one = 1.0f;
  sgemm_(&ta, &tb, &m, &n, &k, &one, A, &lda, B, &ldb, &beta, C, &ldc);
}
inline void gemm(char ta, char tb, int m, int n, int k, const double* A, int lda,
                 const double* B, int ldb, double beta, double* C, int ldc) {
  const double one = 1.0;
  dgemm_(&ta, &tb, &m, &n, &k, &one, A, &lda, B, &ldb, &beta, C, &ldc);
}

// Row-major C (m×n) = beta·C + A (m×k) · Wᵀ, W stored (n×k).
template <typename T>
void gemm_awt(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* W, T beta,
              T* C, int64_t ldc) {
  if (m > 0) gemm('T', 'N', n, m, k, W, k, A, lda, beta, C, ldc);
}
// Row-major C (m×n) = beta·C + A (m×k) · W, W stored (k×n).
template <typename T>
void gemm_aw(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* W, T beta,
             T* C, int64_t ldc) {
  if (m > 0) gemm('N', 'N', n, m, k, W, n, A, lda, beta, C, ldc);
}

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


// ---- forward --------------------------------------------------------------------------
template <typename T>
void forward_impl(T* a, const T* W, T* h, const int64_t* act, const Rows& rows, int64_t H) {
  for (auto [start, n] : rows) {
    T* a_t = a + start * H;
    const int64_t a_max = *std::max_element(act + start, act + start + n);
    gemm_awt<T>(n, a_max, H, h, H, W, T(1), a_t, H);         // a[:, :a_max] += h W[:a_max]ᵀ
    for (int64_t b = 0; b < n; ++b) {
      const int64_t active = act[start + b];
      T* ab = a_t + b * H;
#pragma omp simd
      for (int64_t j = 0; j < active; ++j) ab[j] = tanh_(ab[j]);        // updated units
      std::memcpy(ab + active, h + b * H + active, sizeof(T) * (H - active));   // held
    }
    std::memcpy(h, a_t, sizeof(T) * n * H);
  }
}

std::vector<Tensor> clockwork_forward(Tensor xw, Tensor w_hh, Tensor h0,
                                      std::vector<int64_t> batch_sizes, bool reverse,
                                      Tensor act) {
  auto W = w_hh.contiguous();
  Tensor h_carry = h0.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "clockwork_forward", [&] {
    forward_impl<scalar_t>(xw.data_ptr<scalar_t>(), W.data_ptr<scalar_t>(),
                           h_carry.data_ptr<scalar_t>(), act.data_ptr<int64_t>(), rows,
                           h0.size(1));
  });
  return {xw, h_carry};
}

// ---- backward -------------------------------------------------------------------------
// dh = dout + carried; on active units da = dh (1 − h²) and nothing is carried past the
// update; held units carry dh unchanged; then dh_{t-1} += da[:, :a_max] W_hh[:a_max].
template <typename T>
void backward_impl(const T* dout, const T* out, const T* W, T* dA, T* dh, const int64_t* act,
                   const Rows& rows, int64_t H) {
  for (auto it = rows.rbegin(); it != rows.rend(); ++it) {
    const auto [start, n] = *it;
    const int64_t a_max = *std::max_element(act + start, act + start + n);
    for (int64_t b = 0; b < n; ++b) {
      const int64_t active = act[start + b];
      const T* hb = out + (start + b) * H;
      const T* dob = dout + (start + b) * H;
      T* dab = dA + (start + b) * H;
      T* dhb = dh + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T d = dob[j] + dhb[j];
        const bool on = j < active;
        dab[j] = on ? d * (T(1) - hb[j] * hb[j]) : T(0);
        dhb[j] = on ? T(0) : d;
      }
    }
    gemm_aw<T>(n, H, a_max, dA + start * H, H, W, T(1), dh, H);
  }
}

std::vector<Tensor> clockwork_backward(Tensor dout, Tensor dh_n, Tensor out, Tensor w_hh,
                                       std::vector<int64_t> batch_sizes, bool reverse,
                                       Tensor act) {
  auto W = w_hh.contiguous();
  Tensor dA = at::empty_like(out);
  Tensor dh_carry = dh_n.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "clockwork_backward", [&] {
    backward_impl<scalar_t>(dout.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                            W.data_ptr<scalar_t>(), dA.data_ptr<scalar_t>(),
                            dh_carry.data_ptr<scalar_t>(), act.data_ptr<int64_t>(), rows,
                            dh_n.size(1));
  });
  return {dA, dh_carry};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lstmkit Clockwork RNN recurrences (see lstmkit/ops/fused_clockwork.py)";
  if (sgemm_ == nullptr || dgemm_ == nullptr)
    throw std::runtime_error("lstmkit clockwork: this torch exports no BLAS sgemm_/dgemm_");
  m.def("clockwork_forward", &clockwork_forward);
  m.def("clockwork_backward", &clockwork_backward);
}
