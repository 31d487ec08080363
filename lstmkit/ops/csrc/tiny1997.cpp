// A trainer for tiny networks of the 1997 LSTM (Hochreiter & Schmidhuber 1997, Neural
// Computation 9(8)), built as its own small extension (lstmkit/ops/extension.py, name
// "tiny1997"; Python side: lstmkit/ops/tiny1997.py, which documents the layout below).
//
// One call runs a whole sequence (or many, online): the forward over its steps in plain
// scalar loops over a small contiguous weight array (no BLAS, no allocation per step), the
// paper's truncated gradient, and — in train() — the SGD update at the sequence's end.
//
// The network: B memory blocks of S cells (C = B·S cells); each block has one input gate
// and one output gate. Sources u(t) of every hidden row (a cell's net input, a gate's net
// input) are
//     u(t) = [1, x_t (I), y^c(t-1) (C), y^in(t-1) (B), y^out(t-1) (B)]     (gate feedback)
//     u(t) = [1, x_t (I), y^c(t-1) (C)]                                    (without)
// (M = |u| sources). Rows of W, each of M weights: C cells, then B input gates, then B
// output gates; then one output row [bias, w_1..w_C] reading y^c(t) of the last step.
//     in_j = σ(W_in_j·u),  out_j = σ(W_out_j·u),  g_c = 4σ(W_c·u) - 2      (g ∈ [-2, 2])
//     s_c(t) = s_c(t-1) + in_j g_c                                          (the CEC)
//     y^c = out_j h(s_c),  h(s) = 2σ(s) - 1                                 (h ∈ [-1, 1])
//     y = σ(w_k·[1, y^c(L-1)]),  loss ½(y - target)²
//
// The truncated gradient (the paper's §4 / appendix A.1): the sources u(t) are constants
// (no error flows into y(t-1) through any weight), so the only path back in time is the
// CEC, ∂s_c(t)/∂s_c(t-1) = 1. With the error injected at the last step only, ∂L/∂s_c is
// one number δ_c for all t, and the gradients of the cell and input-gate rows are δ_c times
// the forward-accumulated sums (the paper's RTRL-style partials ∂s_c/∂w)
//     A_c  = Σ_t in_j(t) g'(net_c(t)) u(t)           (cell c's row)
//     Ag_c = Σ_t g_c(t) in_j(t)(1 - in_j(t)) u(t)      (block j's input gate, per cell)
// so nothing is stored per step. The output gate's row gets the error at the last step
// only (its paths into the future are truncated).

#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// exp for double, branch-free so that loops over it vectorise: x = k·ln2 + r with
// |r| ≤ ln2/2 (ln2 split in a high part with trailing zero bits, so k·hi is exact, and a
// low part); e^r by its Taylor series to r^13 (remainder < 5e-18 relative); 2^k put into
// the exponent bits. Accurate to a few ulp over the clamped range.
inline double exp_d(double x) {
  x = x < -700.0 ? -700.0 : x;
  x = x > 700.0 ? 700.0 : x;
  const double k = std::floor(x * 1.4426950408889634 + 0.5);
  const double r = (x - k * 0.6931471803691238) - k * 1.9082149292705877e-10;
  double p = 1.0 / 6227020800.0;                      // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const double t = k + 4503599627371519.0;            // 2^52 + 1023: k + 1023 in the low bits
  int64_t bits;
  std::memcpy(&bits, &t, sizeof bits);
  bits <<= 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline double sigm(double z) { return 1.0 / (1.0 + exp_d(-z)); }

struct Dims {
  int64_t I, B, S, C, M, rows, n_weights;
  bool feedback;
  Dims(int64_t I_, int64_t B_, int64_t S_, bool fb) : I(I_), B(B_), S(S_), feedback(fb) {
    C = B * S;
    M = 1 + I + C + (fb ? 2 * B : 0);
    rows = C + 2 * B;
    n_weights = rows * M + 1 + C;
  }
};

// The paper's network with its sizes known at compile time (full unrolling of the short
// loops); run_sequence is instantiated for it and for the runtime Dims.
template <int64_t I_, int64_t B_, int64_t S_, bool FB>
struct FixedDims {
  static constexpr int64_t I = I_, B = B_, S = S_, C = B_ * S_;
  static constexpr int64_t M = 1 + I_ + B_ * S_ + (FB ? 2 * B_ : 0);
  static constexpr int64_t rows = B_ * S_ + 2 * B_;
  static constexpr int64_t n_weights = rows * M + 1 + C;
  static constexpr bool feedback = FB;
  static bool matches(const Dims& d) {
    return d.I == I && d.B == B && d.S == S && d.feedback == FB;
  }
};
using PaperDims = FixedDims<2, 2, 2, true>;       // 2 inputs, 2 blocks of 2 cells: 93 weights

// Scratch for one sequence: sized once per call, reused for every sequence and step. The
// hidden rows' weights are copied transposed (Wt[m·rows + r]) and the accumulators kept as
// At[m·C + c], so the per-step loops run over rows and cells (contiguous, vectorisable).
struct Work {
  std::vector<double> Wt, u, net, act, s, hs, yc, in_c, out_c, a, b, At, Agt, grad;
  template <class D>
  explicit Work(const D& d)
      : Wt(d.rows * d.M), u(d.M), net(d.rows), act(d.rows), s(d.C), hs(d.C), yc(d.C),
        in_c(d.C), out_c(d.C), a(d.C), b(d.C), At(d.C * d.M), Agt(d.C * d.M),
        grad(d.n_weights) {}
};

// Forward over x[0..L) (row stride I), then the truncated gradient of ½(y - target)² into
// work.grad (when want_grad). Returns the output y at the last step.
template <class D>
double run_sequence(const D& d, const double* W, const double* x, int64_t L, double target,
                    Work& w, bool want_grad) {
  const int64_t I = d.I, B = d.B, S = d.S, C = d.C, M = d.M, R = d.rows;
  double* __restrict Wt = w.Wt.data();
  double* __restrict u = w.u.data();
  double* __restrict net = w.net.data();
  double* __restrict act = w.act.data();    // σ(net): [σ(net_c) (C), in_j (B), out_j (B)]
  double* __restrict s = w.s.data();
  double* __restrict hs = w.hs.data();
  double* __restrict yc = w.yc.data();
  double* __restrict in_c = w.in_c.data();  // each cell's block's gates
  double* __restrict out_c = w.out_c.data();
  double* __restrict a = w.a.data();
  double* __restrict b = w.b.data();
  double* __restrict At = w.At.data();
  double* __restrict Agt = w.Agt.data();
  for (int64_t r = 0; r < R; ++r)
    for (int64_t m = 0; m < M; ++m) Wt[m * R + r] = W[r * M + m];
  for (int64_t c = 0; c < C; ++c) s[c] = yc[c] = 0.0;
  for (int64_t r = 0; r < R; ++r) act[r] = 0.0;
  if (want_grad)
    for (int64_t k = 0; k < C * M; ++k) At[k] = Agt[k] = 0.0;
  u[0] = 1.0;
  for (int64_t t = 0; t < L; ++t) {
    // sources: the input now, the hidden layer's activations of the step before
    const double* xt = x + t * I;
    for (int64_t k = 0; k < I; ++k) u[1 + k] = xt[k];
    for (int64_t c = 0; c < C; ++c) u[1 + I + c] = yc[c];
    if (d.feedback)
      for (int64_t k = 0; k < 2 * B; ++k) u[1 + I + C + k] = act[C + k];
    for (int64_t r = 0; r < R; ++r) net[r] = 0.0;
    for (int64_t m = 0; m < M; ++m) {
      const double um = u[m];
      const double* wm = Wt + m * R;
      for (int64_t r = 0; r < R; ++r) net[r] += wm[r] * um;
    }
    for (int64_t r = 0; r < R; ++r) act[r] = sigm(net[r]);
    for (int64_t c = 0; c < C; ++c) {
      in_c[c] = act[C + c / S];
      out_c[c] = act[C + B + c / S];
    }
    for (int64_t c = 0; c < C; ++c) {
      const double sg = act[c];
      const double g = 4.0 * sg - 2.0;
      const double in = in_c[c];
      a[c] = in * 4.0 * sg * (1.0 - sg);      // in_j · g'(net_c)
      b[c] = g * in * (1.0 - in);               // g_c · in_j'(net_in)
      s[c] += in * g;
    }
    for (int64_t c = 0; c < C; ++c) {
      hs[c] = 2.0 * sigm(s[c]) - 1.0;
      yc[c] = out_c[c] * hs[c];
    }
    if (want_grad) {
      for (int64_t m = 0; m < M; ++m) {
        const double um = u[m];
        double* Am = At + m * C;
        double* Agm = Agt + m * C;
        for (int64_t c = 0; c < C; ++c) {
          Am[c] += a[c] * um;
          Agm[c] += b[c] * um;
        }
      }
    }
  }
  // the cells' g (for the feedback sources of a next step) are not needed past here
  const double* wk = W + R * M;
  double zk = wk[0];
  for (int64_t c = 0; c < C; ++c) zk += wk[1 + c] * yc[c];
  const double y = sigm(zk);
  if (!want_grad) return y;

  double* G = w.grad.data();
  for (int64_t k = 0; k < d.n_weights; ++k) G[k] = 0.0;
  const double dk = (y - target) * y * (1.0 - y);          // ∂L/∂net_k
  double* Gk = G + R * M;
  Gk[0] = dk;
  for (int64_t c = 0; c < C; ++c) Gk[1 + c] = dk * yc[c];
  // u still holds the last step's sources: the output gates' gradient
  for (int64_t j = 0; j < B; ++j) {
    const double out = act[C + B + j];
    double dout = 0.0;
    double* Gin = G + (C + j) * M;
    for (int64_t q = 0; q < S; ++q) {
      const int64_t c = j * S + q;
      const double dyc = dk * wk[1 + c];
      dout += dyc * hs[c];
      const double ds = dyc * out * 0.5 * (1.0 - hs[c] * hs[c]);  // δ_c = ∂L/∂s_c
      double* Gc = G + c * M;
      for (int64_t m = 0; m < M; ++m) {
        Gc[m] = ds * At[m * C + c];
        Gin[m] += ds * Agt[m * C + c];
      }
    }
    dout *= out * (1.0 - out);
    double* Gout = G + (C + B + j) * M;
    for (int64_t m = 0; m < M; ++m) Gout[m] = dout * u[m];
  }
  return y;
}

// run_sequence for the sizes of d, compiled for them when they are the paper's
double run_any(const Dims& d, const double* W, const double* x, int64_t L, double target,
               Work& w, bool want_grad) {
  if (PaperDims::matches(d)) return run_sequence(PaperDims{}, W, x, L, target, w, want_grad);
  return run_sequence(d, W, x, L, target, w, want_grad);
}

Dims check(const at::Tensor& W, int64_t I, int64_t B, int64_t S, bool fb) {
  if (I < 1 || B < 1 || S < 1)
    throw std::invalid_argument("tiny1997: input_size, blocks and block_size must be >= 1");
  Dims d(I, B, S, fb);
  if (W.scalar_type() != at::kDouble || !W.is_contiguous() || W.dim() != 1 ||
      W.numel() != d.n_weights)
    throw std::invalid_argument("tiny1997: weights must be a contiguous float64 vector of " +
                                std::to_string(d.n_weights) + " entries");
  return d;
}

void check_batch(const at::Tensor& x, const at::Tensor& lengths, const Dims& d, int64_t n) {
  if (x.scalar_type() != at::kDouble || !x.is_contiguous() || x.dim() != 3 ||
      x.size(2) != d.I || x.size(0) != n)
    throw std::invalid_argument("tiny1997: x must be contiguous float64 (N, L, input_size)");
  if (lengths.scalar_type() != at::kLong || !lengths.is_contiguous() || lengths.dim() != 1 ||
      lengths.size(0) != n)
    throw std::invalid_argument("tiny1997: lengths must be contiguous int64 (N,)");
  const int64_t* len = lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < n; ++b)
    if (len[b] < 1 || len[b] > x.size(1))
      throw std::invalid_argument("tiny1997: every length must be in [1, L]");
}

// (output y, gradient) of one sequence x (L, I); no update.
std::tuple<double, at::Tensor> grad(const at::Tensor& W, const at::Tensor& x, double target,
                                    int64_t I, int64_t B, int64_t S, bool fb) {
  Dims d = check(W, I, B, S, fb);
  if (x.scalar_type() != at::kDouble || !x.is_contiguous() || x.dim() != 2 || x.size(1) != I ||
      x.size(0) < 1)
    throw std::invalid_argument("tiny1997: x must be contiguous float64 (L >= 1, input_size)");
  Work w(d);
  const double y = run_any(d, W.data_ptr<double>(), x.data_ptr<double>(), x.size(0),
                                target, w, true);
  at::Tensor g = at::empty({d.n_weights}, at::kDouble);
  std::copy(w.grad.begin(), w.grad.end(), g.data_ptr<double>());
  return {y, g};
}

// Online training: for each sequence in turn, forward + truncated gradient + W -= lr·grad.
// outputs[b] is y before sequence b's update. Stops after the sequence at which `streak`
// (consecutive sequences with |y - target| < tol, carried in and out) reaches stop_streak
// (stop_streak <= 0: never). Returns (sequences trained, streak).
std::tuple<int64_t, int64_t> train(at::Tensor W, const at::Tensor& x, const at::Tensor& lengths,
                                   const at::Tensor& targets, at::Tensor outputs, double lr,
                                   int64_t I, int64_t B, int64_t S, bool fb, int64_t streak,
                                   int64_t stop_streak, double tol) {
  Dims d = check(W, I, B, S, fb);
  const int64_t n = x.size(0);
  check_batch(x, lengths, d, n);
  if (targets.scalar_type() != at::kDouble || !targets.is_contiguous() || targets.numel() != n ||
      outputs.scalar_type() != at::kDouble || !outputs.is_contiguous() || outputs.numel() != n)
    throw std::invalid_argument("tiny1997: targets and outputs must be contiguous float64 (N,)");
  Work w(d);
  double* Wp = W.data_ptr<double>();
  const double* xp = x.data_ptr<double>();
  const int64_t* len = lengths.data_ptr<int64_t>();
  const double* tp = targets.data_ptr<double>();
  double* op = outputs.data_ptr<double>();
  const int64_t stride = x.size(1) * I;
  int64_t b = 0;
  {
    pybind11::gil_scoped_release nogil;
    for (; b < n; ++b) {
      const double y = run_any(d, Wp, xp + b * stride, len[b], tp[b], w, true);
      op[b] = y;
      streak = std::abs(y - tp[b]) < tol ? streak + 1 : 0;
      const double* G = w.grad.data();
      for (int64_t k = 0; k < d.n_weights; ++k) Wp[k] -= lr * G[k];
      if (stop_streak > 0 && streak >= stop_streak) {
        ++b;
        break;
      }
    }
  }
  return {b, streak};
}

// Outputs of a batch (no gradient, no update).
at::Tensor predict(const at::Tensor& W, const at::Tensor& x, const at::Tensor& lengths,
                   int64_t I, int64_t B, int64_t S, bool fb) {
  Dims d = check(W, I, B, S, fb);
  const int64_t n = x.size(0);
  check_batch(x, lengths, d, n);
  at::Tensor out = at::empty({n}, at::kDouble);
  Work w(d);
  const double* Wp = W.data_ptr<double>();
  const double* xp = x.data_ptr<double>();
  const int64_t* len = lengths.data_ptr<int64_t>();
  double* op = out.data_ptr<double>();
  const int64_t stride = x.size(1) * I;
  {
    pybind11::gil_scoped_release nogil;
    for (int64_t b = 0; b < n; ++b)
      op[b] = run_any(d, Wp, xp + b * stride, len[b], 0.0, w, false);
  }
  return out;
}

int64_t n_weights(int64_t I, int64_t B, int64_t S, bool fb) { return Dims(I, B, S, fb).n_weights; }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lstmkit's trainer for tiny 1997 LSTM networks (see lstmkit/ops/tiny1997.py)";
  m.def("grad", &grad);
  m.def("train", &train);
  m.def("predict", &predict);
  m.def("n_weights", &n_weights);
}
