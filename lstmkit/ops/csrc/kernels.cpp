// lstmkit fused kernels: the per-step recurrences of lstmkit/ops/loops.py in C++.
//
// Same functions, same arguments, same results as loops.py (read its docstrings for
// the buffer conventions and the BPTT derivations); the names follow cells/*.py:
// i_t, f_t, g_t, o_t, c_t, h_t. Per step: one BLAS GEMM with the recurrent weights
// (called directly, no tensor created) and one pointwise pass over raw pointers that the
// compiler vectorises. No allocation inside the time loop.
//
// Buffers are row-major and contiguous. N = Σ batch_sizes rows, B = batch_sizes[0],
// G gate blocks, H hidden size, R = size of h (H, or P with projections).

#include "common.h"

namespace {

// MKL's packed GEMM: a weight matrix is packed once per call and reused at every step
// (plain sgemm re-packs it at each call). Measured here (2 cores, fwd+bwd, same process):
// it pays for weights of ≥ 1M elements (LSTM H=512: 0.95×) and costs at small ones
// (LSTM H=64, B=1: 1.7×; H=128: 1.08×), so it is used from kPackMinElements on.
// Constants are MKL's CBLAS enums.
extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k,
                         const float* a, int lda, const float* b, int ldb, float beta, float* c,
                         int ldc) __attribute__((weak));
}
bool g_use_packing = true;              // set_packing(): for measuring the two paths
constexpr int64_t kPackMinElements = 1 << 20;
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

// C (m×n, row-major) = beta·C + A (m×k) · op(W), for a weight W used at every step:
// op(W) = Wᵀ with W stored (n×k) when `transposed`, else W stored (k×n). m ≤ max_m.
template <typename T>
class WeightGemm {
 public:
  WeightGemm(const T* W, bool transposed, int64_t max_m, int64_t n, int64_t k)
      : W_(W), transposed_(transposed), n_(n), k_(k) {}
  void operator()(int64_t m, const T* A, int64_t lda, T beta, T* C, int64_t ldc) const {
    if (transposed_) gemm_abt<T>(m, n_, k_, A, lda, W_, k_, beta, C, ldc);
    else gemm_ab<T>(m, n_, k_, A, lda, W_, n_, beta, C, ldc);
  }

 private:
  const T* W_;
  bool transposed_;
  int64_t n_, k_;
};

template <>
class WeightGemm<float> {
 public:
  WeightGemm(const float* W, bool transposed, int64_t max_m, int64_t n, int64_t k)
      : W_(W), transposed_(transposed), n_(n), k_(k) {
    if (g_use_packing && n * k >= kPackMinElements && max_m > 0 && cblas_sgemm_pack_get_size &&
        cblas_sgemm_pack && cblas_sgemm_compute) {
      const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, max_m, n, k);
      packed_.resize(bytes / sizeof(float) + 1);
      cblas_sgemm_pack(kRowMajor, kBMatrix, transposed ? kTrans : kNoTrans, max_m, n, k, 1.0f,
                       W, transposed ? k : n, packed_.data());
    }
  }
  void operator()(int64_t m, const float* A, int64_t lda, float beta, float* C,
                  int64_t ldc) const {
    if (m == 0) return;
    if (!packed_.empty()) {
      cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, m, n_, k_, A, lda, packed_.data(),
                          transposed_ ? k_ : n_, beta, C, ldc);
    } else if (transposed_) {
      gemm_abt<float>(m, n_, k_, A, lda, W_, k_, beta, C, ldc);
    } else {
      gemm_ab<float>(m, n_, k_, A, lda, W_, n_, beta, C, ldc);
    }
  }

 private:
  const float* W_;
  bool transposed_;
  int64_t n_, k_;
  std::vector<float> packed_;
};

int64_t max_rows(const Rows& rows) {
  int64_t m = 0;
  for (auto [start, n] : rows) m = std::max(m, n);
  return m;
}

// ---- masks: recurrent dropout and zoneout (lstmkit/ops/masks.py, loops.py) -------------
// h_drop (B, R): one row per sequence, multiplies h_{t-1} where it feeds W_hh;
// zone_h (N, R), zone_c (N, H): flat rows, the weight d of the previous state:
// h_t = d ⊙ h_{t-1} + (1 − d) ⊙ h̃_t. A null pointer means that mask is off.
template <typename T>
struct Masks {
  const T* h_drop = nullptr;
  const T* zone_h = nullptr;
  const T* zone_c = nullptr;
};

template <typename T>
Masks<T> masks_of(const c10::optional<Tensor>& h_drop, const c10::optional<Tensor>& zone_h,
                  const c10::optional<Tensor>& zone_c) {
  return {ptr_or_null<T>(h_drop), ptr_or_null<T>(zone_h), ptr_or_null<T>(zone_c)};
}

// y = x ⊙ m (k elements)
template <typename T>
inline void mul_into(int64_t k, const T* x, const T* m, T* y) {
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) y[j] = x[j] * m[j];
}

// y ⊙= m
template <typename T>
inline void mul_inplace(int64_t k, T* y, const T* m) {
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) y[j] *= m[j];
}

// y += x
template <typename T>
inline void add_inplace(int64_t k, T* y, const T* x) {
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) y[j] += x[j];
}

// zoneout: fresh ← d ⊙ old + (1 − d) ⊙ fresh
template <typename T>
inline void zone_mix(int64_t k, const T* d, const T* old, T* fresh) {
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) fresh[j] += d[j] * (old[j] - fresh[j]);
}

// BPTT through a zoneout mix: direct ← d ⊙ g (to the previous state), g ← (1 − d) ⊙ g
template <typename T>
inline void zone_split(int64_t k, const T* d, T* g, T* direct) {
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) {
    direct[j] = d[j] * g[j];
    g[j] -= direct[j];
  }
}

// Calls f(peephole, coupled) with both as compile-time constants.
template <typename F>
void with_variant(bool peep, bool coupled, F&& f) {
  using T = std::true_type;
  using N = std::false_type;
  if (peep && coupled) f(T{}, T{});
  else if (peep) f(T{}, N{});
  else if (coupled) f(N{}, T{});
  else f(N{}, N{});
}

// ---- LSTM ----------------------------------------------------------------------------
template <typename T, bool PEEP, bool COUPLED>
void lstm_pointwise(int64_t n, int64_t H, T* a, T* c_carry, T* c_out, T* m_out, int64_t ldm,
                    const T* peep) {
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
    T* cb = c_carry + b * H;
    T* cob = c_out + b * H;
    T* mb = m_out + b * ldm;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T c_prev = cb[j];
      T pre_i = a_i[j], pre_f = T(0), pre_o = a_o[j];
      if constexpr (PEEP) pre_i += p_i[j] * c_prev;
      if constexpr (!COUPLED) {
        pre_f = a_f[j];
        if constexpr (PEEP) pre_f += p_f[j] * c_prev;
      }
      const T i_t = sigmoid(pre_i);
      const T f_t = COUPLED ? T(1) - i_t : sigmoid(pre_f);
      const T g_t = tanh_(a_g[j]);
      const T c_t = f_t * c_prev + i_t * g_t;
      if constexpr (PEEP) pre_o += p_o[j] * c_t;
      const T o_t = sigmoid(pre_o);
      a_i[j] = i_t;
      if constexpr (!COUPLED) a_f[j] = f_t;
      a_g[j] = g_t;
      a_o[j] = o_t;
      cb[j] = c_t;
      cob[j] = c_t;
      mb[j] = o_t * tanh_(c_t);
    }
  }
}

template <typename T, bool PEEP, bool COUPLED>
void lstm_pointwise_backward(int64_t n, int64_t H, const T* gates, const T* c, const T* c_prev,
                             const T* dm, int64_t lddm, T* dc_carry, T* dA, const T* peep) {
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
    T* dcb = dc_carry + b * H;
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
      dcb[j] = dc_prev;
    }
  }
}

template <typename T, bool PEEP, bool COUPLED>
void lstm_forward_impl(Tensor& xw, const Tensor& w_hh, const T* w_hr, const T* peep,
                       Tensor& out, Tensor& c, Tensor& m, Tensor& h_carry, Tensor& c_carry,
                       const Rows& rows, int64_t H, int64_t R, const Masks<T>& mk) {
  constexpr int64_t G = COUPLED ? 3 : 4;
  T* a = xw.data_ptr<T>();
  const T* W = w_hh.data_ptr<T>();
  T* out_p = out.data_ptr<T>();
  T* c_p = c.data_ptr<T>();
  T* m_p = m.defined() ? m.data_ptr<T>() : nullptr;
  T* h = h_carry.data_ptr<T>();
  T* cc = c_carry.data_ptr<T>();
  const int64_t B = h_carry.size(0);
  const WeightGemm<T> recurrent(W, true, B, G * H, R);                // · W_hhᵀ
  const WeightGemm<T> projection(w_hr, true, w_hr ? B : 0, R, H);     // · W_hrᵀ
  std::vector<T> h_in(mk.h_drop ? B * R : 0), c_old(mk.zone_c ? B * H : 0);
  for (auto [start, n] : rows) {
    T* a_t = a + start * G * H;
    const T* h_gemm = h;
    if (mk.h_drop) {                                                  // m ⊙ h_{t-1}
      mul_into(n * R, h, mk.h_drop, h_in.data());
      h_gemm = h_in.data();
    }
    if (mk.zone_c) std::memcpy(c_old.data(), cc, sizeof(T) * n * H);   // c_{t-1}
    recurrent(n, h_gemm, R, T(1), a_t, G * H);                        // a += h_{t-1} W_hhᵀ
    if (w_hr == nullptr) {
      lstm_pointwise<T, PEEP, COUPLED>(n, H, a_t, cc, c_p + start * H, out_p + start * R, R,
                                       peep);
    } else {
      lstm_pointwise<T, PEEP, COUPLED>(n, H, a_t, cc, c_p + start * H, m_p + start * H, H,
                                       peep);
      projection(n, m_p + start * H, H, T(0), out_p + start * R, R);     // h = m W_hrᵀ
    }
    if (mk.zone_h) zone_mix(n * R, mk.zone_h + start * R, h, out_p + start * R);
    std::memcpy(h, out_p + start * R, sizeof(T) * n * R);
    if (mk.zone_c) {                                                  // c̃_t → c_t
      zone_mix(n * H, mk.zone_c + start * H, c_old.data(), c_p + start * H);
      std::memcpy(cc, c_p + start * H, sizeof(T) * n * H);
    }
  }
}

std::vector<Tensor> lstm_forward(Tensor xw, Tensor w_hh, c10::optional<Tensor> w_hr,
                                 c10::optional<Tensor> peep, Tensor h0, Tensor c0,
                                 std::vector<int64_t> batch_sizes, bool reverse, bool coupled,
                                 c10::optional<Tensor> h_drop, c10::optional<Tensor> zone_h,
                                 c10::optional<Tensor> zone_c) {
  const int64_t N = xw.size(0), H = c0.size(1), R = h0.size(1);
  const bool proj = w_hr.has_value() && w_hr->defined();
  const bool has_peep = peep.has_value() && peep->defined();
  auto w_hh_c = w_hh.contiguous();
  auto w_hr_c = proj ? w_hr->contiguous() : Tensor();
  Tensor out = at::empty({N, R}, xw.options());
  Tensor c = at::empty({N, H}, xw.options());
  Tensor m = proj ? at::empty({N, H}, xw.options()) : Tensor();
  Tensor h_carry = h0.clone(), c_carry = c0.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "lstm_forward", [&] {
    const scalar_t* whr = proj ? w_hr_c.data_ptr<scalar_t>() : nullptr;
    const scalar_t* p = has_peep ? peep->data_ptr<scalar_t>() : nullptr;
    with_variant(has_peep, coupled, [&](auto pe, auto co) {
      lstm_forward_impl<scalar_t, decltype(pe)::value, decltype(co)::value>(
          xw, w_hh_c, whr, p, out, c, m, h_carry, c_carry, rows, H, R,
          masks_of<scalar_t>(h_drop, zone_h, zone_c));
    });
  });
  return {out, c, m, h_carry, c_carry};
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
void lstm_backward_impl(const Tensor& dout, const Tensor& gates, const Tensor& c,
                        const Tensor& c_prev, const Tensor& w_hh, const T* w_hr, const T* peep,
                        Tensor& dA, Tensor& dh_carry, Tensor& dc_carry, Tensor& dH,
                        const Rows& rows, int64_t B, int64_t H, int64_t R, const Masks<T>& mk) {
  constexpr int64_t G = COUPLED ? 3 : 4;
  const T* dout_p = dout.data_ptr<T>();
  const T* g_p = gates.data_ptr<T>();
  const T* c_p = c.data_ptr<T>();
  const T* cp_p = c_prev.data_ptr<T>();
  const T* W = w_hh.data_ptr<T>();
  T* dA_p = dA.data_ptr<T>();
  T* dh = dh_carry.data_ptr<T>();
  T* dc = dc_carry.data_ptr<T>();
  T* dH_p = dH.defined() ? dH.data_ptr<T>() : nullptr;
  std::vector<T> dh_t(B * R), dm_t(w_hr ? B * H : 0);
  const WeightGemm<T> recurrent(W, false, B, R, G * H);               // · W_hh
  const WeightGemm<T> projection(w_hr, false, w_hr ? B : 0, H, R);    // · W_hr
  std::vector<T> dh_direct(mk.zone_h ? B * R : 0), dc_direct(mk.zone_c ? B * H : 0);
  std::vector<T> c_cand(mk.zone_c ? B * H : 0);
  for (auto it = rows.rbegin(); it != rows.rend(); ++it) {
    const auto [start, n] = *it;
    const T* dout_t = dout_p + start * R;
    T* dh_step = dH_p ? dH_p + start * R : dh_t.data();
    for (int64_t k = 0; k < n * R; ++k) dh_step[k] = dout_t[k] + dh[k];
    if (mk.zone_h) zone_split(n * R, mk.zone_h + start * R, dh_step, dh_direct.data());
    const T* c_t = c_p + start * H;                                   // c̃_t for tanh, o's peephole
    if (mk.zone_c) {                  // the saved c is the zoned-out c_t: recompute c̃_t
      lstm_candidate<T, COUPLED>(n, H, g_p + start * G * H, cp_p + start * H, c_cand.data());
      c_t = c_cand.data();
      zone_split(n * H, mk.zone_c + start * H, dc, dc_direct.data());
    }
    const T* dm = dh_step;
    if (w_hr) {                                                      // dm = dh W_hr
      projection(n, dh_step, R, T(0), dm_t.data(), H);
      dm = dm_t.data();
    }
    T* dA_t = dA_p + start * G * H;
    lstm_pointwise_backward<T, PEEP, COUPLED>(n, H, g_p + start * G * H, c_t,
                                              cp_p + start * H, dm, H, dc, dA_t, peep);
    recurrent(n, dA_t, G * H, T(0), dh, R);                           // dh_{t-1} = dA W_hh
    if (mk.h_drop) mul_inplace(n * R, dh, mk.h_drop);                 // ⊙ m
    if (mk.zone_h) add_inplace(n * R, dh, dh_direct.data());          // + d ⊙ dh_t
    if (mk.zone_c) add_inplace(n * H, dc, dc_direct.data());          // + d ⊙ dc_t
  }
}

std::vector<Tensor> lstm_backward(Tensor dout, Tensor dh_n, Tensor dc_n, Tensor gates, Tensor c,
                                  Tensor c_prev, Tensor w_hh, c10::optional<Tensor> w_hr,
                                  c10::optional<Tensor> peep, std::vector<int64_t> batch_sizes,
                                  bool reverse, bool coupled, c10::optional<Tensor> h_drop,
                                  c10::optional<Tensor> zone_h, c10::optional<Tensor> zone_c) {
  const int64_t H = c.size(1), R = dout.size(1), B = dh_n.size(0);
  const bool proj = w_hr.has_value() && w_hr->defined();
  const bool has_peep = peep.has_value() && peep->defined();
  auto w_hh_c = w_hh.contiguous();
  auto w_hr_c = proj ? w_hr->contiguous() : Tensor();
  Tensor dA = at::empty_like(gates);
  Tensor dH = proj ? at::empty_like(dout) : Tensor();
  Tensor dh_carry = dh_n.clone(), dc_carry = dc_n.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "lstm_backward", [&] {
    const scalar_t* whr = proj ? w_hr_c.data_ptr<scalar_t>() : nullptr;
    const scalar_t* p = has_peep ? peep->data_ptr<scalar_t>() : nullptr;
    with_variant(has_peep, coupled, [&](auto pe, auto co) {
      lstm_backward_impl<scalar_t, decltype(pe)::value, decltype(co)::value>(
          dout, gates, c, c_prev, w_hh_c, whr, p, dA, dh_carry, dc_carry, dH, rows, B, H, R,
          masks_of<scalar_t>(h_drop, zone_h, zone_c));
    });
  });
  return {dA, dh_carry, dc_carry, dH};
}

// ---- LSTM ablations of Greff et al. (2015) -------------------------------------------
// lstm_variant_forward / lstm_variant_backward of loops.py: absent gates (constant 1, no
// rows), no input / cell activation (identity), full gate recurrence (FGR: W_gg (3H, 3H)
// from the previous step's i, f, o). The flags are runtime values: the pointwise loops
// compute every term and weight it by 0 or 1 (x = k·a + (1 − k)·b), so they stay branch-free
// and vectorise; an absent gate reads a sink and writes to it, a missing peephole is zeros.
struct Variant {
  bool coupled, has_i, has_f, has_o, act_g, act_c, fgr;
  int64_t G;                          // gate blocks in the rows
  int64_t col_i, col_f, col_g, col_o; // column block of each gate (−1: absent)
  int64_t peep_i, peep_f, peep_o;     // block of each gate in the peephole (−1: none)
};

// greff = (input_gate, forget_gate, output_gate, input_activation, cell_activation,
// gate_recurrence), as lstmkit.cells.lstm.Greff.
Variant make_variant(bool coupled, const std::vector<bool>& greff, bool peep) {
  TORCH_CHECK(greff.size() == 6, "lstm_variant: greff needs 6 flags, got ", greff.size());
  Variant v{coupled, greff[0], greff[1] && !coupled, greff[2], greff[3], greff[4], greff[5],
            0, -1, -1, -1, -1, -1, -1, -1};
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

// A variant's flags as 0/1 weights: x = k·a + (1 − k)·b is exactly a or b, and plain
// arithmetic keeps the pointwise loops vectorised (GCC does not vectorise them with runtime
// ternaries); and the peephole block of each gate (zeros where it has none).
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
void lstm_variant_pointwise(int64_t n, int64_t H, const Variant& v, T* a, T* c_carry, T* c_out,
                            T* m_out, int64_t ldm, const T* peep, T* q, Scratch<T>& s) {
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
    T* cb = c_carry + b * H;
    T* cob = c_out + b * H;
    T* mb = m_out + b * ldm;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      // every term computed unconditionally, then weighted: keeps the loop vectorised
      const T c_prev = cb[j], pre_g = a_g[j];
      const T s_i = sigmoid(a_i[j] + p_i[j] * c_prev);
      const T s_f = sigmoid(a_f[j] + p_f[j] * c_prev);
      const T tanh_g = tanh_(pre_g);
      const T i_t = k_i * s_i + (T(1) - k_i);
      const T f_t = k_cpl * (T(1) - i_t) + (T(1) - k_cpl) * (k_f * s_f + (T(1) - k_f));
      const T g_t = k_g * tanh_g + (T(1) - k_g) * pre_g;
      const T c_t = f_t * c_prev + i_t * g_t;
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
      cb[j] = c_t;
      cob[j] = c_t;
      mb[j] = o_t * act_c_t;
    }
  }
}

template <typename T>
void lstm_variant_pointwise_backward(int64_t n, int64_t H, const Variant& v, const T* gates,
                                     const T* c, const T* c_prev, const T* dm, int64_t lddm,
                                     T* dc_carry, const T* dq, T* dA, const T* peep,
                                     Scratch<T>& s) {
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
    const T* dq_i = dq ? dq + b * 3 * H : z;           // FGR carry: ∂L/∂(i, f, o)_t
    const T* dq_f = dq ? dq_i + H : z;
    const T* dq_o = dq ? dq_i + 2 * H : z;
    const T* cb = c + b * H;
    const T* cpb = c_prev + b * H;
    const T* dmb = dm + b * lddm;
    T* dcb = dc_carry + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      // loads and terms unconditional, then weighted (vectorised); an absent gate is 1,
      // so its σ' = g(1 − g) is 0 and its dA block comes out 0
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
      dcb[j] = dc * f_t + d_i * p_i[j] + d_f * p_f[j];
    }
  }
}

template <typename T>
void lstm_variant_forward_impl(const Variant& v, Tensor& xw, const Tensor& w_hh, const T* w_hr,
                               const T* peep, const T* w_gg, Tensor& out, Tensor& c, Tensor& m,
                               Tensor& h_carry, Tensor& c_carry, const Rows& rows, int64_t H,
                               int64_t R) {
  const int64_t G = v.G, B = h_carry.size(0);
  T* a = xw.data_ptr<T>();
  T* out_p = out.data_ptr<T>();
  T* c_p = c.data_ptr<T>();
  T* m_p = m.defined() ? m.data_ptr<T>() : nullptr;
  T* h = h_carry.data_ptr<T>();
  T* cc = c_carry.data_ptr<T>();
  Scratch<T> scratch(H);
  std::vector<T> q(w_gg ? B * 3 * H : 0, T(0));                      // i, f, o at t−1
  const WeightGemm<T> recurrent(w_hh.data_ptr<T>(), true, B, G * H, R);   // · W_hhᵀ
  const WeightGemm<T> projection(w_hr, true, w_hr ? B : 0, R, H);         // · W_hrᵀ
  const WeightGemm<T> to_if(w_gg, true, w_gg ? B : 0, 2 * H, 3 * H);      // · W_gg[i,f]ᵀ
  const WeightGemm<T> to_o(w_gg ? w_gg + 6 * H * H : nullptr, true, w_gg ? B : 0, H, 3 * H);
  for (auto [start, n] : rows) {
    T* a_t = a + start * G * H;
    recurrent(n, h, R, T(1), a_t, G * H);                             // a += h_{t-1} W_hhᵀ
    if (w_gg) {                                                       // a_{i,f,o} += q W_ggᵀ
      to_if(n, q.data(), 3 * H, T(1), a_t, G * H);
      to_o(n, q.data(), 3 * H, T(1), a_t + 3 * H, G * H);
    }
    T* m_t = w_hr ? m_p + start * H : out_p + start * R;
    lstm_variant_pointwise<T>(n, H, v, a_t, cc, c_p + start * H, m_t, w_hr ? H : R, peep,
                              w_gg ? q.data() : nullptr, scratch);
    if (w_hr) projection(n, m_t, H, T(0), out_p + start * R, R);      // h = m W_hrᵀ
    std::memcpy(h, out_p + start * R, sizeof(T) * n * R);
  }
}

std::vector<Tensor> lstm_variant_forward(Tensor xw, Tensor w_hh, c10::optional<Tensor> w_hr,
                                         c10::optional<Tensor> peep, c10::optional<Tensor> w_gg,
                                         Tensor h0, Tensor c0, std::vector<int64_t> batch_sizes,
                                         bool reverse, bool coupled, std::vector<bool> greff) {
  const int64_t N = xw.size(0), H = c0.size(1), R = h0.size(1);
  const bool proj = w_hr.has_value() && w_hr->defined();
  const bool has_peep = peep.has_value() && peep->defined();
  const bool fgr = w_gg.has_value() && w_gg->defined();
  const Variant v = make_variant(coupled, greff, has_peep);
  TORCH_CHECK(fgr == v.fgr && (!fgr || (v.G == 4 && !coupled)),
              "lstm_variant_forward: w_gg is given exactly for FGR with all four gates");
  auto w_hh_c = w_hh.contiguous();
  auto w_hr_c = proj ? w_hr->contiguous() : Tensor();
  auto w_gg_c = fgr ? w_gg->contiguous() : Tensor();
  Tensor out = at::empty({N, R}, xw.options());
  Tensor c = at::empty({N, H}, xw.options());
  Tensor m = proj ? at::empty({N, H}, xw.options()) : Tensor();
  Tensor h_carry = h0.clone(), c_carry = c0.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "lstm_variant_forward", [&] {
    lstm_variant_forward_impl<scalar_t>(
        v, xw, w_hh_c, proj ? w_hr_c.data_ptr<scalar_t>() : nullptr,
        has_peep ? peep->data_ptr<scalar_t>() : nullptr,
        fgr ? w_gg_c.data_ptr<scalar_t>() : nullptr, out, c, m, h_carry, c_carry, rows, H, R);
  });
  return {out, c, m, h_carry, c_carry};
}

template <typename T>
void lstm_variant_backward_impl(const Variant& v, const Tensor& dout, const Tensor& gates,
                                const Tensor& c, const Tensor& c_prev, const Tensor& w_hh,
                                const T* w_hr, const T* peep, const T* w_gg, Tensor& dA,
                                Tensor& dh_carry, Tensor& dc_carry, Tensor& dq_carry, Tensor& dH,
                                const Rows& rows, int64_t B, int64_t H, int64_t R) {
  const int64_t G = v.G;
  const T* dout_p = dout.data_ptr<T>();
  const T* g_p = gates.data_ptr<T>();
  const T* c_p = c.data_ptr<T>();
  const T* cp_p = c_prev.data_ptr<T>();
  T* dA_p = dA.data_ptr<T>();
  T* dh = dh_carry.data_ptr<T>();
  T* dc = dc_carry.data_ptr<T>();
  T* dq = w_gg ? dq_carry.data_ptr<T>() : nullptr;
  T* dH_p = dH.defined() ? dH.data_ptr<T>() : nullptr;
  Scratch<T> scratch(H);
  std::vector<T> dh_t(B * R), dm_t(w_hr ? B * H : 0);
  const WeightGemm<T> recurrent(w_hh.data_ptr<T>(), false, B, R, G * H);  // · W_hh
  const WeightGemm<T> projection(w_hr, false, w_hr ? B : 0, H, R);        // · W_hr
  const WeightGemm<T> from_if(w_gg, false, w_gg ? B : 0, 3 * H, 2 * H);   // · W_gg[i,f]
  const WeightGemm<T> from_o(w_gg ? w_gg + 6 * H * H : nullptr, false, w_gg ? B : 0, 3 * H, H);
  for (auto it = rows.rbegin(); it != rows.rend(); ++it) {
    const auto [start, n] = *it;
    const T* dout_t = dout_p + start * R;
    T* dh_step = dH_p ? dH_p + start * R : dh_t.data();
    for (int64_t k = 0; k < n * R; ++k) dh_step[k] = dout_t[k] + dh[k];
    const T* dm = dh_step;
    if (w_hr) {                                                      // dm = dh W_hr
      projection(n, dh_step, R, T(0), dm_t.data(), H);
      dm = dm_t.data();
    }
    T* dA_t = dA_p + start * G * H;
    lstm_variant_pointwise_backward<T>(n, H, v, g_p + start * G * H, c_p + start * H,
                                       cp_p + start * H, dm, H, dc, dq, dA_t, peep, scratch);
    recurrent(n, dA_t, G * H, T(0), dh, R);                           // dh_{t-1} = dA W_hh
    if (w_gg) {                                             // dq_{t-1} = dA_{i,f,o} W_gg
      from_if(n, dA_t, G * H, T(0), dq, 3 * H);
      from_o(n, dA_t + 3 * H, G * H, T(1), dq, 3 * H);
    }
  }
}

std::vector<Tensor> lstm_variant_backward(
    Tensor dout, Tensor dh_n, Tensor dc_n, c10::optional<Tensor> dq_n, Tensor gates, Tensor c,
    Tensor c_prev, Tensor w_hh, c10::optional<Tensor> w_hr, c10::optional<Tensor> peep,
    c10::optional<Tensor> w_gg, std::vector<int64_t> batch_sizes, bool reverse, bool coupled,
    std::vector<bool> greff) {
  const int64_t H = c.size(1), R = dout.size(1), B = dh_n.size(0);
  const bool proj = w_hr.has_value() && w_hr->defined();
  const bool has_peep = peep.has_value() && peep->defined();
  const bool fgr = w_gg.has_value() && w_gg->defined();
  const Variant v = make_variant(coupled, greff, has_peep);
  TORCH_CHECK(fgr == v.fgr && (!fgr || (v.G == 4 && !coupled && dq_n.has_value())),
              "lstm_variant_backward: w_gg and dq_n are given exactly for FGR");
  auto w_hh_c = w_hh.contiguous();
  auto w_hr_c = proj ? w_hr->contiguous() : Tensor();
  auto w_gg_c = fgr ? w_gg->contiguous() : Tensor();
  Tensor dA = at::empty_like(gates);
  Tensor dH = proj ? at::empty_like(dout) : Tensor();
  Tensor dh_carry = dh_n.clone(), dc_carry = dc_n.clone();
  Tensor dq_carry = fgr ? dq_n->clone() : Tensor();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "lstm_variant_backward", [&] {
    lstm_variant_backward_impl<scalar_t>(
        v, dout, gates, c, c_prev, w_hh_c, proj ? w_hr_c.data_ptr<scalar_t>() : nullptr,
        has_peep ? peep->data_ptr<scalar_t>() : nullptr,
        fgr ? w_gg_c.data_ptr<scalar_t>() : nullptr, dA, dh_carry, dc_carry, dq_carry, dH, rows,
        B, H, R);
  });
  return {dA, dh_carry, dc_carry, dq_carry, dH};
}

// ---- GRU -----------------------------------------------------------------------------
template <typename T>
void gru_forward_impl(T* a, const T* W, const T* b_hh, T* out, T* hw_n, T* h, const Rows& rows,
                      int64_t B, int64_t H, bool reset_after, const Masks<T>& mk) {
  std::vector<T> hw(B * 3 * H), q(B * H), h_in(mk.h_drop ? B * H : 0);
  const int64_t cols = reset_after ? 3 * H : 2 * H;
  const WeightGemm<T> recurrent(W, true, B, cols, H);                 // · W_hhᵀ (or W_h{r,z}ᵀ)
  const WeightGemm<T> candidate(W + 2 * H * H, true, reset_after ? 0 : B, H, H);   // · W_hnᵀ
  for (auto [start, n] : rows) {
    T* a_t = a + start * 3 * H;
    T* out_t = out + start * H;
    const T* h_gemm = h;                                              // h_{t-1} (m ⊙ h_{t-1})
    if (mk.h_drop) {
      mul_into(n * H, h, mk.h_drop, h_in.data());
      h_gemm = h_in.data();
    }
    recurrent(n, h_gemm, H, T(0), hw.data(), cols);                   // h_{t-1} W_hᵀ
    for (int64_t b = 0; b < n; ++b) {
      T* ab = a_t + b * 3 * H;
      const T* hwb = hw.data() + b * cols;
      const T* hb = h_gemm + b * H;
      T* qb = q.data() + b * H;
#pragma omp simd
      for (int64_t j = 0; j < 2 * H; ++j)
        ab[j] = sigmoid(ab[j] + hwb[j] + (b_hh ? b_hh[j] : T(0)));      // r_t, z_t
      if (reset_after) {
        T* hnb = hw_n + (start + b) * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T hn = hwb[2 * H + j] + (b_hh ? b_hh[2 * H + j] : T(0));
          hnb[j] = hn;
          ab[2 * H + j] += ab[j] * hn;                                  // a_n + r ⊙ hw_n
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) qb[j] = ab[j] * hb[j];         // q = r ⊙ h_{t-1}
      }
    }
    if (!reset_after)                                                  // a_n += q W_hnᵀ
      candidate(n, q.data(), H, T(1), a_t + 2 * H, 3 * H);
    for (int64_t b = 0; b < n; ++b) {
      T* ab = a_t + b * 3 * H;
      T* hb = h + b * H;
      T* ob = out_t + b * H;
      const T* zb = mk.zone_h ? mk.zone_h + (start + b) * H : nullptr;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T pre = ab[2 * H + j] + (!reset_after && b_hh ? b_hh[2 * H + j] : T(0));
        const T n_t = tanh_(pre);
        const T z_t = ab[H + j];
        ab[2 * H + j] = n_t;
        T h_t = n_t + z_t * (hb[j] - n_t);                              // (1 − z) n + z h
        if (zb) h_t += zb[j] * (hb[j] - h_t);                            // zoneout
        ob[j] = h_t;
        hb[j] = h_t;
      }
    }
  }
}

std::vector<Tensor> gru_forward(Tensor xw, Tensor w_hh, c10::optional<Tensor> b_hh, Tensor h0,
                                std::vector<int64_t> batch_sizes, bool reverse,
                                bool reset_after, c10::optional<Tensor> h_drop,
                                c10::optional<Tensor> zone_h) {
  const int64_t N = xw.size(0), H = h0.size(1), B = h0.size(0);
  auto w = w_hh.contiguous();
  Tensor out = at::empty({N, H}, xw.options());
  Tensor hw_n = reset_after ? at::empty({N, H}, xw.options()) : Tensor();
  Tensor h_carry = h0.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "gru_forward", [&] {
    gru_forward_impl<scalar_t>(xw.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                               ptr_or_null<scalar_t>(b_hh), out.data_ptr<scalar_t>(),
                               reset_after ? hw_n.data_ptr<scalar_t>() : nullptr,
                               h_carry.data_ptr<scalar_t>(), rows, B, H, reset_after,
                               masks_of<scalar_t>(h_drop, zone_h, c10::nullopt));
  });
  return {out, hw_n, h_carry};
}

template <typename T>
void gru_backward_impl(const T* dout, const T* gates, const T* hw_n, const T* h_prev,
                       const T* W, T* dA_x, T* dA_h, T* dh, const Rows& rows, int64_t B,
                       int64_t H, bool reset_after, const Masks<T>& mk) {
  std::vector<T> dq(B * H), dh_w(mk.h_drop ? B * H : 0);   // dh_w: the term through W_hh
  const WeightGemm<T> recurrent(W, false, reset_after ? B : 0, H, 3 * H);          // · W_hh
  const WeightGemm<T> gates_rz(W, false, reset_after ? 0 : B, H, 2 * H);           // · W_h{r,z}
  const WeightGemm<T> candidate(W + 2 * H * H, false, reset_after ? 0 : B, H, H);  // · W_hn
  for (auto it = rows.rbegin(); it != rows.rend(); ++it) {
    const auto [start, n] = *it;
    T* dx_t = dA_x + start * 3 * H;
    T* dhh_t = dA_h + start * 3 * H;
    for (int64_t b = 0; b < n; ++b) {
      const int64_t row = start + b;
      const T* gb = gates + row * 3 * H;
      const T* hpb = h_prev + row * H;
      const T* dob = dout + row * H;
      T* dhb = dh + b * H;
      T* dxb = dx_t + b * 3 * H;
      T* dhhb = dhh_t + b * 3 * H;
      const T* zb = mk.zone_h ? mk.zone_h + row * H : nullptr;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T r_t = gb[j], z_t = gb[H + j], n_t = gb[2 * H + j];
        T d_h = dob[j] + dhb[j];
        const T d_zone = zb ? zb[j] * d_h : T(0);                       // zoneout's direct path
        d_h -= d_zone;
        const T d_n = d_h * (T(1) - z_t) * (T(1) - n_t * n_t);
        dxb[H + j] = d_h * (hpb[j] - n_t) * z_t * (T(1) - z_t);
        dxb[2 * H + j] = d_n;
        dhb[j] = d_h * z_t + d_zone;                                   // the direct paths
        if (reset_after) {
          const T d_r = d_n * hw_n[row * H + j] * r_t * (T(1) - r_t);
          dxb[j] = d_r;
          dhhb[j] = d_r;
          dhhb[H + j] = dxb[H + j];
          dhhb[2 * H + j] = d_n * r_t;
        }
      }
    }
    if (reset_after && mk.h_drop) {                                    // dh += (dA_h W_hh) ⊙ m
      recurrent(n, dhh_t, 3 * H, T(0), dh_w.data(), H);
      mul_inplace(n * H, dh_w.data(), mk.h_drop);
      add_inplace(n * H, dh, dh_w.data());
    } else if (reset_after) {                                          // dh += dA_h W_hh
      recurrent(n, dhh_t, 3 * H, T(1), dh, H);
    } else {
      candidate(n, dx_t + 2 * H, 3 * H, T(0), dq.data(), H);           // dq = da_n W_hn
      for (int64_t b = 0; b < n; ++b) {
        const int64_t row = start + b;
        const T* gb = gates + row * 3 * H;
        const T* hpb = h_prev + row * H;
        const T* dqb = dq.data() + b * H;
        T* dxb = dx_t + b * 3 * H;
        T* dhb = dh + b * H;
        const T* mb = mk.h_drop ? mk.h_drop + b * H : nullptr;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T r_t = gb[j], m_j = mb ? mb[j] : T(1);                // ĥ = m ⊙ h_{t-1}
          dxb[j] = dqb[j] * hpb[j] * m_j * r_t * (T(1) - r_t);
          dhb[j] += dqb[j] * r_t * m_j;
        }
      }
      if (mk.h_drop) {                                   // dh += ([da_r, da_z] W_rz) ⊙ m
        gates_rz(n, dx_t, 3 * H, T(0), dh_w.data(), H);
        mul_inplace(n * H, dh_w.data(), mk.h_drop);
        add_inplace(n * H, dh, dh_w.data());
      } else {
        gates_rz(n, dx_t, 3 * H, T(1), dh, H);                       // dh += [da_r, da_z] W_rz
      }
    }
  }
}

std::vector<Tensor> gru_backward(Tensor dout, Tensor dh_n, Tensor gates, c10::optional<Tensor> hw_n,
                                 Tensor h_prev, Tensor w_hh, std::vector<int64_t> batch_sizes,
                                 bool reverse, bool reset_after, c10::optional<Tensor> h_drop,
                                 c10::optional<Tensor> zone_h) {
  const int64_t H = dh_n.size(1), B = dh_n.size(0);
  auto w = w_hh.contiguous();
  Tensor dA_x = at::empty_like(gates);
  Tensor dA_h = reset_after ? at::empty_like(gates) : dA_x;
  Tensor dh_carry = dh_n.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "gru_backward", [&] {
    gru_backward_impl<scalar_t>(dout.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(),
                                ptr_or_null<scalar_t>(hw_n), h_prev.data_ptr<scalar_t>(),
                                w.data_ptr<scalar_t>(), dA_x.data_ptr<scalar_t>(),
                                dA_h.data_ptr<scalar_t>(), dh_carry.data_ptr<scalar_t>(), rows,
                                B, H, reset_after, masks_of<scalar_t>(h_drop, zone_h, c10::nullopt));
  });
  return {dA_x, dA_h, dh_carry};
}

// ---- RNN -----------------------------------------------------------------------------
template <typename T>
void rnn_forward_impl(T* a, const T* W, T* h, T* out, const Rows& rows, int64_t H, bool relu,
                      const Masks<T>& mk) {
  const WeightGemm<T> recurrent(W, true, max_rows(rows), H, H);
  std::vector<T> h_in(mk.h_drop ? max_rows(rows) * H : 0);
  for (auto [start, n] : rows) {
    T* a_t = a + start * H;
    const T* h_gemm = h;
    if (mk.h_drop) {                                                  // m ⊙ h_{t-1}
      mul_into(n * H, h, mk.h_drop, h_in.data());
      h_gemm = h_in.data();
    }
    recurrent(n, h_gemm, H, T(1), a_t, H);                            // a += h_{t-1} W_hhᵀ
#pragma omp simd
    for (int64_t k = 0; k < n * H; ++k) a_t[k] = relu ? std::max(a_t[k], T(0)) : tanh_(a_t[k]);
    if (mk.zone_h) {                                                  // h̃_t (in a) → h_t
      std::memcpy(out + start * H, a_t, sizeof(T) * n * H);
      zone_mix(n * H, mk.zone_h + start * H, h, out + start * H);
    }
    std::memcpy(h, out + start * H, sizeof(T) * n * H);
  }
}

std::vector<Tensor> rnn_forward(Tensor xw, Tensor w_hh, Tensor h0,
                                std::vector<int64_t> batch_sizes, bool reverse, bool relu,
                                c10::optional<Tensor> h_drop, c10::optional<Tensor> zone_h) {
  auto w = w_hh.contiguous();
  Tensor h_carry = h0.clone();
  const bool zoned = zone_h.has_value() && zone_h->defined();
  Tensor out = zoned ? at::empty_like(xw) : xw;            // xw keeps h̃_t, out gets h_t
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "rnn_forward", [&] {
    rnn_forward_impl<scalar_t>(xw.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                               h_carry.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), rows,
                               h0.size(1), relu, masks_of<scalar_t>(h_drop, zone_h, c10::nullopt));
  });
  return {out, h_carry};
}

template <typename T>
void rnn_backward_impl(const T* dout, const T* h_all, const T* W, T* dA, T* dh, const Rows& rows,
                       int64_t H, bool relu, const Masks<T>& mk) {
  const WeightGemm<T> recurrent(W, false, max_rows(rows), H, H);
  std::vector<T> dh_direct(mk.zone_h ? max_rows(rows) * H : 0);
  for (auto it = rows.rbegin(); it != rows.rend(); ++it) {
    const auto [start, n] = *it;
    T* dA_t = dA + start * H;
    const T* h_t = h_all + start * H;                                 // h̃_t = act(a_t)
    const T* dout_t = dout + start * H;
#pragma omp simd
    for (int64_t k = 0; k < n * H; ++k) dh[k] += dout_t[k];
    if (mk.zone_h) zone_split(n * H, mk.zone_h + start * H, dh, dh_direct.data());
#pragma omp simd
    for (int64_t k = 0; k < n * H; ++k) {
      const T d = dh[k];
      dA_t[k] = relu ? (h_t[k] > T(0) ? d : T(0)) : d * (T(1) - h_t[k] * h_t[k]);
    }
    recurrent(n, dA_t, H, T(0), dh, H);                               // dh_{t-1} = dA W_hh
    if (mk.h_drop) mul_inplace(n * H, dh, mk.h_drop);                 // ⊙ m
    if (mk.zone_h) add_inplace(n * H, dh, dh_direct.data());          // + d ⊙ dh_t
  }
}

std::vector<Tensor> rnn_backward(Tensor dout, Tensor dh_n, Tensor out, Tensor w_hh,
                                 std::vector<int64_t> batch_sizes, bool reverse, bool relu,
                                 c10::optional<Tensor> h_drop, c10::optional<Tensor> zone_h) {
  auto w = w_hh.contiguous();
  Tensor dA = at::empty_like(out);
  Tensor dh_carry = dh_n.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "rnn_backward", [&] {
    rnn_backward_impl<scalar_t>(dout.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                w.data_ptr<scalar_t>(), dA.data_ptr<scalar_t>(),
                                dh_carry.data_ptr<scalar_t>(), rows, dh_n.size(1), relu,
                                masks_of<scalar_t>(h_drop, zone_h, c10::nullopt));
  });
  return {dA, dh_carry};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lstmkit fused recurrences (see lstmkit/ops/loops.py for the contract)";
  if (sgemm_ == nullptr || dgemm_ == nullptr)
    throw std::runtime_error("lstmkit kernels: this torch exports no BLAS sgemm_/dgemm_");
  m.def("set_packing", [](bool on) { g_use_packing = on; },
        "pack float32 weights once per call for MKL's packed GEMM (default on)");
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_backward", &lstm_backward);
  m.def("lstm_variant_forward", &lstm_variant_forward);
  m.def("lstm_variant_backward", &lstm_variant_backward);
  m.def("gru_forward", &gru_forward);
  m.def("gru_backward", &gru_backward);
  m.def("rnn_forward", &rnn_forward);
  m.def("rnn_backward", &rnn_backward);
}
