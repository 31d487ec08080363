// lstmkit's C++ kernels: the one time loop (engine.h) and every cell family
// (cells/<family>.h, listed in the generated cells.inc, each registering itself), bound to
// Python as `forward` and `backward` with the signature of lstmkit/ops/loops.py (through
// lstmkit/ops/extension.py's CppKernels: the family by name and options, absent tensors as
// empty ones).

#include <ATen/MemoryOverlap.h>

#include <chrono>

#include "engine.h"

#include "cells.inc"
#include "minrnn.h"
#include "philox.h"

namespace {

template <typename T>
const T* ptr(const Tensor& t) {
  return t.numel() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
T* mut(const Tensor& t) {
  return t.numel() ? t.data_ptr<T>() : nullptr;
}

// The family's loop for this dtype.
void run(const CellEntry& c, Layer<float>& L, const Rows& rows, bool forward) {
  (forward ? c.forward_f : c.backward_f)(L, rows);
}
void run(const CellEntry& c, Layer<double>& L, const Rows& rows, bool forward) {
  (forward ? c.forward_d : c.backward_d)(L, rows);
}

const CellEntry& entry(const std::string& family) {
  auto it = cell_registry().find(family);
  TORCH_CHECK(it != cell_registry().end(), "lstmkit engine: no C++ cell family '", family,
              "' (is csrc/cells/", family, ".h registered?)");
  return it->second;
}

void check(const Tensor& t, const Tensor& like, const char* what) {
  TORCH_CHECK(!t.numel() || (t.is_contiguous() && t.scalar_type() == like.scalar_type()),
              "lstmkit engine: ", what, " must be contiguous and of the input's dtype");
}

// The parts of Layer that forward and backward fill alike.
template <typename T>
void common(Layer<T>& L, int64_t H, const std::vector<double>& opts, const Tensor& w_hr,
            const std::vector<Tensor>& w, const std::vector<Tensor>& saved,
            const std::vector<Tensor>& side, const Tensor& h_drop,
            const std::vector<Tensor>& zones, const std::vector<Tensor>& carry) {
  L.B = carry[0].size(0);
  L.H = H;
  L.R = carry[0].size(1);
  L.n_states = static_cast<int>(carry.size());
  TORCH_CHECK(L.n_states <= kMaxStates, "lstmkit engine: at most ", kMaxStates, " states");
  for (int k = 0; k < L.n_states; ++k) {
    L.width[k] = carry[k].size(1);
    L.zone[k] = k < static_cast<int>(zones.size()) ? ptr<T>(zones[k]) : nullptr;
  }
  L.opts = opts;
  for (const auto& t : w) {
    check(t, carry[0], "a loop weight");
    L.w.push_back(ptr<T>(t));
  }
  for (const auto& t : saved) L.saved.push_back(mut<T>(t));
  for (const auto& t : side) {
    TORCH_CHECK(t.is_contiguous(), "lstmkit engine: side inputs must be contiguous");
    L.side.push_back(t.data_ptr());
  }
  L.w_hr = ptr<T>(w_hr);
  L.h_drop = ptr<T>(h_drop);
}

void forward(const std::string& family, int64_t H, std::vector<double> opts, Tensor a,
             std::vector<Tensor> seqs, std::vector<Tensor> carry, Tensor m, Tensor w_hr,
             std::vector<Tensor> w, std::vector<Tensor> saved, std::vector<Tensor> side,
             Tensor h_drop, std::vector<Tensor> zones, std::vector<int64_t> batch_sizes,
             bool reverse) {
  const CellEntry& cell = entry(family);
  check(a, a, "a");
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "lstmkit_forward", [&] {
    Layer<scalar_t> L;
    common(L, H, opts, w_hr, w, saved, side, h_drop, zones, carry);
    L.N = a.size(0);
    L.A = a.size(1);
    L.a = a.data_ptr<scalar_t>();
    for (int k = 0; k < L.n_states; ++k) {
      check(seqs[k], a, "a state sequence");
      L.seq[k] = seqs[k].data_ptr<scalar_t>();
      L.carry[k] = carry[k].data_ptr<scalar_t>();
    }
    L.m = mut<scalar_t>(m);
    run(cell, L, rows, true);
  });
}

// Forward of one layer and direction when no gradient is wanted: the loop projects x
// (N, I) a block of steps at a time into `a` (its rows: the block's size, at least a step's
// rows), just before it reaches them, instead of the whole layer into (N, A) at once; only
// the first state's sequence is kept (into out, (N, R)), the others and m only for the step.
// No masks, no side inputs, no per-row buffers: the families that allow it say so
// (FusedCell.blocked_inference).
void forward_inference(const std::string& family, int64_t H, std::vector<double> opts,
                       Tensor x, Tensor w_ih, Tensor bias, Tensor a, Tensor out,
                       std::vector<Tensor> carry, Tensor w_hr, std::vector<Tensor> w,
                       std::vector<int64_t> batch_sizes, bool reverse) {
  const CellEntry& cell = entry(family);
  check(x, x, "x");
  check(w_ih, x, "W_ih");
  check(bias, x, "the bias");
  check(a, x, "a");
  check(out, x, "the output");
  TORCH_CHECK(x.dim() == 2 && w_ih.dim() == 2 && a.dim() == 2 && out.dim() == 2 &&
                  w_ih.size(1) == x.size(1) && a.size(1) == w_ih.size(0) &&
                  out.size(0) == x.size(0) && (!bias.numel() || bias.numel() == a.size(1)),
              "lstmkit forward_inference: shapes x ", x.sizes(), ", W_ih ", w_ih.sizes(),
              ", bias ", bias.sizes(), ", a ", a.sizes(), ", out ", out.sizes());
  int64_t rows_total = 0, widest = 0;
  for (int64_t b : batch_sizes) {
    rows_total += b;
    widest = std::max(widest, b);
  }
  TORCH_CHECK(rows_total == x.size(0) && a.size(0) >= widest,
              "lstmkit forward_inference: ", x.size(0), " rows of x for batch sizes summing to ",
              rows_total, "; a must hold a step's ", widest, " rows, has ", a.size(0));
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstmkit_forward_inference", [&] {
    Layer<scalar_t> L;
    common(L, H, opts, w_hr, w, {}, {}, Tensor(), {}, carry);
    L.N = x.size(0);
    L.A = a.size(1);
    L.a = a.data_ptr<scalar_t>();
    L.a_rows = a.size(0);
    L.x = x.data_ptr<scalar_t>();
    L.I = x.size(1);
    L.w_ih = w_ih.data_ptr<scalar_t>();
    L.bias = ptr<scalar_t>(bias);
    for (int k = 0; k < L.n_states; ++k) {
      check(carry[k], x, "a state");
      L.carry[k] = carry[k].data_ptr<scalar_t>();
    }
    TORCH_CHECK(out.size(1) == L.R, "lstmkit forward_inference: out must be (N, ", L.R, ")");
    L.seq[0] = out.data_ptr<scalar_t>();
    run(cell, L, rows, true);
  });
}

void backward(const std::string& family, int64_t H, std::vector<double> opts, Tensor dA,
              Tensor gates, std::vector<Tensor> seqs, std::vector<Tensor> prev,
              std::vector<Tensor> dseqs, std::vector<Tensor> dcarry, Tensor w_hr, Tensor dH,
              std::vector<Tensor> w, std::vector<Tensor> grads, std::vector<Tensor> saved,
              std::vector<Tensor> side, Tensor h_drop, std::vector<Tensor> zones,
              std::vector<int64_t> batch_sizes, bool reverse) {
  const CellEntry& cell = entry(family);
  const Rows rows = step_rows(batch_sizes, reverse);
  AT_DISPATCH_FLOATING_TYPES(dA.scalar_type(), "lstmkit_backward", [&] {
    Layer<scalar_t> L;
    common(L, H, opts, w_hr, w, saved, side, h_drop, zones, dcarry);
    L.N = dA.size(0);
    L.A = dA.size(1);
    L.dA = dA.data_ptr<scalar_t>();
    L.gates = gates.data_ptr<scalar_t>();
    for (int k = 0; k < L.n_states; ++k) {
      L.seq[k] = seqs[k].data_ptr<scalar_t>();
      L.prev[k] = prev[k].data_ptr<scalar_t>();
      L.dseq[k] = ptr<scalar_t>(dseqs[k]);
      L.dcarry[k] = dcarry[k].data_ptr<scalar_t>();
    }
    for (const auto& t : grads) L.grads.push_back(mut<scalar_t>(t));
    L.dH = mut<scalar_t>(dH);
    run(cell, L, rows, false);
  });
}

// out (=, or += with accumulate) a @ b for float32 CPU matrices, through big_gemm
// (common.h): a and b may be transposed views (one of their strides 1), out has unit column
// stride. lstmkit/ops/gemm.py calls it for a layer's large GEMMs.
void mm_into(Tensor out, Tensor a, Tensor b, bool accumulate) {
  TORCH_CHECK(out.dim() == 2 && a.dim() == 2 && b.dim() == 2, "lstmkit mm_into: 2-d tensors");
  TORCH_CHECK(out.scalar_type() == at::kFloat && a.scalar_type() == at::kFloat &&
                  b.scalar_type() == at::kFloat,
              "lstmkit mm_into: float32 tensors");
  TORCH_CHECK(out.device().is_cpu() && a.device().is_cpu() && b.device().is_cpu(),
              "lstmkit mm_into: CPU tensors");
  TORCH_CHECK(a.size(1) == b.size(0) && out.size(0) == a.size(0) && out.size(1) == b.size(1),
              "lstmkit mm_into: shapes ", a.sizes(), " @ ", b.sizes(), " into ", out.sizes());
  // out is written: it must not overlap itself (an expanded bias) or a and b
  TORCH_CHECK(at::has_internal_overlap(out) != at::MemOverlap::Yes,
              "lstmkit mm_into: out overlaps itself (an expanded tensor)");
  at::assert_no_overlap(out, a);
  at::assert_no_overlap(out, b);
  TORCH_CHECK(out.size(1) <= 1 || out.stride(1) == 1, "lstmkit mm_into: out's rows must be dense");
  auto unit = [](const Tensor& t) { return t.size(1) <= 1 || t.stride(1) == 1 || t.size(0) <= 1 ||
                                           t.stride(0) == 1; };
  TORCH_CHECK(unit(a) && unit(b), "lstmkit mm_into: a and b must be row- or column-major");
  big_gemm(a.size(0), b.size(1), a.size(1), a.data_ptr<float>(), a.stride(0), a.stride(1),
           b.data_ptr<float>(), b.stride(0), b.stride(1), accumulate, out.data_ptr<float>(),
           out.size(0) > 1 ? out.stride(0) : out.size(1));
}

// The routes of the per-step GEMMs (common.h's g_step_route), one per size class (tiny,
// small, large), true = brgemm, false = MKL. lstmkit/ops/gemm.py sets them before every
// layer call, from LSTMKIT_GEMM or its measurements (gemm_probe).
void set_gemm_routes(const std::vector<bool>& brgemm) {
  TORCH_CHECK(brgemm.size() == kStepClasses, "lstmkit set_gemm_routes: one route per size "
              "class (", kStepClasses, "), got ", brgemm.size());
  for (int c = 0; c < kStepClasses; ++c)
    g_step_route[c].store(brgemm[c] ? 1 : 0, std::memory_order_relaxed);
}

std::vector<bool> gemm_routes() {
  std::vector<bool> brgemm;
  for (int c = 0; c < kStepClasses; ++c)
    brgemm.push_back(g_step_route[c].load(std::memory_order_relaxed) != 0);
  return brgemm;
}

// Seconds per call of the per-step product C (m×n) = C + A (m×k)·op(W) as a layer's loop runs
// it (WeightGemm, op(W) = Wᵀ with W (n×k) when `transposed`), on brgemm or on MKL: `reps`
// calls after one untimed call (which lays W out and generates the kernel); a product that
// a row-parallel step runs in parts of rows (runs_in_parts: step_class 3) is run so, one
// part per thread, each single-threaded. panel_floats: brgemm's panel size (0: the loop's,
// kPanelFloats).
double gemm_probe(bool brgemm, int64_t m, int64_t n, int64_t k, bool transposed, int64_t reps,
                  int64_t panel_floats) {
  TORCH_CHECK(m > 0 && n > 0 && k > 0 && reps > 0, "lstmkit gemm_probe: m, n, k and reps must "
              "be positive, got ", m, ", ", n, ", ", k, ", ", reps);
  std::vector<float> a(m * k), w(n * k), c(m * n, 0.0f);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(int(i * 7 % 13) - 6) * 0.01f;
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(int(i * 5 % 11) - 5) * 0.01f;
  TORCH_CHECK(panel_floats >= 0, "lstmkit gemm_probe: panel_floats must be >= 0");
  const WeightGemm<float> gemm(w.data(), transposed, m, n, k, 0, brgemm ? 1 : 0,
                               panel_floats ? panel_floats : kPanelFloats);
  gemm(m, a.data(), k, 1.0f, c.data(), n);
  const auto t0 = std::chrono::steady_clock::now();
  steps_in_parts(0, static_cast<size_t>(reps), m, row_parts(true, m, n, k),
                 [&](size_t, int64_t r0, int64_t r1) {
                   gemm(r1 - r0, a.data() + r0 * k, k, 1.0f, c.data() + r0 * n, n);
                 });
  const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
  return dt.count() / static_cast<double>(reps);
}

std::vector<std::string> families() {
  std::vector<std::string> names;
  for (const auto& [name, _] : cell_registry()) names.push_back(name);
  return names;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lstmkit's time loop for every cell family (see lstmkit/ops/loops.py)";
  if (sgemm_ == nullptr || dgemm_ == nullptr)
    throw std::runtime_error("lstmkit kernels: this torch exports no BLAS sgemm_/dgemm_");
  m.def("forward", &forward);
  m.def("forward_inference", &forward_inference);
  m.def("backward", &backward);
  m.def("families", &families);
  m.def("mm_into", &mm_into);
  m.def("bernoulli_mask", &bernoulli_mask);
  m.def("philox_words", &philox_words);
  m.def("keep_weight_layouts", &keep_weight_layouts,
        "true: from now on this thread keeps the weight layouts it prepares and reuses them "
        "(the chunks of one backward); false: ends that (the outermost end frees them)");
  m.def("kept_weight_layouts", [] { return static_cast<int64_t>(g_kept_layouts.size()); },
        "how many weight layouts this thread keeps now (0 outside a keep_weight_layouts "
        "scope)");
  m.def("set_gemm_routes", &set_gemm_routes);
  m.def("gemm_routes", &gemm_routes);
  m.def("gemm_probe", &gemm_probe, py::arg("brgemm"), py::arg("m"), py::arg("n"), py::arg("k"),
        py::arg("transposed"), py::arg("reps"), py::arg("panel_floats") = 0);
  m.def("step_class", [](int64_t m, int64_t n, int64_t k) { return step_class(m, n, k); });
  m.def("minrnn_forward", &minrnn_forward);
  m.def("minrnn_backward", &minrnn_backward);
}
