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
//
// registered by LSTMKIT_REGISTER_CELL(name, Cell) at the end of its header. Buffers are
// row-major and contiguous; a step's pointers point at its first row. No allocation inside
// the time loop.

#pragma once

#include <map>
#include <string>

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
  std::vector<T*> grads;               // backward: the family's per-row gradient buffers
  std::vector<const void*> side;       // per-row side inputs (N, ·), typed by the family
  const T* w_hr = nullptr;             // (R, H) projection, or null
  const T* h_drop = nullptr;           // (B, R) recurrent dropout mask, or null
  const T* zone[kMaxStates] = {};      // (N, width) zoneout weights, or null
  // forward
  T* a = nullptr;                      // (N, A) input projection in, activations out
  T* seq[kMaxStates] = {};             // (N, width) every step's states (backward: read)
  T* carry[kMaxStates] = {};           // (B, width) initial in, final out
  T* m = nullptr;                      // (N, H) cell output before the projection, or null
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
  int64_t start = 0, n = 0;            // first row, active rows
  T* a = nullptr;                      // (n, A)
  const T* h_in = nullptr;             // (n, R) ĥ_{t-1}: the recurrent GEMMs' input
  const T* prev[kMaxStates] = {};      // (n, width) states before the step
  T* next[kMaxStates] = {};            // (n, width) states after; next[0] is m (ld H) when
  int64_t ld0 = 0;                     //   projecting: its row stride is ld0
};

template <typename T>
struct BwdStep {
  int64_t start = 0, n = 0;
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
template <typename T, typename Cell>
void run_forward(Layer<T>& L, const Rows& rows) {
  Cell cell(L);
  const int64_t B = L.B, H = L.H, R = L.R;
  std::vector<T> h_in(L.h_drop ? B * R : 0);
  const WeightGemm<T> projection(L.w_hr, true, L.w_hr ? B : 0, R, H);    // · W_hrᵀ
  for (auto [start, n] : rows) {
    FwdStep<T> s;
    s.start = start;
    s.n = n;
    s.a = L.a + start * L.A;
    s.h_in = L.carry[0];
    if (L.h_drop) {                                                    // ĥ = m ⊙ h_{t-1}
      mul_into(n * R, L.carry[0], L.h_drop, h_in.data());
      s.h_in = h_in.data();
    }
    for (int k = 0; k < L.n_states; ++k) {
      s.prev[k] = L.carry[k];
      s.next[k] = L.seq[k] + start * L.width[k];
    }
    s.ld0 = R;
    if (L.m) {
      s.next[0] = L.m + start * H;
      s.ld0 = H;
    }
    cell.forward(s);
    if (L.m) projection(n, L.m + start * H, H, T(0), L.seq[0] + start * R, R);   // h = m W_hrᵀ
    for (int k = 0; k < L.n_states; ++k) {
      const int64_t w = L.width[k];
      T* new_k = L.seq[k] + start * w;
      if (L.zone[k]) zone_mix(n * w, L.zone[k] + start * w, L.carry[k], new_k);  // zoneout
      std::memcpy(L.carry[k], new_k, sizeof(T) * n * w);
    }
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
  for (auto it = rows.rbegin(); it != rows.rend(); ++it) {
    const auto [start, n] = *it;
    BwdStep<T> s;
    s.start = start;
    s.n = n;
    s.gates = L.gates + start * L.A;
    s.dA = L.dA + start * L.A;
    for (int k = 0; k < L.n_states; ++k) {
      const int64_t w = L.width[k];
      // ∂L/∂s_t = the sequence's own gradient + the carried one (dH keeps it for dW_hr)
      T* d = (k == 0 && L.dH) ? L.dH + start * R : dnext[k].data();
      const T* ds = L.dseq[k] ? L.dseq[k] + start * w : nullptr;
      if (ds) {
#pragma omp simd
        for (int64_t j = 0; j < n * w; ++j) d[j] = ds[j] + L.dcarry[k][j];
      } else {
        std::memcpy(d, L.dcarry[k], sizeof(T) * n * w);
      }
      if (L.zone[k]) zone_split(n * w, L.zone[k] + start * w, d, direct[k].data());
      s.prev[k] = L.prev[k] + start * w;
      s.next[k] = L.seq[k] + start * w;
      s.dnext[k] = d;
      s.zoned[k] = L.zone[k] != nullptr;
      s.dprev[k] = L.dcarry[k];
    }
    s.ld0 = R;
    if (L.w_hr) {                                                      // ∂L/∂m = ∂L/∂h W_hr
      projection(n, s.dnext[0], R, T(0), dm.data(), H);
      s.dnext[0] = dm.data();
      s.ld0 = H;
    }
    s.h_in = s.prev[0];
    if (L.h_drop) {
      mul_into(n * R, s.prev[0], L.h_drop, h_in.data());
      s.h_in = h_in.data();
      s.dh_in = dh_in.data();
      s.beta0 = T(0);
    } else {
      s.dh_in = L.dcarry[0];
      s.beta0 = Cell::kDirectH ? T(1) : T(0);
    }
    cell.backward(s);
    if (L.h_drop) {                                                     // through ĥ: ⊙ m
      if (Cell::kDirectH) add_mul(n * R, L.dcarry[0], dh_in.data(), L.h_drop);
      else mul_into(n * R, dh_in.data(), L.h_drop, L.dcarry[0]);
    }
    for (int k = 0; k < L.n_states; ++k)                                // zoneout's direct path
      if (L.zone[k]) add_inplace(n * L.width[k], L.dcarry[k], direct[k].data());
  }
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
