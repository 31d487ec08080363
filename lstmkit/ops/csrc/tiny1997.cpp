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
#include <stdexcept>
#include <string>
#include <vector>

namespace {

inline double sigm(double z) { return 1.0 / (1.0 + std::exp(-z)); }

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

// Scratch for one sequence: sized once per call, reused for every sequence and step.
struct Work {
  std::vector<double> u, net, act, s, yc, A, Ag, grad;
  explicit Work(const Dims& d)
      : u(d.M), net(d.rows), act(d.rows), s(d.C), yc(d.C), A(d.C * d.M), Ag(d.C * d.M),
        grad(d.n_weights) {}
};

// Forward over x[0..L) (row stride I), then the truncated gradient of ½(y - target)² into
// work.grad (when want_grad). Returns the output y at the last step.
double run_sequence(const Dims& d, const double* W, const double* x, int64_t L, double target,
                    Work& w, bool want_grad) {
  const int64_t I = d.I, B = d.B, S = d.S, C = d.C, M = d.M;
  double* u = w.u.data();
  double* net = w.net.data();
  double* act = w.act.data();      // [g_c (C), in_j (B), out_j (B)]
  double* s = w.s.data();
  double* yc = w.yc.data();
  double* A = w.A.data();
  double* Ag = w.Ag.data();
  for (int64_t c = 0; c < C; ++c) s[c] = yc[c] = 0.0;
  for (int64_t r = 0; r < d.rows; ++r) act[r] = 0.0;
  if (want_grad)
    for (int64_t k = 0; k < C * M; ++k) A[k] = Ag[k] = 0.0;
  u[0] = 1.0;
  for (int64_t t = 0; t < L; ++t) {
    // sources: the input now, the hidden layer's activations of the step before
    const double* xt = x + t * I;
    for (int64_t k = 0; k < I; ++k) u[1 + k] = xt[k];
    for (int64_t c = 0; c < C; ++c) u[1 + I + c] = yc[c];
    if (d.feedback)
      for (int64_t k = 0; k < 2 * B; ++k) u[1 + I + C + k] = act[C + k];
    for (int64_t r = 0; r < d.rows; ++r) {
      const double* wr = W + r * M;
      double z = 0.0;
      for (int64_t m = 0; m < M; ++m) z += wr[m] * u[m];
      net[r] = z;
    }
    for (int64_t j = 0; j < B; ++j) {
      const double in = sigm(net[C + j]);
      const double out = sigm(net[C + B + j]);
      act[C + j] = in;
      act[C + B + j] = out;
      for (int64_t q = 0; q < S; ++q) {
        const int64_t c = j * S + q;
        const double sg = sigm(net[c]);
        const double g = 4.0 * sg - 2.0;
        act[c] = g;
        s[c] += in * g;
        yc[c] = out * (2.0 * sigm(s[c]) - 1.0);
        if (want_grad) {
          const double a = in * 4.0 * sg * (1.0 - sg);     // in_j · g'(net_c)
          const double b = g * in * (1.0 - in);              // g_c · in_j'(net_in)
          double* Ac = A + c * M;
          double* Agc = Ag + c * M;
          for (int64_t m = 0; m < M; ++m) {
            Ac[m] += a * u[m];
            Agc[m] += b * u[m];
          }
        }
      }
    }
  }
  const double* wk = W + d.rows * M;
  double zk = wk[0];
  for (int64_t c = 0; c < C; ++c) zk += wk[1 + c] * yc[c];
  const double y = sigm(zk);
  if (!want_grad) return y;

  double* G = w.grad.data();
  for (int64_t k = 0; k < d.n_weights; ++k) G[k] = 0.0;
  const double dk = (y - target) * y * (1.0 - y);          // ∂L/∂net_k
  double* Gk = G + d.rows * M;
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
      const double hs = 2.0 * sigm(s[c]) - 1.0;
      dout += dyc * hs;
      const double ds = dyc * out * 0.5 * (1.0 - hs * hs);  // δ_c = ∂L/∂s_c (h' = (1-h²)/2)
      double* Gc = G + c * M;
      const double* Ac = A + c * M;
      const double* Agc = Ag + c * M;
      for (int64_t m = 0; m < M; ++m) {
        Gc[m] = ds * Ac[m];
        Gin[m] += ds * Agc[m];
      }
    }
    dout *= out * (1.0 - out);
    double* Gout = G + (C + B + j) * M;
    for (int64_t m = 0; m < M; ++m) Gout[m] = dout * u[m];
  }
  return y;
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
  const double y = run_sequence(d, W.data_ptr<double>(), x.data_ptr<double>(), x.size(0),
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
      const double y = run_sequence(d, Wp, xp + b * stride, len[b], tp[b], w, true);
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
      op[b] = run_sequence(d, Wp, xp + b * stride, len[b], 0.0, w, false);
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
