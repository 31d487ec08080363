// The LSTM family: the C++ twin of LSTMFused in lstmkit/cells/lstm.py (read its docstring
// for the equations and their BPTT). Names follow the equations: i_t, f_t, g_t, o_t, c_t.
//
// Options (LSTMFused.cpp_options): coupled, then Greff et al.'s six flags (input_gate,
// forget_gate, output_gate, input_activation, cell_activation, gate_recurrence). Loop
// weights: W_hh (G·H, R), the peephole vector (or null), W_gg (3H, 3H) for FGR (or null).
// States: h (its pointwise output is m = o ⊙ act(c), before any projection), c, and for FGR
// q = [i, f, o] of the step.
//
// Two pointwise kernels: the standard LSTM (with peepholes and/or coupling, both compile-time
// constants) and the general one for the ablations, whose flags are runtime 0/1 weights
// (x = k·a + (1 − k)·b is exactly a or b and keeps the loop branch-free, so it vectorises).

#pragma once

#include "engine.h"

namespace {

// The pointwise kernels below are compiled without jump threading: GCC 12.2's threaded the
// activations' clamp (x < −87 ? −87 : x in exp_fast, common.h) into a path of its own for the
// clamped, constant case, which the vectoriser merged back with masked, merge-dependent
// AVX-512 operations — lstm_pointwise ran at 10–12 ns per hidden unit instead of 3.4–3.9 on an
// Intel Xeon (benchmarks/pointwise_probe.py, docs/performance.md). Only here: for the whole
// engine the flag made the layer-norm LSTM's forward 12 % slower. Other compilers ignore it.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-thread-jumps")
#endif
template <typename T, bool PEEP, bool COUPLED>
void lstm_pointwise(int64_t n, int64_t H, T* a, const T* c_prev, T* c_out, T* m_out,
                    int64_t ldm, const T* peep) {
  constexpr int64_t G = COUPLED ? 3 : 4;
  const T* p_i = peep;
  const T* p_f = peep + H;                      // unused when coupled
  const T* p_o = peep + (COUPLED ? H : 2 * H);
  for (int64_t b = 0; b < n; ++b) {
    T* ab = a + b * G * H;
    T* a_i = ab;
    T* a_f = ab + H;                            // coupled: no forget rows
    T* a_g = ab + (COUPLED ? 1 : 2) * H;
    T* a_o = ab + (COUPLED ? 2 : 3) * H;
    const T* cpb = c_prev + b * H;
    T* cob = c_out + b * H;
    T* mb = m_out + b * ldm;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T cp = cpb[j];
      T pre_i = a_i[j], pre_f = T(0), pre_o = a_o[j];
      if constexpr (PEEP) pre_i += p_i[j] * cp;
      if constexpr (!COUPLED) {
        pre_f = a_f[j];
        if constexpr (PEEP) pre_f += p_f[j] * cp;
      }
      const T i_t = sigmoid(pre_i);
      const T f_t = COUPLED ? T(1) - i_t : sigmoid(pre_f);
      const T g_t = tanh_(a_g[j]);
      const T c_t = f_t * cp + i_t * g_t;
      if constexpr (PEEP) pre_o += p_o[j] * c_t;
      const T o_t = sigmoid(pre_o);
      a_i[j] = i_t;
      if constexpr (!COUPLED) a_f[j] = f_t;
      a_g[j] = g_t;
      a_o[j] = o_t;
      cob[j] = c_t;
      mb[j] = o_t * tanh_(c_t);
    }
  }
}

// c̃_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t from the saved activations (coupled: f_t = 1 − i_t)
template <typename T, bool COUPLED>
void lstm_candidate(int64_t n, int64_t H, const T* gates, const T* c_prev, T* c_cand) {
  constexpr int64_t G = COUPLED ? 3 : 4;
  for (int64_t b = 0; b < n; ++b) {
    const T* i_ = gates + b * G * H;
    const T* f_ = i_ + H;
    const T* g_ = i_ + (COUPLED ? 1 : 2) * H;
    const T* cpb = c_prev + b * H;
    T* ccb = c_cand + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T f_t = COUPLED ? T(1) - i_[j] : f_[j];
      ccb[j] = f_t * cpb[j] + i_[j] * g_[j];
    }
  }
}

template <typename T, bool PEEP, bool COUPLED>
void lstm_pointwise_backward(int64_t n, int64_t H, const T* gates, const T* c, const T* c_prev,
                             const T* dm, int64_t lddm, const T* dc_next, T* dc_prev_out, T* dA,
                             const T* peep) {
  constexpr int64_t G = COUPLED ? 3 : 4;
  const T* p_i = peep;
  const T* p_f = peep + H;
  const T* p_o = peep + (COUPLED ? H : 2 * H);
  for (int64_t b = 0; b < n; ++b) {
    const T* gb = gates + b * G * H;
    const T* i_ = gb;
    const T* f_ = gb + H;
    const T* g_ = gb + (COUPLED ? 1 : 2) * H;
    const T* o_ = gb + (COUPLED ? 2 : 3) * H;
    T* db = dA + b * G * H;
    T* da_i = db;
    T* da_f = db + H;
    T* da_g = db + (COUPLED ? 1 : 2) * H;
    T* da_o = db + (COUPLED ? 2 : 3) * H;
    const T* cb = c + b * H;
    const T* cpb = c_prev + b * H;
    const T* dmb = dm + b * lddm;
    const T* dcb = dc_next + b * H;
    T* dpb = dc_prev_out + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T i_t = i_[j], g_t = g_[j], o_t = o_[j], cp = cpb[j];
      const T f_t = COUPLED ? T(1) - i_t : f_[j];
      const T tanh_c = tanh_(cb[j]);
      const T d_m = dmb[j];
      const T d_o = d_m * tanh_c * o_t * (T(1) - o_t);
      T dc = dcb[j] + d_m * o_t * (T(1) - tanh_c * tanh_c);
      if constexpr (PEEP) dc += d_o * p_o[j];
      const T d_g = dc * i_t * (T(1) - g_t * g_t);
      const T sig_i = i_t * (T(1) - i_t);
      T dc_prev = dc * f_t;
      T d_i;
      if constexpr (COUPLED) {
        d_i = dc * (g_t - cp) * sig_i;
        if constexpr (PEEP) dc_prev += d_i * p_i[j];
      } else {
        d_i = dc * g_t * sig_i;
        const T d_f = dc * cp * f_t * (T(1) - f_t);
        da_f[j] = d_f;
        if constexpr (PEEP) dc_prev += d_i * p_i[j] + d_f * p_f[j];
      }
      da_i[j] = d_i;
      da_g[j] = d_g;
      da_o[j] = d_o;
      dpb[j] = dc_prev;
    }
  }
}

// ---- the ablations of Greff et al. (2015) ---------------------------------------------------
struct Variant {
  bool coupled, has_i, has_f, has_o, act_g, act_c, fgr;
  int64_t G;                          // gate blocks in the rows
  int64_t col_i, col_f, col_g, col_o; // column block of each gate (−1: absent)
  int64_t peep_i, peep_f, peep_o;     // block of each gate in the peephole (−1: none)
  bool standard() const { return has_i && has_f == !coupled && has_o && act_g && act_c && !fgr; }
};

// opts = (coupled, input_gate, forget_gate, output_gate, input_activation, cell_activation,
// gate_recurrence), as LSTMFused.cpp_options.
Variant make_variant(const std::vector<double>& opts, bool peep) {
  TORCH_CHECK(opts.size() == 7, "lstm: 7 options expected, got ", opts.size());
  const bool coupled = opts[0] != 0;
  Variant v{coupled, opts[1] != 0, opts[2] != 0 && !coupled, opts[3] != 0, opts[4] != 0,
            opts[5] != 0, opts[6] != 0, 0, -1, -1, -1, -1, -1, -1, -1};
  int64_t k = 0;
  if (v.has_i) v.col_i = k++;
  if (v.has_f) v.col_f = k++;
  v.col_g = k++;
  if (v.has_o) v.col_o = k++;
  v.G = k;
  if (peep) {
    k = 0;
    if (v.has_i) v.peep_i = k++;
    if (v.has_f) v.peep_f = k++;
    if (v.has_o) v.peep_o = k++;
  }
  return v;
}

// Block `col` (of H) of a row, or `other` when the gate is absent.
template <typename P>
inline P block(P row, int64_t col, int64_t H, P other) {
  return col < 0 ? other : row + col * H;
}

// Scratch for absent gates: `zeros` (read, never written) and three sinks (written).
template <typename T>
struct Scratch {
  explicit Scratch(int64_t H) : zeros(3 * H, T(0)), sink(3 * H, T(0)), H(H) {}
  T* sink_at(int64_t k) { return sink.data() + k * H; }
  std::vector<T> zeros, sink;
  int64_t H;
};

// A variant's flags as 0/1 weights, and the peephole block of each gate (zeros where none).
template <typename T>
struct VariantWeights {
  T k_i, k_f, k_o, k_g, k_c, k_cpl;
  const T *p_i, *p_f, *p_o;
};

template <typename T>
VariantWeights<T> variant_weights(const Variant& v, const T* peep, int64_t H, const T* zeros) {
  auto peep_of = [&](int64_t k) { return peep ? block(peep, k, H, zeros) : zeros; };
  return {T(v.has_i), T(v.has_f), T(v.has_o), T(v.act_g), T(v.act_c), T(v.coupled),
          peep_of(v.peep_i), peep_of(v.peep_f), peep_of(v.peep_o)};
}

template <typename T>
void lstm_variant_pointwise(int64_t n, int64_t H, const Variant& v, T* a, const T* c_prev,
                            T* c_out, T* m_out, int64_t ldm, const T* peep, T* q,
                            Scratch<T>& s) {
  const auto [k_i, k_f, k_o, k_g, k_c, k_cpl, p_i, p_f, p_o] =
      variant_weights<T>(v, peep, H, s.zeros.data());
  for (int64_t b = 0; b < n; ++b) {
    T* ab = a + b * v.G * H;
    T* a_i = block(ab, v.col_i, H, s.sink_at(0));
    T* a_f = block(ab, v.col_f, H, s.sink_at(1));
    T* a_g = ab + v.col_g * H;
    T* a_o = block(ab, v.col_o, H, s.sink_at(2));
    T* q_i = q ? q + b * 3 * H : s.sink_at(0);        // FGR: i, f, o of this step
    T* q_f = q ? q_i + H : s.sink_at(1);
    T* q_o = q ? q_i + 2 * H : s.sink_at(2);
    const T* cpb = c_prev + b * H;
    T* cob = c_out + b * H;
    T* mb = m_out + b * ldm;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      // every term computed unconditionally, then weighted: keeps the loop vectorised
      const T cp = cpb[j], pre_g = a_g[j];
      const T s_i = sigmoid(a_i[j] + p_i[j] * cp);
      const T s_f = sigmoid(a_f[j] + p_f[j] * cp);
      const T tanh_g = tanh_(pre_g);
      const T i_t = k_i * s_i + (T(1) - k_i);
      const T f_t = k_cpl * (T(1) - i_t) + (T(1) - k_cpl) * (k_f * s_f + (T(1) - k_f));
      const T g_t = k_g * tanh_g + (T(1) - k_g) * pre_g;
      const T c_t = f_t * cp + i_t * g_t;
      const T s_o = sigmoid(a_o[j] + p_o[j] * c_t);
      const T tanh_c = tanh_(c_t);
      const T o_t = k_o * s_o + (T(1) - k_o);
      const T act_c_t = k_c * tanh_c + (T(1) - k_c) * c_t;
      a_i[j] = i_t;
      a_f[j] = f_t;
      a_g[j] = g_t;
      a_o[j] = o_t;
      q_i[j] = i_t;
      q_f[j] = f_t;
      q_o[j] = o_t;
      cob[j] = c_t;
      mb[j] = o_t * act_c_t;
    }
  }
}

// c̃_t of a variant from the saved activations (absent gates are 1).
template <typename T>
void lstm_variant_candidate(int64_t n, int64_t H, const Variant& v, const T* gates,
                            const T* c_prev, T* c_cand, Scratch<T>& s) {
  const T k_i = T(v.has_i), k_f = T(v.has_f), k_cpl = T(v.coupled);
  const T* z = s.zeros.data();
  for (int64_t b = 0; b < n; ++b) {
    const T* gb = gates + b * v.G * H;
    const T* i_ = block(gb, v.col_i, H, z);
    const T* f_ = block(gb, v.col_f, H, z);
    const T* g_ = gb + v.col_g * H;
    const T* cpb = c_prev + b * H;
    T* ccb = c_cand + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T i_t = k_i * i_[j] + (T(1) - k_i);
      const T f_t = k_cpl * (T(1) - i_t) + (T(1) - k_cpl) * (k_f * f_[j] + (T(1) - k_f));
      ccb[j] = f_t * cpb[j] + i_t * g_[j];
    }
  }
}

template <typename T>
void lstm_variant_pointwise_backward(int64_t n, int64_t H, const Variant& v, const T* gates,
                                     const T* c, const T* c_prev, const T* dm, int64_t lddm,
                                     const T* dc_next, T* dc_prev_out, const T* dq, T* dA,
                                     const T* peep, Scratch<T>& s) {
  const auto [k_i, k_f, k_o, k_g, k_c, k_cpl, p_i, p_f, p_o] =
      variant_weights<T>(v, peep, H, s.zeros.data());
  const T* z = s.zeros.data();
  for (int64_t b = 0; b < n; ++b) {
    const T* gb = gates + b * v.G * H;
    const T* i_ = block(gb, v.col_i, H, z);
    const T* f_ = block(gb, v.col_f, H, z);
    const T* g_ = gb + v.col_g * H;
    const T* o_ = block(gb, v.col_o, H, z);
    T* db = dA + b * v.G * H;
    T* da_i = block(db, v.col_i, H, s.sink_at(0));
    T* da_f = block(db, v.col_f, H, s.sink_at(1));
    T* da_g = db + v.col_g * H;
    T* da_o = block(db, v.col_o, H, s.sink_at(2));
    const T* dq_i = dq ? dq + b * 3 * H : z;           // FGR: ∂L/∂(i, f, o)_t
    const T* dq_f = dq ? dq_i + H : z;
    const T* dq_o = dq ? dq_i + 2 * H : z;
    const T* cb = c + b * H;
    const T* cpb = c_prev + b * H;
    const T* dmb = dm + b * lddm;
    const T* dcb = dc_next + b * H;
    T* dpb = dc_prev_out + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      // an absent gate is 1, so its σ' = g(1 − g) is 0 and its dA block comes out 0
      const T gi = i_[j], gf = f_[j], g_t = g_[j], go = o_[j], c_t = cb[j], cp = cpb[j];
      const T dqi = dq_i[j], dqf = dq_f[j], dqo = dq_o[j], d_m = dmb[j];
      const T tanh_c = tanh_(c_t);
      const T i_t = k_i * gi + (T(1) - k_i), o_t = k_o * go + (T(1) - k_o);
      const T f_t = k_cpl * (T(1) - i_t) + (T(1) - k_cpl) * (k_f * gf + (T(1) - k_f));
      const T act_c_t = k_c * tanh_c + (T(1) - k_c) * c_t;
      const T d_act_c = T(1) - k_c * tanh_c * tanh_c;
      const T d_o = (d_m * act_c_t + dqo) * o_t * (T(1) - o_t);
      const T dc = dcb[j] + d_m * o_t * d_act_c + d_o * p_o[j];
      const T d_g = dc * i_t * (T(1) - k_g * g_t * g_t);
      const T sig_i = i_t * (T(1) - i_t);
      const T d_i = (k_cpl * (dc * (g_t - cp)) + (T(1) - k_cpl) * (dc * g_t + dqi)) * sig_i;
      const T d_f = (dc * cp + dqf) * f_t * (T(1) - f_t);
      da_i[j] = d_i;
      da_f[j] = d_f;
      da_g[j] = d_g;
      da_o[j] = d_o;
      dpb[j] = dc * f_t + d_i * p_i[j] + d_f * p_f[j];
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// ---- the family ----------------------------------------------------------------------------
template <typename T>
struct LSTMCell {
  static constexpr bool kDirectH = false;

  explicit LSTMCell(const Layer<T>& L)
      : H(L.H), R(L.R), peep(L.w[1]), w_gg(L.w[2]), v(make_variant(L.opts, L.w[1] != nullptr)),
        recurrent_fwd(L.w[0], true, L.B, v.G * L.H, L.R),
        recurrent_bwd(L.w[0], false, L.B, L.R, v.G * L.H),
        to_if(w_gg, true, w_gg ? L.B : 0, 2 * L.H, 3 * L.H),
        to_o(w_gg ? w_gg + 6 * L.H * L.H : nullptr, true, w_gg ? L.B : 0, L.H, 3 * L.H),
        from_if(w_gg, false, w_gg ? L.B : 0, 3 * L.H, 2 * L.H),
        from_o(w_gg ? w_gg + 6 * L.H * L.H : nullptr, false, w_gg ? L.B : 0, 3 * L.H, L.H),
        scratch(L.H), c_cand(L.zone[1] ? L.B * L.H : 0) {
    TORCH_CHECK(!v.fgr || w_gg, "lstm: gate_recurrence needs W_gg");
  }

  // the standard cell keeps no scratch but c_cand (by row); the variants' share sinks
  bool row_parallel() const { return v.standard(); }

  void forward(FwdStep<T>& s) {
    const int64_t G = v.G, n = s.n;
    recurrent_fwd(n, s.h_in, R, T(1), s.a, G * H);                    // a += ĥ_{t-1} W_hhᵀ
    if (!v.standard()) {
      if (v.fgr) {                                                     // a_{i,f,o} += q W_ggᵀ
        to_if(n, s.prev[2], 3 * H, T(1), s.a, G * H);
        to_o(n, s.prev[2], 3 * H, T(1), s.a + 3 * H, G * H);
      }
      lstm_variant_pointwise<T>(n, H, v, s.a, s.prev[1], s.next[1], s.next[0], s.ld0, peep,
                                v.fgr ? s.next[2] : nullptr, scratch);
      return;
    }
    with_flags([&](auto pe, auto co) {
      lstm_pointwise<T, decltype(pe)::value, decltype(co)::value>(n, H, s.a, s.prev[1],
                                                                  s.next[1], s.next[0], s.ld0,
                                                                  peep);
    });
  }

  void backward(BwdStep<T>& s) {
    const int64_t G = v.G, n = s.n;
    const T* c_t = s.next[1];                   // c̃_t, recomputed when c was zoned out
    if (s.zoned[1]) {
      T* cand = c_cand.data() + s.row * H;
      if (v.standard()) {
        if (v.coupled) lstm_candidate<T, true>(n, H, s.gates, s.prev[1], cand);
        else lstm_candidate<T, false>(n, H, s.gates, s.prev[1], cand);
      } else {
        lstm_variant_candidate<T>(n, H, v, s.gates, s.prev[1], cand, scratch);
      }
      c_t = cand;
    }
    if (v.standard()) {
      with_flags([&](auto pe, auto co) {
        lstm_pointwise_backward<T, decltype(pe)::value, decltype(co)::value>(
            n, H, s.gates, c_t, s.prev[1], s.dnext[0], s.ld0, s.dnext[1], s.dprev[1], s.dA,
            peep);
      });
    } else {
      lstm_variant_pointwise_backward<T>(n, H, v, s.gates, c_t, s.prev[1], s.dnext[0], s.ld0,
                                         s.dnext[1], s.dprev[1], v.fgr ? s.dnext[2] : nullptr,
                                         s.dA, peep, scratch);
      if (v.fgr) {                                          // dq_{t-1} = dA_{i,f,o} W_gg
        from_if(n, s.dA, G * H, T(0), s.dprev[2], 3 * H);
        from_o(n, s.dA + 3 * H, G * H, T(1), s.dprev[2], 3 * H);
      }
    }
    recurrent_bwd(n, s.dA, G * H, s.beta0, s.dh_in, R);               // ∂L/∂ĥ = dA W_hh
  }

 private:
  // Calls f(peephole, coupled) with both as compile-time constants.
  template <typename F>
  void with_flags(F&& f) const {
    using Y = std::true_type;
    using N = std::false_type;
    const bool pe = peep != nullptr;
    if (pe && v.coupled) f(Y{}, Y{});
    else if (pe) f(Y{}, N{});
    else if (v.coupled) f(N{}, Y{});
    else f(N{}, N{});
  }

  int64_t H, R;
  const T* peep;
  const T* w_gg;
  Variant v;
  WeightGemm<T> recurrent_fwd, recurrent_bwd, to_if, to_o, from_if, from_o;
  Scratch<T> scratch;
  std::vector<T> c_cand;
};

}  // namespace

LSTMKIT_REGISTER_CELL(lstm, LSTMCell)
