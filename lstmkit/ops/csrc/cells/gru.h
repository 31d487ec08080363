// The GRU family: the C++ twin of GRUFused in lstmkit/cells/gru.py (read its docstring for
// the equations and their BPTT). Options: reset_after. Loop weights: W_hh (3H, H), b_hh (or
// null). Saved (reset_after; none in inference, where it is kept for the step only): hw_n =
// W_hn ĥ + b_hn (N, H). Gradient buffer (reset_after): the
// recurrent side's dA_h = [da_r, da_z, da_n ⊙ r] (N, 3H).

#pragma once

#include "engine.h"

namespace {

template <typename T>
struct GRUCell {
  static constexpr bool kDirectH = true;                   // h_t = … + z ⊙ h_{t-1}

  explicit GRUCell(const Layer<T>& L)
      : H(L.H), reset_after(L.opts.at(0) != 0), b_hh(L.w[1]), hw_n(L.saved),
        dA_h(L.grads), W(L.w[0]),
        recurrent(W, true, L.B, reset_after ? 3 * H : 2 * H, H),      // · W_hhᵀ (or W_h{r,z}ᵀ)
        candidate(W + 2 * H * H, true, reset_after ? 0 : L.B, H, H),  // · W_hnᵀ
        back(W, false, reset_after ? L.B : 0, H, 3 * H),              // · W_hh
        back_rz(W, false, reset_after ? 0 : L.B, H, 2 * H),           // · W_h{r,z}
        back_n(W + 2 * H * H, false, reset_after ? 0 : L.B, H, H),    // · W_hn
        hw(L.B * 3 * H), q(L.B * H),
        hn_step(reset_after && hw_n.empty() ? L.B * H : 0) {}

  bool row_parallel() const { return true; }   // scratch hw, q, hn_step by row

  void forward(FwdStep<T>& s) {
    const int64_t n = s.n, cols = reset_after ? 3 * H : 2 * H;
    T* hw_s = hw.data() + s.row * cols;
    T* q_s = q.data() + s.row * H;
    recurrent(n, s.h_in, H, T(0), hw_s, cols);                         // ĥ_{t-1} W_hᵀ
    for (int64_t b = 0; b < n; ++b) {
      T* ab = s.a + b * 3 * H;
      const T* hwb = hw_s + b * cols;
      const T* hb = s.h_in + b * H;
      T* qb = q_s + b * H;
#pragma omp simd
      for (int64_t j = 0; j < 2 * H; ++j)
        ab[j] = sigmoid(ab[j] + hwb[j] + (b_hh ? b_hh[j] : T(0)));      // r_t, z_t
      if (reset_after) {
        // kept for the backward, or (inference: no saved buffers) only for the step
        T* hnb = hw_n.empty() ? hn_step.data() + (s.row + b) * H : hw_n[0] + (s.start + b) * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T hn = hwb[2 * H + j] + (b_hh ? b_hh[2 * H + j] : T(0));
          hnb[j] = hn;
          ab[2 * H + j] += ab[j] * hn;                                  // a_n + r ⊙ hw_n
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) qb[j] = ab[j] * hb[j];         // q = r ⊙ ĥ
      }
    }
    if (!reset_after) candidate(n, q_s, H, T(1), s.a + 2 * H, 3 * H);        // a_n += q W_hnᵀ
    for (int64_t b = 0; b < n; ++b) {
      T* ab = s.a + b * 3 * H;
      const T* hb = s.prev[0] + b * H;
      T* ob = s.next[0] + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T pre = ab[2 * H + j] + (!reset_after && b_hh ? b_hh[2 * H + j] : T(0));
        const T n_t = tanh_(pre);
        const T z_t = ab[H + j];
        ab[2 * H + j] = n_t;
        ob[j] = n_t + z_t * (hb[j] - n_t);                              // (1 − z) n + z h
      }
    }
  }

  void backward(BwdStep<T>& s) {
    const int64_t n = s.n;
    for (int64_t b = 0; b < n; ++b) {
      const T* gb = s.gates + b * 3 * H;
      const T* hpb = s.prev[0] + b * H;
      const T* dhb = s.dnext[0] + b * H;
      T* dab = s.dA + b * 3 * H;
      T* dpb = s.dprev[0] + b * H;
      const T* hnb = reset_after ? hw_n[0] + (s.start + b) * H : nullptr;
      T* dhhb = reset_after ? dA_h[0] + (s.start + b) * 3 * H : nullptr;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T r_t = gb[j], z_t = gb[H + j], n_t = gb[2 * H + j], d_h = dhb[j];
        const T d_n = d_h * (T(1) - z_t) * (T(1) - n_t * n_t);
        dab[H + j] = d_h * (hpb[j] - n_t) * z_t * (T(1) - z_t);         // da_z
        dab[2 * H + j] = d_n;
        dpb[j] = d_h * z_t;                                             // the direct path
        if (reset_after) {
          const T d_r = d_n * hnb[j] * r_t * (T(1) - r_t);
          dab[j] = d_r;
          dhhb[j] = d_r;
          dhhb[H + j] = dab[H + j];
          dhhb[2 * H + j] = d_n * r_t;
        }
      }
    }
    if (reset_after) {                                                  // ∂L/∂ĥ = dA_h W_hh
      back(n, dA_h[0] + s.start * 3 * H, 3 * H, s.beta0, s.dh_in, H);
      return;
    }
    T* q_s = q.data() + s.row * H;
    back_n(n, s.dA + 2 * H, 3 * H, T(0), q_s, H);                        // dq = da_n W_hn
    for (int64_t b = 0; b < n; ++b) {
      const T* gb = s.gates + b * 3 * H;
      const T* hb = s.h_in + b * H;
      const T* dqb = q_s + b * H;
      T* dab = s.dA + b * 3 * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T r_t = gb[j];
        dab[j] = dqb[j] * hb[j] * r_t * (T(1) - r_t);                   // da_r
      }
    }
    back_rz(n, s.dA, 3 * H, s.beta0, s.dh_in, H);                       // + [da_r, da_z] W_rz
    for (int64_t b = 0; b < n; ++b) {
      const T* gb = s.gates + b * 3 * H;
      const T* dqb = q_s + b * H;
      T* dib = s.dh_in + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) dib[j] += dqb[j] * gb[j];         // + dq ⊙ r
    }
  }

 private:
  int64_t H;
  bool reset_after;
  const T* b_hh;
  std::vector<T*> hw_n, dA_h;
  const T* W;
  WeightGemm<T> recurrent, candidate, back, back_rz, back_n;
  std::vector<T> hw, q, hn_step;
};

}  // namespace

LSTMKIT_REGISTER_CELL(gru, GRUCell)
