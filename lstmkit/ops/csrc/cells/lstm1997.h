// The 1997 LSTM (Hochreiter & Schmidhuber): the C++ twin of LSTM1997Fused in
// lstmkit/cells/lstm1997.py (read its docstring for the equations and their BPTT). Options:
// truncate. Loop weights: W_hh (3H, H). Rows i, g, o; g(z) = 4σ(z) − 2 = 2 tanh(z/2),
// h(z) = 2σ(z) − 1 = tanh(z/2); c_t = c_{t-1} + i_t ⊙ g_t (the constant error carousel).

#pragma once

#include "engine.h"

namespace {

template <typename T>
struct LSTM1997Cell {
  static constexpr bool kDirectH = false;

  explicit LSTM1997Cell(const Layer<T>& L)
      : H(L.H), truncate(L.opts.at(0) != 0),
        recurrent(L.w[0], true, L.B, 3 * L.H, L.H), back(L.w[0], false, L.B, L.H, 3 * L.H) {}

  void forward(FwdStep<T>& s) {
    recurrent(s.n, s.h_in, H, T(1), s.a, 3 * H);                       // a += ĥ_{t-1} W_hhᵀ
    for (int64_t b = 0; b < s.n; ++b) {
      T* a_i = s.a + b * 3 * H;
      T* a_g = a_i + H;
      T* a_o = a_i + 2 * H;
      const T* c_prev = s.prev[1] + b * H;
      T* c_t = s.next[1] + b * H;
      T* h_t = s.next[0] + b * s.ld0;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T i_t = sigmoid(a_i[j]);
        const T g_t = T(2) * tanh_(T(0.5) * a_g[j]);                  // g ∈ [−2, 2]
        const T o_t = sigmoid(a_o[j]);
        const T c = c_prev[j] + i_t * g_t;                             // the CEC
        a_i[j] = i_t;
        a_g[j] = g_t;
        a_o[j] = o_t;
        c_t[j] = c;
        h_t[j] = o_t * tanh_(T(0.5) * c);                              // h ∈ [−1, 1]
      }
    }
  }

  void backward(BwdStep<T>& s) {
    for (int64_t b = 0; b < s.n; ++b) {
      const T* i_ = s.gates + b * 3 * H;
      const T* g_ = i_ + H;
      const T* o_ = i_ + 2 * H;
      const T* c_prev = s.prev[1] + b * H;
      const T* c_stored = s.next[1] + b * H;
      const T* dh = s.dnext[0] + b * s.ld0;
      const T* dc_next = s.dnext[1] + b * H;
      T* da_i = s.dA + b * 3 * H;
      T* da_g = da_i + H;
      T* da_o = da_i + 2 * H;
      T* dc_prev = s.dprev[1] + b * H;
      const T zoned = s.zoned[1] ? T(1) : T(0);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T i_t = i_[j], g_t = g_[j], o_t = o_[j];
        const T c = zoned * (c_prev[j] + i_t * g_t) + (T(1) - zoned) * c_stored[j];   // c̃_t
        const T h_c = tanh_(T(0.5) * c);
        da_o[j] = dh[j] * h_c * o_t * (T(1) - o_t);
        const T dc = dc_next[j] + dh[j] * o_t * (T(1) - h_c * h_c) * T(0.5);
        da_g[j] = dc * i_t * (T(1) - T(0.25) * g_t * g_t);
        da_i[j] = dc * g_t * i_t * (T(1) - i_t);
        dc_prev[j] = dc;                                                // the CEC: weight 1
      }
    }
    if (!truncate) {
      back(s.n, s.dA, 3 * H, s.beta0, s.dh_in, H);                     // ∂L/∂ĥ = dA W_hh
    } else if (s.beta0 == T(0)) {
      std::memset(s.dh_in, 0, sizeof(T) * s.n * H);                   // errors stop here
    }
  }

 private:
  int64_t H;
  bool truncate;
  WeightGemm<T> recurrent, back;
};

}  // namespace

LSTMKIT_REGISTER_CELL(lstm1997, LSTM1997Cell)
