// The Depth-Gated LSTM family: the C++ twin of DepthGatedFused in
// lstmkit/cells/depth_gated.py (read its docstring for the equations and their BPTT).
// Loop weights: W_hh (4H, H), w_cd (H) (null in the lowest layer). Side input (layers above
// the lowest): the cell sequence c^L of the layer below, (N, H). Gradient buffer (likewise):
// dc ⊙ d, the part of ∂L/∂c^L_t through the cell. The lowest layer is a plain LSTM and runs
// the LSTM's own pointwise kernels (cells/lstm.h); a layer above has the depth gate d as a
// fifth gate block of a (N, 5H).

#pragma once

#include "cells/lstm.h"

namespace {

// no jump threading in the kernels, as the LSTM's (cells/lstm.h)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-thread-jumps")
#endif
template <typename T>
void depth_gated_pointwise(int64_t n, int64_t H, T* a, const T* c_low, const T* w_cd,
                           const T* c_prev, T* c_out, T* m_out) {
  for (int64_t b = 0; b < n; ++b) {
    T* a_i = a + b * 5 * H;
    T* a_f = a_i + H;
    T* a_g = a_i + 2 * H;
    T* a_o = a_i + 3 * H;
    T* a_d = a_i + 4 * H;
    const T* cpb = c_prev + b * H;
    const T* clb = c_low + b * H;
    T* cob = c_out + b * H;
    T* mb = m_out + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T cp = cpb[j];
      const T i_t = sigmoid(a_i[j]), f_t = sigmoid(a_f[j]), g_t = tanh_(a_g[j]);
      const T o_t = sigmoid(a_o[j]);
      const T d_t = sigmoid(a_d[j] + w_cd[j] * cp);
      const T c_t = d_t * clb[j] + f_t * cp + i_t * g_t;
      a_i[j] = i_t;
      a_f[j] = f_t;
      a_g[j] = g_t;
      a_o[j] = o_t;
      a_d[j] = d_t;
      cob[j] = c_t;
      mb[j] = o_t * tanh_(c_t);
    }
  }
}

// c̃_t = d ⊙ c^L_t + f ⊙ c_{t-1} + i ⊙ g from the saved activations (c zoned out)
template <typename T>
void depth_gated_candidate(int64_t n, int64_t H, const T* gates, const T* c_low,
                           const T* c_prev, T* c_cand) {
  for (int64_t b = 0; b < n; ++b) {
    const T* i_ = gates + b * 5 * H;
    const T* cpb = c_prev + b * H;
    const T* clb = c_low + b * H;
    T* ccb = c_cand + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j)
      ccb[j] = i_[4 * H + j] * clb[j] + i_[H + j] * cpb[j] + i_[j] * i_[2 * H + j];
  }
}

template <typename T>
void depth_gated_pointwise_backward(int64_t n, int64_t H, const T* gates, const T* c,
                                    const T* c_prev, const T* c_low, const T* dm,
                                    const T* dc_next, const T* w_cd, T* dc_prev_out, T* dA,
                                    T* dc_low) {
  for (int64_t b = 0; b < n; ++b) {
    const T* i_ = gates + b * 5 * H;
    const T* f_ = i_ + H;
    const T* g_ = i_ + 2 * H;
    const T* o_ = i_ + 3 * H;
    const T* d_ = i_ + 4 * H;
    T* da_i = dA + b * 5 * H;
    T* da_f = da_i + H;
    T* da_g = da_i + 2 * H;
    T* da_o = da_i + 3 * H;
    T* da_d = da_i + 4 * H;
    const T* cb = c + b * H;
    const T* cpb = c_prev + b * H;
    const T* clb = c_low + b * H;
    const T* dmb = dm + b * H;
    const T* dcb = dc_next + b * H;
    T* dpb = dc_prev_out + b * H;
    T* dlb = dc_low + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T i_t = i_[j], f_t = f_[j], g_t = g_[j], o_t = o_[j], d_t = d_[j], cp = cpb[j];
      const T dh = dmb[j];
      const T tanh_c = tanh_(cb[j]);
      da_o[j] = dh * tanh_c * o_t * (T(1) - o_t);
      const T dc = dcb[j] + dh * o_t * (T(1) - tanh_c * tanh_c);
      da_g[j] = dc * i_t * (T(1) - g_t * g_t);
      da_i[j] = dc * g_t * i_t * (T(1) - i_t);
      da_f[j] = dc * cp * f_t * (T(1) - f_t);
      const T dd = dc * clb[j] * d_t * (T(1) - d_t);
      da_d[j] = dd;
      dlb[j] = dc * d_t;                                   // + da_d ⊙ w_ld, per chunk
      dpb[j] = dc * f_t + dd * w_cd[j];
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

template <typename T>
struct DepthGatedCell {
  static constexpr bool kDirectH = false;

  explicit DepthGatedCell(const Layer<T>& L)
      : H(L.H), A(L.A), depth(!L.side.empty()),
        c_low(depth ? static_cast<const T*>(L.side[0]) : nullptr), w_cd(L.w[1]),
        dc_low(depth && !L.grads.empty() ? L.grads[0] : nullptr),
        recurrent(L.w[0], true, L.B, 4 * L.H, L.H), back(L.w[0], false, L.B, L.H, 4 * L.H),
        c_cand(L.zone[1] ? L.B * L.H : 0) {
    TORCH_CHECK(A == (depth ? 5 : 4) * H, "depth_gated: a must be (N, ", depth ? 5 : 4, "H)");
  }

  // per-row buffers and c^L by row, the scratch c_cand by the step's row (engine.h)
  bool row_parallel() const { return true; }

  void forward(FwdStep<T>& s) {
    recurrent(s.n, s.h_in, H, T(1), s.a, A);                           // a[:, :4H] += ĥ W_hhᵀ
    if (depth) {
      depth_gated_pointwise<T>(s.n, H, s.a, c_low + s.start * H, w_cd, s.prev[1], s.next[1],
                               s.next[0]);
    } else {
      lstm_pointwise<T, false, false>(s.n, H, s.a, s.prev[1], s.next[1], s.next[0], H,
                                      nullptr);
    }
  }

  void backward(BwdStep<T>& s) {
    const int64_t n = s.n;
    const T* c_t = s.next[1];
    if (s.zoned[1]) {                                    // the candidate the step computed
      T* cand = c_cand.data() + s.row * H;
      if (depth) depth_gated_candidate<T>(n, H, s.gates, c_low + s.start * H, s.prev[1], cand);
      else lstm_candidate<T, false>(n, H, s.gates, s.prev[1], cand);
      c_t = cand;
    }
    if (depth) {
      depth_gated_pointwise_backward<T>(n, H, s.gates, c_t, s.prev[1], c_low + s.start * H,
                                        s.dnext[0], s.dnext[1], w_cd, s.dprev[1], s.dA,
                                        dc_low + s.start * H);
    } else {
      lstm_pointwise_backward<T, false, false>(n, H, s.gates, c_t, s.prev[1], s.dnext[0], H,
                                               s.dnext[1], s.dprev[1], s.dA, nullptr);
    }
    back(n, s.dA, A, s.beta0, s.dh_in, H);                             // ∂L/∂ĥ = dA[:, :4H] W
  }

 private:
  int64_t H, A;
  bool depth;
  const T* c_low;
  const T* w_cd;
  T* dc_low;
  WeightGemm<T> recurrent, back;
  std::vector<T> c_cand;
};

}  // namespace

LSTMKIT_REGISTER_CELL(depth_gated, DepthGatedCell)
