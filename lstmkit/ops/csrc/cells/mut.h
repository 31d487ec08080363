// MUT1–3 (Jozefowicz, Zaremba & Sutskever 2015): the C++ twin of MUTFused in
// lstmkit/cells/mut.py (read its docstring for the equations and their BPTT). Options:
// variant (1, 2, 3). Loop weights: W_hh (G·H, H), its row blocks MUT1 W_hr | W_hh, MUT2 and
// MUT3 W_hz | W_hr | W_hh. a (N, 3H) = z | r | n for every variant: the input side in (every
// term without h), the activations out. Scratch: q = r ⊙ ĥ (B, H) (backward: dq); MUT3 also
// tanh(ĥ) and da_z W_hz (B, H). h_t = n ⊙ z + h_{t-1} ⊙ (1 − z): a direct path of h_{t-1}.

#pragma once

#include "engine.h"

namespace {

template <typename T>
struct MUTCell {
  static constexpr bool kDirectH = true;                   // … + h_{t-1} ⊙ (1 − z)

  explicit MUTCell(const Layer<T>& L)
      : H(L.H), variant(static_cast<int>(L.opts.at(0))), W(L.w[0]),
        W_r(W + (variant == 1 ? 0 : 1) * L.H * L.H), W_n(W + (variant == 1 ? 1 : 2) * L.H * L.H),
        recurrent_zr(W, true, variant == 2 ? L.B : 0, 2 * H, H),          // · [W_hz|W_hr]ᵀ
        recurrent_r(W_r, true, variant == 2 ? 0 : L.B, H, H),             // · W_hrᵀ
        recurrent_z(W, true, variant == 3 ? L.B : 0, H, H),               // · W_hzᵀ
        candidate(W_n, true, L.B, H, H),                                   // · W_hhᵀ
        back_n(W_n, false, L.B, H, H),                                     // · W_hh
        back_r(W_r, false, L.B, H, H),                                     // · W_hr
        back_z(W, false, variant == 1 ? 0 : L.B, H, H),                    // · W_hz
        q(L.B * H), th(variant == 3 ? L.B * H : 0), dz(variant == 3 ? L.B * H : 0) {}

  // per-row buffers by row, the scratch q, th, dz by the step's row (engine.h)
  bool row_parallel() const { return true; }

  void forward(FwdStep<T>& s) {
    const int64_t n = s.n;
    T* qs = q.data() + s.row * H;                   // scratch by the step's row
    T* ths = variant == 3 ? th.data() + s.row * H : nullptr;
    if (variant == 2) {
      recurrent_zr(n, s.h_in, H, T(1), s.a, 3 * H);                   // a_z, a_r += ĥ W_h{z,r}ᵀ
    } else {
      recurrent_r(n, s.h_in, H, T(1), s.a + H, 3 * H);                // a_r += ĥ W_hrᵀ
      if (variant == 3) {
#pragma omp simd
        for (int64_t j = 0; j < n * H; ++j) ths[j] = tanh_(s.h_in[j]);
        recurrent_z(n, ths, H, T(1), s.a, 3 * H);                     // a_z += tanh(ĥ) W_hzᵀ
      }
    }
    for (int64_t b = 0; b < n; ++b) {
      T* a_z = s.a + b * 3 * H;
      T* a_r = a_z + H;
      const T* h_in = s.h_in + b * H;
      T* q_b = qs + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        a_z[j] = sigmoid(a_z[j]);                                     // z
        const T r = sigmoid(a_r[j]);
        a_r[j] = r;
        q_b[j] = r * h_in[j];                                         // q = r ⊙ ĥ
      }
    }
    candidate(n, qs, H, T(1), s.a + 2 * H, 3 * H);                    // a_n += q W_hhᵀ
    for (int64_t b = 0; b < n; ++b) {
      T* a_z = s.a + b * 3 * H;
      T* a_n = a_z + 2 * H;
      const T* h = s.prev[0] + b * H;
      T* h_t = s.next[0] + b * s.ld0;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T n_t = tanh_(a_n[j]);
        const T z = a_z[j];
        a_n[j] = n_t;
        h_t[j] = h[j] + z * (n_t - h[j]);                             // n ⊙ z + h ⊙ (1 − z)
      }
    }
  }

  void backward(BwdStep<T>& s) {
    const int64_t n = s.n;
    T* qs = q.data() + s.row * H;
    T* dzs = variant == 3 ? dz.data() + s.row * H : nullptr;
    for (int64_t b = 0; b < n; ++b) {
      const T* z_ = s.gates + b * 3 * H;
      const T* n_ = z_ + 2 * H;
      const T* h = s.prev[0] + b * H;
      const T* dh = s.dnext[0] + b * s.ld0;
      T* da_z = s.dA + b * 3 * H;
      T* da_n = da_z + 2 * H;
      T* dh_prev = s.dprev[0] + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T z = z_[j], n_t = n_[j], d = dh[j];
        da_n[j] = d * z * (T(1) - n_t * n_t);
        da_z[j] = d * (n_t - h[j]) * z * (T(1) - z);
        dh_prev[j] = d * (T(1) - z);                                  // the direct path
      }
    }
    back_n(n, s.dA + 2 * H, 3 * H, T(0), qs, H);                      // dq = da_n W_hh
    for (int64_t b = 0; b < n; ++b) {
      const T* r_ = s.gates + b * 3 * H + H;
      const T* h_in = s.h_in + b * H;
      const T* dq = qs + b * H;
      T* da_r = s.dA + b * 3 * H + H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T r = r_[j];
        da_r[j] = dq[j] * h_in[j] * r * (T(1) - r);
      }
    }
    back_r(n, s.dA + H, 3 * H, s.beta0, s.dh_in, H);                  // ∂L/∂ĥ = da_r W_hr
    if (variant == 2) {
      back_z(n, s.dA, 3 * H, T(1), s.dh_in, H);                       //   + da_z W_hz
    } else if (variant == 3) {
      back_z(n, s.dA, 3 * H, T(0), dzs, H);
#pragma omp simd
      for (int64_t j = 0; j < n * H; ++j) {                           //   + (da_z W_hz) ⊙ tanh'
        const T t = tanh_(s.h_in[j]);
        s.dh_in[j] += dzs[j] * (T(1) - t * t);
      }
    }
    for (int64_t b = 0; b < n; ++b) {
      const T* r_ = s.gates + b * 3 * H + H;
      const T* dq = qs + b * H;
      T* d_in = s.dh_in + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) d_in[j] += dq[j] * r_[j];       //   + dq ⊙ r
    }
  }

 private:
  int64_t H;
  int variant;
  const T* W;
  const T* W_r;
  const T* W_n;
  WeightGemm<T> recurrent_zr, recurrent_r, recurrent_z, candidate, back_n, back_r, back_z;
  std::vector<T> q, th, dz;
};

}  // namespace

LSTMKIT_REGISTER_CELL(mut, MUTCell)
