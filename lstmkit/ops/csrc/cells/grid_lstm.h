// The 2-D (time × depth) Grid LSTM layer (Kalchbrenner, Danihelka & Graves 2015): the C++
// twin of Grid2DFused in lstmkit/cells/grid.py (read its docstring and _lstm_backward's for
// the equations and their BPTT). One engine step is the block at (t, layer): it reads the
// time vectors (h^t, m^t) of step t−1 and the depth vectors of the layer below at step t
// (h^d as the layer's input x, already projected into a; m^d as the side input), and
// writes the new depth vectors (states 0, 1: passed up) and time vectors (states 2, 3: the
// recurrence).
//
// Options: paper (1: h' = tanh(o ⊙ m'), 0: h' = o ⊙ tanh(m')), priority_depth (1: the depth
// transform reads the new h^t'). Loop weight: w_hh (8d, d), rows [time u f c o; depth u f c
// o], the h^t columns of both transforms. a (N, 8d): the input projection (the h^d columns
// and the biases) in, the gates out. Side input: m^d of the layer below (N, d). Gradient
// buffer: ∂L/∂m^d of the layer below (N, d). The state h^d'_{t−1} is never read (its
// gradient is zero): the engine's recurrent input ĥ = state 0 goes unused, the step does its
// own GEMMs from h^t. No projection, recurrent dropout or zoneout (the module offers none).

#pragma once

#include "engine.h"

namespace {

// The LSTM transform on n rows of one dimension's gate block (row stride lda), in place:
// a ← (u, f, c, o); m' = f ⊙ m + u ⊙ c; h' = tanh(o ⊙ m') (paper) or o ⊙ tanh(m').
template <typename T, bool kPaper>
void grid_transform(int64_t n, int64_t d, T* a, int64_t lda, const T* m_prev, T* h_out,
                    int64_t ldh, T* m_out) {
  for (int64_t b = 0; b < n; ++b) {
    T* a_u = a + b * lda;
    T* a_f = a_u + d;
    T* a_c = a_u + 2 * d;
    T* a_o = a_u + 3 * d;
    const T* mp = m_prev + b * d;
    T* hb = h_out + b * ldh;
    T* mb = m_out + b * d;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) {
      const T u = sigmoid(a_u[j]), f = sigmoid(a_f[j]), c = tanh_(a_c[j]);
      const T o = sigmoid(a_o[j]);
      const T m = f * mp[j] + u * c;
      a_u[j] = u;
      a_f[j] = f;
      a_c[j] = c;
      a_o[j] = o;
      mb[j] = m;
      hb[j] = kPaper ? tanh_(o * m) : o * tanh_(m);
    }
  }
}

// BPTT of grid_transform: from ∂L/∂h' (dh, row stride lddh) and ∂L/∂m' (dm), writes ∂L/∂a
// into da (row stride lda) and ∂L/∂m into dm_prev.
//   paper:    ds = dh ⊙ (1 − h'²), do = ds ⊙ m', dm' = dm + ds ⊙ o
//   standard: do = dh ⊙ tanh m',   dm' = dm + dh ⊙ o ⊙ (1 − tanh² m')
//   da_o = do ⊙ o(1 − o), da_u = dm' ⊙ c ⊙ u(1 − u), da_c = dm' ⊙ u ⊙ (1 − c²),
//   da_f = dm' ⊙ m ⊙ f(1 − f), ∂L/∂m = dm' ⊙ f
template <typename T, bool kPaper>
void grid_transform_backward(int64_t n, int64_t d, const T* gates, int64_t lda,
                             const T* m_prev, const T* m_new, const T* h_new, int64_t ldh,
                             const T* dh, int64_t lddh, const T* dm, T* da, T* dm_prev) {
  for (int64_t b = 0; b < n; ++b) {
    const T* u_ = gates + b * lda;
    const T* f_ = u_ + d;
    const T* c_ = u_ + 2 * d;
    const T* o_ = u_ + 3 * d;
    T* da_u = da + b * lda;
    T* da_f = da_u + d;
    T* da_c = da_u + 2 * d;
    T* da_o = da_u + 3 * d;
    const T* mp = m_prev + b * d;
    const T* mn = m_new + b * d;
    const T* hn = h_new + b * ldh;
    const T* dhb = dh + b * lddh;
    const T* dmb = dm + b * d;
    T* dpb = dm_prev + b * d;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) {
      const T u = u_[j], f = f_[j], c = c_[j], o = o_[j], m = mn[j];
      T d_o, dmn;
      if (kPaper) {
        const T ds = dhb[j] * (T(1) - hn[j] * hn[j]);
        d_o = ds * m;
        dmn = dmb[j] + ds * o;
      } else {
        const T tm = tanh_(m);
        d_o = dhb[j] * tm;
        dmn = dmb[j] + dhb[j] * o * (T(1) - tm * tm);
      }
      da_o[j] = d_o * o * (T(1) - o);
      da_u[j] = dmn * c * u * (T(1) - u);
      da_c[j] = dmn * u * (T(1) - c * c);
      da_f[j] = dmn * mp[j] * f * (T(1) - f);
      dpb[j] = dmn * f;
    }
  }
}

template <typename T>
struct GridLSTMCell {
  static constexpr bool kDirectH = false;    // h^d'_{t−1} is not read at all

  explicit GridLSTMCell(const Layer<T>& L)
      : d(L.H), paper(L.opts.at(0) != 0), priority(L.opts.at(1) != 0),
        one_dim(L.opts.size() > 2 && L.opts[2] != 0), W(L.w[0]),
        m_low(L.side.empty() ? nullptr : static_cast<const T*>(L.side[0])),
        dm_low(L.grads.empty() ? nullptr : L.grads[0]),
        // (1-D: W is (4d, d) and only time_rows/back_time exist; null W: unused objects)
        both(one_dim ? nullptr : W, true, L.B, 8 * L.H, L.H),
        time_rows(W, true, L.B, 4 * L.H, L.H),
        depth_rows(one_dim ? nullptr : W + 4 * L.H * L.H, true, L.B, 4 * L.H, L.H),
        back_both(one_dim ? nullptr : W, false, L.B, L.H, 8 * L.H),
        back_time(W, false, L.B, L.H, 4 * L.H),
        back_depth(one_dim ? nullptr : W + 4 * L.H * L.H, false, L.B, L.H, 4 * L.H),
        dh_time(priority ? L.B * L.H : 0) {
    if (one_dim) {
      TORCH_CHECK(L.A == 4 * d && L.n_states == 2 && L.R == d,
                  "grid_lstm (1-D): a must be (N, 4d) with two states of width d");
    } else {
      TORCH_CHECK(L.A == 8 * d && L.n_states == 4 && L.R == d && m_low,
                  "grid_lstm: a must be (N, 8d) with four states of width d and a side input");
    }
    TORCH_CHECK(!L.w_hr && !L.h_drop && !L.zone[0] && !L.zone[1] && !L.zone[2] && !L.zone[3],
                "grid_lstm: no projection, recurrent dropout or zoneout");
  }

  void forward(FwdStep<T>& s) {
    if (one_dim) {
      time_rows(s.n, s.h_in, d, T(1), s.a, 4 * d);                    // a += h_{l−1} Wᵀ
      if (paper) grid_transform<T, true>(s.n, d, s.a, 4 * d, s.prev[1], s.next[0], s.ld0,
                                         s.next[1]);
      else grid_transform<T, false>(s.n, d, s.a, 4 * d, s.prev[1], s.next[0], s.ld0,
                                    s.next[1]);
      return;
    }
    if (paper) step<true>(s);
    else step<false>(s);
  }

  template <bool kPaper>
  void step(FwdStep<T>& s) {
    const int64_t n = s.n, A = 8 * d;
    const T* h_t = s.prev[2];
    if (priority) time_rows(n, h_t, d, T(1), s.a, A);               // a_time += h^t W^time_hᵀ
    else both(n, h_t, d, T(1), s.a, A);                              // a += h^t w_hhᵀ
    grid_transform<T, kPaper>(n, d, s.a, A, s.prev[3], s.next[2], d, s.next[3]);
    if (priority) depth_rows(n, s.next[2], d, T(1), s.a + 4 * d, A);  // a_depth += h^t' W_hᵀ
    grid_transform<T, kPaper>(n, d, s.a + 4 * d, A, m_low + s.start * d, s.next[0], s.ld0,
                              s.next[1]);
  }

  void backward(BwdStep<T>& s) {
    if (one_dim) {
      const int64_t n = s.n;
      if (paper) grid_transform_backward<T, true>(n, d, s.gates, 4 * d, s.prev[1], s.next[1],
                                                  s.next[0], s.ld0, s.dnext[0], s.ld0,
                                                  s.dnext[1], s.dA, s.dprev[1]);
      else grid_transform_backward<T, false>(n, d, s.gates, 4 * d, s.prev[1], s.next[1],
                                             s.next[0], s.ld0, s.dnext[0], s.ld0, s.dnext[1],
                                             s.dA, s.dprev[1]);
      back_time(n, s.dA, 4 * d, s.beta0, s.dh_in, d);                  // ∂L/∂ĥ = dA W
      return;
    }
    if (paper) back<true>(s);
    else back<false>(s);
  }

  template <bool kPaper>
  void back(BwdStep<T>& s) {
    const int64_t n = s.n, A = 8 * d;
    T* dm_below = dm_low ? dm_low + s.start * d : dm_scratch(n);
    grid_transform_backward<T, kPaper>(n, d, s.gates + 4 * d, A, m_low + s.start * d,
                                       s.next[1], s.next[0], s.ld0, s.dnext[0], s.ld0,
                                       s.dnext[1], s.dA + 4 * d, dm_below);
    const T* dh = s.dnext[2];
    if (priority) {                                        // h^t' also fed the depth gates
      std::memcpy(dh_time.data(), s.dnext[2], sizeof(T) * n * d);
      back_depth(n, s.dA + 4 * d, A, T(1), dh_time.data(), d);
      dh = dh_time.data();
    }
    grid_transform_backward<T, kPaper>(n, d, s.gates, A, s.prev[3], s.next[3], s.next[2], d,
                                       dh, d, s.dnext[3], s.dA, s.dprev[3]);
    if (priority) back_time(n, s.dA, A, T(0), s.dprev[2], d);   // ∂L/∂h^t_{t−1}
    else back_both(n, s.dA, A, T(0), s.dprev[2], d);
    std::memset(s.dprev[1], 0, sizeof(T) * n * d);               // m^d'_{t−1}, h^d'_{t−1}:
    std::memset(s.dh_in, 0, sizeof(T) * n * d);                  //   never read
  }

 private:
  T* dm_scratch(int64_t n) {                    // ∂L/∂m^d_low when nobody wants it
    scratch.resize(n * d);
    return scratch.data();
  }

  int64_t d;
  bool paper, priority, one_dim;
  const T* W;
  const T* m_low;
  T* dm_low;
  WeightGemm<T> both, time_rows, depth_rows, back_both, back_time, back_depth;
  std::vector<T> dh_time, scratch;
};

}  // namespace

LSTMKIT_REGISTER_CELL(grid_lstm, GridLSTMCell)
