"""Regularisers: zoneout (Krueger et al. 2016), variational dropout (Gal & Ghahramani 2016),
DropConnect on W_hh (Merity et al. 2017).

Outside references: torch.nn.LSTMCell/GRUCell/RNNCell and NumPy driven by hand with the
masks the module sampled, torch.autograd.gradcheck, and the backends compared as pairs
with the same masks (same seed)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
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
from lstmkit.cells import gru_spec, lstm_spec, rnn_spec
from lstmkit.cells.base import LayerWeights
from lstmkit.ops import fused, loops, native
from lstmkit.ops.masks import StepMasks

F64 = torch.float64
ALL_ON = {"zoneout": 0.3, "input_dropout": 0.25, "recurrent_dropout": 0.4,
          "weight_dropout": 0.3}
FAMILIES = {"lstm": lstmkit.LSTM, "gru": lstmkit.GRU, "rnn": lstmkit.RNN}


@pytest.fixture
def spy(monkeypatch):
    """Records what every layer call received: the (dropped) input, weights and masks."""
    calls: list[SimpleNamespace] = []
    real = lstmkit.ops.select_backend

    def select(*args, **kwargs):
        fn = real(*args, **kwargs)

        def run(cell, x, batch_sizes, state0, w, **kw):
            calls.append(SimpleNamespace(fn=fn, x=x, w=w, masks=kw.get("masks"),
                                         batch_sizes=batch_sizes))
            return fn(cell, x, batch_sizes, state0, w, **kw)
        return run

    monkeypatch.setattr(lstmkit.ops, "select_backend", select)
    return calls


def _module(family, I, H, backend="reference", dtype=F64, **kw):
    torch.manual_seed(0)
    return FAMILIES[family](I, H, dtype=dtype, backend=backend, **kw)


# -- masks: shapes, once per sequence, rates ------------------------------------------------
def test_masks_once_per_sequence_and_zoneout_per_step(spy):
    T, B, I, H = 6, 3, 4, 5
    m = _module("lstm", I, H, num_layers=2, bidirectional=True, **ALL_ON)
    x = torch.randn(T, B, I, dtype=F64)
    m(x)
    assert len(spy) == 4                                       # 2 layers × 2 directions
    for call in spy:
        if call.x.shape[1] == I:                               # first layer: x_in = m_x ⊙ x
            kept = call.x.view(T, B, I) != 0
            assert torch.equal(kept, kept[:1].expand_as(kept)), "input mask changes in time"
            assert_close(call.x.view(T, B, I), x * kept / 0.75, "x_in", 1e-15)
        masks = call.masks
        assert masks.h_drop.shape == (B, H)
        assert set(masks.h_drop.unique().tolist()) <= {0.0, 1 / 0.6}
        assert masks.zone_h.shape == masks.zone_c.shape == (T * B, H)
        steps = masks.zone_h.view(T, B, H)
        assert not torch.equal(steps[0], steps[1]) or not torch.equal(steps[1], steps[2]), \
            "zoneout draws a mask at every step (Krueger et al. 2016, §3)"
    # separate masks per direction and layer
    assert not torch.equal(spy[0].masks.h_drop, spy[1].masks.h_drop)
    assert not torch.equal(spy[0].x, spy[1].x)


def test_packed_masks_one_row_per_sequence(spy):
    from torch.nn.utils.rnn import pack_padded_sequence
    T, B, I, H = 5, 3, 6, 4
    m = _module("gru", I, H, input_dropout=0.5)
    x = torch.randn(T, B, I, dtype=F64) + 3.0                  # no zeros in x
    packed = pack_padded_sequence(x, torch.tensor([5, 2, 4]), enforce_sorted=False)
    m(packed)
    (call,) = spy
    kept = call.x != 0
    assert_close(call.x, packed.data * kept / 0.5, "x_in", 1e-15)
    rows = lstmkit.ops.masks.row_sequences(packed.batch_sizes.tolist(), x.device)
    for b in range(B):
        mine = kept[rows == b]
        assert torch.equal(mine, mine[:1].expand_as(mine)), f"sequence {b}: mask changes"
    assert not torch.equal(kept[rows == 0][0], kept[rows == 1][0])   # one mask per sequence


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_training_rates(spy, p):
    m = _module("lstm", 64, 64, dtype=torch.float32, input_dropout=p, recurrent_dropout=p,
                weight_dropout=p, zoneout=p)
    x = torch.randn(20, 50, 64)
    m(x)
    (call,) = spy
    n_w = call.w.w_hh.numel()
    checks = {
        "input": ((call.x == 0).float().mean(), 50 * 64),       # one mask per sequence
        "recurrent": ((call.masks.h_drop == 0).float().mean(), call.masks.h_drop.numel()),
        "weights": ((call.w.w_hh == 0).float().mean(), n_w),
        "zoneout h": (call.masks.zone_h.mean(), call.masks.zone_h.numel()),
        "zoneout c": (call.masks.zone_c.mean(), call.masks.zone_c.numel()),
    }
    for what, (rate, n) in checks.items():
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(float(rate) - p) < 5 * sigma, f"{what}: rate {float(rate):.4f}, want {p}"
    kept = call.masks.h_drop[call.masks.h_drop != 0]
    assert torch.all(kept == 1 / (1 - p))                      # inverted dropout: E[m] = 1


# -- plain module when off, deterministic under a seed ---------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_zero_rates_and_eval_dropouts_are_the_plain_module(family):
    x = torch.randn(5, 2, 3, dtype=F64)
    plain = _module(family, 3, 4, num_layers=2, dropout=0.0)
    zeros = _module(family, 3, 4, num_layers=2, zoneout=0.0, input_dropout=0.0,
                    recurrent_dropout=0.0, weight_dropout=0.0)
    evald = _module(family, 3, 4, num_layers=2, input_dropout=0.5, recurrent_dropout=0.5,
                    weight_dropout=0.5).eval()
    out, h = plain(x)
    for other in (zeros, evald):
        out2, h2 = other(x)
        assert torch.equal(out, out2)
        assert all(torch.equal(a, b) for a, b in zip(as_tuple(h), as_tuple(h2)))
    assert not torch.equal(out, evald.train()(x)[0])           # and they do act in training


@pytest.mark.parametrize("backend", ["reference", "fused_cpp"])
def test_same_seed_same_output(backend):
    m = _module("lstm", 3, 4, backend=backend, num_layers=2, dropout=0.2, **ALL_ON)
    x = torch.randn(6, 2, 3, dtype=F64)
    torch.manual_seed(7)
    a = m(x)[0]
    torch.manual_seed(7)
    b = m(x)[0]
    c = m(x)[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])                      # eval: deterministic


# -- the equations, by hand -------------------------------------------------------------------
def _cell_from(module, cls):
    cell = cls(module.input_size, module.hidden_size, dtype=F64)
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in module.state_dict().items()})
    return cell


@pytest.mark.parametrize("backend", ["reference", "fused_py", "fused_cpp"])
@pytest.mark.parametrize("training", [True, False])
def test_lstm_by_hand_with_torch_lstmcell(spy, backend, training):
    """Zoneout (Krueger et al. 2016, §3.2) and variational dropout (Gal & Ghahramani 2016)
    with torch.nn.LSTMCell driven by hand: the cell computes (h̃_t, c̃_t) from the dropped
    x_t and h_{t-1}, then the previous states are mixed back in."""
    T, B, I, H = 5, 2, 3, 4
    m = _module("lstm", I, H, backend=backend, zoneout=(0.3, 0.5), input_dropout=0.2,
                recurrent_dropout=0.4).train(training)
    x = torch.randn(T, B, I, dtype=F64)
    out, (h_n, c_n) = m(x)
    (call,) = spy
    masks = call.masks
    x_in = call.x.view(T, B, I)
    if training:
        mx = (x_in[0] != 0) / 0.8
        x_dropped, m_h = x * mx, masks.h_drop
        d_c, d_h = masks.zone_c.view(T, B, H), masks.zone_h.view(T, B, H)
        assert set(d_c.unique().tolist()) <= {0.0, 1.0}
    else:
        x_dropped, m_h = x, torch.ones(B, H, dtype=F64)
        d_c = torch.full((T, B, H), 0.3, dtype=F64)           # the expectation (paper, §3)
        d_h = torch.full((T, B, H), 0.5, dtype=F64)
        assert masks.h_drop is None
    cell = _cell_from(m, nn.LSTMCell)
    h = c = torch.zeros(B, H, dtype=F64)
    outs = []
    with torch.no_grad():
        for t in range(T):
            h_new, c_new = cell(x_dropped[t], (h * m_h, c))
            c = d_c[t] * c + (1 - d_c[t]) * c_new
            h = d_h[t] * h + (1 - d_h[t]) * h_new
            outs.append(h)
    tol = TOL[F64]
    assert_close(out.detach(), torch.stack(outs), "output", tol)
    assert_close(h_n[0].detach(), h, "h_n", tol)
    assert_close(c_n[0].detach(), c, "c_n", tol)


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


@pytest.mark.parametrize("backend", ["reference", "fused_py", "fused_cpp"])
@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_by_hand_numpy(spy, backend, reset_after):
    """GRU with recurrent dropout on h_{t-1} where it meets W_hh (not on the direct path
    z ⊙ h_{t-1}) and zoneout on h, in NumPy."""
    T, B, I, H = 4, 3, 2, 3
    m = _module("gru", I, H, backend=backend, zoneout=0.4, recurrent_dropout=0.5,
                reset_after=reset_after)
    x = torch.randn(T, B, I, dtype=F64)
    out, h_n = m(x)
    (call,) = spy
    mh, d = call.masks.h_drop.numpy(), call.masks.zone_h.view(T, B, H).numpy()
    W_i, W_h = m.weight_ih_l0.detach().numpy(), m.weight_hh_l0.detach().numpy()
    b_i, b_h = m.bias_ih_l0.detach().numpy(), m.bias_hh_l0.detach().numpy()
    h = np.zeros((B, H))
    outs = []
    for t in range(T):
        gx = x[t].numpy() @ W_i.T + b_i
        hd = h * mh
        gh = hd @ W_h.T + b_h
        r = _sigmoid(gx[:, :H] + gh[:, :H])
        z = _sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
        if reset_after:
            n = np.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
        else:
            n = np.tanh(gx[:, 2 * H:] + (r * hd) @ W_h[2 * H:].T + b_h[2 * H:])
        h_tilde = (1 - z) * n + z * h
        h = d[t] * h + (1 - d[t]) * h_tilde
        outs.append(h)
    np.testing.assert_allclose(out.detach().numpy(), np.stack(outs), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(h_n[0].detach().numpy(), h, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("training", [True, False])
def test_rnn_by_hand_with_torch_rnncell(spy, training):
    T, B, I, H = 5, 2, 3, 4
    m = _module("rnn", I, H, backend="fused_cpp", zoneout=0.35,
                recurrent_dropout=0.3).train(training)
    x = torch.randn(T, B, I, dtype=F64)
    out, _ = m(x)
    (call,) = spy
    m_h = call.masks.h_drop if training else torch.ones(B, H, dtype=F64)
    d = call.masks.zone_h.view(T, B, H)
    if not training:
        assert torch.all(d == 0.35)
    cell = _cell_from(m, nn.RNNCell)
    h, outs = torch.zeros(B, H, dtype=F64), []
    with torch.no_grad():
        for t in range(T):
            h = d[t] * h + (1 - d[t]) * cell(x[t], h * m_h)
            outs.append(h)
    assert_close(out.detach(), torch.stack(outs), "output", TOL[F64])


# -- DropConnect ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "fused_cpp"])
def test_dropconnect_masks_the_gradient_and_keeps_the_parameter(spy, backend):
    m = _module("lstm", 3, 4, backend=backend, weight_dropout=0.5)
    before = m.weight_hh_l0.detach().clone()
    version = m.weight_hh_l0._version
    x = torch.randn(5, 2, 3, dtype=F64)
    out, (h_n, c_n) = m(x)
    (call,) = spy
    w_eff = call.w.w_hh
    w_eff.retain_grad()
    backward_with_random_grads(out, (h_n, c_n), seed=3)
    mask = (w_eff.detach() != 0) / 0.5                          # M / (1 − p)
    assert_close(w_eff.detach(), before * mask, "W_hh ⊙ M/(1-p)", 0.0)
    assert 0 < int((mask == 0).sum()) < mask.numel()
    assert m.weight_hh_l0._version == version and torch.equal(m.weight_hh_l0.detach(), before)
    assert torch.all(m.weight_hh_l0.grad[mask == 0] == 0)
    assert_close(m.weight_hh_l0.grad, w_eff.grad * mask, "dW_hh = dW_eff ⊙ M/(1-p)", 1e-12)


# -- backends as pairs, same masks ----------------------------------------------------------
CASES = [
    ("lstm", {}), ("lstm", {"peephole": True}), ("lstm", {"coupled": True, "peephole": True}),
    ("lstm", {"proj_size": 3, "zoneout": (0.2, 0.5)}),
    ("gru", {}), ("gru", {"reset_after": False}),
    ("rnn", {}), ("rnn", {"nonlinearity": "relu"}),
]


def _run(module, feed, seed):
    torch.manual_seed(seed)
    module.zero_grad()
    out, state = module(feed)
    return out, as_tuple(state)


@pytest.mark.parametrize("family,options", CASES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_fused_backends_match_reference(monkeypatch, family, options, packed, chunked,
                                        training):
    if chunked:
        monkeypatch.setattr(fused, "MIN_CHUNK_ROWS", 1)         # backward in many chunks
    kw = {**ALL_ON, **options}
    if family != "lstm":
        kw = {k: v for k, v in kw.items() if k != "proj_size"}
    T, B, I, H = 6, 3, 3, 5
    results = {}
    for backend in ("reference", "fused_py", "fused_cpp"):
        m = _module(family, I, H, backend=backend, num_layers=2, bidirectional=True,
                    dropout=0.3, **kw).train(training)
        x, feed = make_input(T, B, I, F64, batch_first=False, packed=packed,
                             generator=torch.Generator().manual_seed(1))
        out, states = _run(m, feed, seed=11)
        backward_with_random_grads(out, states, seed=2)
        grads = {n: p.grad for n, p in m.named_parameters()}
        results[backend] = (output_tensor(out), states, x.grad, grads)
    ref = results["reference"]
    for backend in ("fused_py", "fused_cpp"):
        got = results[backend]
        tol = TOL[F64]
        assert_close(got[0], ref[0], f"{backend} output", tol)
        for k, (a, b) in enumerate(zip(got[1], ref[1])):
            assert_close(a, b, f"{backend} state {k}", tol)
        assert_close(got[2], ref[2], f"{backend} dx", tol)
        for name, g in ref[3].items():
            assert_close(got[3][name], g, f"{backend} grad {name}", tol)


def test_initial_state_gradients_match(monkeypatch):
    T, B, I, H = 5, 2, 3, 4
    grads = {}
    for backend in ("reference", "fused_py", "fused_cpp"):
        m = _module("lstm", I, H, backend=backend, **ALL_ON)
        h0 = torch.randn(1, B, H, dtype=F64, generator=torch.Generator().manual_seed(4))
        c0 = torch.randn(1, B, H, dtype=F64, generator=torch.Generator().manual_seed(5))
        h0.requires_grad_()
        c0.requires_grad_()
        torch.manual_seed(9)
        out, st = m(torch.randn(T, B, I, dtype=F64, generator=torch.Generator().manual_seed(6)),
                    (h0, c0))
        backward_with_random_grads(out, st, seed=1)
        grads[backend] = (h0.grad, c0.grad)
    for backend in ("fused_py", "fused_cpp"):
        for a, b, what in zip(grads[backend], grads["reference"], ("dh0", "dc0")):
            assert_close(a, b, f"{backend} {what}", TOL[F64])


# -- gradcheck with fixed masks ---------------------------------------------------------------
def _fixed_masks(B, N, R, H, n_states, g):
    return StepMasks(torch.bernoulli(torch.full((B, R), 0.6, dtype=F64), generator=g) / 0.6,
                     torch.bernoulli(torch.full((N, R), 0.4, dtype=F64), generator=g),
                     torch.bernoulli(torch.full((N, H), 0.4, dtype=F64), generator=g)
                     if n_states == 2 else None)


@pytest.mark.parametrize("spec,G", [(lstm_spec(), 4), (gru_spec(), 3),
                                    (gru_spec(reset_after=False), 3), (rnn_spec(), 1)])
@pytest.mark.parametrize("kernels", ["py", "cpp"])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_fixed_masks(spec, G, kernels, reverse):
    g = torch.Generator().manual_seed(0)
    H, I, bs = 3, 2, [3, 3, 2, 1]
    N, B = sum(bs), bs[0]
    kern = loops if kernels == "py" else lstmkit.ops.cpp_kernels(required=True)
    masks = _fixed_masks(B, N, H, H, spec.n_states, g)

    def leaf(*shape):
        return torch.randn(*shape, dtype=F64, generator=g).requires_grad_()
    x, w_ih, w_hh, b_ih, b_hh = leaf(N, I), leaf(G * H, I), leaf(G * H, H), leaf(G * H), \
        leaf(G * H)
    states = tuple(leaf(B, H) for _ in range(spec.n_states))

    def f(x, w_ih, w_hh, b_ih, b_hh, *states):
        out, final, _ = fused.run_layer(spec, x, bs, states, LayerWeights(w_ih, w_hh, b_ih, b_hh),
                                        reverse=reverse, kernels=kern, masks=masks)
        return (out, *final)
    assert torch.autograd.gradcheck(f, (x, w_ih, w_hh, b_ih, b_hh, *states))


# -- dispatch and options ---------------------------------------------------------------------
def test_auto_avoids_torch_kernel_with_recurrent_masks():
    cell, x, bs = lstm_spec(), torch.randn(12, 3), [4, 4, 4]
    assert lstmkit.ops.select_backend("auto", cell, x, bs) is native.run_layer
    assert lstmkit.ops.select_backend("auto", cell, x, bs, masked=True) is not native.run_layer


@pytest.mark.parametrize("kw,training,native_ok", [
    ({"zoneout": 0.2}, True, False), ({"zoneout": 0.2}, False, False),
    ({"recurrent_dropout": 0.2}, True, False), ({"recurrent_dropout": 0.2}, False, True),
    ({"input_dropout": 0.2, "weight_dropout": 0.2}, True, True),
])
def test_auto_choice_by_module_mode(spy, kw, training, native_ok):
    m = lstmkit.LSTM(3, 4, **kw).train(training)
    m(torch.randn(5, 2, 3))
    assert (spy[0].fn is native.run_layer) == native_ok


@pytest.mark.parametrize("family,kw,match", [
    ("gru", {"zoneout": (0.1, 0.2)}, "one number"),
    ("rnn", {"zoneout": (0.1, 0.2)}, "one number"),
    ("lstm", {"zoneout": (0.1, 0.2, 0.3)}, "pair"),
    ("lstm", {"zoneout": 1.0}, r"\[0, 1\)"),
    ("lstm", {"recurrent_dropout": -0.1}, "recurrent_dropout"),
    ("gru", {"input_dropout": "0.5"}, "input_dropout"),
    ("rnn", {"weight_dropout": True}, "weight_dropout"),
])
def test_bad_rates_raise(family, kw, match):
    with pytest.raises(ValueError, match=match):
        FAMILIES[family](3, 4, **kw)


def test_to_torch_and_repr():
    with pytest.raises(ValueError, match="zoneout"):
        lstmkit.LSTM(3, 4, zoneout=(0.1, 0.2)).to_torch()
    m = lstmkit.GRU(3, 4, recurrent_dropout=0.25, weight_dropout=0.5)
    assert isinstance(m.to_torch(), nn.GRU)                    # eval function unchanged
    assert "recurrent_dropout=0.25" in repr(m) and "weight_dropout=0.5" in repr(m)


def test_recording_sees_the_zoned_states():
    m = _module("lstm", 3, 4, backend="fused_cpp", zoneout=0.5).eval()
    x = torch.randn(4, 2, 3, dtype=F64)
    with lstmkit.record(m) as rec:
        out, _ = m(x)
    assert_close(rec.layers[0]["h"], out.detach(), "recorded h", 0.0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_unbatched_and_batch_first_see_the_same_masks(family):
    x = torch.randn(5, 3, dtype=F64)
    outs = []
    for batch_first, feed in ((False, x), (False, x[:, None]), (True, x[None])):
        m = _module(family, 3, 4, batch_first=batch_first, **ALL_ON)
        torch.manual_seed(3)
        outs.append(m(feed)[0].reshape(5, 4))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_onnx_export_refuses_zoneout(tmp_path):
    pytest.importorskip("onnx")
    from lstmkit.interop.onnx import export_module
    with pytest.raises(ValueError, match="zoneout"):
        export_module(lstmkit.GRU(3, 4, zoneout=0.1), tmp_path / "m.onnx")


def test_compiling_with_masks(monkeypatch):
    """Under torch.compile the custom ops take the masks: every fused backend runs as its
    op (it used to fall back to the reference loop, or refuse)."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    cell, x, bs = lstm_spec(), torch.randn(6, 3), [2, 2, 2]
    from lstmkit.ops import library
    for backend in ("auto", "fused_cpp", "fused_py"):
        chosen = lstmkit.ops.select_backend(backend, cell, x, bs, masked=True)
        assert chosen.func is library.run_layer
