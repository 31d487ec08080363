// sLSTM (xLSTM, Beck et al. 2024): the C++ twin of SLSTMFused in lstmkit/cells/slstm.py
// (read its docstring for the stabilised equations and their BPTT). Options: forget_gate
// (0 sigmoid, 1 exp), num_heads K. Loop weight: weight_hh (4H, d), d = H/K, K heads: head k's block is
// rows [4dk, 4d(k+1)), gate-major inside (i, f, z, o). a (N, 4H) = i | f | z | o: the input
// projection in, the stabilised gates i', f' and z, o out. States h, c, n, m. Saved (N, 2H):
// s (1 where m_t took log f + m_{t-1}) and d log f / d f̃.
//
// The block-diagonal recurrent product is K GEMMs per step, one per head, into a head-major
// scratch (B, 4H), added into the gate-major a before one vectorised pointwise loop
// (forward); the backward copies dA head-major into the scratch so that ∂L/∂ĥ is again K
// GEMMs. Float uses polynomial exp (common.h) and log1p (below); double uses libm.

#pragma once

#include <cmath>

#include "engine.h"

namespace {

inline float exp_t(float x) { return exp_fast(x); }

// float log(1 + y) for y ∈ [0, 1] (what log σ needs): log of the mantissa m ∈ [√½, √2) by
// the series of atanh, log(m) = 2 atanh((m − 1)/(m + 1)), to degree 9 (|error| < 2e-8),
// plus the exponent·ln 2; branch-free, so the loop vectorises.
inline float log1p_unit(float y) {
  const float x = 1.0f + y;                                          // ∈ [1, 2]
  const bool big = x > 1.41421356f;
  const float m = big ? 0.5f * x : x;                                // ∈ [√½, √2)
  const float e = big ? 1.0f : 0.0f;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  const float p = 2.0f * s * (1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 +
                  s2 * (1.0f / 9)))));
  return p + e * 0.693147180559945f;
}
inline double log1p_unit(double y) { return std::log1p(y); }
inline double exp_t(double x) { return std::exp(x); }

template <typename T>
inline T log_sigmoid(T x) {                                           // log σ(x), stable
  return (x < T(0) ? x : T(0)) - log1p_unit(exp_t(-std::fabs(x)));
}

template <typename T>
struct SLSTMCell {
  static constexpr bool kDirectH = false;       // h_{t-1} enters only through R

  explicit SLSTMCell(const Layer<T>& L)
      : H(L.H), K(static_cast<int64_t>(L.opts.at(1))), d(L.H / K),
        exp_forget(L.opts.at(0) != 0), W(L.w[0]), saved(L.saved.empty() ? nullptr : L.saved[0]),
        scratch(L.B * 4 * L.H) {
    for (int64_t k = 0; k < K; ++k) {
      fwd.emplace_back(W + k * 4 * d * d, true, L.B, 4 * d, d);     // ĥ_k W_kᵀ
      bwd.emplace_back(W + k * 4 * d * d, false, L.B, d, 4 * d);    // dA_k W_k
    }
  }

  // per-row buffers by row, the scratch by the step's row (engine.h)
  bool row_parallel() const { return true; }

  void forward(FwdStep<T>& s) {
    if (exp_forget) step<true>(s);
    else step<false>(s);
  }

  template <bool kExp>
  void step(FwdStep<T>& s) {
    const int64_t n = s.n;
    T* r = scratch.data() + s.row * 4 * H;                            // by the step's row
    for (int64_t k = 0; k < K; ++k)                                   // R ĥ, head by head
      fwd[k](n, s.h_in + k * d, H, T(0), r + k * 4 * d, 4 * H);
    T* sv = saved + s.start * 2 * H;
    for (int64_t b = 0; b < n; ++b) {
      T* a_i = s.a + b * 4 * H;
      const T* rb = r + b * 4 * H;
      for (int64_t k = 0; k < K; ++k)                                 // head-major → gate-major
        for (int64_t g = 0; g < 4; ++g) {
          T* dst = a_i + g * H + k * d;
          const T* src = rb + k * 4 * d + g * d;
#pragma omp simd
          for (int64_t jj = 0; jj < d; ++jj) dst[jj] += src[jj];
        }
      T* a_f = a_i + H;
      T* a_z = a_i + 2 * H;
      T* a_o = a_i + 3 * H;
      const T* c_p = s.prev[1] + b * H;
      const T* n_p = s.prev[2] + b * H;
      const T* m_p = s.prev[3] + b * H;
      T* h_t = s.next[0] + b * s.ld0;
      T* c_t = s.next[1] + b * H;
      T* n_t = s.next[2] + b * H;
      T* m_t = s.next[3] + b * H;
      T* took = sv + b * 2 * H;
      T* dlf = took + H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T pi = a_i[j], pf = a_f[j];
        const T lf = kExp ? pf : log_sigmoid(pf);                    // log f
        dlf[j] = kExp ? T(1) : sigmoid(-pf);                         // d log f / d f̃
        const T u = lf + m_p[j];
        const bool empty = n_p[j] == T(0);                           // m_{t-1} = −∞
        const bool sel = !empty && u >= pi;
        const T m = sel ? u : pi;
        const T ig = exp_t(pi - m);
        const T e = exp_t(u - m);
        const T fg = empty ? T(0) : e;
        const T z = tanh_(a_z[j]);
        const T o = sigmoid(a_o[j]);
        const T c = fg * c_p[j] + ig * z;
        const T nn = fg * n_p[j] + ig;
        a_i[j] = ig;
        a_f[j] = fg;
        a_z[j] = z;
        a_o[j] = o;
        took[j] = sel ? T(1) : T(0);
        m_t[j] = m;
        c_t[j] = c;
        n_t[j] = nn;
        h_t[j] = o * (c / nn);
      }
    }
  }

  void backward(BwdStep<T>& s) {
    const int64_t n = s.n;
    T* dr = scratch.data() + s.row * 4 * H;                             // dA, head-major
    const T* sv = saved + s.start * 2 * H;
    for (int64_t b = 0; b < n; ++b) {
      const T* i_ = s.gates + b * 4 * H;
      const T* f_ = i_ + H;
      const T* z_ = i_ + 2 * H;
      const T* o_ = i_ + 3 * H;
      const T* took = sv + b * 2 * H;
      const T* dlf = took + H;
      const T* c_p = s.prev[1] + b * H;
      const T* n_p = s.prev[2] + b * H;
      const T* c_t = s.next[1] + b * H;
      const T* n_t = s.next[2] + b * H;
      const T* dh = s.dnext[0] + b * s.ld0;
      const T* dc = s.dnext[1] + b * H;
      const T* dn = s.dnext[2] + b * H;
      const T* dm = s.dnext[3] + b * H;
      T* da_i = s.dA + b * 4 * H;
      T* da_f = da_i + H;
      T* da_z = da_i + 2 * H;
      T* da_o = da_i + 3 * H;
      T* dc_p = s.dprev[1] + b * H;
      T* dn_p = s.dprev[2] + b * H;
      T* dm_p = s.dprev[3] + b * H;
      T* drb = dr + b * 4 * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T ig = i_[j], fg = f_[j], z = z_[j], o = o_[j];
        const T hn = c_t[j] / n_t[j];
        const T don = dh[j] * o / n_t[j];
        const T dch = dc[j] + don;
        const T dnh = dn[j] - don * hn;
        const T g_i = (dch * z + dnh) * ig;
        const T g_f = (dch * c_p[j] + dnh * n_p[j]) * fg;
        const T delta = dm[j] - g_i - g_f;
        const T du = g_f + took[j] * delta;
        da_o[j] = dh[j] * hn * o * (T(1) - o);
        da_z[j] = dch * ig * (T(1) - z * z);
        da_i[j] = g_i + (T(1) - took[j]) * delta;
        da_f[j] = du * dlf[j];
        dc_p[j] = dch * fg;
        dn_p[j] = dnh * fg;
        dm_p[j] = du;
      }
      for (int64_t k = 0; k < K; ++k)                                  // gate-major → head-major
        for (int g = 0; g < 4; ++g)
          std::memcpy(drb + k * 4 * d + g * d, da_i + g * H + k * d, sizeof(T) * d);
    }
    for (int64_t k = 0; k < K; ++k)                                     // ∂L/∂ĥ_k = dA_k W_k
      bwd[k](n, dr + k * 4 * d, 4 * H, s.beta0, s.dh_in + k * d, H);
  }

 private:
  int64_t H, K, d;
  bool exp_forget;
  const T* W;
  T* saved;
  std::vector<T> scratch;
  std::vector<WeightGemm<T>> fwd, bwd;
};

}  // namespace

LSTMKIT_REGISTER_CELL(slstm, SLSTMCell)
