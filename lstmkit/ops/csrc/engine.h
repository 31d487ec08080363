// The one time loop of lstmkit's C++ kernels, for every cell family.
//
// The same loop as lstmkit/ops/loops.py (read its docstring for the conventions: flat rows,
// carries, masks, zoneout, the projection): `run_forward` and `run_backward` walk the steps,
// handle recurrent dropout, zoneout, the projection h = m W_hrᵀ and the carries, and call the
// family's step functor for what is particular to it. A family is a class template
// `Cell<T>` (csrc/cells/<family>.h, the C++ twin of the family's FusedCell in
// lstmkit/cells/<family>.py) with
//
//   explicit Cell(const Layer<T>& L);        // once per call: options, weights, scratch
//   void forward(FwdStep<T>& s);             // one step: a → activations, next states
//   void backward(BwdStep<T>& s);            // one step of BPTT
//   static constexpr bool kDirectH;          // does h_{t-1} reach the step other than
//                                            // through the recurrent weights (GRU: z ⊙ h)?
//   bool row_parallel() const;               // optional, see below
//   void finish();                           // optional: after the last backward step
//
// registered by LSTMKIT_REGISTER_CELL(name, Cell) at the end of its header. Buffers are
// row-major and contiguous; a step's pointers point at its first row. No allocation inside
// the time loop.
//
// A step's rows (sequences) are independent, so with several threads the loop can cut a
// step into parts of rows and run them at once, each doing its rows' recurrent GEMMs and
// pointwise work (the GEMM alone split by columns leaves the pointwise work on one thread:
// a third of the step at (150,64,256)). While the steps keep the same rows (padded input;
// in inference, within a block of projected steps) a part is the same sequences at every
// step, so each thread runs its part through all those steps with one fork and join for the
// run, not one per step (steps_in_parts). A cell allows it
// by `row_parallel()` returning true, which promises that forward(s) and backward(s) touch
// only the rows [s.start, s.start + s.n) of per-row buffers and the rows [s.row, s.row +
// s.n) of its own per-batch scratch, and that every step calls the same WeightGemms (the
// first step runs whole, on one thread, and lays them out).

#pragma once

#include <map>
#include <string>
#include <utility>

#include "common.h"

namespace {

constexpr int kMaxStates = 4;                       // sLSTM: h, c, n, m

// One layer and direction (forward), or one backward chunk of it: raw pointers to every
// buffer, as the Python side allocated them (lstmkit/ops/fused.py). Row counts: N rows of
// the flat layout (of the chunk, in backward), B sequences.
template <typename T>
struct Layer {
  int64_t N = 0, B = 0;
  int64_t H = 0;                       // hidden size
  int64_t R = 0;                       // width of h (H, or P with a projection)
  int64_t A = 0;                       // width of a (G·H)
  int n_states = 0;
  int64_t width[kMaxStates] = {};      // of each state
  std::vector<double> opts;            // the family's options (FusedCell.cpp_options)
  std::vector<const T*> w;             // the family's loop weights (null where absent)
  std::vector<T*> saved;               // the family's per-row buffers (N, ·)
  std::vector<T*> grads;               // backward: the family's gradient buffers (per row,
                                       //   then its sum buffers: FusedCell.sum_buffers)
  std::vector<const void*> side;       // per-row side inputs (N, ·), typed by the family
  const T* w_hr = nullptr;             // (R, H) projection, or null
  const T* h_drop = nullptr;           // (B, R) recurrent dropout mask, or null
  const T* zone[kMaxStates] = {};      // (N, width) zoneout weights, or null
  // forward
  T* a = nullptr;                      // (N, A) input projection in, activations out
  T* seq[kMaxStates] = {};             // (N, width) every step's states (backward: read)
  T* carry[kMaxStates] = {};           // (B, width) initial in, final out
  T* m = nullptr;                      // (N, H) cell output before the projection, or null
  // forward for inference (forward_inference in engine.cpp; x set): a holds a_rows rows, the
  // projections of a block of steps at a time, made by the loop just before it reaches them;
  // a state whose seq is null and m are kept only for the step (per-batch scratch)
  const T* x = nullptr;                // (N, I) the layer's input, or null
  const T* w_ih = nullptr;             // (A, I)
  const T* bias = nullptr;             // (A) b_ih + b_hh, or null
  int64_t I = 0, a_rows = 0;
  // backward
  const T* gates = nullptr;            // (N, A) what the forward left in a
  T* dA = nullptr;                     // (N, A) ∂L/∂a
  const T* prev[kMaxStates] = {};      // (N, width) the state each row started from
  const T* dseq[kMaxStates] = {};      // (N, width) ∂L/∂ of the state sequence, or null
  T* dcarry[kMaxStates] = {};          // (B, width) carried state gradients
  T* dH = nullptr;                     // (N, R) ∂L/∂h_t with a projection
};

template <typename T>
struct FwdStep {
  int64_t start = 0, n = 0;            // first row, active rows (of this part of the step)
  int64_t row = 0;                     // the part's first row within the step (0 if whole)
  T* a = nullptr;                      // (n, A)
  const T* h_in = nullptr;             // (n, R) ĥ_{t-1}: the recurrent GEMMs' input
  const T* prev[kMaxStates] = {};      // (n, width) states before the step
  T* next[kMaxStates] = {};            // (n, width) states after; next[0] is m (ld H) when
  int64_t ld0 = 0;                     //   projecting: its row stride is ld0
};

template <typename T>
struct BwdStep {
  int64_t start = 0, n = 0;
  int64_t row = 0;                     // as FwdStep::row
  const T* gates = nullptr;            // (n, A)
  T* dA = nullptr;                     // (n, A) out
  const T* h_in = nullptr;             // (n, R) ĥ_{t-1}
  const T* prev[kMaxStates] = {};      // (n, width) states before the step
  const T* next[kMaxStates] = {};      // (n, width) states after, as stored (zoned; h
                                       //   projected)
  bool zoned[kMaxStates] = {};
  const T* dnext[kMaxStates] = {};     // (n, width) ∂L/∂ of the candidate new states;
  int64_t ld0 = 0;                     //   dnext[0] is ∂L/∂m (row stride ld0) projecting
  T* dprev[kMaxStates] = {};           // out: k ≥ 1 always; k = 0 iff kDirectH
  T* dh_in = nullptr;                  // out: ∂L/∂ĥ_{t-1}, accumulated; the first write
  T beta0 = T(0);                      //   into it uses beta0 as its GEMM beta
};

// ---- the loop ------------------------------------------------------------------------------
// Does `Cell` allow a step's rows to run in parts at once (see the top of this file)?
template <typename C, typename = void>
struct HasRowParallel : std::false_type {};
template <typename C>
struct HasRowParallel<C, std::void_t<decltype(std::declval<const C&>().row_parallel())>>
    : std::true_type {};
template <typename C>
bool row_parallel(const C& cell) {
  if constexpr (HasRowParallel<C>::value) return cell.row_parallel();
  else return false;
}

// Calls `cell.finish()` if the cell has one (e.g. to add per-thread sums into a sum buffer).
template <typename C, typename = void>
struct HasFinish : std::false_type {};
template <typename C>
struct HasFinish<C, std::void_t<decltype(std::declval<C&>().finish())>> : std::true_type {};
template <typename C>
void finish(C& cell) {
  if constexpr (HasFinish<C>::value) cell.finish();
}

// Into how many parts of rows a step of n rows is cut: one per thread when the cell allows
// it, the step's recurrent product (n·A·R multiply-adds, A = G·H gate columns) is one the
// GEMM would share out over the threads anyway (step_parts), every thread's part has at
// least 4 rows (else the panels are shared out instead: with more threads than parts the
// rest would idle), and W_hh (A × R) is at most kRowSplitWeights floats: every part reads all of W_hh, so
// beyond the caches' reach two parts stream it twice. Measured on an AVX2 EPYC, 2 threads,
// against the GEMM split by columns: LSTM (150,64,256) (W_hh 1 MB) f+b 0.91×, GRU 0.89×,
// forward only 0.83–0.97×, LSTM (100,16,128) forward 0.86×; LSTM (25,64,512) (4 MB) f+b
// 1.07× — hence the bound (kRowSplitWeights, in common.h: the GEMM routes' step_class
// knows which products run in parts).
inline int64_t row_parts(bool allowed, int64_t n, int64_t A, int64_t R) {
  return allowed && runs_in_parts(n, A, R) ? at::get_num_threads() : 1;
}

// Runs step(i, r0, r1) for the steps i in [i0, i1), all of the same n rows, in `parts`
// parts of rows at once when parts > 1. A part's rows are the same sequences at every step
// of the run and a row-parallel step touches only its own rows, so each thread runs its
// part through all the run's steps with no fork and join in between: one per run of steps,
// not one per step (the join's wait, the slower part's time at each step, was 10-20 % of
// a step at (100,16,128) and (150,64,256)).
template <typename F>
void steps_in_parts(size_t i0, size_t i1, int64_t n, int64_t parts, const F& step) {
  if (parts <= 1) {
    for (size_t i = i0; i < i1; ++i) step(i, int64_t(0), n);
    return;
  }
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (size_t i = i0; i < i1; ++i) step(i, p * n / parts, (p + 1) * n / parts);
  });
}

// The first `count` rows of a = x[lo, lo + count) W_ihᵀ + b (forward_inference).
template <typename T>
void project_block(const Layer<T>& L, const WeightGemm<T>& input, int64_t lo, int64_t count) {
  if (L.bias)
    for (int64_t r = 0; r < count; ++r) std::memcpy(L.a + r * L.A, L.bias, sizeof(T) * L.A);
  input(count, L.x + lo * L.I, L.I, L.bias ? T(1) : T(0), L.a, L.A);
}

template <typename T, typename Cell>
void run_forward(Layer<T>& L, const Rows& rows) {
  Cell cell(L);
  const int64_t B = L.B, H = L.H, R = L.R;
  std::vector<T> h_in(L.h_drop ? B * R : 0);
  const WeightGemm<T> projection(L.w_hr, true, L.w_hr ? B : 0, R, H);    // · W_hrᵀ
  // inference: a block of steps' input projections at a time; unkept states per step
  const WeightGemm<T> input(L.x ? L.w_ih : nullptr, true, L.x ? L.a_rows : 0, L.A, L.I, 0, -1,
                            kPanelFloats, /*whole=*/true);
  std::vector<T> unkept[kMaxStates];
  for (int k = 0; k < L.n_states; ++k)
    if (!L.seq[k]) unkept[k].resize(B * L.width[k]);
  std::vector<T> m_step(L.w_hr && !L.m ? B * H : 0);
  int64_t a_lo = 0, a_hi = L.x ? 0 : L.N;          // the rows a holds now: [a_lo, a_hi)
  const bool parallel = row_parallel(cell);
  // rows [r0, r1) of step i
  auto step = [&](size_t i, int64_t r0, int64_t r1) {
    const int64_t start = rows[i].first;
    const int64_t m = r1 - r0, row = start + r0;
    FwdStep<T> s;
    s.start = row;
    s.n = m;
    s.row = r0;
    s.a = L.a + (row - a_lo) * L.A;
    s.h_in = L.carry[0] + r0 * R;
    if (L.h_drop) {                                                    // ĥ = m ⊙ h_{t-1}
      mul_into(m * R, L.carry[0] + r0 * R, L.h_drop + r0 * R, h_in.data() + r0 * R);
      s.h_in = h_in.data() + r0 * R;
    }
    T* next[kMaxStates];
    for (int k = 0; k < L.n_states; ++k) {
      const int64_t w = L.width[k];
      s.prev[k] = L.carry[k] + r0 * w;
      next[k] = L.seq[k] ? L.seq[k] + row * w : unkept[k].data() + r0 * w;
      s.next[k] = next[k];
    }
    s.ld0 = R;
    T* m_out = L.m ? L.m + row * H : m_step.data() + r0 * H;
    if (L.w_hr) {
      s.next[0] = m_out;
      s.ld0 = H;
    }
    cell.forward(s);
    if (L.w_hr) projection(m, m_out, H, T(0), next[0], R);                   // h = m W_hrᵀ
    for (int k = 0; k < L.n_states; ++k) {
      const int64_t w = L.width[k];
      T* new_k = next[k];
      T* carry_k = L.carry[k] + r0 * w;
      if (L.zone[k]) zone_mix(m * w, L.zone[k] + row * w, carry_k, new_k);     // zoneout
      std::memcpy(carry_k, new_k, sizeof(T) * m * w);
    }
  };
  bool first = true;
  for (size_t i = 0; i < rows.size();) {
    const auto [start, n] = rows[i];
    if (start < a_lo || start + n > a_hi) {       // inference: project the next steps
      int64_t lo = start, hi = start + n;
      for (size_t j = i + 1; j < rows.size(); ++j) {
        const int64_t lo2 = std::min(lo, rows[j].first);
        const int64_t hi2 = std::max(hi, rows[j].first + rows[j].second);
        if (hi2 - lo2 > L.a_rows) break;
        lo = lo2;
        hi = hi2;
      }
      TORCH_CHECK(hi - lo <= L.a_rows, "lstmkit engine: a step of ", n, " rows does not fit "
                  "the inference block of ", L.a_rows, " rows");
      project_block(L, input, lo, hi - lo);
      a_lo = lo;
      a_hi = hi;
    }
    // the first step runs whole (it lays out the WeightGemms); then runs of steps of the
    // same rows within the projected block
    const int64_t parts = first ? 1 : row_parts(parallel, n, L.A, R);
    size_t end = i + 1;
    if (parts > 1)
      while (end < rows.size() && rows[end].second == n && rows[end].first >= a_lo &&
             rows[end].first + n <= a_hi)
        ++end;
    steps_in_parts(i, end, n, parts, step);
    first = false;
    i = end;
  }
}

template <typename T, typename Cell>
void run_backward(Layer<T>& L, const Rows& rows) {
  Cell cell(L);
  const int64_t B = L.B, H = L.H, R = L.R;
  std::vector<T> dnext[kMaxStates], direct[kMaxStates];
  for (int k = 0; k < L.n_states; ++k) {
    dnext[k].resize(B * L.width[k]);
    if (L.zone[k]) direct[k].resize(B * L.width[k]);
  }
  std::vector<T> dm(L.w_hr ? B * H : 0), h_in(L.h_drop ? B * R : 0),
      dh_in(L.h_drop ? B * R : 0);
  const WeightGemm<T> projection(L.w_hr, false, L.w_hr ? B : 0, H, R);   // · W_hr
  const bool parallel = row_parallel(cell);
  // rows [r0, r1) of step i (in processing order: the last step first)
  auto step = [&](size_t i, int64_t r0, int64_t r1) {
    const int64_t start = rows[rows.size() - 1 - i].first;
    const int64_t m = r1 - r0, row = start + r0;
    BwdStep<T> s;
    s.start = row;
    s.n = m;
    s.row = r0;
    s.gates = L.gates + row * L.A;
    s.dA = L.dA + row * L.A;
    for (int k = 0; k < L.n_states; ++k) {
      const int64_t w = L.width[k];
      T* dcarry_k = L.dcarry[k] + r0 * w;
      // ∂L/∂s_t = the sequence's own gradient + the carried one (dH keeps it for dW_hr)
      T* d = (k == 0 && L.dH) ? L.dH + row * R : dnext[k].data() + r0 * w;
      const T* ds = L.dseq[k] ? L.dseq[k] + row * w : nullptr;
      if (ds) {
#pragma omp simd
        for (int64_t j = 0; j < m * w; ++j) d[j] = ds[j] + dcarry_k[j];
      } else {
        std::memcpy(d, dcarry_k, sizeof(T) * m * w);
      }
      if (L.zone[k]) zone_split(m * w, L.zone[k] + row * w, d, direct[k].data() + r0 * w);
      s.prev[k] = L.prev[k] + row * w;
      s.next[k] = L.seq[k] + row * w;
      s.dnext[k] = d;
      s.zoned[k] = L.zone[k] != nullptr;
      s.dprev[k] = dcarry_k;
    }
    s.ld0 = R;
    if (L.w_hr) {                                                    // ∂L/∂m = ∂L/∂h W_hr
      projection(m, s.dnext[0], R, T(0), dm.data() + r0 * H, H);
      s.dnext[0] = dm.data() + r0 * H;
      s.ld0 = H;
    }
    s.h_in = s.prev[0];
    T* dcarry0 = L.dcarry[0] + r0 * R;
    if (L.h_drop) {
      mul_into(m * R, s.prev[0], L.h_drop + r0 * R, h_in.data() + r0 * R);
      s.h_in = h_in.data() + r0 * R;
      s.dh_in = dh_in.data() + r0 * R;
      s.beta0 = T(0);
    } else {
      s.dh_in = dcarry0;
      s.beta0 = Cell::kDirectH ? T(1) : T(0);
    }
    cell.backward(s);
    if (L.h_drop) {                                                   // through ĥ: ⊙ m
      if (Cell::kDirectH) add_mul(m * R, dcarry0, dh_in.data() + r0 * R, L.h_drop + r0 * R);
      else mul_into(m * R, dh_in.data() + r0 * R, L.h_drop + r0 * R, dcarry0);
    }
    for (int k = 0; k < L.n_states; ++k)                              // zoneout's direct path
      if (L.zone[k])
        add_inplace(m * L.width[k], L.dcarry[k] + r0 * L.width[k],
                    direct[k].data() + r0 * L.width[k]);
  };
  bool first = true;
  for (size_t i = 0; i < rows.size();) {
    const int64_t n = rows[rows.size() - 1 - i].second;
    const int64_t parts = first ? 1 : row_parts(parallel, n, L.A, R);
    size_t end = i + 1;
    if (parts > 1)
      while (end < rows.size() && rows[rows.size() - 1 - end].second == n) ++end;
    steps_in_parts(i, end, n, parts, step);
    first = false;
    i = end;
  }
  finish(cell);
}

// ---- the registry --------------------------------------------------------------------------
struct CellEntry {
  void (*forward_f)(Layer<float>&, const Rows&);
  void (*forward_d)(Layer<double>&, const Rows&);
  void (*backward_f)(Layer<float>&, const Rows&);
  void (*backward_d)(Layer<double>&, const Rows&);
};

std::map<std::string, CellEntry>& cell_registry() {
  static std::map<std::string, CellEntry> cells;
  return cells;
}

bool register_cell(const char* name, CellEntry entry) {
  cell_registry()[name] = entry;
  return true;
}

}  // namespace

#define LSTMKIT_REGISTER_CELL(NAME, CELL)                                                   \
  namespace {                                                                               \
  const bool lstmkit_registered_##NAME = register_cell(                                     \
      #NAME, CellEntry{&run_forward<float, CELL<float>>, &run_forward<double, CELL<double>>, \
                       &run_backward<float, CELL<float>>,                                    \
                       &run_backward<double, CELL<double>>});                                \
  }
