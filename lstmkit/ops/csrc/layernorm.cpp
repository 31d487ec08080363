// lstmkit layer-norm kernels: the per-step recurrences of the LN-LSTM and LN-GRU
// (Ba, Kiros & Hinton 2016) in C++, the same four functions with the same arguments and
// results as the torch loops in lstmkit/ops/fused_ln.py (read its docstring for the folded
// input side and the BPTT derivation; cells/layernorm.py for the equations).
//
// Per step: one BLAS GEMM with the recurrent weights, written straight into the ĥ buffer
// and normalised there in place, then one pass per row for the gates (and the LN of c_t).
// Buffers are row-major and contiguous; N = Σ batch_sizes rows, B = batch_sizes[0].
// Row statistics: mean, then the biased variance of the deviations (two passes), and
// rstd = 1/sqrt(var + ε) with ε = 1e-5 (cells/layernorm.py EPS).

#include "common.h"

namespace {

constexpr double kEps = 1e-5;

// C (m×n) = beta·C + A (m×k) · Wᵀ, W stored (n×k); all dense.
template <typename T>
void gemm_abt(int64_t m, int64_t n, int64_t k, const T* A, const T* W, T beta, T* C) {
  gemm_abt<T>(m, n, k, A, k, W, k, beta, C, n);
}
// C (m×n) = beta·C + A (m×k) · W, W stored (k×n); all dense.
template <typename T>
void gemm_ab(int64_t m, int64_t n, int64_t k, const T* A, const T* W, T beta, T* C) {
  gemm_ab<T>(m, n, k, A, k, W, n, beta, C, n);
}

// (μ, 1/σ) of v[0..D): mean, then the biased variance of the deviations.
template <typename T>
std::pair<T, T> stats(const T* v, int64_t D) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < D; ++j) sum += v[j];
  const T mu = sum / T(D);
  T sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < D; ++j) sq += (v[j] - mu) * (v[j] - mu);
  return {mu, T(1) / std::sqrt(sq / T(D) + T(kEps))};
}

// LN backward over D entries, dy = ∂L/∂LN(v), dv̂ = g ⊙ dy:
// dv[j] = rstd · (dv̂[j] − mean(dv̂) − v̂[j] · mean(dv̂ ⊙ v̂)); and the parameter gradients
// dg += dy ⊙ v̂, db += dy (summed over rows by the caller's repeated calls).
template <typename T>
void normalise_backward(const T* dy, const T* g, const T* v_hat, T rstd, int64_t D, T* dv,
                        T* dg, T* db) {
  T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < D; ++j) {
    const T d = dy[j] * g[j];
    s1 += d;
    s2 += d * v_hat[j];
    dg[j] += dy[j] * v_hat[j];
    db[j] += dy[j];
  }
  const T m1 = s1 / T(D), m2 = s2 / T(D);
#pragma omp simd
  for (int64_t j = 0; j < D; ++j) dv[j] = rstd * (dy[j] * g[j] - m1 - v_hat[j] * m2);
}

// ---- LN-LSTM ---------------------------------------------------------------------------
template <typename T>
void ln_lstm_forward_impl(T* a, const T* W, const T* g_hh, const T* g_c, const T* b_c, T* out,
                          T* c, T* h_hat, T* rstd_h, T* c_hat, T* rstd_c, T* h, T* cc,
                          const Rows& rows, int64_t H) {
  const int64_t G = 4 * H;
  for (auto [start, n] : rows) {
    T* hh_t = h_hat + start * G;
    gemm_abt<T>(n, G, H, h, W, T(0), hh_t);                          // W_hh h_{t-1} → ĥ buffer
    for (int64_t b = 0; b < n; ++b) {
      const int64_t row = start + b;
      T* hh = hh_t + b * G;
      const auto [mu, rstd] = stats(hh, G);                          // over all 4H
      rstd_h[row] = rstd;
      T* ab = a + row * G;
      T* cb = cc + b * H;
      T* c_t = c + row * H;
      T c_sum = 0;
#pragma omp simd reduction(+ : c_sum)
      for (int64_t j = 0; j < H; ++j) {
        const T hi = (hh[j] - mu) * rstd, hf = (hh[H + j] - mu) * rstd;
        const T hg = (hh[2 * H + j] - mu) * rstd, ho = (hh[3 * H + j] - mu) * rstd;
        hh[j] = hi;
        hh[H + j] = hf;
        hh[2 * H + j] = hg;
        hh[3 * H + j] = ho;
        const T i_t = sigmoid(ab[j] + g_hh[j] * hi);
        const T f_t = sigmoid(ab[H + j] + g_hh[H + j] * hf);
        const T g_t = tanh_(ab[2 * H + j] + g_hh[2 * H + j] * hg);
        const T o_t = sigmoid(ab[3 * H + j] + g_hh[3 * H + j] * ho);
        const T c_new = f_t * cb[j] + i_t * g_t;
        ab[j] = i_t;
        ab[H + j] = f_t;
        ab[2 * H + j] = g_t;
        ab[3 * H + j] = o_t;
        cb[j] = c_new;
        c_t[j] = c_new;
        c_sum += c_new;
      }
      const T mu_c = c_sum / T(H);
      T sq = 0;
#pragma omp simd reduction(+ : sq)
      for (int64_t j = 0; j < H; ++j) sq += (c_t[j] - mu_c) * (c_t[j] - mu_c);
      const T rc = T(1) / std::sqrt(sq / T(H) + T(kEps));
      rstd_c[row] = rc;
      T* ch = c_hat + row * H;
      T* hb = h + b * H;
      T* ob = out + row * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T c_n = (c_t[j] - mu_c) * rc;                            // ĉ
        ch[j] = c_n;
        const T h_t = ab[3 * H + j] * tanh_(g_c[j] * c_n + b_c[j]);   // o ⊙ tanh(LN(c))
        ob[j] = h_t;
        hb[j] = h_t;
      }
    }
  }
}

std::vector<Tensor> ln_lstm_forward(Tensor ax, Tensor w_hh, Tensor g_hh, Tensor g_c, Tensor b_c,
                                    Tensor h0, Tensor c0, std::vector<int64_t> batch_sizes,
                                    bool reverse) {
  const int64_t N = ax.size(0), H = c0.size(1);
  auto w = w_hh.contiguous();
  Tensor out = at::empty({N, H}, ax.options()), c = at::empty({N, H}, ax.options());
  Tensor h_hat = at::empty_like(ax), c_hat = at::empty({N, H}, ax.options());
  Tensor rstd_h = at::empty({N, 1}, ax.options()), rstd_c = at::empty({N, 1}, ax.options());
  Tensor h_carry = h0.clone(), c_carry = c0.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(ax.scalar_type(), "ln_lstm_forward", [&] {
    ln_lstm_forward_impl<scalar_t>(
        ax.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), g_hh.data_ptr<scalar_t>(),
        g_c.data_ptr<scalar_t>(), b_c.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
        c.data_ptr<scalar_t>(), h_hat.data_ptr<scalar_t>(), rstd_h.data_ptr<scalar_t>(),
        c_hat.data_ptr<scalar_t>(), rstd_c.data_ptr<scalar_t>(), h_carry.data_ptr<scalar_t>(),
        c_carry.data_ptr<scalar_t>(), rows, H);
  });
  return {out, c, h_hat, rstd_h, c_hat, rstd_c, h_carry, c_carry};
}

template <typename T>
void ln_lstm_backward_impl(const T* dout, const T* gates, const T* c_prev, const T* h_hat,
                           const T* rstd_h, const T* c_hat, const T* rstd_c, const T* W,
                           const T* g_hh, const T* g_c, const T* b_c, T* dA, T* dHW, T* dh,
                           T* dcc, T* dg_hh, T* db_hh, T* dg_c, T* db_c, const Rows& rows,
                           int64_t H) {
  const int64_t G = 4 * H;
  std::vector<T> dy(H), dc_ln(H);
  for (auto it = rows.rbegin(); it != rows.rend(); ++it) {
    const auto [start, n] = *it;
    for (int64_t b = 0; b < n; ++b) {
      const int64_t row = start + b;
      const T* gb = gates + row * G;
      const T* ch = c_hat + row * H;
      const T* cpb = c_prev + row * H;
      const T* dob = dout + row * H;
      const T* dhb = dh + b * H;
      T* db = dA + row * G;
      T* dcb = dcc + b * H;
      T* dyb = dy.data();
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T o_t = gb[3 * H + j];
        const T d_h = dob[j] + dhb[j];
        const T ty = tanh_(g_c[j] * ch[j] + b_c[j]);
        db[3 * H + j] = d_h * ty * o_t * (T(1) - o_t);                // da_o
        dyb[j] = d_h * o_t * (T(1) - ty * ty);                        // ∂L/∂LN(c_t)
      }
      normalise_backward(dyb, g_c, ch, rstd_c[row], H, dc_ln.data(), dg_c, db_c);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T i_t = gb[j], f_t = gb[H + j], g_t = gb[2 * H + j];
        const T dc = dcb[j] + dc_ln[j];
        db[j] = dc * g_t * i_t * (T(1) - i_t);                        // da_i
        db[H + j] = dc * cpb[j] * f_t * (T(1) - f_t);                 // da_f
        db[2 * H + j] = dc * i_t * (T(1) - g_t * g_t);                // da_g
        dcb[j] = dc * f_t;                                            // dc_{t-1}
      }
      normalise_backward(db, g_hh, h_hat + row * G, rstd_h[row], G, dHW + row * G, dg_hh,
                         db_hh);
    }
    gemm_ab<T>(n, H, G, dHW + start * G, W, T(0), dh);                // dh_{t-1} = dHW W_hh
  }
}

std::vector<Tensor> ln_lstm_backward(Tensor dout, Tensor dh_n, Tensor dc_n, Tensor gates,
                                     Tensor c_prev, Tensor h_hat, Tensor rstd_h, Tensor c_hat,
                                     Tensor rstd_c, Tensor w_hh, Tensor g_hh, Tensor g_c,
                                     Tensor b_c, std::vector<int64_t> batch_sizes,
                                     bool reverse) {
  const int64_t H = c_hat.size(1);
  auto w = w_hh.contiguous();
  Tensor dA = at::empty_like(gates), dHW = at::empty_like(gates);
  Tensor dg_hh = at::zeros({4 * H}, gates.options()), db_hh = at::zeros({4 * H}, gates.options());
  Tensor dg_c = at::zeros({H}, gates.options()), db_c = at::zeros({H}, gates.options());
  Tensor dh_carry = dh_n.clone(), dc_carry = dc_n.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "ln_lstm_backward", [&] {
    ln_lstm_backward_impl<scalar_t>(
        dout.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(),
        h_hat.data_ptr<scalar_t>(), rstd_h.data_ptr<scalar_t>(), c_hat.data_ptr<scalar_t>(),
        rstd_c.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), g_hh.data_ptr<scalar_t>(),
        g_c.data_ptr<scalar_t>(), b_c.data_ptr<scalar_t>(), dA.data_ptr<scalar_t>(),
        dHW.data_ptr<scalar_t>(), dh_carry.data_ptr<scalar_t>(), dc_carry.data_ptr<scalar_t>(),
        dg_hh.data_ptr<scalar_t>(), db_hh.data_ptr<scalar_t>(), dg_c.data_ptr<scalar_t>(),
        db_c.data_ptr<scalar_t>(), rows, H);
  });
  return {dA, dHW, dh_carry, dc_carry, dg_hh, db_hh, dg_c, db_c};
}

// ---- LN-GRU (reset_after) --------------------------------------------------------------
template <typename T>
void ln_gru_forward_impl(T* a, const T* W, const T* g_hh, const T* c_hn, T* out, T* h_hat,
                         T* rstd_h, T* hn_all, T* h, const Rows& rows, int64_t H) {
  const int64_t G = 3 * H;
  for (auto [start, n] : rows) {
    T* hh_t = h_hat + start * G;
    gemm_abt<T>(n, G, H, h, W, T(0), hh_t);                          // W_hh h_{t-1} → ĥ buffer
    for (int64_t b = 0; b < n; ++b) {
      const int64_t row = start + b;
      T* hh = hh_t + b * G;
      const auto [mu, rs] = stats(hh, 2 * H);                        // r|z rows together
      const auto [mu_n, rs_n] = stats(hh + 2 * H, H);                // n rows apart
      rstd_h[2 * row] = rs;
      rstd_h[2 * row + 1] = rs_n;
      T* ab = a + row * G;
      T* hb = h + b * H;
      T* hnb = hn_all + row * H;
      T* ob = out + row * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T hr = (hh[j] - mu) * rs, hz = (hh[H + j] - mu) * rs;
        const T h_n = (hh[2 * H + j] - mu_n) * rs_n;
        hh[j] = hr;
        hh[H + j] = hz;
        hh[2 * H + j] = h_n;
        const T r_t = sigmoid(ab[j] + g_hh[j] * hr);
        const T z_t = sigmoid(ab[H + j] + g_hh[H + j] * hz);
        const T hn = g_hh[2 * H + j] * h_n + c_hn[j];
        const T n_t = tanh_(ab[2 * H + j] + r_t * hn);
        const T h_t = n_t + z_t * (hb[j] - n_t);                      // (1 − z) n + z h
        ab[j] = r_t;
        ab[H + j] = z_t;
        ab[2 * H + j] = n_t;
        hnb[j] = hn;
        ob[j] = h_t;
        hb[j] = h_t;
      }
    }
  }
}

std::vector<Tensor> ln_gru_forward(Tensor ax, Tensor w_hh, Tensor g_hh, Tensor c_hn, Tensor h0,
                                   std::vector<int64_t> batch_sizes, bool reverse) {
  const int64_t N = ax.size(0), H = h0.size(1);
  auto w = w_hh.contiguous();
  Tensor out = at::empty({N, H}, ax.options()), hn = at::empty({N, H}, ax.options());
  Tensor h_hat = at::empty_like(ax), rstd_h = at::empty({N, 2}, ax.options());
  Tensor h_carry = h0.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(ax.scalar_type(), "ln_gru_forward", [&] {
    ln_gru_forward_impl<scalar_t>(
        ax.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), g_hh.data_ptr<scalar_t>(),
        c_hn.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), h_hat.data_ptr<scalar_t>(),
        rstd_h.data_ptr<scalar_t>(), hn.data_ptr<scalar_t>(), h_carry.data_ptr<scalar_t>(),
        rows, H);
  });
  return {out, h_hat, rstd_h, hn, h_carry};
}

template <typename T>
void ln_gru_backward_impl(const T* dout, const T* gates, const T* h_hat, const T* rstd_h,
                          const T* hn_all, const T* h_prev, const T* W, const T* g_hh, T* dA_rz,
                          T* dA_n, T* dHW, T* dh, T* dg_hh, T* db_hh, const Rows& rows,
                          int64_t H) {
  const int64_t G = 3 * H;
  std::vector<T> dy(G);                       // [da_r, da_z, da_n ⊙ r]: the recurrent side
  for (auto it = rows.rbegin(); it != rows.rend(); ++it) {
    const auto [start, n] = *it;
    for (int64_t b = 0; b < n; ++b) {
      const int64_t row = start + b;
      const T* gb = gates + row * G;
      const T* hpb = h_prev + row * H;
      const T* hnb = hn_all + row * H;
      const T* dob = dout + row * H;
      T* dhb = dh + b * H;
      T* drz = dA_rz + row * 2 * H;
      T* dnb = dA_n + row * H;
      T* dyb = dy.data();
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T r_t = gb[j], z_t = gb[H + j], n_t = gb[2 * H + j];
        const T d_h = dob[j] + dhb[j];
        const T d_n = d_h * (T(1) - z_t) * (T(1) - n_t * n_t);
        const T d_z = d_h * (hpb[j] - n_t) * z_t * (T(1) - z_t);
        const T d_r = d_n * hnb[j] * r_t * (T(1) - r_t);
        drz[j] = d_r;
        drz[H + j] = d_z;
        dnb[j] = d_n;
        dyb[j] = d_r;
        dyb[H + j] = d_z;
        dyb[2 * H + j] = d_n * r_t;
        dhb[j] = d_h * z_t;                                           // the direct path
      }
      const T* hh = h_hat + row * G;
      T* dhw = dHW + row * G;
      normalise_backward(dyb, g_hh, hh, rstd_h[2 * row], 2 * H, dhw, dg_hh, db_hh);
      normalise_backward(dyb + 2 * H, g_hh + 2 * H, hh + 2 * H, rstd_h[2 * row + 1], H,
                         dhw + 2 * H, dg_hh + 2 * H, db_hh + 2 * H);
    }
    gemm_ab<T>(n, H, G, dHW + start * G, W, T(1), dh);                // dh += dHW W_hh
  }
}

std::vector<Tensor> ln_gru_backward(Tensor dout, Tensor dh_n, Tensor gates, Tensor h_hat,
                                    Tensor rstd_h, Tensor hn, Tensor h_prev, Tensor w_hh,
                                    Tensor g_hh, std::vector<int64_t> batch_sizes, bool reverse) {
  const int64_t H = dh_n.size(1);
  auto w = w_hh.contiguous();
  const int64_t N = gates.size(0);
  Tensor dA_rz = at::empty({N, 2 * H}, gates.options()), dA_n = at::empty({N, H}, gates.options());
  Tensor dHW = at::empty_like(gates);
  Tensor dg_hh = at::zeros({3 * H}, gates.options()), db_hh = at::zeros({3 * H}, gates.options());
  Tensor dh_carry = dh_n.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "ln_gru_backward", [&] {
    ln_gru_backward_impl<scalar_t>(
        dout.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(), h_hat.data_ptr<scalar_t>(),
        rstd_h.data_ptr<scalar_t>(), hn.data_ptr<scalar_t>(), h_prev.data_ptr<scalar_t>(),
        w.data_ptr<scalar_t>(), g_hh.data_ptr<scalar_t>(), dA_rz.data_ptr<scalar_t>(),
        dA_n.data_ptr<scalar_t>(), dHW.data_ptr<scalar_t>(), dh_carry.data_ptr<scalar_t>(),
        dg_hh.data_ptr<scalar_t>(), db_hh.data_ptr<scalar_t>(), rows, H);
  });
  return {dA_rz, dA_n, dHW, dh_carry, dg_hh, db_hh};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lstmkit layer-norm recurrences (see lstmkit/ops/fused_ln.py for the contract)";
  if (sgemm_ == nullptr || dgemm_ == nullptr)
    throw std::runtime_error("lstmkit layernorm kernels: this torch exports no BLAS sgemm_/dgemm_");
  m.def("ln_lstm_forward", &ln_lstm_forward);
  m.def("ln_lstm_backward", &ln_lstm_backward);
  m.def("ln_gru_forward", &ln_gru_forward);
  m.def("ln_gru_backward", &ln_gru_backward);
}
