// minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201): the
// whole layer after its input projection, forward and hand-derived backward, as one pass
// over time per sequence. Its Python side is lstmkit/ops/scan.py; the equations are in
// lstmkit/cells/minrnn.py.
//
// Both cells are h_t = (1 − u_t) ⊙ h_{t-1} + u_t ⊙ h̃_t with u_t computed from x_t alone:
//   minGRU  (K = 2 blocks k_z | k_h):       u_t = z_t = σ(k_z)
//   minLSTM (K = 3 blocks k_f | k_i | k_h): u_t = i'_t = i_t / (f_t + i_t),
//                                           f_t = σ(k_f), i_t = σ(k_i), f'_t = 1 − i'_t
// and h̃_t = k_h (plain form) or g(k_h) (the paper's log-space form: g(x) = x + ½ for x ≥ 0,
// σ(x) otherwise). The recurrence is linear in h, so it needs no GEMM per step: each
// sequence is a loop over time of one vectorised loop over its H units, and the sequences
// run in parallel (at::parallel_for over b). h_t is a convex combination of h_{t-1} and h̃_t,
// so the loop is stable at any length without the logarithms a parallel scan needs.
//
// Backward (BPTT, by hand). With δ_t = ∂L/∂h_t in total (the output's gradient at t plus
// what flows back from t+1):
//   δ_t      = ∂L/∂out_t + (1 − u_{t+1}) ⊙ δ_{t+1}            (δ_{-1} is ∂L/∂h_0)
//   ∂L/∂u_t  = δ_t ⊙ (h̃_t − h_{t-1}),  ∂L/∂h̃_t = δ_t ⊙ u_t,  ∂L/∂k_h = ∂L/∂h̃_t ⊙ g'(k_h)
//   minGRU:  ∂L/∂k_z = ∂L/∂u_t ⊙ z_t (1 − z_t)
//   minLSTM: u = σ(softplus(−k_f) − softplus(−k_i)), so
//            ∂L/∂k_f = −∂L/∂u ⊙ u(1 − u) ⊙ (1 − f_t),  ∂L/∂k_i = ∂L/∂u ⊙ u(1 − u) ⊙ (1 − i_t)
// The backward recomputes u and h̃ from the saved pre-activations and reads h_{t-1} from the
// saved outputs.
//
// Layout: a (T, B, K·H) pre-activations in scan order (padded; a sequence's steps past its
// end are computed but nobody reads them, and their gradient is zero), h0 (B, H),
// h (T, B, H) the outputs. Every tensor contiguous, float or double.

#pragma once

#include <ATen/Parallel.h>

#include "common.h"

namespace {

// The update gate u_t of one unit and what its backward needs. minLSTM's u = i/(f+i) is
// computed as 1/(1 + r), r = f/i = e^{min(k_f,0) − min(k_i,0)} (1 + e^{−|k_i|}) / (1 + e^{−|k_f|}),
// which neither underflows to 0/0 nor overflows when both gates are saturated.
template <typename T>
inline T exp_(T x) { return std::exp(x); }
template <>
inline float exp_(float x) { return exp_fast(x); }

template <typename T>
inline T minlstm_u(T kf, T ki) {
  const T r = exp_(std::min(kf, T(0)) - std::min(ki, T(0))) * (T(1) + exp_(-std::abs(ki))) /
              (T(1) + exp_(-std::abs(kf)));
  return T(1) / (T(1) + r);
}

// g(x) = x + ½ (x ≥ 0), σ(x) (x < 0), and its derivative (1, σ(1 − σ)).
template <typename T>
inline T g_pos(T x) {
  const T s = sigmoid(x);
  return x >= T(0) ? x + T(0.5) : s;
}
template <typename T>
inline T g_grad(T x) {
  const T s = sigmoid(x);
  return x >= T(0) ? T(1) : s * (T(1) - s);
}

template <typename T, bool kLSTM, bool kG>
void minrnn_forward_rows(int64_t T_, int64_t B, int64_t H, const T* a, const T* h0, T* h,
                         int64_t b0, int64_t b1) {
  const int64_t K = kLSTM ? 3 : 2;
  for (int64_t b = b0; b < b1; ++b) {
    const T* prev = h0 + b * H;
    for (int64_t t = 0; t < T_; ++t) {
      const T* k = a + (t * B + b) * K * H;     // k_z | k_h   or   k_f | k_i | k_h
      const T* kh = k + (K - 1) * H;
      T* h_t = h + (t * B + b) * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T u = kLSTM ? minlstm_u(k[j], k[H + j]) : sigmoid(k[j]);
        const T ht = kG ? g_pos(kh[j]) : kh[j];
        h_t[j] = prev[j] + u * (ht - prev[j]);  // (1 − u) h_{t-1} + u h̃
      }
      prev = h_t;
    }
  }
}

template <typename T, bool kLSTM, bool kG>
void minrnn_backward_rows(int64_t T_, int64_t B, int64_t H, const T* a, const T* h0,
                          const T* h, const T* dh, T* da, T* dh0, int64_t b0, int64_t b1) {
  const int64_t K = kLSTM ? 3 : 2;
  std::vector<T> carry(H);
  for (int64_t b = b0; b < b1; ++b) {
    T* delta = carry.data();
    std::fill(carry.begin(), carry.end(), T(0));
    for (int64_t t = T_ - 1; t >= 0; --t) {
      const T* k = a + (t * B + b) * K * H;
      const T* kh = k + (K - 1) * H;
      const T* prev = t ? h + ((t - 1) * B + b) * H : h0 + b * H;
      const T* dout = dh + (t * B + b) * H;
      T* dk = da + (t * B + b) * K * H;
      T* dkh = dk + (K - 1) * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T d = delta[j] + dout[j];
        const T ht = kG ? g_pos(kh[j]) : kh[j];
        T u, du_dk0, du_dk1 = T(0);
        if constexpr (kLSTM) {
          u = minlstm_u(k[j], k[H + j]);
          const T uu = u * (T(1) - u);
          du_dk0 = -uu * (T(1) - sigmoid(k[j]));          // ∂u/∂k_f
          du_dk1 = uu * (T(1) - sigmoid(k[H + j]));       // ∂u/∂k_i
        } else {
          u = sigmoid(k[j]);
          du_dk0 = u * (T(1) - u);                        // ∂z/∂k_z
        }
        const T du = d * (ht - prev[j]);
        dk[j] = du * du_dk0;
        if constexpr (kLSTM) dk[H + j] = du * du_dk1;
        dkh[j] = kG ? d * u * g_grad(kh[j]) : d * u;
        delta[j] = d * (T(1) - u);                        // to h_{t-1}
      }
    }
    std::copy(carry.begin(), carry.end(), dh0 + b * H);
  }
}

template <typename T, bool kLSTM, bool kG>
void minrnn_forward_t(const Tensor& a, const Tensor& h0, Tensor& h) {
  const int64_t T_ = a.size(0), B = a.size(1), H = h0.size(1);
  const T* pa = a.data_ptr<T>();
  const T* ph0 = h0.data_ptr<T>();
  T* ph = h.data_ptr<T>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    minrnn_forward_rows<T, kLSTM, kG>(T_, B, H, pa, ph0, ph, b0, b1);
  });
}

template <typename T, bool kLSTM, bool kG>
void minrnn_backward_t(const Tensor& a, const Tensor& h0, const Tensor& h, const Tensor& dh,
                       Tensor& da, Tensor& dh0) {
  const int64_t T_ = a.size(0), B = a.size(1), H = h0.size(1);
  const T* pa = a.data_ptr<T>();
  const T* ph0 = h0.data_ptr<T>();
  const T* ph = h.data_ptr<T>();
  const T* pdh = dh.data_ptr<T>();
  T* pda = da.data_ptr<T>();
  T* pdh0 = dh0.data_ptr<T>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    minrnn_backward_rows<T, kLSTM, kG>(T_, B, H, pa, ph0, ph, pdh, pda, pdh0, b0, b1);
  });
}

void minrnn_check(const Tensor& a, const Tensor& h0, bool lstm) {
  TORCH_CHECK(a.dim() == 3 && h0.dim() == 2, "minrnn kernel: a must be (T, B, K·H) and h0 (B, H)");
  TORCH_CHECK(a.is_contiguous() && h0.is_contiguous(), "minrnn kernel: tensors must be contiguous");
  TORCH_CHECK(a.scalar_type() == h0.scalar_type(), "minrnn kernel: a and h0 differ in dtype");
  TORCH_CHECK(a.size(1) == h0.size(0) && a.size(2) == (lstm ? 3 : 2) * h0.size(1),
              "minrnn kernel: a is (T, B, K·H) with K = ", lstm ? 3 : 2, " and h0 (B, H)");
}

// Python: minrnn_forward(a, h0, lstm, g) -> h (T, B, H).
Tensor minrnn_forward(Tensor a, Tensor h0, bool lstm, bool g) {
  minrnn_check(a, h0, lstm);
  Tensor h = at::empty({a.size(0), a.size(1), h0.size(1)}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "minrnn_forward", [&] {
    if (lstm)
      g ? minrnn_forward_t<scalar_t, true, true>(a, h0, h)
        : minrnn_forward_t<scalar_t, true, false>(a, h0, h);
    else
      g ? minrnn_forward_t<scalar_t, false, true>(a, h0, h)
        : minrnn_forward_t<scalar_t, false, false>(a, h0, h);
  });
  return h;
}

// Python: minrnn_backward(a, h0, h, dh, lstm, g) -> (da, dh0); dh is ∂L/∂h (T, B, H).
std::vector<Tensor> minrnn_backward(Tensor a, Tensor h0, Tensor h, Tensor dh, bool lstm,
                                    bool g) {
  minrnn_check(a, h0, lstm);
  TORCH_CHECK(h.is_contiguous() && dh.is_contiguous() && h.sizes() == dh.sizes(),
              "minrnn kernel: h and dh must be contiguous (T, B, H)");
  Tensor da = at::empty_like(a);
  Tensor dh0 = at::empty_like(h0);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "minrnn_backward", [&] {
    if (lstm)
      g ? minrnn_backward_t<scalar_t, true, true>(a, h0, h, dh, da, dh0)
        : minrnn_backward_t<scalar_t, true, false>(a, h0, h, dh, da, dh0);
    else
      g ? minrnn_backward_t<scalar_t, false, true>(a, h0, h, dh, da, dh0)
        : minrnn_backward_t<scalar_t, false, false>(a, h0, h, dh, da, dh0);
  });
  return {da, dh0};
}

}  // namespace
