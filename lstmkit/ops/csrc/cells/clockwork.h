// The Clockwork RNN family: the C++ twin of ClockworkFused in lstmkit/cells/clockwork.py.
// Options: the number of modules g. Loop weights: W_hh (H, H), already masked
// block-upper-triangular. Side input: which modules tick at each row, (N, g) bool. A step
// computes the rows of W_hh up to its last ticking module only (with periods that divide
// each other, as the exponential ones, the ticking modules are always the first m: nothing
// else is computed); units of modules that do not tick keep h_{t-1}. The step leaves h̃_t
// in a.

#pragma once

#include "engine.h"

namespace {

template <typename T>
struct ClockworkCell {
  static constexpr bool kDirectH = true;                   // held units: h_t = h_{t-1}

  explicit ClockworkCell(const Layer<T>& L)
      : H(L.H), g(static_cast<int64_t>(L.opts.at(0))), k(L.H / g), W(L.w[0]),
        ticks(static_cast<const bool*>(L.side.at(0))) {}

  void forward(FwdStep<T>& s) {
    const int64_t n = s.n, width = leading_modules(s.start, n) * k;
    if (width) gemm_abt<T>(n, width, H, s.h_in, H, W, H, T(1), s.a, H);   // a[:, :w] += ĥ Wᵀ
    for (int64_t b = 0; b < n; ++b) {
      const bool* tb = ticks + (s.start + b) * g;
      T* ab = s.a + b * H;
      const T* hb = s.prev[0] + b * H;
      for (int64_t i = 0; i < g; ++i) {
        T* ai = ab + i * k;
        if (tb[i]) {
#pragma omp simd
          for (int64_t j = 0; j < k; ++j) ai[j] = tanh_(ai[j]);
        } else {
          std::memcpy(ai, hb + i * k, sizeof(T) * k);                  // held
        }
      }
      if (s.next[0] != s.a) std::memcpy(s.next[0] + b * H, ab, sizeof(T) * H);
    }
  }

  void backward(BwdStep<T>& s) {
    const int64_t n = s.n, width = leading_modules(s.start, n) * k;
    for (int64_t b = 0; b < n; ++b) {
      const bool* tb = ticks + (s.start + b) * g;
      const T* hb = s.gates + b * H;
      const T* dhb = s.dnext[0] + b * H;
      T* dab = s.dA + b * H;
      T* dpb = s.dprev[0] + b * H;
      for (int64_t i = 0; i < g; ++i) {
        const int64_t o = i * k;
        const T on = tb[i] ? T(1) : T(0);
#pragma omp simd
        for (int64_t j = 0; j < k; ++j) {
          dab[o + j] = on * dhb[o + j] * (T(1) - hb[o + j] * hb[o + j]);
          dpb[o + j] = (T(1) - on) * dhb[o + j];                        // held: straight on
        }
      }
    }
    if (width) {
      gemm_ab<T>(n, H, width, s.dA, H, W, H, s.beta0, s.dh_in, H);      // ∂L/∂ĥ = dA[:, :w] W
    } else if (s.beta0 == T(0)) {
      std::memset(s.dh_in, 0, sizeof(T) * n * H);
    }
  }

 private:
  // The modules the GEMM must cover at this step: up to the last one that ticks in a row.
  int64_t leading_modules(int64_t start, int64_t n) const {
    int64_t last = 0;
    for (int64_t b = 0; b < n; ++b) {
      const bool* tb = ticks + (start + b) * g;
      for (int64_t i = g; i > last; --i) {
        if (tb[i - 1]) {
          last = i;
          break;
        }
      }
    }
    return last;
  }

  int64_t H, g, k;
  const T* W;
  const bool* ticks;
};

}  // namespace

LSTMKIT_REGISTER_CELL(clockwork, ClockworkCell)
