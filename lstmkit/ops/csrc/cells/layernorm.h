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

// Σ_j f(j) over j < D, in four vectors of partial sums (GCC/Clang vector extensions, 32
// bytes). f is generic: called with an At<Vec<T>> it returns the vector of the terms j, …,
// j + L − 1, with an At<T> (the tail) one term. One accumulator (omp simd reduction) made
// each add wait for the last: the passes of ln_stats and ln_backward over a row of 4H took a
// third of the LN-LSTM's pointwise step (benchmarks/pointwise_probe.py, ln_lstm).
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename VecOf<T>::type;

template <typename V>
struct At {
  int64_t j;
  template <typename T>
  V of(const T* p) const {
    V v;
    std::memcpy(&v, p + j, sizeof v);
    return v;
  }
};

template <typename T, typename F>
inline T row_sum(int64_t D, const F& f) {
  using V = Vec<T>;
  constexpr int64_t L = sizeof(V) / sizeof(T);
  V s0 = {}, s1 = {}, s2 = {}, s3 = {};
  int64_t j = 0;
  for (; j + 4 * L <= D; j += 4 * L) {
    s0 += f(At<V>{j});
    s1 += f(At<V>{j + L});
    s2 += f(At<V>{j + 2 * L});
    s3 += f(At<V>{j + 3 * L});
  }
  for (; j + L <= D; j += L) s0 += f(At<V>{j});
  const V v = (s0 + s1) + (s2 + s3);
  T s = 0;
  for (int64_t k = 0; k < L; ++k) s += v[k];
  for (; j < D; ++j) s += f(At<T>{j});
  return s;
}

// (μ, 1/σ) of v[0..D): mean, then the biased variance of the deviations.
template <typename T>
std::pair<T, T> ln_stats(const T* v, int64_t D) {
  const T mu = row_sum<T>(D, [&](auto at) { return at.of(v); }) / T(D);
  const T sq = row_sum<T>(D, [&](auto at) {
    const auto d = at.of(v) - mu;
    return d * d;
  });
  return {mu, T(1) / std::sqrt(sq / T(D) + T(kLayerNormEps))};
}

// LN backward over D entries, dy = ∂L/∂LN(v), dv̂ = g ⊙ dy:
// dv[j] = rstd · (dv̂[j] − mean(dv̂) − v̂[j] · mean(dv̂ ⊙ v̂)).
template <typename T>
void ln_backward(const T* dy, const T* g, const T* v_hat, T rstd, int64_t D, T* dv) {
  const T m1 = row_sum<T>(D, [&](auto at) { return at.of(dy) * at.of(g); }) / T(D);
  const T m2 = row_sum<T>(D, [&](auto at) {
    return at.of(dy) * at.of(g) * at.of(v_hat);
  }) / T(D);
#pragma omp simd
  for (int64_t j = 0; j < D; ++j) dv[j] = rstd * (dy[j] * g[j] - m1 - v_hat[j] * m2);
}

// One step of the LN-LSTM after its recurrent GEMM, for n rows: hh (n, 4H) holds W_hh ĥ_{t-1}
// in and its normalised ĥ out; a (n, 4H) the input side a_t in (LN_ih(W_ih x_t) + biases),
// the activations i, f, g, o out; c_out (n, H) c_t, m_out (n, ldm) o ⊙ tanh(LN(c_t)); c_hat
// (n, H) ĉ_t; rstd_h, rstd_c (n) the rows' 1/σ.
template <typename T>
void ln_lstm_pointwise(int64_t n, int64_t H, T* hh_rows, T* a, const T* alpha_hh,
                       const T* alpha_c, const T* beta_c, const T* c_prev, T* c_out, T* m_out,
                       int64_t ldm, T* c_hat, T* rstd_h, T* rstd_c) {
  const int64_t G = 4 * H;
  for (int64_t b = 0; b < n; ++b) {
    T* hh = hh_rows + b * G;
    const auto [mu, rstd] = ln_stats(hh, G);                            // over all 4H
    rstd_h[b] = rstd;
    T* ab = a + b * G;
    const T* cpb = c_prev + b * H;
    T* c_t = c_out + b * H;
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
    rstd_c[b] = rc;
    T* ch = c_hat + b * H;
    T* mb = m_out + b * ldm;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T c_n = (c_t[j] - mu_c) * rc;                              // ĉ
      ch[j] = c_n;
      mb[j] = ab[3 * H + j] * tanh_(alpha_c[j] * c_n + beta_c[j]);       // o ⊙ tanh(LN(c))
    }
  }
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
        dc_ln(L.grads.empty() ? 0 : L.B * L.H) {}

  // per-row buffers by row, the scratch dc_ln by the step's row (engine.h, row_parallel)
  bool row_parallel() const { return true; }

  void forward(FwdStep<T>& s) {
    T* hh = h_hat + s.start * 4 * H;
    recurrent(s.n, s.h_in, H, T(0), hh, 4 * H);                       // W_hh ĥ → ĥ buffer
    ln_lstm_pointwise(s.n, H, hh, s.a, alpha_hh, alpha_c, beta_c, s.prev[1], s.next[1],
                      s.next[0], s.ld0, c_hat + s.start * H, rstd_h + s.start,
                      rstd_c + s.start);
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
      T* dcl = dc_ln.data() + (s.row + b) * H;
      ln_backward(dyb, alpha_c, ch, rstd_c[row], H, dcl);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T i_t = gb[j], f_t = gb[H + j], g_t = gb[2 * H + j];
        const T dc = dcb[j] + dcl[j];
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

  bool row_parallel() const { return true; }   // per-row buffers only (engine.h)

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
