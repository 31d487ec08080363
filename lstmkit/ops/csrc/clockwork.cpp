// lstmkit Clockwork RNN kernels (Koutník et al. 2014): the recurrence of
// lstmkit/ops/fused_clockwork.py in C++ for the case where every row's active modules are a
// prefix (periods each dividing the next, e.g. 1, 2, 4, ...): same results as its
// clockwork_forward / clockwork_backward. ``act`` (N,) int64 gives, per flat row, the
// number of leading units updated at that row's step (its own clock); the others hold.
// Per step: one BLAS GEMM over the first a_max = max(act) units only, and one pointwise pass.
//
// Buffers are row-major and contiguous: xw/out (N, H), W_hh (H, H) already masked.

#include "common.h"

namespace {



// ---- forward --------------------------------------------------------------------------
template <typename T>
void forward_impl(T* a, const T* W, T* h, const int64_t* act, const Rows& rows, int64_t H) {
  for (auto [start, n] : rows) {
    T* a_t = a + start * H;
    const int64_t a_max = *std::max_element(act + start, act + start + n);
    gemm_awt<T>(n, a_max, H, h, H, W, T(1), a_t, H);         // a[:, :a_max] += h W[:a_max]ᵀ
    for (int64_t b = 0; b < n; ++b) {
      const int64_t active = act[start + b];
      T* ab = a_t + b * H;
#pragma omp simd
      for (int64_t j = 0; j < active; ++j) ab[j] = tanh_(ab[j]);        // updated units
      std::memcpy(ab + active, h + b * H + active, sizeof(T) * (H - active));   // held
    }
    std::memcpy(h, a_t, sizeof(T) * n * H);
  }
}

std::vector<Tensor> clockwork_forward(Tensor xw, Tensor w_hh, Tensor h0,
                                      std::vector<int64_t> batch_sizes, bool reverse,
                                      Tensor act) {
  auto W = w_hh.contiguous();
  Tensor h_carry = h0.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "clockwork_forward", [&] {
    forward_impl<scalar_t>(xw.data_ptr<scalar_t>(), W.data_ptr<scalar_t>(),
                           h_carry.data_ptr<scalar_t>(), act.data_ptr<int64_t>(), rows,
                           h0.size(1));
  });
  return {xw, h_carry};
}

// ---- backward -------------------------------------------------------------------------
// dh = dout + carried; on active units da = dh (1 − h²) and nothing is carried past the
// update; held units carry dh unchanged; then dh_{t-1} += da[:, :a_max] W_hh[:a_max].
template <typename T>
void backward_impl(const T* dout, const T* out, const T* W, T* dA, T* dh, const int64_t* act,
                   const Rows& rows, int64_t H) {
  for (auto it = rows.rbegin(); it != rows.rend(); ++it) {
    const auto [start, n] = *it;
    const int64_t a_max = *std::max_element(act + start, act + start + n);
    for (int64_t b = 0; b < n; ++b) {
      const int64_t active = act[start + b];
      const T* hb = out + (start + b) * H;
      const T* dob = dout + (start + b) * H;
      T* dab = dA + (start + b) * H;
      T* dhb = dh + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T d = dob[j] + dhb[j];
        const bool on = j < active;
        dab[j] = on ? d * (T(1) - hb[j] * hb[j]) : T(0);
        dhb[j] = on ? T(0) : d;
      }
    }
    gemm_aw<T>(n, H, a_max, dA + start * H, H, W, T(1), dh, H);
  }
}

std::vector<Tensor> clockwork_backward(Tensor dout, Tensor dh_n, Tensor out, Tensor w_hh,
                                       std::vector<int64_t> batch_sizes, bool reverse,
                                       Tensor act) {
  auto W = w_hh.contiguous();
  Tensor dA = at::empty_like(out);
  Tensor dh_carry = dh_n.clone();
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "clockwork_backward", [&] {
    backward_impl<scalar_t>(dout.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                            W.data_ptr<scalar_t>(), dA.data_ptr<scalar_t>(),
                            dh_carry.data_ptr<scalar_t>(), act.data_ptr<int64_t>(), rows,
                            dh_n.size(1));
  });
  return {dA, dh_carry};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lstmkit Clockwork RNN recurrences (see lstmkit/ops/fused_clockwork.py)";
  if (sgemm_ == nullptr || dgemm_ == nullptr)
    throw std::runtime_error("lstmkit clockwork: this torch exports no BLAS sgemm_/dgemm_");
  m.def("clockwork_forward", &clockwork_forward);
  m.def("clockwork_backward", &clockwork_backward);
}
