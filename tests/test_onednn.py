"""backend="onednn" (oneDNN's RNN primitives from the optional wheel) against the float64
reference loop: outputs, final states and every gradient, for every configuration it takes;
what ``auto`` picks and where it falls back; the errors of an explicit choice; and torch's
own LSTM (which links its own oneDNN) unchanged in the same process."""

from __future__ import annotations

import pytest
import torch
from helpers import as_tuple, assert_close, make_input, output_tensor

import lstmkit
from lstmkit import ops
from lstmkit.ops import fused, onednn

REASON = onednn.unavailable_reason()
needs_onednn = pytest.mark.skipif(REASON is not None, reason=f"oneDNN backend: {REASON}")

I, H, P = 4, 5, 3
TOL = 1e-5                  # float32 (oneDNN) against float64 (reference)

VARIANTS = {
    "lstm": lambda **kw: lstmkit.LSTM(I, H, **kw),
    "lstm_peephole": lambda **kw: lstmkit.LSTM(I, H, peephole=True, **kw),
    "lstm_proj": lambda **kw: lstmkit.LSTM(I, H, proj_size=P, **kw),
    "lstm_proj_peephole_nobias": lambda **kw: lstmkit.LSTM(I, H, proj_size=P, peephole=True,
                                                           bias=False, **kw),
    "gru": lambda **kw: lstmkit.GRU(I, H, **kw),
    "gru_nobias": lambda **kw: lstmkit.GRU(I, H, bias=False, **kw),
    "rnn_tanh": lambda **kw: lstmkit.RNN(I, H, **kw),
    "rnn_relu": lambda **kw: lstmkit.RNN(I, H, nonlinearity="relu", **kw),
    "rnn_tanh_nobias": lambda **kw: lstmkit.RNN(I, H, bias=False, **kw),
}
FORMS = {                   # (module keywords, initial states given)
    "plain": ({}, False),
    "hx": ({}, True),
    "bi-2layers-hx": ({"bidirectional": True, "num_layers": 2}, True),
    "2layers-batch_first": ({"num_layers": 2, "batch_first": True}, False),
}


def _twins(variant: str, backend: str = "onednn", **kw):
    """A float64 reference module and a float32 one with the same weights."""
    torch.manual_seed(0)
    ref = VARIANTS[variant](dtype=torch.float64, backend="reference", **kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(-0.7, 0.7)                 # peepholes away from zero
    ours = VARIANTS[variant](backend=backend, **kw)
    ours.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    return ref, ours


def _run(model, dtype, given_hx: bool, T: int = 6, B: int = 3, packed: bool = False):
    g = torch.Generator().manual_seed(1)
    x, feed = make_input(T, B, I, torch.float64, batch_first=model.batch_first,
                         packed=packed, generator=g)
    if dtype != torch.float64:                    # the same numbers, as a float32 leaf
        x = x.detach().to(dtype).requires_grad_()
        feed = x if not packed else make_input(T, B, I, dtype, batch_first=model.batch_first,
                                                packed=True, generator=g)[1]
    n = model.num_layers * model.num_directions
    hx = tuple(torch.randn(n, B, size, dtype=torch.float64, generator=g).to(dtype)
               .requires_grad_() for _, size in model._state_shapes()) if given_hx else ()
    out, state = model(feed, (hx if len(hx) == 2 else hx[0]) if hx else None)
    state = as_tuple(state)
    _backward_with_random_grads(out, state, seed=2)
    return x, hx, out, state


def _backward_with_random_grads(out, states, seed: int) -> None:
    """loss = <out, g> + Σ <state_k, g_k>, the same g (drawn in float64) for every dtype."""
    g = torch.Generator().manual_seed(seed)
    tensors = [output_tensor(out), *states]
    loss = sum((t * torch.randn(t.shape, dtype=torch.float64, generator=g).to(t.dtype)).sum()
               for t in tensors)
    loss.backward()


def _compare(ref_run, our_run, ref, ours, tol: float = TOL) -> None:
    (x1, hx1, out1, st1), (x2, hx2, out2, st2) = ref_run, our_run
    assert_close(output_tensor(out2).double(), output_tensor(out1), "output", tol)
    for a, b in zip(st2, st1, strict=True):
        assert_close(a.double(), b, "final state", tol)
    assert_close(x2.grad.double(), x1.grad, "grad input", tol)
    for a, b in zip(hx2, hx1, strict=True):
        assert_close(a.grad.double(), b.grad, "grad initial state", tol)
    mine = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        assert mine[name].grad is not None, f"no gradient for {name}"
        assert_close(mine[name].grad.double(), p.grad, f"grad {name}", tol)


class _Spy:
    """Counts the calls of oneDNN's extension (forward by training flag, backward)."""

    def __init__(self, real):
        self.real, self.forward_calls, self.backward_calls = real, [], 0

    def forward(self, *args):
        self.forward_calls.append(args[2])
        return self.real.forward(*args)

    def backward(self, *args):
        self.backward_calls += 1
        return self.real.backward(*args)


@pytest.fixture
def spy(monkeypatch):
    s = _Spy(onednn.module())
    monkeypatch.setattr(onednn, "module", lambda: s)
    return s


# -- parity --------------------------------------------------------------------------------------
@needs_onednn
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_onednn_equals_reference(variant, form, spy):
    kw, given_hx = FORMS[form]
    ref, ours = _twins(variant, **kw)
    _compare(_run(ref, torch.float64, given_hx), _run(ours, torch.float32, given_hx), ref, ours)
    layers = ours.num_layers * ours.num_directions
    assert spy.forward_calls == [True] * layers and spy.backward_calls == layers


@needs_onednn
@pytest.mark.parametrize("T,B", [(1, 3), (6, 1), (1, 1)])
@pytest.mark.parametrize("variant", ["lstm_peephole", "lstm_proj", "gru", "rnn_relu"])
def test_onednn_single_step_and_single_sequence(variant, T, B):
    ref, ours = _twins(variant, bidirectional=True)
    _compare(_run(ref, torch.float64, True, T=T, B=B), _run(ours, torch.float32, True, T=T, B=B),
             ref, ours)


@needs_onednn
def test_onednn_gradients_of_some_inputs_only():
    """Only the weights need gradients (a frozen input): the others come back as None."""
    ref, ours = _twins("gru")
    x = torch.randn(5, 2, I)
    out, h = ours(x)
    (out.sum() + h.sum()).backward()
    assert x.grad is None
    refo, refh = ref(x.double())
    (refo.sum() + refh.sum()).backward()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert_close(p.grad.double(), q.grad, f"grad {name}", TOL)


@needs_onednn
@pytest.mark.parametrize("variant", ["lstm_proj_peephole_nobias", "gru", "rnn_tanh"])
def test_inference_path_equals_training_path(variant, spy):
    """no_grad runs oneDNN's forward_inference (nothing kept): the same numbers as
    forward_training, and both as the reference."""
    ref, ours = _twins(variant, bidirectional=True)
    x = torch.randn(7, 2, I, dtype=torch.float64)
    with torch.no_grad():
        out_i, st_i = ours(x.float())
        out_r, st_r = ref(x)
    assert spy.forward_calls == [False, False] and out_i.grad_fn is None
    out_t, st_t = ours(x.float())
    assert spy.forward_calls[2:] == [True, True] and out_t.grad_fn is not None
    assert_close(out_i, out_t, "inference vs training output", 1e-6)
    for a, b, c in zip(as_tuple(st_i), as_tuple(st_t), as_tuple(st_r)):
        assert_close(a, b, "inference vs training final state", 1e-6)
        assert_close(a.double(), c, "inference final state vs reference", TOL)
    assert_close(out_i.double(), out_r, "inference output vs reference", TOL)


@needs_onednn
def test_double_backward_goes_through_the_reference():
    """create_graph=True: the gradient is itself differentiable (by the reference loop)."""
    ref, ours = _twins("lstm_peephole")
    x64 = torch.randn(4, 2, I, dtype=torch.float64, requires_grad=True)
    x32 = x64.detach().float().requires_grad_()
    grads = []
    for model, x in ((ref, x64), (ours, x32)):
        out, _ = model(x)
        (gx,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        gx.pow(2).sum().backward()
        grads.append((gx, model.peephole_l0.grad))
    for a, b in zip(grads[1], grads[0]):
        assert_close(a.double(), b, "double backward", 1e-4)


# -- dispatch ------------------------------------------------------------------------------------
BIG = {"x": torch.randn(4 * 64, 3), "batch_sizes": [64] * 4, "hidden": 128}   # B·H = 8192


@needs_onednn
@pytest.mark.parametrize("variant", ["lstm", "lstm_peephole", "lstm_proj", "gru", "rnn_tanh",
                                     "rnn_relu"])
def test_auto_picks_onednn_where_it_measured_better(variant):
    """Training: oneDNN only for the plain LSTM from B·H = 4096 (the C++ engine is as fast
    for the other kinds and holds less memory than torch.nn, oneDNN's workspace more);
    inference: every kind from B·H = 1024."""
    cell = VARIANTS[variant]().cell
    proj = variant == "lstm_proj"

    def select(x, batch_sizes, hidden=None):
        return ops.select_backend("auto", cell, x, batch_sizes, hidden=hidden, projected=proj)
    chosen = select(BIG["x"], BIG["batch_sizes"], BIG["hidden"])
    assert (chosen is onednn.run_layer) == (variant == "lstm")
    if variant != "lstm":                                      # the C++ engine instead
        assert chosen.func is fused.run_layer
    assert select(BIG["x"][:12], [3] * 4, 5) is not onednn.run_layer     # per-call cost wins
    assert select(BIG["x"], BIG["batch_sizes"]) is not onednn.run_layer  # unknown hidden size
    assert select(BIG["x"][:64], [16] * 4, 64) is not onednn.run_layer   # B·H = 1024 < 4096
    with torch.no_grad():                                                # inference: from 1024
        assert select(BIG["x"][:64], [16] * 4, 64) is onednn.run_layer
        assert select(BIG["x"][:64], [16] * 4, 63) is not onednn.run_layer
        assert select(BIG["x"][:4], [1] * 4, 64) is not onednn.run_layer   # B = 1


@needs_onednn
def test_auto_training_memory_against_torch_and_onednn():
    """What auto runs in training holds less memory than oneDNN's training workspace (the
    profiler's count of torch's allocations in one step, as ``lstmkit bench``): the GRU
    stays under torch.nn's peak, the RNN within 1.3× of it (its output, the output's and
    the input's gradient as in torch.nn, plus one backward chunk's gate gradients), where
    oneDNN's workspace held 2× and 3.6× torch.nn's."""
    from lstmkit import bench
    T, B, Hs = 30, 32, 64                                       # B·H = 2048
    for cls, base, bound in ((lstmkit.GRU, torch.nn.GRU, 1.0), (lstmkit.RNN, torch.nn.RNN, 1.3)):
        torch.manual_seed(0)
        models = {"auto": cls(Hs, Hs), "onednn": cls(Hs, Hs, backend="onednn"),
                  "torch": base(Hs, Hs)}
        x = torch.randn(T, B, Hs, requires_grad=True)
        peaks = {}
        for name, m in models.items():
            m(x)[0].sum().backward()                            # first calls: builds, routes
            m.zero_grad(set_to_none=True)
            x.grad = None
            peaks[name] = bench.peak_memory_mb(lambda m=m, x=x: m(x)[0].sum().backward())
        assert peaks["auto"] <= bound * peaks["torch"], (cls.__name__, peaks)
        assert peaks["auto"] < 0.6 * peaks["onednn"], (cls.__name__, peaks)


@needs_onednn
@pytest.mark.parametrize("case", ["packed", "record", "zoneout", "recurrent_dropout",
                                  "float64", "gru_reset_before", "coupled", "layer_norm",
                                  "greff_nfg"])
def test_auto_falls_back_where_onednn_cannot_run(case, monkeypatch):
    """The layer function ``select_backend`` returns, and the results (against the float64
    reference), for every configuration oneDNN does not take, at a size where auto would
    otherwise pick it."""
    B, Hb, T = 33, 128, 3                          # B·H above every AUTO_MIN_BH
    kw = {"coupled": {"coupled": True}, "layer_norm": {"layer_norm": True},
          "greff_nfg": {"forget_gate": False}, "zoneout": {"zoneout": 0.2},
          "recurrent_dropout": {"recurrent_dropout": 0.3}}.get(case, {})
    cls = lstmkit.GRU if case == "gru_reset_before" else lstmkit.LSTM
    if case == "gru_reset_before":
        kw = {"reset_after": False}
    dtype = torch.float64 if case == "float64" else torch.float32
    torch.manual_seed(0)
    ours = cls(I, Hb, dtype=dtype, **kw).train(case in ("zoneout", "recurrent_dropout"))
    ref = cls(I, Hb, dtype=torch.float64, backend="reference", **kw).train(ours.training)
    ref.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    chosen = []
    real = ops.select_backend

    def select(*args, **kwargs):
        chosen.append(real(*args, **kwargs))
        return chosen[-1]
    monkeypatch.setattr(ops, "select_backend", select)
    x = torch.randn(T, B, I, dtype=torch.float64)
    feed = (torch.nn.utils.rnn.pack_padded_sequence(x, [T] * (B - 1) + [1])
            if case == "packed" else x)
    if case == "record":
        with lstmkit.record(ours) as rec:
            out, _ = ours(feed.to(dtype))
        assert len(rec.layers) == 1
    else:
        torch.manual_seed(5)                       # the same masks in both
        out, _ = ours(feed.to(dtype))
    torch.manual_seed(5)
    out_ref, _ = ref(feed)
    assert chosen and all(fn is not onednn.run_layer for fn in chosen)
    tol = 1e-10 if dtype == torch.float64 else TOL
    assert_close(output_tensor(out).double(), output_tensor(out_ref), "output", tol)


@needs_onednn
@pytest.mark.parametrize("grad", [True, False])
def test_auto_with_onednn_equals_reference_and_uses_it(spy, grad):
    """Layers large enough for auto to choose oneDNN (a plain LSTM in training, B·H =
    4096; a GRU under no_grad, B·H = 1280): same numbers as the reference."""
    torch.manual_seed(0)
    make, B = (lambda **kw: lstmkit.LSTM(I, 64, **kw), 64) if grad else \
        (lambda **kw: lstmkit.GRU(I, 32, **kw), 40)
    ref = make(dtype=torch.float64, backend="reference")
    auto = make()
    auto.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x = torch.randn(3, B, I, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        out, h = auto(x.float())
    out_ref, h_ref = ref(x)
    assert spy.forward_calls == [grad]
    h, h_ref = (h[0], h_ref[0]) if grad else (h, h_ref)
    assert_close(out.double(), out_ref, "output", TOL)
    assert_close(h.double(), h_ref, "final state", TOL)


def test_auto_unchanged_without_onednn(monkeypatch):
    monkeypatch.setenv(onednn.ENV_DISABLE_AUTO, "1")
    cell = lstmkit.GRU(3, 32).cell
    chosen = ops.select_backend("auto", cell, BIG["x"], BIG["batch_sizes"], hidden=32)
    assert chosen is not onednn.run_layer


@pytest.mark.parametrize("case,match", [
    ("packed", "padded input"), ("float64", "CPU float32"), ("coupled", "coupled=True"),
    ("layer_norm", "layer_norm=True"), ("gru_reset_before", "reset_after=True"),
    ("zoneout", "recurrent masks"), ("record", "record"),
])
def test_explicit_onednn_says_why_it_cannot_run(case, match):
    x, padded = torch.randn(6, 2), [3, 3]
    specs = {"coupled": lstmkit.LSTM(2, 3, coupled=True).cell,
             "layer_norm": lstmkit.LSTM(2, 3, layer_norm=True).cell,
             "gru_reset_before": lstmkit.GRU(2, 3, reset_after=False).cell}
    cell = specs.get(case, lstmkit.LSTM(2, 3).cell)
    kw = {"zoneout": {"masked": True}, "record": {"recording": True}}.get(case, {})
    bs = [2, 2, 1, 1] if case == "packed" else padded
    x = x.double() if case == "float64" else x
    with pytest.raises(onednn.OneDNNUnavailable, match=match):
        ops.select_backend("onednn", cell, x, bs, **kw)


def test_explicit_onednn_without_the_wheel(monkeypatch):
    """The wheel missing: an explicit choice names the package to install; auto runs as
    before."""
    monkeypatch.setattr(onednn, "_install",
                        lambda: "the wheel onednn-cpu-gomp is not installed; "
                                + onednn.INSTALL_HINT)
    monkeypatch.setattr(onednn, "_loaded", [])
    cell = lstmkit.LSTM(3, 32).cell
    with pytest.raises(onednn.OneDNNUnavailable, match=r"lstmkit\[onednn\]"):
        ops.select_backend("onednn", cell, BIG["x"], BIG["batch_sizes"])
    chosen = ops.select_backend("auto", cell, BIG["x"], BIG["batch_sizes"], hidden=32)
    assert chosen is ops.native.run_layer
    m = lstmkit.LSTM(3, 4, backend="onednn")
    with pytest.raises(onednn.OneDNNUnavailable, match="onednn-cpu-gomp"):
        m(torch.randn(2, 1, 3))


def test_backend_name_is_accepted():
    assert "onednn" in ops.BACKENDS and ops.check_backend("onednn") == "onednn"


# -- the gate layouts, without oneDNN ----------------------------------------------------------
def test_gru_layout_round_trip():
    """torch's r, z, n rows to oneDNN's u, r, o and the 4-block bias, and the gradients
    back: the adjoint of the forward map (⟨map(w), g⟩ = ⟨w, map'(g)⟩)."""
    from lstmkit.cells.base import LayerWeights
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(s, dtype=torch.float64, generator=g, requires_grad=True)
         for s in ((3 * H, I), (3 * H, H), (3 * H,), (3 * H,))]
    out = onednn.to_onednn("lbr_gru", LayerWeights(*w), H)
    assert torch.equal(out[0][:H], w[0][H:2 * H]) and torch.equal(out[0][H:2 * H], w[0][:H])
    assert torch.equal(out[2][3 * H:], w[3][2 * H:])               # b_hn inside r ⊙ (·)
    grads_out = [torch.randn(o.shape, dtype=torch.float64, generator=g) for o in out]
    expected = torch.autograd.grad(out, w, grads_out)
    mapped = onednn.from_onednn("lbr_gru", *grads_out, H)
    for a, b, name in zip(mapped, expected, ("w_ih", "w_hh", "b_ih", "b_hh")):
        assert_close(a, b, f"grad {name}", 0)


# -- coexistence with torch's own oneDNN -----------------------------------------------------------
@needs_onednn
def test_torch_lstm_unchanged_with_our_onednn_loaded():
    """torch.nn.LSTM (torch's internal oneDNN, training and inference) still computes the
    LSTM after our libdnnl ran in the same process, interleaved with it: against the
    float64 reference."""
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(I, 16, num_layers=2)
    ours = lstmkit.LSTM.from_torch(theirs, backend="onednn")
    ref = lstmkit.LSTM.from_torch(theirs, backend="reference").double()
    x = torch.randn(9, 8, I, dtype=torch.float64)
    for _ in range(2):
        results = []
        for model, dtype in ((ours, torch.float32), (theirs, torch.float32),
                             (ref, torch.float64)):
            model.zero_grad()
            xx = x.to(dtype).detach().requires_grad_()
            out, (h, c) = model(xx)
            (out.sum() + h.sum() + c.sum()).backward()
            with torch.no_grad():
                out_inf = model(x.to(dtype))[0]
            results.append((out, h, c, out_inf, xx.grad, model.weight_hh_l1.grad))
        for mine, torch_nn, exact in zip(*results):
            assert_close(torch_nn.double(), exact, "torch.nn.LSTM", TOL)
            assert_close(mine.double(), exact, "lstmkit onednn", TOL)


@needs_onednn
def test_thread_count_changes_between_calls():
    """Primitives are made per thread count (oneDNN sizes them for it): the same numbers
    after ``torch.set_num_threads`` changes, and as the reference."""
    ref, ours = _twins("gru")
    x = torch.randn(5, 8, I, dtype=torch.float64)
    expected = ref(x)[0]
    before = torch.get_num_threads()
    try:
        for threads in (2, 1, 2):
            torch.set_num_threads(threads)
            out, h = ours(x.float())
            h.sum().backward()
            assert_close(out.double(), expected, f"output with {threads} threads", TOL)
    finally:
        torch.set_num_threads(before)


@needs_onednn
@pytest.mark.filterwarnings("ignore")          # trace's and dynamo's own warnings
def test_trace_refused_and_compile_runs():
    """torch.jit.trace cannot record the library call (a clear error); torch.compile runs
    it as an opaque call (graph break) with the same numbers."""
    m = lstmkit.GRU(I, 8, backend="onednn")
    x = torch.randn(5, 3, I, requires_grad=True)
    with pytest.raises(onednn.OneDNNUnavailable, match="torch.jit.trace"):
        torch.jit.trace(m, x)
    expected = m(x)[0]
    out = torch.compile(m)(x)[0]
    assert_close(out, expected, "compiled output", 0)
    out.sum().backward()
    assert x.grad is not None and m.weight_hh_l0.grad is not None


@needs_onednn
@pytest.mark.parametrize("make", [
    lambda **kw: lstmkit.LSTM(64, 64, **kw),
    lambda **kw: lstmkit.LSTM(64, 64, peephole=True, proj_size=32, **kw),
    lambda **kw: lstmkit.GRU(64, 64, bidirectional=True, **kw),
    lambda **kw: lstmkit.RNN(64, 64, **kw),
], ids=["lstm", "lstm-peephole-proj", "gru-bi", "rnn"])
def test_onednn_equals_reference_at_a_realistic_size(make, spy):
    """oneDNN picks other kernels at realistic sizes than at H = 5: (T, B, H) = (3, 16, 64),
    torch's default initialisation, outputs and every gradient against float64."""
    torch.manual_seed(0)
    ours = make(backend="onednn")
    ref = make(backend="reference", dtype=torch.float64)
    ref.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    x = torch.randn(3, 16, 64, requires_grad=True)
    xr = x.detach().double().requires_grad_()
    out, st = ours(x)
    out_r, st_r = ref(xr)
    _backward_with_random_grads(out, as_tuple(st), seed=3)
    _backward_with_random_grads(out_r, as_tuple(st_r), seed=3)
    assert_close(out.double(), out_r, "output", 1e-5)
    assert_close(x.grad.double(), xr.grad, "grad input", 1e-5)
    mine = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        assert_close(mine[name].grad.double(), p.grad, f"grad {name}", 1e-4)
    assert spy.backward_calls == ours.num_layers * ours.num_directions


@needs_onednn
def test_onednn_refuses_tensors_of_the_wrong_size():
    """The extension checks every tensor against the primitive's descriptor (module callers
    always pass the right sizes; onednn.run_layer is public)."""
    m = onednn.module()
    T, B, Hs = 2, 2, 4
    x = torch.randn(T, B, Hs)
    h0 = torch.zeros(B, Hs)
    c0 = torch.zeros(B, Hs)
    w_l, w_i, bias = torch.randn(4 * Hs, Hs), torch.randn(4 * Hs, Hs), torch.zeros(4 * Hs)
    empty = torch.empty(0)
    kind = onednn.KINDS["lstm"]
    y = m.forward(kind, False, False, x, h0, c0, w_l, w_i, bias, empty, empty)[0]
    assert y.shape == (T, B, Hs)
    with pytest.raises(RuntimeError, match="expects"):
        m.forward(kind, False, False, x, h0, c0, w_l, w_i, torch.zeros(1), empty, empty)
    with pytest.raises(RuntimeError, match="expects"):
        m.forward(kind, False, False, x, torch.zeros(1, Hs), c0, w_l, w_i, bias, empty, empty)
    with pytest.raises(RuntimeError, match="W_hh must be"):
        m.forward(kind, False, False, x, h0, c0, w_l, torch.randn(4 * Hs + 1, Hs), bias,
                  empty, empty)
