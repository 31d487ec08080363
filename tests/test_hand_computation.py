"""The variants torch.nn lacks, against a hand computation of their equations in NumPy
(float64), written from design.md §1 independently of lstmkit's cell code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lstmkit

T, B, I, H, P = 4, 3, 5, 4, 2


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def np_lstm(x, h, c, W, U, b, p=None, coupled=False, W_hr=None):
    """x (T, B, I); W (G·H, I), U (G·H, R), b (G·H,) = b_ih + b_hh; p peepholes."""
    hs, cs, gates = [], [], []
    for t in range(T):
        a = x[t] @ W.T + h @ U.T + b                                 # (B, G·H)
        if coupled:
            a_i, a_g, a_o = np.split(a, 3, axis=1)
            a_f = None
        else:
            a_i, a_f, a_g, a_o = np.split(a, 4, axis=1)
        if p is not None:
            p_i, p_f, p_o = (p[:H], None, p[H:]) if coupled else np.split(p, 3)
            a_i = a_i + p_i * c
            if not coupled:
                a_f = a_f + p_f * c
        i = sigmoid(a_i)
        f = 1 - i if coupled else sigmoid(a_f)
        g = np.tanh(a_g)
        c = f * c + i * g
        o = sigmoid(a_o + (p_o * c if p is not None else 0))
        h = o * np.tanh(c)
        if W_hr is not None:
            h = h @ W_hr.T
        hs.append(h)
        cs.append(c)
        gates.append({"i": i, "f": f, "g": g, "o": o})
    return np.stack(hs), h, c, gates


def np_gru(x, h, W, U, b_ih, b_hh, reset_after):
    hs = []
    U_r, U_z, U_n = np.split(U, 3)
    bh_r, bh_z, bh_n = np.split(b_hh, 3)
    for t in range(T):
        ax_r, ax_z, ax_n = np.split(x[t] @ W.T + b_ih, 3, axis=1)
        r = sigmoid(ax_r + h @ U_r.T + bh_r)
        z = sigmoid(ax_z + h @ U_z.T + bh_z)
        if reset_after:
            n = np.tanh(ax_n + r * (h @ U_n.T + bh_n))
        else:
            n = np.tanh(ax_n + (r * h) @ U_n.T + bh_n)
        h = (1 - z) * n + z * h
        hs.append(h)
    return np.stack(hs), h


def _params(model, rng):
    """Random values into every parameter; returns them as NumPy arrays by name."""
    out = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = rng.uniform(-0.8, 0.8, size=tuple(p.shape))
            p.copy_(torch.from_numpy(value))
            out[name] = value
    return out


BACKENDS = ["reference", "fused_py", "fused_cpp"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("peephole, coupled, proj, bias", [
    (True, False, 0, True), (False, True, 0, True), (True, True, 0, True),
    (True, False, P, True), (True, True, 0, False), (False, True, P, False),
])
def test_lstm_variants(peephole, coupled, proj, bias, backend):
    rng = np.random.default_rng(7)
    m = lstmkit.LSTM(I, H, proj_size=proj, bias=bias, peephole=peephole, coupled=coupled,
                     dtype=torch.float64, backend=backend)
    w = _params(m, rng)
    G = 3 if coupled else 4
    assert w["weight_ih_l0"].shape == (G * H, I)
    if peephole:
        assert w["peephole_l0"].shape == ((G - 1) * H,)
    x = rng.normal(size=(T, B, I))
    h0 = rng.normal(size=(B, proj or H))
    c0 = rng.normal(size=(B, H))
    b = w["bias_ih_l0"] + w["bias_hh_l0"] if bias else np.zeros(G * H)
    hs, h_n, c_n, gates = np_lstm(x, h0, c0, w["weight_ih_l0"], w["weight_hh_l0"], b,
                                  w.get("peephole_l0"), coupled, w.get("weight_hr_l0"))
    as_t = torch.from_numpy
    with lstmkit.record(m) as rec:
        out, (h, c) = m(as_t(x), (as_t(h0)[None], as_t(c0)[None]))
    np.testing.assert_allclose(out.detach().numpy(), hs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h[0].detach().numpy(), h_n, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c[0].detach().numpy(), c_n, rtol=0, atol=1e-12)
    for k in "ifgo":
        expected = np.stack([gate[k] for gate in gates])
        np.testing.assert_allclose(rec.layers[0][k].numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_both_forms(reset_after, backend):
    rng = np.random.default_rng(3)
    m = lstmkit.GRU(I, H, reset_after=reset_after, dtype=torch.float64, backend=backend)
    w = _params(m, rng)
    x, h0 = rng.normal(size=(T, B, I)), rng.normal(size=(B, H))
    hs, h_n = np_gru(x, h0, w["weight_ih_l0"], w["weight_hh_l0"], w["bias_ih_l0"],
                     w["bias_hh_l0"], reset_after)
    out, h = m(torch.from_numpy(x), torch.from_numpy(h0)[None])
    np.testing.assert_allclose(out.detach().numpy(), hs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h[0].detach().numpy(), h_n, rtol=0, atol=1e-12)


def test_the_two_gru_forms_differ():
    """reset_after matters: the same weights give different outputs (so the tests above
    distinguish the forms)."""
    torch.manual_seed(0)
    a = lstmkit.GRU(I, H, reset_after=True, dtype=torch.float64)
    b = lstmkit.GRU(I, H, reset_after=False, dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    assert (a(x)[0] - b(x)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_recorded_gates_reproduce_states(backend):
    """c_t = f ⊙ c_{t-1} + i ⊙ g and h_t = o ⊙ tanh(c_t) from the recorded tensors alone,
    for every layer and direction of a stacked bidirectional peephole LSTM."""
    torch.manual_seed(1)
    m = lstmkit.LSTM(I, H, 2, bidirectional=True, peephole=True, dtype=torch.float64,
                     backend=backend)
    with lstmkit.record(m) as rec:
        m(torch.randn(T, B, I, dtype=torch.float64))
    assert [(r.layer, r.direction) for r in rec.layers] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in rec.layers:
        c_prev = torch.zeros(B, H, dtype=torch.float64)
        steps = range(T - 1, -1, -1) if r.direction else range(T)
        for t in steps:
            c_t = r.f[t] * c_prev + r.i[t] * r.g[t]
            torch.testing.assert_close(r.c[t], c_t, atol=1e-12, rtol=0)
            torch.testing.assert_close(r.h[t], r.o[t] * torch.tanh(c_t), atol=1e-12, rtol=0)
            c_prev = c_t


@pytest.mark.parametrize("backend", BACKENDS)
def test_record_packed_marks_padding(backend):
    from torch.nn.utils.rnn import pack_sequence
    torch.manual_seed(2)
    m = lstmkit.GRU(I, H, bidirectional=True, dtype=torch.float64, backend=backend)
    seqs = [torch.randn(n, I, dtype=torch.float64) for n in (2, 4, 3)]      # unsorted
    with lstmkit.record(m) as rec:
        m(pack_sequence(seqs, enforce_sorted=False))
    for r in rec.layers:
        assert r.mask.tolist() == [[True, True, True], [True, True, True],
                                   [False, True, True], [False, True, False]]
        assert torch.isnan(r.z[~r.mask]).all() and not torch.isnan(r.z[r.mask]).any()
    for b, s in enumerate(seqs):                 # each sequence alone gives the same gates
        with lstmkit.record(m) as alone:
            m(s)
        for r, r1 in zip(rec.layers, alone.layers, strict=True):
            n = len(s)
            torch.testing.assert_close(r.n[:n, b], r1.n[:, 0], atol=1e-12, rtol=0)
            torch.testing.assert_close(r.h[:n, b], r1.h[:, 0], atol=1e-12, rtol=0)
