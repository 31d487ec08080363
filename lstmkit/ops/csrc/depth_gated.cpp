// lstmkit Depth-Gated LSTM kernels (Yao et al. 2015): the per-step recurrences of
// lstmkit/ops/fused_depth_gated.py in C++, same arguments and results as its
// depth_gated_forward / depth_gated_backward (read their docstrings and the module
// docstring for the buffers and the BPTT derivation). Names follow cells/depth_gated.py.
// Per step: one BLAS GEMM with W_hh and one pointwise pass over raw pointers; no
// allocation inside the time loop.
//
// Buffers are row-major and contiguous. N = Σ batch_sizes rows, B = batch_sizes[0],
// H hidden size, G = 5 gate blocks i|f|g|o|d (4 for the lowest layer: no depth gate).

#include "common.h"

namespace {



// ---- forward --------------------------------------------------------------------------
// One step's pointwise update of n rows: a (n, G·H) pre-activations in, activations out.
template <typename T, bool DEPTH>
void pointwise_forward(int64_t n, int64_t H, T* a, const T* c_low, const T* w_cd, T* c_carry,
                       T* c_out, T* h_out) {
  constexpr int64_t G = DEPTH ? 5 : 4;
  for (int64_t b = 0; b < n; ++b) {
    T* a_i = a + b * G * H;
    T* a_f = a_i + H;
    T* a_g = a_i + 2 * H;
    T* a_o = a_i + 3 * H;
    T* a_d = a_i + 4 * H;                            // DEPTH only
    T* cb = c_carry + b * H;
    T* cob = c_out + b * H;
    T* hb = h_out + b * H;
    const T* clb = DEPTH ? c_low + b * H : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T c_prev = cb[j];
      const T i_t = sigmoid(a_i[j]);
      const T f_t = sigmoid(a_f[j]);
      const T g_t = tanh_(a_g[j]);
      const T o_t = sigmoid(a_o[j]);
      T c_t = f_t * c_prev + i_t * g_t;
      if constexpr (DEPTH) {
        const T d_t = sigmoid(a_d[j] + w_cd[j] * c_prev);
        c_t += d_t * clb[j];
        a_d[j] = d_t;
      }
      a_i[j] = i_t;
      a_f[j] = f_t;
      a_g[j] = g_t;
      a_o[j] = o_t;
      cb[j] = c_t;
      cob[j] = c_t;
      hb[j] = o_t * tanh_(c_t);
    }
  }
}

template <typename T, bool DEPTH>
void forward_impl(T* a, const T* c_low, const T* W, const T* w_cd, T* out, T* c, T* h, T* cc,
                  const Rows& rows, int64_t H) {
  constexpr int64_t G = DEPTH ? 5 : 4;
  for (auto [start, n] : rows) {
    T* a_t = a + start * G * H;
    gemm_awt<T>(n, 4 * H, H, h, H, W, T(1), a_t, G * H);              // a += h_{t-1} W_hhᵀ
    pointwise_forward<T, DEPTH>(n, H, a_t, DEPTH ? c_low + start * H : nullptr, w_cd, cc,
                                c + start * H, out + start * H);
    std::memcpy(h, out + start * H, sizeof(T) * n * H);
  }
}

std::vector<Tensor> depth_gated_forward(Tensor xw, c10::optional<Tensor> c_low, Tensor w_hh,
                                        c10::optional<Tensor> w_cd, Tensor h0, Tensor c0,
                                        std::vector<int64_t> batch_sizes, bool reverse) {
  const int64_t N = xw.size(0), H = h0.size(1);
  const bool depth = c_low.has_value() && c_low->defined();
  auto W = w_hh.contiguous();
  Tensor out = at::empty({N, H}, xw.options());
  Tensor c = at::empty({N, H}, xw.options());
  Tensor h_carry = h0.clone(), c_carry = c0.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "depth_gated_forward", [&] {
    using T = scalar_t;
    auto f = depth ? forward_impl<T, true> : forward_impl<T, false>;
    f(xw.data_ptr<T>(), ptr_or_null<T>(c_low), W.data_ptr<T>(), ptr_or_null<T>(w_cd),
      out.data_ptr<T>(), c.data_ptr<T>(), h_carry.data_ptr<T>(), c_carry.data_ptr<T>(), rows,
      H);
  });
  return {out, c, h_carry, c_carry};
}

// ---- backward -------------------------------------------------------------------------
template <typename T, bool DEPTH>
void pointwise_backward(int64_t n, int64_t H, const T* gates, const T* c, const T* c_prev,
                        const T* c_low, const T* dout, const T* dh_carry, const T* dc_in,
                        const T* w_cd, const T* w_ld, T* dc_carry, T* dA, T* dc_low) {
  constexpr int64_t G = DEPTH ? 5 : 4;
  for (int64_t b = 0; b < n; ++b) {
    const T* i_ = gates + b * G * H;
    const T* f_ = i_ + H;
    const T* g_ = i_ + 2 * H;
    const T* o_ = i_ + 3 * H;
    const T* d_ = i_ + 4 * H;
    T* da_i = dA + b * G * H;
    T* da_f = da_i + H;
    T* da_g = da_i + 2 * H;
    T* da_o = da_i + 3 * H;
    T* da_d = da_i + 4 * H;
    const T* cb = c + b * H;
    const T* cpb = c_prev + b * H;
    const T* dob = dout + b * H;
    const T* dhb = dh_carry + b * H;
    const T* dinb = dc_in ? dc_in + b * H : nullptr;
    T* dcb = dc_carry + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T i_t = i_[j], f_t = f_[j], g_t = g_[j], o_t = o_[j], cp = cpb[j];
      const T dh = dob[j] + dhb[j];
      const T tanh_c = tanh_(cb[j]);
      da_o[j] = dh * tanh_c * o_t * (T(1) - o_t);
      T dc = dcb[j] + dh * o_t * (T(1) - tanh_c * tanh_c);
      if (dinb) dc += dinb[j];
      da_g[j] = dc * i_t * (T(1) - g_t * g_t);
      da_i[j] = dc * g_t * i_t * (T(1) - i_t);
      da_f[j] = dc * cp * f_t * (T(1) - f_t);
      T dc_prev = dc * f_t;
      if constexpr (DEPTH) {
        const T d_t = d_[j], cl = c_low[b * H + j];
        const T dd = dc * cl * d_t * (T(1) - d_t);
        da_d[j] = dd;
        dc_low[b * H + j] = dc * d_t + dd * w_ld[j];
        dc_prev += dd * w_cd[j];
      }
      dcb[j] = dc_prev;
    }
  }
}

template <typename T, bool DEPTH>
void backward_impl(const T* dout, const T* dc_in, const T* gates, const T* c, const T* c_prev,
                   const T* c_low, const T* W, const T* w_cd, const T* w_ld, T* dA, T* dh,
                   T* dc, T* dc_low, const Rows& rows, int64_t H) {
  constexpr int64_t G = DEPTH ? 5 : 4;
  for (auto it = rows.rbegin(); it != rows.rend(); ++it) {
    const auto [start, n] = *it;
    const int64_t r = start * H;
    pointwise_backward<T, DEPTH>(n, H, gates + start * G * H, c + r, c_prev + r,
                                 DEPTH ? c_low + r : nullptr, dout + r, dh,
                                 dc_in ? dc_in + r : nullptr, w_cd, w_ld, dc,
                                 dA + start * G * H, DEPTH ? dc_low + r : nullptr);
    gemm_aw<T>(n, H, 4 * H, dA + start * G * H, G * H, W, T(0), dh, H);  // dh = dA W_hh
  }
}

std::vector<Tensor> depth_gated_backward(Tensor dout, Tensor dh_n, Tensor dc_n,
                                         c10::optional<Tensor> dc_in, Tensor gates, Tensor c,
                                         Tensor c_prev_all, c10::optional<Tensor> c_low,
                                         Tensor w_hh, c10::optional<Tensor> w_cd,
                                         c10::optional<Tensor> w_ld,
                                         std::vector<int64_t> batch_sizes, bool reverse) {
  const int64_t H = c.size(1);
  const bool depth = c_low.has_value() && c_low->defined();
  auto W = w_hh.contiguous();
  Tensor dA = at::empty_like(gates);
  Tensor dc_low = depth ? at::empty_like(*c_low) : Tensor();
  Tensor dh_carry = dh_n.clone(), dc_carry = dc_n.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "depth_gated_backward", [&] {
    using T = scalar_t;
    auto f = depth ? backward_impl<T, true> : backward_impl<T, false>;
    f(dout.data_ptr<T>(), ptr_or_null<T>(dc_in), gates.data_ptr<T>(), c.data_ptr<T>(),
      c_prev_all.data_ptr<T>(), ptr_or_null<T>(c_low), W.data_ptr<T>(), ptr_or_null<T>(w_cd),
      ptr_or_null<T>(w_ld), dA.data_ptr<T>(), dh_carry.data_ptr<T>(), dc_carry.data_ptr<T>(),
      depth ? dc_low.data_ptr<T>() : nullptr, rows, H);
  });
  if (!depth) return {dA, dh_carry, dc_carry};
  return {dA, dh_carry, dc_carry, dc_low};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lstmkit Depth-Gated LSTM recurrences (see lstmkit/ops/fused_depth_gated.py)";
  if (sgemm_ == nullptr || dgemm_ == nullptr)
    throw std::runtime_error("lstmkit depth_gated: this torch exports no BLAS sgemm_/dgemm_");
  m.def("depth_gated_forward", &depth_gated_forward);
  m.def("depth_gated_backward", &depth_gated_backward);
}
