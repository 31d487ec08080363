// The layer-normalised LSTM and GRU (Ba, Kiros & Hinton 2016): the C++ twins of LNLSTMFused
// and LNGRUFused in lstmkit/cells/layernorm.py (read its comments for the folded input side
// and the BPTT). Per step: one GEMM with W_hh written straight into the saved ĥ buffer and
// normalised there in place, then one pass per row for the gates (and the LN of c_t).
// Row statistics: mean, then the biased variance of the deviations (two passes), and
// rstd = 1/sqrt(var + ε) with ε = 1e-5 (cells/layernorm.py EPS). Sums over rows (gains,
// biases) are left to the chunk-level code, from the per-row gradient buffers.

#pragma once

#include <array>

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
  template <typename T>
  void add(T* p, V v) const {                    // p[j, j + L) += v
    v += of(p);
    std::memcpy(p + j, &v, sizeof v);
  }
};

// K sums Σ_j f(j)[k] in one pass over j < D: f returns K terms (std::array) and may also add
// into per-column buffers through at.add, being called once for each j. Each sum keeps U
// vectors of partial sums (four for a lone sum, whose adds would otherwise wait on each other;
// two each for several, which already interleave). The LN-LSTM's backward makes its four LN
// sums and three gain/bias sums in one pass instead of five.
template <typename T, int K, typename F>
inline std::array<T, K> row_sums(int64_t D, const F& f) {
  using V = Vec<T>;
  constexpr int64_t L = sizeof(V) / sizeof(T);
  constexpr int U = K == 1 ? 4 : 2;
  V s[U][K] = {};
  int64_t j = 0;
  for (; j + U * L <= D; j += U * L)
    for (int u = 0; u < U; ++u) {
      const auto t = f(At<V>{j + u * L});
      for (int k = 0; k < K; ++k) s[u][k] += t[k];
    }
  for (; j + L <= D; j += L) {
    const auto t = f(At<V>{j});
    for (int k = 0; k < K; ++k) s[0][k] += t[k];
  }
  std::array<T, K> out{};
  for (int k = 0; k < K; ++k) {
    V v = s[0][k];
    for (int u = 1; u < U; ++u) v += s[u][k];
    for (int64_t l = 0; l < L; ++l) out[k] += v[l];
  }
  for (; j < D; ++j) {
    const auto t = f(At<T>{j});
    for (int k = 0; k < K; ++k) out[k] += t[k];
  }
  return out;
}

// Σ_j f(j) over j < D (row_sums of one term).
template <typename T, typename F>
inline T row_sum(int64_t D, const F& f) {
  return row_sums<T, 1>(D, [&](auto at) { return std::array<decltype(f(at)), 1>{f(at)}; })[0];
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

// One step of the LN-LSTM after its recurrent GEMM, for n rows: a (n, 4H) holds W_ih x_t in
// and the activations i, f, g, o out; hh (n, 4H) W_hh ĥ_{t-1} in and its normalised ĥ out;
// x_hat (n, 4H) receives x̂; c_out (n, H) c_t, m_out (n, ldm) o ⊙ tanh(LN(c_t)); c_hat (n, H)
// ĉ_t; rstd (n, 3) the rows' 1/σ of ĥ, x̂ and c_t. The pre-activations are
// α_ih ⊙ x̂ + s + α_hh ⊙ ĥ, s = β_ih + β_hh + b_ih + b_hh.
template <typename T>
void ln_lstm_pointwise(int64_t n, int64_t H, T* a, T* hh_rows, T* x_hat, const T* alpha_ih,
                       const T* shift, const T* alpha_hh, const T* alpha_c, const T* beta_c,
                       const T* c_prev, T* c_out, T* m_out, int64_t ldm, T* c_hat, T* rstd) {
  const int64_t G = 4 * H;
  for (int64_t b = 0; b < n; ++b) {
    T* ab = a + b * G;
    T* hh = hh_rows + b * G;
    T* xh = x_hat + b * G;
    // both rows' statistics over all 4H (as ln_stats), their two passes shared
    const auto mean = row_sums<T, 2>(G, [=](auto at) {
      return std::array<decltype(at.of(ab)), 2>{at.of(ab), at.of(hh)};
    });
    const T mu_x = mean[0] / T(G), mu_h = mean[1] / T(G);
    const auto dev = row_sums<T, 2>(G, [=](auto at) {
      const auto dx = at.of(ab) - mu_x, dh = at.of(hh) - mu_h;
      return std::array<decltype(dx), 2>{dx * dx, dh * dh};
    });
    const T rx = T(1) / std::sqrt(dev[0] / T(G) + T(kLayerNormEps));
    const T rh = T(1) / std::sqrt(dev[1] / T(G) + T(kLayerNormEps));
    const T* cpb = c_prev + b * H;
    T* c_t = c_out + b * H;
    T c_sum = 0;
#pragma omp simd reduction(+ : c_sum)
    for (int64_t j = 0; j < H; ++j) {
      T pre[4];
      for (int k = 0; k < 4; ++k) {
        const int64_t i = k * H + j;
        const T x_n = (ab[i] - mu_x) * rx, h_n = (hh[i] - mu_h) * rh;
        xh[i] = x_n;
        hh[i] = h_n;
        pre[k] = alpha_ih[i] * x_n + shift[i] + alpha_hh[i] * h_n;
      }
      const T i_t = sigmoid(pre[0]), f_t = sigmoid(pre[1]);
      const T g_t = tanh_(pre[2]), o_t = sigmoid(pre[3]);
      const T c_new = f_t * cpb[j] + i_t * g_t;
      ab[j] = i_t;
      ab[H + j] = f_t;
      ab[2 * H + j] = g_t;
      ab[3 * H + j] = o_t;
      c_t[j] = c_new;
      c_sum += c_new;
    }
    const T mu_c = c_sum / T(H);
    const T sq = row_sum<T>(H, [&](auto at) {
      const auto d = at.of(c_t) - mu_c;
      return d * d;
    });
    const T rc = T(1) / std::sqrt(sq / T(H) + T(kLayerNormEps));
    rstd[3 * b] = rh;
    rstd[3 * b + 1] = rx;
    rstd[3 * b + 2] = rc;
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

// ---- LN-LSTM: loop weights W_hh, α_hh, α_c, β_c, α_ih, s = β_ih + β_hh + b_ih + b_hh (gains
// α, biases β, named as in cells/layernorm.py); a holds W_ih x (normalised by the step);
// saved ĥ (N, 4H), x̂ (N, 4H), ĉ (N, H), the 1/σ of each (N, 3) — or, with no saved buffers
// (forward_inference), per-step scratch; gradient buffers dHW (N, 4H) and the sums (14H):
// Σ dA, Σ dA ⊙ x̂, Σ dA ⊙ ĥ, Σ dy ⊙ ĉ, Σ dy, added per thread and summed by finish(). The
// backward step leaves ∂L/∂(W_ih x) in dA.
template <typename T>
struct LNLSTMCell {
  static constexpr bool kDirectH = false;

  explicit LNLSTMCell(const Layer<T>& L)
      : H(checked(L).H), alpha_hh(L.w[1]), alpha_c(L.w[2]), beta_c(L.w[3]), alpha_ih(L.w[4]),
        shift(L.w[5]), kept(!L.saved.empty()),
        scratch(kept ? 0 : L.B * (9 * L.H + 3)),
        h_hat(kept ? L.saved[0] : scratch.data()),
        x_hat(kept ? L.saved[1] : scratch.data() + L.B * 4 * L.H),
        c_hat(kept ? L.saved[2] : scratch.data() + L.B * 8 * L.H),
        rstd(kept ? L.saved[3] : scratch.data() + L.B * 9 * L.H),
        dHW(L.grads.empty() ? nullptr : L.grads[0]), sums(L.grads.empty() ? nullptr : L.grads[1]),
        threads(L.grads.empty() ? 0 : at::get_num_threads()),
        recurrent(L.w[0], true, L.B, 4 * L.H, L.H), back(L.w[0], false, L.B, L.H, 4 * L.H),
        dy(L.grads.empty() ? 0 : 2 * L.B * L.H), acc(threads * 14 * L.H, T(0)) {}

  // the buffer counts, checked before the members read them
  static const Layer<T>& checked(const Layer<T>& L) {
    TORCH_CHECK(L.w.size() == 6 && L.w[4] && L.w[5], "ln_lstm: 6 loop weights expected");
    TORCH_CHECK(L.saved.empty() || L.saved.size() == 4, "ln_lstm: 4 saved buffers expected");
    TORCH_CHECK(L.grads.empty() || L.grads.size() == 2, "ln_lstm: 2 gradient buffers expected");
    return L;
  }

  // per-row buffers by row, scratch by the step's row, sums by thread (engine.h)
  bool row_parallel() const { return true; }

  void forward(FwdStep<T>& s) {
    const int64_t G = 4 * H, r = kept ? s.start : s.row;
    T* hh = h_hat + r * G;
    recurrent(s.n, s.h_in, H, T(0), hh, G);                           // W_hh ĥ → ĥ buffer
    ln_lstm_pointwise(s.n, H, s.a, hh, x_hat + r * G, alpha_ih, shift, alpha_hh, alpha_c,
                      beta_c, s.prev[1], s.next[1], s.next[0], s.ld0, c_hat + r * H,
                      rstd + 3 * r);
  }

  void backward(BwdStep<T>& s) {
    const int64_t G = 4 * H;
    const int tid = at::get_thread_num();
    TORCH_CHECK(tid < threads, "ln_lstm: a backward step on thread ", tid, " of ", threads);
    T* sum = acc.data() + tid * 14 * H;
    for (int64_t b = 0; b < s.n; ++b) {
      const int64_t row = s.start + b;
      const T* gb = s.gates + b * G;
      const T* ch = c_hat + row * H;
      const T* hh = h_hat + row * G;
      const T* xh = x_hat + row * G;
      const T* cpb = s.prev[1] + b * H;
      const T* dhb = s.dnext[0] + b * s.ld0;
      const T* dcb = s.dnext[1] + b * H;
      T* db = s.dA + b * G;
      T* dyb = dy.data() + (s.row + b) * 2 * H;                       // dy, then LN-bwd of it
      T* dcl = dyb + H;
      T* dpb = s.dprev[1] + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T o_t = gb[3 * H + j];
        const T ty = tanh_(alpha_c[j] * ch[j] + beta_c[j]);
        db[3 * H + j] = dhb[j] * ty * o_t * (T(1) - o_t);              // da_o
        dyb[j] = dhb[j] * o_t * (T(1) - ty * ty);                      // ∂L/∂LN(c_t)
      }
      ln_backward(dyb, alpha_c, ch, rstd[3 * row + 2], H, dcl);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T i_t = gb[j], f_t = gb[H + j], g_t = gb[2 * H + j];
        const T dc = dcb[j] + dcl[j];
        db[j] = dc * g_t * i_t * (T(1) - i_t);                        // da_i
        db[H + j] = dc * cpb[j] * f_t * (T(1) - f_t);                 // da_f
        db[2 * H + j] = dc * i_t * (T(1) - g_t * g_t);                // da_g
        dpb[j] = dc * f_t;                                            // dc_{t-1}
      }
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        sum[3 * G + j] += dyb[j] * ch[j];
        sum[3 * G + H + j] += dyb[j];
      }
      // the LN backward of both normalised products (as ln_backward) and the sums of the
      // gains and biases, in one pass over the row, then one writing both
      // (pointers captured by value: the adds store through T*, which could alias a member
      // read through `this`, and the loop would reload every pointer at every vector)
      const T *g_hh = alpha_hh, *g_ih = alpha_ih;
      T *s_a = sum, *s_ax = sum + G, *s_ah = sum + 2 * G;
      const auto m = row_sums<T, 4>(G, [=](auto at) {
        const auto d = at.of(db), h = at.of(hh), x = at.of(xh);
        at.add(s_a, d);
        at.add(s_ax, d * x);
        at.add(s_ah, d * h);
        const auto dh = d * at.of(g_hh), dx = d * at.of(g_ih);
        return std::array<decltype(d), 4>{dh, dh * h, dx, dx * x};
      });
      const T m1h = m[0] / T(G), m2h = m[1] / T(G), m1x = m[2] / T(G), m2x = m[3] / T(G);
      const T rh = rstd[3 * row], rx = rstd[3 * row + 1];
      T* dhw = dHW + row * G;
#pragma omp simd
      for (int64_t j = 0; j < G; ++j) {
        const T d = db[j];
        dhw[j] = rh * (d * alpha_hh[j] - m1h - hh[j] * m2h);            // ∂L/∂(W_hh ĥ)
        db[j] = rx * (d * alpha_ih[j] - m1x - xh[j] * m2x);             // ∂L/∂(W_ih x)
      }
    }
    back(s.n, dHW + s.start * G, G, s.beta0, s.dh_in, H);             // ∂L/∂ĥ = dHW W_hh
  }

  // the threads' sums, in thread order, into the sum buffer
  void finish() {
    for (int t = 0; t < threads; ++t) {
      const T* part = acc.data() + t * 14 * H;
#pragma omp simd
      for (int64_t j = 0; j < 14 * H; ++j) sums[j] += part[j];
    }
  }

 private:
  int64_t H;
  const T *alpha_hh, *alpha_c, *beta_c, *alpha_ih, *shift;
  bool kept;
  std::vector<T> scratch;
  T *h_hat, *x_hat, *c_hat, *rstd, *dHW, *sums;
  int threads;
  WeightGemm<T> recurrent, back;
  std::vector<T> dy, acc;
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
