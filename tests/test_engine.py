"""The one recurrence engine (lstmkit.ops): every cell family through one time loop per
language, one autograd Function, one custom-op factory and one dispatcher.

Outside references: the reference backend (autograd through each family's equations) and
torch.autograd.gradcheck; torch.compile/torch.export against eager. Checks:

* every variant × every regulariser: fused_cpp == fused_py == reference in float64 for
  outputs, final states and every gradient, with the same masks on each backend;
* gradcheck of the fused path with fixed masks for the families the older kernels could not
  combine with masks (ablations, layer norm, Clockwork, Depth-Gated);
* torch._dynamo.explain: zero graph breaks for a model of each family (masks included),
  torch.compile equal to eager, torch.export;
* the chunked backward bounds the peak memory of every family (Clockwork and Depth-Gated
  included);
* summary() lists every parameter of every module;
* the registry: every family's C++ functor and custom op exist.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from helpers import (
    TOL,
    as_tuple,
    assert_close,
    backward_with_random_grads,
    make_input,
    output_tensor,
)
from torch import nn

import lstmkit
from lstmkit import ops
from lstmkit.cells import families
from lstmkit.cells.base import LayerWeights
from lstmkit.ops import fused, loops
from lstmkit.ops.masks import StepMasks

F64 = torch.float64
I, H = 3, 4

# Every variant a module has, as (module, keywords); H = 4 (Clockwork: 2 or 4 modules).
VARIANTS = {
    "lstm": (lstmkit.LSTM, {}),
    "lstm-peephole": (lstmkit.LSTM, {"peephole": True}),
    "lstm-cifg-peephole": (lstmkit.LSTM, {"coupled": True, "peephole": True}),
    "lstm-proj-peephole": (lstmkit.LSTM, {"proj_size": 3, "peephole": True}),
    "lstm-nig": (lstmkit.LSTM, {"input_gate": False, "peephole": True}),
    "lstm-nfg": (lstmkit.LSTM, {"forget_gate": False}),
    "lstm-nog-cifg": (lstmkit.LSTM, {"output_gate": False, "coupled": True}),
    "lstm-niaf": (lstmkit.LSTM, {"input_activation": None}),
    "lstm-noaf-proj": (lstmkit.LSTM, {"cell_activation": None, "proj_size": 2}),
    "lstm-fgr-peephole": (lstmkit.LSTM, {"gate_recurrence": True, "peephole": True}),
    "lstm-layer-norm": (lstmkit.LSTM, {"layer_norm": True}),
    "gru": (lstmkit.GRU, {}),
    "gru-reset-before": (lstmkit.GRU, {"reset_after": False}),
    "gru-layer-norm": (lstmkit.GRU, {"layer_norm": True}),
    "rnn-tanh": (lstmkit.RNN, {}),
    "rnn-relu": (lstmkit.RNN, {"nonlinearity": "relu"}),
    "clockwork": (lstmkit.ClockworkRNN, {"num_modules": 2}),
    "clockwork-1-3": (lstmkit.ClockworkRNN, {"periods": (1, 3)}),
    "depth-gated": (lstmkit.DepthGatedLSTM, {}),
    "lstm1997": (lstmkit.LSTM1997, {}),
    "lstm1997-truncated": (lstmkit.LSTM1997, {"truncate": True}),
    "mut1": (lstmkit.MUT, {"variant": 1}),
    "mut2": (lstmkit.MUT, {"variant": 2}),
    "mut3": (lstmkit.MUT, {"variant": 3}),
    "mingru": (lstmkit.minGRU, {}),
    "minlstm-log-space": (lstmkit.minLSTM, {"log_space": True}),
    "slstm": (lstmkit.sLSTM, {"num_heads": 2}),
    "slstm-exp": (lstmkit.sLSTM, {"forget_gate": "exp"}),
}
# minGRU and minLSTM run as scans (CellSpec.scan), not through the step loop, and take no
# regularisers (recurrent dropout and zoneout would make the recurrence non-linear in h)
SCANNED = {"mingru", "minlstm-log-space"}
# MUT1 and MUT2 add x_t to an H-vector: their input is H wide, and a bidirectional stack of
# them cannot have a second layer (it would read 2H), so they run one bidirectional layer.
SQUARE = {"mut1", "mut2"}
REGULARISERS = {
    "zoneout": {"zoneout": 0.3},
    "recurrent-dropout": {"recurrent_dropout": 0.4},
    "input-dropout": {"input_dropout": 0.3},
    "weight-dropout": {"weight_dropout": 0.3},
    "all": {"zoneout": 0.3, "recurrent_dropout": 0.4, "input_dropout": 0.3,
            "weight_dropout": 0.3},
}
BACKENDS = ("reference", "fused_py", "fused_cpp")


def _build(variant: str, backend: str, dtype=F64, **kw) -> nn.Module:
    cls, options = VARIANTS[variant]
    torch.manual_seed(0)
    m = cls(H if variant in SQUARE else I, H, dtype=dtype, backend=backend, **options, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.7, 0.7)                  # peepholes, gains, depth gates away from 0
    return m


def _run(m: nn.Module, packed: bool, seed: int = 11, batch: int = 3):
    g = torch.Generator().manual_seed(1)
    x, feed = make_input(6, batch, m.input_size, F64, batch_first=False, packed=packed,
                         generator=g)
    n = m.num_layers * m.num_directions
    hx = tuple(torch.randn(n, batch, size, dtype=F64, generator=g).requires_grad_()
               for _, size in m._state_shapes())
    if len(hx) == 4:                               # sLSTM's n_0: a non-empty memory, n > 0
        hx = (*hx[:2], (hx[2].detach().abs() + 0.5).requires_grad_(), hx[3])
    torch.manual_seed(seed)                        # the same masks on every backend
    out, state = m(feed, hx if len(hx) > 1 else hx[0])
    state = as_tuple(state)
    backward_with_random_grads(out, state, seed=2)
    return (output_tensor(out), state, x.grad, [h.grad for h in hx],
            {n: p.grad for n, p in m.named_parameters()})


def _compare(got, want, what: str, tol: float = TOL[F64]) -> None:
    (o1, s1, dx1, dh1, g1), (o2, s2, dx2, dh2, g2) = got, want
    assert_close(o1, o2, f"{what}: output", tol)
    for a, b in zip(s1, s2, strict=True):
        assert_close(a, b, f"{what}: final state", tol)
    assert_close(dx1, dx2, f"{what}: grad input", tol)
    for a, b in zip(dh1, dh2, strict=True):
        if a is None and b is None:
            continue
        if a is None or b is None:      # no path at all on one backend (LSTM1997's truncated
            a, b = (torch.zeros_like(b) if a is None else a,  # gradient with recurrent
                    torch.zeros_like(a) if b is None else b)  # dropout) means a zero gradient
        assert_close(a, b, f"{what}: grad initial state", tol)
    assert g1.keys() == g2.keys()
    for name in g2:
        assert g2[name] is not None, f"{what}: no gradient for {name}"
        assert_close(g1[name], g2[name], f"{what}: grad {name}", tol)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("regulariser", list(REGULARISERS))
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v not in SCANNED])
def test_every_variant_with_every_regulariser(variant, regulariser, training):
    """Two layers, both directions, packed unsorted input, given initial states: the three
    backends agree to 1e-10 in float64 with the same masks."""
    reg = dict(REGULARISERS[regulariser])
    if "zoneout" in reg and VARIANTS[variant][0] in (lstmkit.GRU, lstmkit.RNN,
                                                     lstmkit.ClockworkRNN):
        reg["zoneout"] = 0.3                        # one rate: these have only h
    kw = {"bidirectional": True, **reg}
    if VARIANTS[variant][0] is not lstmkit.DepthGatedLSTM and variant not in SQUARE:
        kw["num_layers"] = 2
    results = {}
    for backend in BACKENDS:
        m = _build(variant, backend, **kw).train(training)
        results[backend] = _run(m, packed=True)
    for backend in ("fused_py", "fused_cpp"):
        _compare(results[backend], results["reference"], f"{variant}+{regulariser} {backend}")


@pytest.mark.parametrize("regulariser", ["none", "zoneout", "recurrent-dropout"])
@pytest.mark.parametrize("variant", ["lstm", "lstm-peephole", "lstm-cifg-peephole",
                                     "lstm-proj-peephole", "lstm-nig", "lstm-layer-norm", "gru",
                                     "gru-reset-before", "gru-layer-norm", "rnn-tanh",
                                     "rnn-relu", "depth-gated", "mut3", "slstm",
                                     "slstm-exp"])
def test_steps_cut_into_parts_of_rows(variant, regulariser):
    """With two threads the C++ loop runs a step's rows in two parts at once (engine.h,
    row_parallel) for LSTM, GRU, RNN and layer-normalised cells when the step's product is
    large enough: B = 32, H = 112 here (RNN: 32·112·112 multiply-adds ≥ 2¹⁸; the projected
    LSTM 32·448·56; LN rows of 4H = 448 and 2H = 224 are no multiple of the 32 sums' lanes;
    the Depth-Gated LSTM, MUT3 and the sLSTM with their per-step scratch by row too),
    packed unsorted input (the parts change with the step's rows; late steps run whole), both
    directions, two layers. fused_cpp equals the
    reference loop to 1e-10 in float64 (lstm-nig, an ablation, runs whole: the control)."""
    cls, options = VARIANTS[variant]
    reg = {} if regulariser == "none" else dict(REGULARISERS[regulariser])
    if "zoneout" in reg and cls is not lstmkit.LSTM:
        reg["zoneout"] = 0.3
    if "proj_size" in options:
        options = {**options, "proj_size": 56}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = {}
        for backend in ("reference", "fused_cpp"):
            torch.manual_seed(0)
            m = cls(8, 112, dtype=F64, backend=backend, bidirectional=True, num_layers=2,
                    **options, **reg)
            with torch.no_grad():
                for p in m.parameters():
                    p.uniform_(-0.3, 0.3)
            results[backend] = _run(m.train(), packed=True, batch=32)
    finally:
        torch.set_num_threads(before)
    _compare(results["fused_cpp"], results["reference"], f"{variant}+{regulariser}")


@pytest.mark.parametrize("variant,reg", [("lstm", {}), ("lstm", {"zoneout": 0.3}),
                                         ("lstm-peephole", {"recurrent_dropout": 0.4}),
                                         ("lstm-layer-norm", {}), ("gru", {}), ("rnn-tanh", {}),
                                         ("slstm", {})])
def test_padded_runs_of_steps_in_parts_match_the_reference(variant, reg):
    """Padded input: with two threads each thread runs its part of the rows through a whole
    run of steps with no join in between (engine.h, steps_in_parts): the whole training
    forward, each backward chunk (T·B = 1280 rows: several chunks) and each projected block
    of the no-grad inference path. fused_cpp equals the reference loop in float64, both
    directions, and the inference path equals the training forward."""
    cls, options = VARIANTS[variant]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        models, results = {}, {}
        for backend in ("reference", "fused_cpp"):
            torch.manual_seed(0)
            m = cls(8, 112, dtype=F64, backend=backend, bidirectional=True, **options, **reg)
            with torch.no_grad():
                for p in m.parameters():
                    p.uniform_(-0.3, 0.3)
            g = torch.Generator().manual_seed(1)
            x = torch.randn(40, 32, 8, dtype=F64, generator=g, requires_grad=True)
            torch.manual_seed(5)                           # the same masks on both
            out, state = m.train()(x)
            backward_with_random_grads(out, as_tuple(state), seed=2)
            results[backend] = (out, as_tuple(state), x.grad, [],
                                {n: p.grad for n, p in m.named_parameters()})
            models[backend] = (m, x)
        if not reg:
            m, x = models["fused_cpp"]
            with torch.no_grad():
                inferred = m.eval()(x.detach())[0]
            assert_close(inferred, results["fused_cpp"][0].detach(), f"{variant}: inference", 0)
    finally:
        torch.set_num_threads(before)
    _compare(results["fused_cpp"], results["reference"], f"{variant} {reg}")


INFERENCE_VARIANTS = ["lstm", "lstm-peephole", "lstm-cifg-peephole", "lstm-proj-peephole",
                      "lstm-nig", "lstm-fgr-peephole", "lstm-noaf-proj", "lstm-layer-norm",
                      "gru", "gru-reset-before", "rnn-tanh", "rnn-relu"]


def _spy_inference(monkeypatch) -> list:
    """Counts the calls of the inference path (fused._run_inference)."""
    calls = []
    real = fused._run_inference

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(fused, "_run_inference", spy)
    return calls


@pytest.mark.parametrize("block", [1, 200, None], ids=["step", "few-steps", "default"])
@pytest.mark.parametrize("variant", INFERENCE_VARIANTS)
def test_inference_in_blocks_of_steps_equals_the_reference(variant, block, monkeypatch):
    """Under no_grad the C++ loop projects the input a block of steps at a time and keeps
    only the output's sequence (fused._run_inference): with blocks of one step, of a few
    steps and of the default size, two layers, both directions, packed unsorted input, given
    initial states, fused_cpp equals the reference loop to 1e-10 in float64, and the path
    was taken (once per layer and direction)."""
    if block is not None:
        monkeypatch.setattr(fused, "INFERENCE_BLOCK_BYTES", block)
    calls = _spy_inference(monkeypatch)
    kw = {"bidirectional": True, "num_layers": 2}
    got = {}
    g = torch.Generator().manual_seed(1)
    x, feed = make_input(7, 4, I, F64, batch_first=False, packed=True, generator=g)
    for backend in ("reference", "fused_cpp"):
        m = _build(variant, backend, **kw).eval()
        hx = tuple(torch.randn(4, 4, size, dtype=F64, generator=torch.Generator().manual_seed(2))
                   for _, size in m._state_shapes())
        with torch.no_grad():
            out, state = m(feed, hx if len(hx) > 1 else hx[0])
        got[backend] = (output_tensor(out), as_tuple(state))
    assert len(calls) == 4
    (o1, s1), (o2, s2) = got["fused_cpp"], got["reference"]
    assert_close(o1, o2, f"{variant}: output", TOL[F64])
    for a, b in zip(s1, s2, strict=True):
        assert_close(a, b, f"{variant}: final state", TOL[F64])


@pytest.mark.parametrize("variant", ["lstm", "lstm-proj-peephole", "lstm-layer-norm", "gru",
                                     "rnn-tanh"])
def test_inference_in_blocks_with_steps_cut_into_parts(variant, monkeypatch):
    """The inference path with two threads, B = 32, H = 112 (a step's rows in two parts at
    once, see test_steps_cut_into_parts_of_rows) and blocks of about three steps, float32:
    equal to torch.nn's forward on the same weights (the plain LSTM, GRU and RNN) or to the
    float64 reference loop (peephole and projection; layer norm with its gains and biases
    drawn away from 1 and 0) within float32 rounding."""
    monkeypatch.setattr(fused, "INFERENCE_BLOCK_BYTES", 3 * 32 * 448 * 4)
    calls = _spy_inference(monkeypatch)
    cls, options = VARIANTS[variant]
    if "proj_size" in options:
        options = {**options, "proj_size": 56}
    torch.manual_seed(0)
    m = cls(8, 112, backend="fused_cpp", **options)
    if options.get("layer_norm"):
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.startswith("ln_"):
                    p.add_(torch.empty_like(p).uniform_(-0.5, 0.5))
    x = torch.randn(9, 32, 8)
    if options:
        ref = cls(8, 112, backend="reference", dtype=F64, **options)
        ref.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
        ref_x = x.double()
    else:
        ref = getattr(nn, cls.__name__)(8, 112)
        ref.load_state_dict(m.state_dict())
        ref_x = x
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            out, _ = m(x)
            want, _ = ref(ref_x)
    finally:
        torch.set_num_threads(before)
    assert calls, "the inference path was not taken"
    assert_close(out.double(), want.double(), variant, TOL[torch.float32])


def test_inference_path_only_when_no_gradient_is_wanted(monkeypatch):
    """The inference path stands aside whenever a gradient may be wanted: grad mode on with
    an input or weight that requires grad, recording, forward-mode AD (which still raises
    as before: the fused Function has no jvp); it is taken under no_grad, inference_mode,
    and with grad mode on for inputs and weights that need no gradient."""
    calls = _spy_inference(monkeypatch)
    m = lstmkit.LSTM(I, H, backend="fused_cpp", dtype=F64)
    x = torch.randn(5, 2, I, dtype=F64)
    out, _ = m(x)                                           # weights require grad
    assert not calls and out.requires_grad
    with torch.no_grad():
        m(x)
    with torch.inference_mode():
        m(x)
    assert len(calls) == 2
    frozen = lstmkit.LSTM(I, H, backend="fused_cpp", dtype=F64).requires_grad_(False)
    out, _ = frozen(x)
    assert len(calls) == 3 and not out.requires_grad
    out, _ = frozen(x.clone().requires_grad_())             # the input needs a gradient
    assert len(calls) == 3 and out.requires_grad
    with lstmkit.record(m) as rec, torch.no_grad():
        m(x)
    assert len(calls) == 3 and rec.layers
    import torch.autograd.forward_ad as fwAD
    with torch.no_grad(), fwAD.dual_level():
        with pytest.raises(NotImplementedError, match="jvp"):
            m(fwAD.make_dual(x, torch.randn_like(x)))
    assert len(calls) == 3


@pytest.mark.parametrize("variant", sorted(SCANNED))
def test_every_scanned_variant(variant):
    """The same matrix without regularisers for the scanned families: two layers, both
    directions, packed unsorted input, given h_0; fused_py (torch's log-space scan) and
    fused_cpp (the C++ kernel) equal the reference loop to 1e-10 in float64."""
    kw = {"bidirectional": True, "num_layers": 2}
    results = {backend: _run(_build(variant, backend, **kw), packed=True)
               for backend in BACKENDS}
    for backend in ("fused_py", "fused_cpp"):
        _compare(results[backend], results["reference"], f"{variant} {backend}")


@pytest.mark.parametrize("variant", ["lstm-nig", "lstm-fgr-peephole", "lstm-layer-norm",
                                     "gru-layer-norm", "clockwork-1-3", "depth-gated",
                                     "mut1", "mut2", "mut3"])
@pytest.mark.parametrize("kernels", ["py", "cpp"])
def test_gradcheck_with_fixed_masks(variant, kernels):
    """gradcheck of one fused layer (both directions' loops: reverse=True) with recurrent
    dropout and zoneout masks fixed; for the Depth-Gated LSTM a layer with a cell below
    (the lower cell's gradient is checked too)."""
    m = _build(variant, "reference", num_layers=2)
    g = torch.Generator().manual_seed(0)
    bs = [3, 3, 2, 1]
    N, B = sum(bs), bs[0]
    layer = 1 if variant == "depth-gated" else 0
    w = m.layer_weights(layer, 0)
    R, n_states = m.output_size, m.cell.n_states
    masks = StepMasks(torch.bernoulli(torch.full((B, R), 0.6, dtype=F64), generator=g) / 0.6,
                      torch.bernoulli(torch.full((N, R), 0.4, dtype=F64), generator=g),
                      torch.bernoulli(torch.full((N, H), 0.4, dtype=F64), generator=g)
                      if n_states == 2 else None)
    kern = loops if kernels == "py" else ops.cpp_kernels(required=True)
    size_in = w.w_ih.shape[1]

    def leaf(*shape):
        return torch.randn(*shape, dtype=F64, generator=g).requires_grad_()
    x = leaf(N, size_in)
    states = tuple(leaf(B, w) for w in (R, H)[:n_states])
    side = (leaf(N, H),) if variant == "depth-gated" else ()
    params = [t.detach().clone().requires_grad_() if t is not None else None for t in
              (*w[:6], *w.extra)]
    present = [p for p in params if p is not None]

    def f(x, *rest):
        k = len(states)
        st, ws, sd = rest[:k], list(rest[k:k + len(present)]), rest[k + len(present):]
        full = [ws.pop(0) if p is not None else None for p in params]
        lw = LayerWeights(*full[:6], extra=tuple(full[6:]))
        out, final, _ = fused.run_layer(m.cell, x, bs, st, lw, reverse=True, kernels=kern,
                                        masks=masks, side=tuple(sd))
        return (out, *final)
    assert torch.autograd.gradcheck(f, (x, *states, *present, *side))


# -- torch.compile and torch.export, every family -------------------------------------------------
FAMILY_MODELS = {
    "lstm-peephole": lambda: lstmkit.LSTM(4, 6, peephole=True),
    "lstm-fgr": lambda: lstmkit.LSTM(4, 6, gate_recurrence=True),
    "lstm-layer-norm": lambda: lstmkit.LSTM(4, 6, layer_norm=True, bidirectional=True),
    "gru-layer-norm": lambda: lstmkit.GRU(4, 6, layer_norm=True, num_layers=2),
    "gru": lambda: lstmkit.GRU(4, 6, reset_after=False),
    "rnn": lambda: lstmkit.RNN(4, 6, nonlinearity="relu"),
    "clockwork": lambda: lstmkit.ClockworkRNN(4, 6, num_modules=3, num_layers=2),
    "depth-gated": lambda: lstmkit.DepthGatedLSTM(4, 6, 3, bidirectional=True),
    "lstm-zoneout-recurrent-dropout": lambda: lstmkit.LSTM(4, 6, zoneout=0.2,
                                                           recurrent_dropout=0.3),
    "mut3": lambda: lstmkit.MUT(4, 6, variant=3, bidirectional=True),
    "slstm": lambda: lstmkit.sLSTM(4, 6, num_heads=2, bidirectional=True),
}


class Model(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.output_size * rnn.num_directions, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(torch.tanh(out))


def _grads(model, x, g, seed):
    x = x.clone().requires_grad_()
    model.zero_grad()
    torch.manual_seed(seed)
    (model(x) * g).sum().backward()
    return [x.grad] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", list(FAMILY_MODELS))
def test_compile_has_no_graph_breaks_and_equals_eager(name):
    torch.manual_seed(0)
    model = Model(FAMILY_MODELS[name]()).train()
    x, g = torch.randn(9, 3, 4), torch.randn(9, 3, 2)
    dynamo.reset()
    explained = dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    ops_used = {str(n.target) for gm in explained.graphs for n in gm.graph.nodes
                if n.op == "call_function"}
    assert any("lstmkit" in op for op in ops_used), ops_used
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.manual_seed(5)
    want = model(x)
    torch.manual_seed(5)
    torch.testing.assert_close(compiled(x), want, rtol=1e-6, atol=1e-6)
    for a, b in zip(_grads(compiled, x, g, 6), _grads(model, x, g, 6), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["lstm-layer-norm", "gru-layer-norm", "clockwork",
                                  "depth-gated", "lstm-fgr", "mut3", "slstm"])
def test_torch_export_of_every_family(name):
    torch.manual_seed(2)
    model = Model(FAMILY_MODELS[name]()).eval()
    x = torch.randn(5, 2, 4)
    exported = torch.export.export(model, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("lstmkit.") for t in targets), targets
    torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-6, atol=1e-6)


# -- memory: the chunked backward for every family ------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: lstmkit.ClockworkRNN(64, 64, num_modules=4, backend="fused_cpp"),
    lambda: lstmkit.DepthGatedLSTM(64, 64, 2, backend="fused_cpp"),
    lambda: lstmkit.LSTM(64, 64, layer_norm=True, backend="fused_cpp"),
], ids=["clockwork", "depth-gated", "layer-norm"])
def test_chunked_backward_lowers_peak_memory(make, monkeypatch):
    """The backward of every family runs in time chunks (up to 8): its peak training
    memory is below that of the same step with the whole sequence as one chunk."""
    from lstmkit import bench
    m = make()
    inp = bench.make_inputs(bench.Config("lstm", 200, 16, 64))
    bench.train_step(m, inp)          # a first call may measure the GEMM routes (gemm.py)
    chunked = bench.train_step_peak_mb(m, inp)
    monkeypatch.setattr(fused, "MAX_CHUNKS", 1)
    whole = bench.train_step_peak_mb(m, inp)
    assert chunked < 0.9 * whole, (chunked, whole)


@pytest.mark.parametrize("variant", ["", "peephole", "coupled"])
def test_lstm_backward_in_longer_chunks_under_torch_memory(variant):
    """The LSTM's backward takes chunks of ≥ 4·MIN_CHUNK_ROWS rows (fewer fixed costs; its
    peak memory stays well under torch.nn.LSTM's), with a projection the default ≥ 1·
    (torch.nn's projected LSTM keeps less); a 1,600-row layer is one chunk, and a training
    step at (100,16,128) still needs under 0.8 of torch.nn's peak memory."""
    from lstmkit import bench
    cfg = bench.Config("lstm", 100, 16, 128, variant=variant)
    ours, theirs = bench.build_models(cfg, "fused_cpp")
    scale = ours.cell.fused.chunk_scale(ours.cell, ours.layer_weights(0, 0))
    assert scale == 4 and len(fused.backward_chunks([16] * 100, False, scale)) == 1
    assert len(fused.backward_chunks([16] * 100, False)) > 2
    projected = lstmkit.LSTM(8, 8, proj_size=4)
    assert projected.cell.fused.chunk_scale(projected.cell, projected.layer_weights(0, 0)) == 1
    inp = bench.make_inputs(cfg)
    bench.train_step(ours, inp)       # a first call may measure the GEMM routes (gemm.py)
    assert bench.train_step_peak_mb(ours, inp) < 0.8 * bench.train_step_peak_mb(theirs, inp)


@pytest.mark.parametrize("size", [(100, 16, 128), (25, 64, 512)])
def test_layer_norm_lstm_training_under_torch_lstm_memory(size):
    """The LN-LSTM keeps ĥ, x̂ and ĉ per row beside the gates and takes backward chunks of
    ≥ 2·MIN_CHUNK_ROWS rows; a training step still peaks under torch.nn.LSTM's memory of the
    same size (0.96 and 0.81 of it when written; with chunks of 4· it was 1.17 at
    (100,16,128))."""
    from lstmkit import bench
    T, B, H = size
    ours = lstmkit.LSTM(H, H, layer_norm=True, backend="fused_cpp")
    assert ours.cell.fused.chunk_scale(ours.cell, ours.layer_weights(0, 0)) == 2
    inp = bench.make_inputs(bench.Config("lstm", T, B, H))
    bench.train_step(ours, inp)       # a first call may measure the GEMM routes (gemm.py)
    assert bench.train_step_peak_mb(ours, inp) < bench.train_step_peak_mb(nn.LSTM(H, H), inp)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_weight_layouts_kept_for_one_backward_only(cell, monkeypatch):
    """The C++ loop lays W_hh out once per layer backward and reuses it in every time chunk
    (keep_weight_layouts). The layouts are freed when the backward ends, so a weight changed
    in place between steps (an optimizer's step: same storage, new values) is laid out
    again: the gradients of both steps equal the float64 reference's, every chunk's calls
    saw the same layouts, and none is kept afterwards."""
    make = {"lstm": lstmkit.LSTM, "gru": lstmkit.GRU, "rnn": lstmkit.RNN}[cell]
    monkeypatch.setattr(fused, "MIN_CHUNK_ROWS", 128)      # the LSTM's chunks: ≥ 4·128 rows
    torch.manual_seed(0)
    ours = make(6, 24, backend="fused_cpp")
    ref = make(6, 24, backend="reference", dtype=torch.float64)
    ref.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    kernels = ops.kernels_for("fused_cpp", ours.cell, torch.empty(0))
    calls, kept = [], []
    real_backward = kernels.backward

    def backward(*args):
        calls.append(1)
        real_backward(*args)
        kept.append(kernels.module.kept_weight_layouts())
    monkeypatch.setattr(kernels, "backward", backward)
    x = torch.randn(150, 8, 6, dtype=torch.float64)             # 1,200 rows: several chunks
    for step in range(2):
        for m in (ours, ref):
            m.zero_grad()
            out, _ = m(x.to(m.weight_hh_l0.dtype))
            (out * torch.linspace(-1, 1, 24, dtype=out.dtype)).sum().backward()
        for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
            # float32 against float64 over 150 steps: gradients up to ~30
            assert_close(p.grad.double(), q.grad, f"step {step} grad {name}", 1e-4)
        with torch.no_grad():                                   # in place, as an optimizer
            for p, q in zip(ours.parameters(), ref.parameters()):
                p.mul_(0.5).add_(0.01)
                q.mul_(0.5).add_(0.01)
    scale = ours.cell.fused.chunk_scale(ours.cell, ours.layer_weights(0, 0))
    chunks = len(fused.backward_chunks([8] * 150, reverse=False, scale=scale))
    assert chunks > 2 and len(calls) == 2 * chunks
    assert kept[0] >= 1 and len(set(kept)) == 1         # laid out in the first chunk, reused
    assert kernels.module.kept_weight_layouts() == 0


# -- summary, registry ----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_summary_lists_every_parameter(variant):
    m = _build(variant, "auto", num_layers=2, bidirectional=variant not in SQUARE,
               bias=variant not in ("gru", "mut2"))
    text = lstmkit.summary(m)
    rows = [ln.split() for ln in text.splitlines() if ln[:1].isdigit()]
    listed = sum(int(r[-1].replace(",", "")) for r in rows)
    assert listed == lstmkit.count_parameters(m), text
    shown = {"weight_hr": "W_hr"}              # the gate rows show W_ih, W_hh, biases, peephole
    for name, _ in m.named_parameters():
        base = name.rsplit("_l", 1)[0]
        if base not in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "peephole"):
            assert shown.get(base, base) in text, f"{base} missing from the summary of {variant}"
    assert f"total parameters: {lstmkit.count_parameters(m):,}" in text


def test_every_family_has_its_kernels_and_op():
    cells = [_build(v, "auto").cell for v in VARIANTS]
    cells.append(lstmkit.cells.grid.grid2d_spec())   # GridLSTM: its own module (test_grid.py)
    assert {c.family for c in cells} == set(families())
    cpp = ops.cpp_kernels(required=True).module
    assert {c.fused.cpp for c in cells if c.scan is None} == set(cpp.families())
    assert all(c.fused is None for c in cells if c.scan is not None)   # scanned: their own
    assert hasattr(cpp, "minrnn_forward") and hasattr(cpp, "minrnn_backward")   # kernel
    from lstmkit.ops import library
    for family in {c.family for c in cells if c.scan is None}:
        assert hasattr(torch.ops.lstmkit, f"{family}_layer")
        assert library.make_layer_op(family) is library.make_layer_op(family)


def test_one_autograd_function_and_one_dispatch():
    """Every family's fused layer is the one RecurrentFunction."""
    for variant in ("lstm-layer-norm", "clockwork", "depth-gated", "gru", "lstm-nig"):
        m = _build(variant, "fused_py", num_layers=2)
        out = m(torch.randn(4, 2, I, dtype=F64))[0]
        node = out.grad_fn
        while node is not None and "RecurrentFunction" not in type(node).__name__:
            node = node.next_functions[0][0] if node.next_functions else None
        assert node is not None, variant


@pytest.mark.parametrize("make", [
    lambda: lstmkit.ClockworkRNN(3, 4, num_modules=2, bidirectional=True),
    lambda: lstmkit.DepthGatedLSTM(3, 4, 2),
    lambda: lstmkit.LSTM1997(3, 4, num_layers=2),
    lambda: lstmkit.GRU(3, 4, zoneout=0.3),
], ids=["clockwork", "depth-gated", "lstm1997", "gru-zoneout"])
def test_onnx_export_unrolls_cells_without_an_onnx_operator(make, tmp_path):
    """Families without an ONNX operator (and zoneout's test-time mix) export as their
    reference equations in plain ONNX operators; onnxruntime computes the same outputs."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from lstmkit.interop.onnx import export
    torch.manual_seed(0)
    m = make().eval()
    x = torch.randn(5, 2, 3)
    path = export(m, (x,), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = m(x)[0]
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-5)
