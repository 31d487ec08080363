// The layer-normalised LSTM and GRU (Ba, Kiros & Hinton 2016): the C++ twins of LNLSTMFused
// and LNGRUFused in lstmkit/cells/layernorm.py (read its comments for the folded input side
// and the BPTT). Per step: one GEMM with W_hh written straight into the saved ĥ buffer and
// normalised there in place, then one pass per row for the gates (and the LN of c_t).
// Row statistics: mean, then the biased variance of the deviations (two passes), and
// rstd = 1/sqrt(var + ε) with ε = 1e-5 (cells/layernorm.py EPS). Sums over rows (gains,
// biases) are left to the chunk-level code, from the per-row gradient buffers.

#pragma once

#include "engine.h"

namespace {

constexpr double kLayerNormEps = 1e-5;

// (μ, 1/σ) of v[0..D): mean, then the biased variance of the deviations.
template <typename T>
std::pair<T, T> ln_stats(const T* v, int64_t D) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < D; ++j) sum += v[j];
  const T mu = sum / T(D);
  T sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < D; ++j) sq += (v[j] - mu) * (v[j] - mu);
  return {mu, T(1) / std::sqrt(sq / T(D) + T(kLayerNormEps))};
}

// LN backward over D entries, dy = ∂L/∂LN(v), dv̂ = g ⊙ dy:
// dv[j] = rstd · (dv̂[j] − mean(dv̂) − v̂[j] · mean(dv̂ ⊙ v̂)).
template <typename T>
void ln_backward(const T* dy, const T* g, const T* v_hat, T rstd, int64_t D, T* dv) {
  T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < D; ++j) {
    const T d = dy[j] * g[j];
    s1 += d;
    s2 += d * v_hat[j];
  }
  const T m1 = s1 / T(D), m2 = s2 / T(D);
#pragma omp simd
  for (int64_t j = 0; j < D; ++j) dv[j] = rstd * (dy[j] * g[j] - m1 - v_hat[j] * m2);
}

// ---- LN-LSTM: loop weights W_hh, α_hh, α_c, β_c (gains α, biases β, named as in
// cells/layernorm.py); saved ĥ (N, 4H), 1/σ_h (N, 1), ĉ (N, H), 1/σ_c (N, 1); gradient
// buffers dHW (N, 4H), dy (N, H).
template <typename T>
struct LNLSTMCell {
  static constexpr bool kDirectH = false;

  explicit LNLSTMCell(const Layer<T>& L)
      : H(L.H), alpha_hh(L.w[1]), alpha_c(L.w[2]), beta_c(L.w[3]), h_hat(L.saved[0]),
        rstd_h(L.saved[1]),
        c_hat(L.saved[2]), rstd_c(L.saved[3]), dHW(L.grads.empty() ? nullptr : L.grads[0]),
        dY(L.grads.empty() ? nullptr : L.grads[1]),
        recurrent(L.w[0], true, L.B, 4 * L.H, L.H), back(L.w[0], false, L.B, L.H, 4 * L.H),
        dc_ln(L.H) {}

  void forward(FwdStep<T>& s) {
    const int64_t G = 4 * H;
    T* hh_t = h_hat + s.start * G;
    recurrent(s.n, s.h_in, H, T(0), hh_t, G);                         // W_hh ĥ → ĥ buffer
    for (int64_t b = 0; b < s.n; ++b) {
      const int64_t row = s.start + b;
      T* hh = hh_t + b * G;
      const auto [mu, rstd] = ln_stats(hh, G);                          // over all 4H
      rstd_h[row] = rstd;
      T* ab = s.a + b * G;
      const T* cpb = s.prev[1] + b * H;
      T* c_t = s.next[1] + b * H;
      T c_sum = 0;
#pragma omp simd reduction(+ : c_sum)
      for (int64_t j = 0; j < H; ++j) {
        const T hi = (hh[j] - mu) * rstd, hf = (hh[H + j] - mu) * rstd;
        const T hg = (hh[2 * H + j] - mu) * rstd, ho = (hh[3 * H + j] - mu) * rstd;
        hh[j] = hi;
        hh[H + j] = hf;
        hh[2 * H + j] = hg;
        hh[3 * H + j] = ho;
        const T i_t = sigmoid(ab[j] + alpha_hh[j] * hi);
        const T f_t = sigmoid(ab[H + j] + alpha_hh[H + j] * hf);
        const T g_t = tanh_(ab[2 * H + j] + alpha_hh[2 * H + j] * hg);
        const T o_t = sigmoid(ab[3 * H + j] + alpha_hh[3 * H + j] * ho);
        const T c_new = f_t * cpb[j] + i_t * g_t;
        ab[j] = i_t;
        ab[H + j] = f_t;
        ab[2 * H + j] = g_t;
        ab[3 * H + j] = o_t;
        c_t[j] = c_new;
        c_sum += c_new;
      }
      const T mu_c = c_sum / T(H);
      T sq = 0;
#pragma omp simd reduction(+ : sq)
      for (int64_t j = 0; j < H; ++j) sq += (c_t[j] - mu_c) * (c_t[j] - mu_c);
      const T rc = T(1) / std::sqrt(sq / T(H) + T(kLayerNormEps));
      rstd_c[row] = rc;
      T* ch = c_hat + row * H;
      T* mb = s.next[0] + b * s.ld0;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T c_n = (c_t[j] - mu_c) * rc;                            // ĉ
        ch[j] = c_n;
        mb[j] = ab[3 * H + j] * tanh_(alpha_c[j] * c_n + beta_c[j]);          // o ⊙ tanh(LN(c))
      }
    }
  }

  void backward(BwdStep<T>& s) {
    const int64_t G = 4 * H;
    for (int64_t b = 0; b < s.n; ++b) {
      const int64_t row = s.start + b;
      const T* gb = s.gates + b * G;
      const T* ch = c_hat + row * H;
      const T* cpb = s.prev[1] + b * H;
      const T* dhb = s.dnext[0] + b * s.ld0;
      const T* dcb = s.dnext[1] + b * H;
      T* db = s.dA + b * G;
      T* dyb = dY + row * H;
      T* dpb = s.dprev[1] + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T o_t = gb[3 * H + j];
        const T ty = tanh_(alpha_c[j] * ch[j] + beta_c[j]);
        db[3 * H + j] = dhb[j] * ty * o_t * (T(1) - o_t);              // da_o
        dyb[j] = dhb[j] * o_t * (T(1) - ty * ty);                      // ∂L/∂LN(c_t)
      }
      ln_backward(dyb, alpha_c, ch, rstd_c[row], H, dc_ln.data());
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T i_t = gb[j], f_t = gb[H + j], g_t = gb[2 * H + j];
        const T dc = dcb[j] + dc_ln[j];
        db[j] = dc * g_t * i_t * (T(1) - i_t);                        // da_i
        db[H + j] = dc * cpb[j] * f_t * (T(1) - f_t);                 // da_f
        db[2 * H + j] = dc * i_t * (T(1) - g_t * g_t);                // da_g
        dpb[j] = dc * f_t;                                            // dc_{t-1}
      }
      ln_backward(db, alpha_hh, h_hat + row * G, rstd_h[row], G, dHW + row * G);
    }
    back(s.n, dHW + s.start * G, G, s.beta0, s.dh_in, H);             // ∂L/∂ĥ = dHW W_hh
  }

 private:
  int64_t H;
  const T *alpha_hh, *alpha_c, *beta_c;
  T *h_hat, *rstd_h, *c_hat, *rstd_c, *dHW, *dY;
  WeightGemm<T> recurrent, back;
  std::vector<T> dc_ln;
};

// ---- LN-GRU (reset_after): loop weights W_hh, α_hh, β_hh,n + b_hn; saved ĥ (N, 3H), the two
// 1/σ (N, 2), hn (N, H); gradient buffers dY_h (N, 3H), dHW (N, 3H).
template <typename T>
struct LNGRUCell {
  static constexpr bool kDirectH = true;                   // h_t = … + z ⊙ h_{t-1}

  explicit LNGRUCell(const Layer<T>& L)
      : H(L.H), alpha_hh(L.w[1]), c_hn(L.w[2]), h_hat(L.saved[0]), rstd_h(L.saved[1]),
        hn_all(L.saved[2]), dY(L.grads.empty() ? nullptr : L.grads[0]),
        dHW(L.grads.empty() ? nullptr : L.grads[1]),
        recurrent(L.w[0], true, L.B, 3 * L.H, L.H), back(L.w[0], false, L.B, L.H, 3 * L.H) {}

  void forward(FwdStep<T>& s) {
    const int64_t G = 3 * H;
    T* hh_t = h_hat + s.start * G;
    recurrent(s.n, s.h_in, H, T(0), hh_t, G);                         // W_hh ĥ → ĥ buffer
    for (int64_t b = 0; b < s.n; ++b) {
      const int64_t row = s.start + b;
      T* hh = hh_t + b * G;
      const auto [mu, rs] = ln_stats(hh, 2 * H);                        // r|z rows together
      const auto [mu_n, rs_n] = ln_stats(hh + 2 * H, H);                // n rows apart
      rstd_h[2 * row] = rs;
      rstd_h[2 * row + 1] = rs_n;
      T* ab = s.a + b * G;
      const T* hb = s.prev[0] + b * H;
      T* hnb = hn_all + row * H;
      T* ob = s.next[0] + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T hr = (hh[j] - mu) * rs, hz = (hh[H + j] - mu) * rs;
        const T h_n = (hh[2 * H + j] - mu_n) * rs_n;
        hh[j] = hr;
        hh[H + j] = hz;
        hh[2 * H + j] = h_n;
        const T r_t = sigmoid(ab[j] + alpha_hh[j] * hr);
        const T z_t = sigmoid(ab[H + j] + alpha_hh[H + j] * hz);
        const T hn = alpha_hh[2 * H + j] * h_n + c_hn[j];
        const T n_t = tanh_(ab[2 * H + j] + r_t * hn);
        ab[j] = r_t;
        ab[H + j] = z_t;
        ab[2 * H + j] = n_t;
        hnb[j] = hn;
        ob[j] = n_t + z_t * (hb[j] - n_t);                              // (1 − z) n + z h
      }
    }
  }

  void backward(BwdStep<T>& s) {
    const int64_t G = 3 * H;
    for (int64_t b = 0; b < s.n; ++b) {
      const int64_t row = s.start + b;
      const T* gb = s.gates + b * G;
      const T* hpb = s.prev[0] + b * H;
      const T* hnb = hn_all + row * H;
      const T* dhb = s.dnext[0] + b * H;
      T* db = s.dA + b * G;
      T* dyb = dY + row * G;
      T* dpb = s.dprev[0] + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T r_t = gb[j], z_t = gb[H + j], n_t = gb[2 * H + j], d_h = dhb[j];
        const T d_n = d_h * (T(1) - z_t) * (T(1) - n_t * n_t);
        const T d_z = d_h * (hpb[j] - n_t) * z_t * (T(1) - z_t);
        const T d_r = d_n * hnb[j] * r_t * (T(1) - r_t);
        db[j] = d_r;
        db[H + j] = d_z;
        db[2 * H + j] = d_n;
        dyb[j] = d_r;
        dyb[H + j] = d_z;
        dyb[2 * H + j] = d_n * r_t;
        dpb[j] = d_h * z_t;                                           // the direct path
      }
      const T* hh = h_hat + row * G;
      T* dhw = dHW + row * G;
      ln_backward(dyb, alpha_hh, hh, rstd_h[2 * row], 2 * H, dhw);
      ln_backward(dyb + 2 * H, alpha_hh + 2 * H, hh + 2 * H, rstd_h[2 * row + 1], H, dhw + 2 * H);
    }
    back(s.n, dHW + s.start * G, G, s.beta0, s.dh_in, H);             // ∂L/∂ĥ += dHW W_hh
  }

 private:
  int64_t H;
  const T *alpha_hh, *c_hn;
  T *h_hat, *rstd_h, *hn_all, *dY, *dHW;
  WeightGemm<T> recurrent, back;
};

}  // namespace

LSTMKIT_REGISTER_CELL(ln_lstm, LNLSTMCell)
LSTMKIT_REGISTER_CELL(ln_gru, LNGRUCell)
