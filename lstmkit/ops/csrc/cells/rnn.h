// The Elman RNN family: the C++ twin of RNNFused in lstmkit/cells/rnn.py. Options: relu.
// Loop weights: W_hh (H, H). The step leaves h̃_t = act(a_t) in a (the output's own buffer
// unless zoneout mixes h_{t-1} in).

#pragma once

#include "engine.h"

namespace {

template <typename T>
struct RNNCell {
  static constexpr bool kDirectH = false;

  explicit RNNCell(const Layer<T>& L)
      : H(L.H), relu(L.opts.at(0) != 0), recurrent(L.w[0], true, L.B, L.H, L.H),
        back(L.w[0], false, L.B, L.H, L.H) {}

  bool row_parallel() const { return true; }

  void forward(FwdStep<T>& s) {
    const int64_t k = s.n * H;
    T* a = s.a;
    recurrent(s.n, s.h_in, H, T(1), a, H);                             // a += ĥ_{t-1} W_hhᵀ
    if (relu) {
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) a[j] = std::max(a[j], T(0));
    } else {
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) a[j] = tanh_(a[j]);
    }
    if (s.next[0] != a) std::memcpy(s.next[0], a, sizeof(T) * k);
  }

  void backward(BwdStep<T>& s) {
    const int64_t k = s.n * H;
    const T* h = s.gates;                                              // h̃_t
    const T* dh = s.dnext[0];
    T* dA = s.dA;
    if (relu) {
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) dA[j] = h[j] > T(0) ? dh[j] : T(0);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) dA[j] = dh[j] * (T(1) - h[j] * h[j]);
    }
    back(s.n, dA, H, s.beta0, s.dh_in, H);                             // ∂L/∂ĥ = dA W_hh
  }

 private:
  int64_t H;
  bool relu;
  WeightGemm<T> recurrent, back;
};

}  // namespace

LSTMKIT_REGISTER_CELL(rnn, RNNCell)
