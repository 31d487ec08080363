// oneDNN's RNN primitives (libdnnl from the onednn-cpu-gomp wheel) for one layer and direction.
//
// A separate extension from engine.cpp: built only when the wheel is installed, linked
// against its libdnnl.so.3 (see lstmkit/ops/onednn.py, which finds the library and headers
// from the installed distribution and passes them to the shared build machinery of
// extension.py).
//
// Cells (oneDNN's names; the gate blocks are given in oneDNN's order, the Python side
// permutes torch's rows):
//   kind 0  vanilla_lstm  gates i, f, c̃, o (= torch's i, f, g, o); optional peepholes
//           (3, H) in the order i, f, o, and projection (H → P)
//   kind 1  lbr_gru       gates u, r, o (= torch's z, r, n); bias (4, H):
//           b_u, b_r, b_o (input side of the candidate), b_u' (inside r ⊙ (U h + b_u'))
//   kind 2  vanilla_rnn   tanh          kind 3  vanilla_rnn  relu
//
// Shapes (T steps, B sequences, I inputs, H hidden, R = width of h: P with a projection,
// else H; G gate blocks; Gb bias blocks):
//   x (T, B, I)        h0, hT (B, R)      c0, cT (B, H) (LSTM only)
//   w_layer (G·H, I)   w_iter (G·H, R)    — torch's (rows = gates × outputs) layout, which is
//                                            oneDNN's ldgoi
//   bias (Gb·H,)       peephole (3·H,)    projection (P, H) — oneDNN's ldoi
//   y (T, B, R)
// Empty tensors (numel 0) stand for absent ones.
//
// The weights are reordered into the layouts the primitive chose (format "any") on every
// call: a reorder costs one pass over the weights, small next to T steps, and a cache
// across calls would have to watch for in-place updates of the parameters. The primitive
// descriptors are cached per configuration (creating one costs more than a small layer's
// whole forward at B = 1); oneDNN caches the compiled primitives itself.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <oneapi/dnnl/dnnl.hpp>

#include <map>
#include <mutex>
#include <tuple>

namespace {

using dnnl::algorithm;
using dnnl::memory;
using dnnl::prop_kind;
using dnnl::rnn_direction;
using tag = dnnl::memory::format_tag;
constexpr auto f32 = dnnl::memory::data_type::f32;

enum Kind : int64_t { LSTM = 0, GRU = 1, RNN_TANH = 2, RNN_RELU = 3 };

dnnl::engine& cpu() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& stream() {              // in-order, synchronous with OpenMP: one per thread
  thread_local dnnl::stream s(cpu());
  return s;
}

// The sizes of one call; every memory descriptor follows from them.
struct Config {
  int64_t kind, T, B, I, H, R;
  bool reverse, peephole, projection;
  // oneDNN sizes a primitive's work split and scratchpad for the OpenMP thread count at
  // its creation: primitives made under another torch.set_num_threads are not reused
  int64_t threads = at::get_num_threads();

  auto key() const {
    return std::make_tuple(kind, T, B, I, H, R, reverse, peephole, projection, threads);
  }
  int64_t G() const { return kind == LSTM ? 4 : kind == GRU ? 3 : 1; }
  int64_t Gb() const { return kind == GRU ? 4 : G(); }
  rnn_direction direction() const {
    return reverse ? rnn_direction::unidirectional_right2left
                   : rnn_direction::unidirectional_left2right;
  }
  algorithm activation() const {
    return kind == RNN_RELU ? algorithm::eltwise_relu : algorithm::eltwise_tanh;
  }
  memory::desc layer(int64_t C) const { return {{T, B, C}, f32, tag::tnc}; }
  memory::desc iter(int64_t C) const { return {{1, 1, B, C}, f32, tag::ldnc}; }
  memory::desc w_layer(tag t) const { return {{1, 1, I, G(), H}, f32, t}; }
  memory::desc w_iter(tag t) const { return {{1, 1, R, G(), H}, f32, t}; }
  memory::desc w_peephole() const {
    return peephole ? memory::desc({1, 1, 3, H}, f32, tag::ldgo) : memory::desc();
  }
  memory::desc w_projection(tag t) const {
    return projection ? memory::desc({1, 1, H, R}, f32, t) : memory::desc();
  }
  memory::desc bias() const { return {{1, 1, Gb(), H}, f32, tag::ldgo}; }
};

using PD = dnnl::primitive_desc;

dnnl::lstm_forward::primitive_desc lstm_forward(const Config& c, prop_kind prop) {
  auto any = tag::any;
  return {cpu(), prop, c.direction(), c.layer(c.I), c.iter(c.R), c.iter(c.H),
          c.w_layer(any), c.w_iter(any), c.w_peephole(), c.w_projection(any), c.bias(),
          c.layer(c.R), c.iter(c.R), c.iter(c.H)};
}

dnnl::lbr_gru_forward::primitive_desc gru_forward(const Config& c, prop_kind prop) {
  auto any = tag::any;
  return {cpu(), prop, c.direction(), c.layer(c.I), c.iter(c.H), c.w_layer(any),
          c.w_iter(any), c.bias(), c.layer(c.H), c.iter(c.H)};
}

dnnl::vanilla_rnn_forward::primitive_desc rnn_forward(const Config& c, prop_kind prop) {
  auto any = tag::any;
  return {cpu(), prop, c.activation(), c.direction(), c.layer(c.I), c.iter(c.H),
          c.w_layer(any), c.w_iter(any), c.bias(), c.layer(c.H), c.iter(c.H)};
}

PD make_forward(const Config& c, prop_kind prop) {
  switch (c.kind) {
    case LSTM: return lstm_forward(c, prop);
    case GRU: return gru_forward(c, prop);
    default: return rnn_forward(c, prop);
  }
}

// The backward takes the forward_training descriptor of its kind as a hint.
PD make_backward(const Config& c) {
  auto any = tag::any;
  auto bwd = prop_kind::backward;
  auto train = prop_kind::forward_training;
  switch (c.kind) {
    case LSTM:
      return dnnl::lstm_backward::primitive_desc(
          cpu(), bwd, c.direction(), c.layer(c.I), c.iter(c.R), c.iter(c.H),
          c.w_layer(any), c.w_iter(any), c.w_peephole(), c.w_projection(any), c.bias(),
          c.layer(c.R), c.iter(c.R), c.iter(c.H),
          c.layer(c.I), c.iter(c.R), c.iter(c.H),
          c.w_layer(any), c.w_iter(any), c.w_peephole(), c.w_projection(any), c.bias(),
          c.layer(c.R), c.iter(c.R), c.iter(c.H), lstm_forward(c, train));
    case GRU:
      return dnnl::lbr_gru_backward::primitive_desc(
          cpu(), bwd, c.direction(), c.layer(c.I), c.iter(c.H), c.w_layer(any),
          c.w_iter(any), c.bias(), c.layer(c.H), c.iter(c.H),
          c.layer(c.I), c.iter(c.H), c.w_layer(any), c.w_iter(any), c.bias(),
          c.layer(c.H), c.iter(c.H), gru_forward(c, train));
    default:
      return dnnl::vanilla_rnn_backward::primitive_desc(
          cpu(), bwd, c.activation(), c.direction(), c.layer(c.I), c.iter(c.H),
          c.w_layer(any), c.w_iter(any), c.bias(), c.layer(c.H), c.iter(c.H),
          c.layer(c.I), c.iter(c.H), c.w_layer(any), c.w_iter(any), c.bias(),
          c.layer(c.H), c.iter(c.H), rnn_forward(c, train));
  }
}

// The primitives of one configuration, made once (creating a descriptor and fetching the
// primitive from oneDNN's cache costs tens of microseconds).
// The weight reorders too: creating a reorder costs as much as the whole forward of a small
// layer (measured with ONEDNN_VERBOSE at (T, B, H) = (50, 1, 64)), running it microseconds.
enum Slot { FWD_LAYER, FWD_ITER, FWD_PROJ, BWD_LAYER, BWD_ITER, BWD_PROJ,
            DIFF_LAYER, DIFF_ITER, DIFF_PROJ, TRAIN_LAYER, TRAIN_ITER, TRAIN_PROJ };

struct Prims {
  PD inference, training, backward;
  dnnl::primitive run_inference, run_training, run_backward;
  std::map<int, dnnl::reorder> reorders;
};

std::mutex cache_lock;

Prims& prims_of(const Config& c, bool need_backward) {
  static std::map<decltype(c.key()), Prims> cache;
  std::lock_guard<std::mutex> guard(cache_lock);
  // bounded: every new (T, B) adds an entry (bucketed or variable-length training, serving);
  // past kMaxCached configurations start again (the Python caller holds the GIL for the
  // whole call, so no other call holds a reference into the cache meanwhile)
  constexpr size_t kMaxCached = 256;
  if (cache.size() >= kMaxCached && cache.find(c.key()) == cache.end()) cache.clear();
  Prims& p = cache[c.key()];
  if (!p.inference) {
    p.inference = make_forward(c, prop_kind::forward_inference);
    p.run_inference = dnnl::primitive(p.inference);
    p.training = make_forward(c, prop_kind::forward_training);
    p.run_training = dnnl::primitive(p.training);
  }
  if (need_backward && !p.backward) {
    p.backward = make_backward(c);
    p.run_backward = dnnl::primitive(p.backward);
  }
  return p;
}

Config config_of(int64_t kind, bool reverse, const at::Tensor& x, const at::Tensor& w_iter,
                 const at::Tensor& peephole, const at::Tensor& projection) {
  TORCH_CHECK(kind >= LSTM && kind <= RNN_RELU, "oneDNN RNN: unknown cell kind ", kind);
  TORCH_CHECK(x.dim() == 3, "oneDNN RNN: x must be (T, B, I), got ", x.sizes());
  Config c{kind, x.size(0), x.size(1), x.size(2), 0, w_iter.size(1), reverse,
           peephole.numel() > 0, projection.numel() > 0};
  TORCH_CHECK(w_iter.dim() == 2 && w_iter.size(0) % c.G() == 0 && w_iter.size(0) > 0,
              "oneDNN RNN: W_hh must be (G·H, R) with G = ", c.G(), ", got ", w_iter.sizes());
  c.H = w_iter.size(0) / c.G();
  TORCH_CHECK(c.projection || c.R == c.H, "oneDNN RNN: W_hh must be (G·H, H) without a "
              "projection, got ", w_iter.sizes());
  TORCH_CHECK(kind == LSTM || !(c.peephole || c.projection),
              "oneDNN RNN: peepholes and projections exist only for the LSTM");
  return c;
}

void check_f32(const std::vector<at::Tensor>& ts) {
  for (const auto& t : ts)
    TORCH_CHECK(t.numel() == 0 || (t.scalar_type() == at::kFloat && t.is_contiguous() &&
                                   t.device().is_cpu()),
                "oneDNN RNN: every tensor must be a contiguous float32 CPU tensor, got ",
                t.scalar_type(), " ", t.sizes());
}

memory wrap(const memory::desc& d, const at::Tensor& t) {
  // every tensor handed to oneDNN holds exactly what its descriptor says (a wrong size
  // would be read or written out of bounds)
  TORCH_CHECK(static_cast<size_t>(t.nbytes()) == d.get_size(), "oneDNN RNN: a tensor of shape ",
              t.sizes(), " (", t.nbytes(), " bytes) where the primitive expects ", d.get_size(),
              " bytes");
  return memory(d, cpu(), t.data_ptr());
}

// Copy ``from`` into ``to`` (layouts differ) with the reorder cached in ``slot`` of ``p``.
void reorder(Prims& p, int slot, const memory& from, const memory& to, dnnl::stream& s) {
  dnnl::reorder* r;
  {
    std::lock_guard<std::mutex> guard(cache_lock);
    auto it = p.reorders.find(slot);
    if (it == p.reorders.end())
      it = p.reorders.emplace(slot, dnnl::reorder(from, to)).first;
    r = &it->second;
  }
  r->execute(s, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}});
}

// ``user`` in the layout ``want`` (reordered into a new buffer unless it already is).
memory in_layout(Prims& p, int slot, const memory& user, const memory::desc& want,
                 dnnl::stream& s) {
  if (user.get_desc() == want) return user;
  memory out(want, cpu());
  reorder(p, slot, user, out, s);
  return out;
}

// forward(kind, reverse, training, x, h0, c0, w_layer, w_iter, bias, peephole, projection)
//   -> [y (T, B, R), hT (B, R), cT (B, H) or empty, workspace (bytes) or empty]
std::vector<at::Tensor> forward(int64_t kind, bool reverse, bool training, at::Tensor x,
                                at::Tensor h0, at::Tensor c0, at::Tensor w_layer,
                                at::Tensor w_iter, at::Tensor bias, at::Tensor peephole,
                                at::Tensor projection) {
  check_f32({x, h0, c0, w_layer, w_iter, bias, peephole, projection});
  Config c = config_of(kind, reverse, x, w_iter, peephole, projection);
  Prims& p = prims_of(c, false);
  const PD& pd = training ? p.training : p.inference;
  dnnl::stream& s = stream();

  auto y = x.new_empty({c.T, c.B, c.R});
  auto hT = x.new_empty({c.B, c.R});
  auto cT = kind == LSTM ? x.new_empty({c.B, c.H}) : x.new_empty({0});
  int base = training ? TRAIN_LAYER : FWD_LAYER;
  auto wl = in_layout(p, base, wrap(c.w_layer(tag::ldgoi), w_layer),
                      pd.query_md(dnnl::query::exec_arg_md, DNNL_ARG_WEIGHTS_LAYER), s);
  auto wi = in_layout(p, base + 1, wrap(c.w_iter(tag::ldgoi), w_iter),
                      pd.query_md(dnnl::query::exec_arg_md, DNNL_ARG_WEIGHTS_ITER), s);
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC_LAYER, wrap(c.layer(c.I), x)},
      {DNNL_ARG_SRC_ITER, wrap(c.iter(c.R), h0)},
      {DNNL_ARG_WEIGHTS_LAYER, wl},
      {DNNL_ARG_WEIGHTS_ITER, wi},
      {DNNL_ARG_BIAS, wrap(c.bias(), bias)},
      {DNNL_ARG_DST_LAYER, wrap(c.layer(c.R), y)},
      {DNNL_ARG_DST_ITER, wrap(c.iter(c.R), hT)}};
  if (kind == LSTM) {
    args[DNNL_ARG_SRC_ITER_C] = wrap(c.iter(c.H), c0);
    args[DNNL_ARG_DST_ITER_C] = wrap(c.iter(c.H), cT);
    if (c.peephole) args[DNNL_ARG_WEIGHTS_PEEPHOLE] = wrap(c.w_peephole(), peephole);
    if (c.projection)
      args[DNNL_ARG_WEIGHTS_PROJECTION] =
          in_layout(p, base + 2, wrap(c.w_projection(tag::ldoi), projection),
                    pd.query_md(dnnl::query::exec_arg_md, DNNL_ARG_WEIGHTS_PROJECTION), s);
  }
  auto workspace = x.new_empty({0}, x.options().dtype(at::kByte));
  if (training) {
    auto ws = pd.query_md(dnnl::query::workspace_md);
    workspace = x.new_empty({static_cast<int64_t>(ws.get_size())},
                            x.options().dtype(at::kByte));
    args[DNNL_ARG_WORKSPACE] = wrap(ws, workspace);
  }
  (training ? p.run_training : p.run_inference).execute(s, args);
  s.wait();
  return {y, hT, cT, workspace};
}

// A gradient buffer of ``want``'s layout, zeroed (the backward accumulates into it).
memory zeroed(const memory::desc& want) {
  memory m(want, cpu());
  std::memset(m.get_data_handle(), 0, want.get_size());
  return m;
}

// backward(kind, reverse, x, h0, c0, w_layer, w_iter, bias, peephole, projection,
//          y, hT, cT, workspace, dy, dhT, dcT)
//   -> [dx, dh0, dc0 (or empty), dw_layer, dw_iter, dbias, dpeephole, dprojection]
// (the last two empty where absent), in the layouts of the inputs.
std::vector<at::Tensor> backward(int64_t kind, bool reverse, at::Tensor x, at::Tensor h0,
                                 at::Tensor c0, at::Tensor w_layer, at::Tensor w_iter,
                                 at::Tensor bias, at::Tensor peephole, at::Tensor projection,
                                 at::Tensor y, at::Tensor hT, at::Tensor cT,
                                 at::Tensor workspace, at::Tensor dy, at::Tensor dhT,
                                 at::Tensor dcT) {
  check_f32({x, h0, c0, w_layer, w_iter, bias, peephole, projection, y, hT, cT, dy, dhT, dcT});
  Config c = config_of(kind, reverse, x, w_iter, peephole, projection);
  Prims& p = prims_of(c, true);
  const PD& pd = p.backward;
  dnnl::stream& s = stream();
  auto weights_md = [&](int arg) { return pd.query_md(dnnl::query::exec_arg_md, arg); };

  auto dx = at::empty_like(x);
  auto dh0 = at::empty_like(h0);
  auto dc0 = kind == LSTM ? at::empty_like(c0) : x.new_empty({0});
  auto dw_layer = at::empty_like(w_layer);
  auto dw_iter = at::empty_like(w_iter);
  auto dbias = at::zeros_like(bias);
  auto dpeephole = at::zeros_like(peephole);
  auto dprojection = at::empty_like(projection);

  auto user_dwl = wrap(c.w_layer(tag::ldgoi), dw_layer);
  auto user_dwi = wrap(c.w_iter(tag::ldgoi), dw_iter);
  auto dwl = zeroed(weights_md(DNNL_ARG_DIFF_WEIGHTS_LAYER));
  auto dwi = zeroed(weights_md(DNNL_ARG_DIFF_WEIGHTS_ITER));
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC_LAYER, wrap(c.layer(c.I), x)},
      {DNNL_ARG_SRC_ITER, wrap(c.iter(c.R), h0)},
      {DNNL_ARG_WEIGHTS_LAYER, in_layout(p, BWD_LAYER, wrap(c.w_layer(tag::ldgoi), w_layer),
                                         weights_md(DNNL_ARG_WEIGHTS_LAYER), s)},
      {DNNL_ARG_WEIGHTS_ITER, in_layout(p, BWD_ITER, wrap(c.w_iter(tag::ldgoi), w_iter),
                                        weights_md(DNNL_ARG_WEIGHTS_ITER), s)},
      {DNNL_ARG_BIAS, wrap(c.bias(), bias)},
      {DNNL_ARG_DST_LAYER, wrap(c.layer(c.R), y)},
      {DNNL_ARG_DST_ITER, wrap(c.iter(c.R), hT)},
      {DNNL_ARG_WORKSPACE, wrap(pd.query_md(dnnl::query::workspace_md), workspace)},
      {DNNL_ARG_DIFF_SRC_LAYER, wrap(c.layer(c.I), dx)},
      {DNNL_ARG_DIFF_SRC_ITER, wrap(c.iter(c.R), dh0)},
      {DNNL_ARG_DIFF_WEIGHTS_LAYER, dwl},
      {DNNL_ARG_DIFF_WEIGHTS_ITER, dwi},
      {DNNL_ARG_DIFF_BIAS, wrap(c.bias(), dbias)},
      {DNNL_ARG_DIFF_DST_LAYER, wrap(c.layer(c.R), dy)},
      {DNNL_ARG_DIFF_DST_ITER, wrap(c.iter(c.R), dhT)}};
  memory dwp, user_dwp;
  if (kind == LSTM) {
    args[DNNL_ARG_SRC_ITER_C] = wrap(c.iter(c.H), c0);
    args[DNNL_ARG_DST_ITER_C] = wrap(c.iter(c.H), cT);
    args[DNNL_ARG_DIFF_SRC_ITER_C] = wrap(c.iter(c.H), dc0);
    args[DNNL_ARG_DIFF_DST_ITER_C] = wrap(c.iter(c.H), dcT);
    if (c.peephole) {
      args[DNNL_ARG_WEIGHTS_PEEPHOLE] = wrap(c.w_peephole(), peephole);
      args[DNNL_ARG_DIFF_WEIGHTS_PEEPHOLE] = wrap(c.w_peephole(), dpeephole);
    }
    if (c.projection) {
      args[DNNL_ARG_WEIGHTS_PROJECTION] =
          in_layout(p, BWD_PROJ, wrap(c.w_projection(tag::ldoi), projection),
                    weights_md(DNNL_ARG_WEIGHTS_PROJECTION), s);
      user_dwp = wrap(c.w_projection(tag::ldoi), dprojection);
      dwp = zeroed(weights_md(DNNL_ARG_DIFF_WEIGHTS_PROJECTION));
      args[DNNL_ARG_DIFF_WEIGHTS_PROJECTION] = dwp;
    }
  }
  p.run_backward.execute(s, args);
  reorder(p, DIFF_LAYER, dwl, user_dwl, s);
  reorder(p, DIFF_ITER, dwi, user_dwi, s);
  if (c.projection) reorder(p, DIFF_PROJ, dwp, user_dwp, s);
  s.wait();
  return {dx, dh0, dc0, dw_layer, dw_iter, dbias, dpeephole, dprojection};
}

std::string version() {
  const dnnl_version_t* v = dnnl_version();
  return std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
         std::to_string(v->patch) + " (" + v->hash + ", cpu runtime " +
         (v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other") + ")";
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "oneDNN's LSTM, LBR-GRU and vanilla RNN primitives for one layer and direction";
  m.def("forward", &forward);
  m.def("backward", &backward);
  m.def("version", &version);
}
