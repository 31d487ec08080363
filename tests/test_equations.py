"""lstmkit against an independent NumPy float64 computation of design.md §1's equations.

Weights are drawn in NumPy with the shapes the spec names, copied into the module, and
every backend (the ``backend`` fixture) must reproduce outputs, final states and the
gates recorded by ``lstmkit.record`` to 1e-12.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lstmkit

T, B, I, H, P = 4, 3, 5, 4, 2
TOL = 1e-12


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def close(actual, expected: np.ndarray, what: str) -> None:
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else actual
    np.testing.assert_allclose(actual, expected, rtol=TOL, atol=TOL, err_msg=what)


# -- the equations, in NumPy ---------------------------------------------------------------
def lstm_step(x_t, state, w, *, peephole=False, coupled=False):
    h, c = state                                                 # (B, R), (B, H)
    rows = "igo" if coupled else "ifgo"
    a = (x_t @ w["weight_ih"].T + w.get("bias_ih", 0.0)
         + h @ w["weight_hh"].T + w.get("bias_hh", 0.0))         # (B, G·H)
    a = dict(zip(rows, np.split(a, len(rows), axis=1)))          # each (B, H)
    names = "io" if coupled else "ifo"
    p = (dict(zip(names, np.split(w["peephole"], len(names)))) if peephole
         else dict.fromkeys(names, 0.0))                         # each (H,)
    i = sigmoid(a["i"] + p["i"] * c)
    f = 1.0 - i if coupled else sigmoid(a["f"] + p["f"] * c)
    g = np.tanh(a["g"])
    c = f * c + i * g
    o = sigmoid(a["o"] + p["o"] * c)                             # peephole sees c_t
    m = o * np.tanh(c)                                           # (B, H)
    h = m @ w["weight_hr"].T if "weight_hr" in w else m          # (B, P) or (B, H)
    return (h, c), {"i": i, "f": f, "g": g, "o": o, "c": c}


def gru_step(x_t, state, w, *, reset_after=True):
    (h,) = state                                                 # (B, H)
    ax_r, ax_z, ax_n = np.split(x_t @ w["weight_ih"].T + w.get("bias_ih", 0.0), 3, axis=1)
    W_hr, W_hz, W_hn = np.split(w["weight_hh"], 3)               # each (H, H)
    b_hr, b_hz, b_hn = np.split(w["bias_hh"], 3) if "bias_hh" in w else (0.0, 0.0, 0.0)
    r = sigmoid(ax_r + h @ W_hr.T + b_hr)
    z = sigmoid(ax_z + h @ W_hz.T + b_hz)
    if reset_after:
        n = np.tanh(ax_n + r * (h @ W_hn.T + b_hn))
    else:
        n = np.tanh(ax_n + (r * h) @ W_hn.T + b_hn)
    h = (1.0 - z) * n + z * h
    return (h,), {"r": r, "z": z, "n": n}


def rnn_step(x_t, state, w, *, nonlinearity="tanh"):
    (h,) = state                                                 # (B, H)
    a = (x_t @ w["weight_ih"].T + w.get("bias_ih", 0.0)
         + h @ w["weight_hh"].T + w.get("bias_hh", 0.0))
    return ((np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0.0)),), {}


def np_run(step, x, state0, p, layers=1, dirs=1):
    """Stacked, optionally bidirectional run of ``step``.

    x (T, B, I); state0: tuple of (L·D, B, ·). Returns output (T, B, D·R), the final
    states (L·D, B, ·) and per layer/direction the records {gate/c/h: (T, B, ·)}."""
    finals, recs = [], []
    for layer in range(layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w = {n[: -len(sfx)]: a for n, a in p.items() if n.endswith(sfx)}
            state = tuple(s[layer * dirs + d] for s in state0)
            steps: list[dict] = [{} for _ in range(len(x))]
            for t in (reversed(range(len(x))) if d else range(len(x))):
                state, gates = step(x[t], state, w)
                steps[t] = {**gates, "h": state[0]}
            outs.append(np.stack([s["h"] for s in steps]))
            finals.append(state)
            recs.append({k: np.stack([s[k] for s in steps]) for k in steps[0]})
        x = np.concatenate(outs, axis=-1)
    return x, tuple(np.stack(f) for f in zip(*finals)), recs


# -- parameters ----------------------------------------------------------------------------
def make_params(rng, G, *, layers=1, dirs=1, bias=True, proj=0, peep=0):
    """Weights named and shaped as the spec says (torch.nn layout, G gate blocks)."""
    R, p = proj or H, {}
    for layer in range(layers):
        for d in range(dirs):
            shapes = {"weight_ih": (G * H, I if layer == 0 else dirs * R),
                      "weight_hh": (G * H, R)}
            if bias:
                shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
            if proj:
                shapes["weight_hr"] = (proj, H)
            if peep:
                shapes["peephole"] = (peep * H,)
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            p.update({k + sfx: rng.uniform(-1.0, 1.0, s) for k, s in shapes.items()})
    return p


def load(module: torch.nn.Module, p: dict[str, np.ndarray]) -> None:
    """Copy the NumPy weights in; the module must have exactly these names and shapes."""
    params = dict(module.named_parameters())
    assert {n: tuple(v.shape) for n, v in params.items()} == {n: a.shape for n, a in p.items()}
    with torch.no_grad():
        for name, a in p.items():
            params[name].copy_(torch.from_numpy(a))


def check_record(r, ref: dict[str, np.ndarray], what: str) -> None:
    assert sorted(r.keys()) == sorted(ref), what
    for key, expected in ref.items():
        close(r[key], expected, f"{what}: recorded {key}")


def check_recurrence(r, c0: np.ndarray, what: str) -> None:
    """The recorded gates alone reproduce the recorded c and h (no projection)."""
    g = {k: v.numpy() for k, v in r.tensors.items()}             # each (T, B, H)
    c_prev = c0                                                  # (B, H)
    for t in (reversed(range(T)) if r.direction else range(T)):
        close(g["c"][t], g["f"][t] * c_prev + g["i"][t] * g["g"][t], f"{what}: c[{t}]")
        close(g["h"][t], g["o"][t] * np.tanh(g["c"][t]), f"{what}: h[{t}]")
        c_prev = g["c"][t]


# -- tests ---------------------------------------------------------------------------------
LSTM_CASES = [
    pytest.param({"peephole": True}, id="peephole"),
    pytest.param({"coupled": True}, id="coupled"),
    pytest.param({"coupled": True, "peephole": True, "bias": False}, id="coupled-peephole-nobias"),
    pytest.param({"proj_size": P}, id="proj"),
    pytest.param({"proj_size": P, "peephole": True, "bias": False}, id="proj-peephole-nobias"),
]


@pytest.mark.parametrize("kw", LSTM_CASES)
def test_lstm_variants(kw, backend):
    peephole, coupled, proj = kw.get("peephole", False), kw.get("coupled", False), kw.get(
        "proj_size", 0)
    rng = np.random.default_rng(0)
    p = make_params(rng, 3 if coupled else 4, bias=kw.get("bias", True), proj=proj,
                    peep=(2 if coupled else 3) if peephole else 0)
    m = lstmkit.LSTM(I, H, dtype=torch.float64, backend=backend, **kw)
    load(m, p)
    x = rng.standard_normal((T, B, I))                           # (T, B, I)
    h0 = rng.standard_normal((1, B, proj or H))                  # (1, B, R)
    c0 = rng.standard_normal((1, B, H))                          # (1, B, H)
    step = partial(lstm_step, peephole=peephole, coupled=coupled)
    ref_out, (ref_h, ref_c), (ref_rec,) = np_run(step, x, (h0, c0), p)

    with lstmkit.record(m) as rec:
        out, (h_n, c_n) = m(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    close(out, ref_out, "output")                                # (T, B, R)
    close(h_n, ref_h, "h_n")
    close(c_n, ref_c, "c_n")
    assert len(rec.layers) == 1 and rec.layers[0].cell == "lstm"
    check_record(rec.layers[0], ref_rec, "layer 0")
    if coupled:
        close(rec.layers[0]["f"], 1.0 - ref_rec["i"], "coupled f = 1 - i")
    if not proj:
        check_recurrence(rec.layers[0], c0[0], "layer 0")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
def test_gru(reset_after, bias, backend):
    rng = np.random.default_rng(1)
    p = make_params(rng, 3, bias=bias)
    m = lstmkit.GRU(I, H, bias=bias, dtype=torch.float64, reset_after=reset_after,
                    backend=backend)
    load(m, p)
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((1, B, H))
    step = partial(gru_step, reset_after=reset_after)
    ref_out, (ref_h,), (ref_rec,) = np_run(step, x, (h0,), p)

    with lstmkit.record(m) as rec:
        out, h_n = m(torch.from_numpy(x), torch.from_numpy(h0))
    close(out, ref_out, "output")                                # (T, B, H)
    close(h_n, ref_h, "h_n")                                     # (1, B, H)
    check_record(rec.layers[0], ref_rec, "gru layer 0")


def test_the_two_gru_forms_differ():
    """reset_after matters: the same weights give different outputs, so test_gru tells the
    two forms apart."""
    torch.manual_seed(0)
    a = lstmkit.GRU(I, H, reset_after=True, dtype=torch.float64)
    b = lstmkit.GRU(I, H, reset_after=False, dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    assert (a(x)[0] - b(x)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn(nonlinearity, bias, backend):
    rng = np.random.default_rng(2)
    p = make_params(rng, 1, bias=bias)
    m = lstmkit.RNN(I, H, nonlinearity=nonlinearity, bias=bias, dtype=torch.float64,
                    backend=backend)
    load(m, p)
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((1, B, H))
    step = partial(rnn_step, nonlinearity=nonlinearity)
    ref_out, (ref_h,), (ref_rec,) = np_run(step, x, (h0,), p)
    if nonlinearity == "relu":                   # the data must exercise both sides of relu
        assert (ref_out == 0).any() and (ref_out > 0).any()

    with lstmkit.record(m) as rec:
        out, h_n = m(torch.from_numpy(x), torch.from_numpy(h0))
    close(out, ref_out, "output")
    close(h_n, ref_h, "h_n")
    check_record(rec.layers[0], ref_rec, "rnn layer 0")          # only "h"


VARIANTS = [pytest.param({}, id="plain"), pytest.param({"peephole": True}, id="peephole"),
            pytest.param({"coupled": True}, id="coupled")]


@pytest.mark.parametrize("kw", VARIANTS)
def test_record_bidirectional_two_layers(kw, backend):
    peephole, coupled = kw.get("peephole", False), kw.get("coupled", False)
    L, D = 2, 2
    rng = np.random.default_rng(3)
    p = make_params(rng, 3 if coupled else 4, layers=L, dirs=D,
                    peep=(2 if coupled else 3) if peephole else 0)
    m = lstmkit.LSTM(I, H, num_layers=L, bidirectional=True, dtype=torch.float64,
                     backend=backend, **kw)
    load(m, p)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((2, L * D, B, H))               # each (L·D, B, H)
    step = partial(lstm_step, peephole=peephole, coupled=coupled)
    ref_out, (ref_h, ref_c), ref_recs = np_run(step, x, (h0, c0), p, L, D)

    with lstmkit.record(m) as rec:
        out, (h_n, c_n) = m(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    close(out, ref_out, "output")                                # (T, B, 2H)
    close(h_n, ref_h, "h_n")                                     # (L·D, B, H)
    close(c_n, ref_c, "c_n")
    assert [(r.layer, r.direction) for r in rec.layers] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for k, (r, ref) in enumerate(zip(rec.layers, ref_recs)):
        what = f"layer {r.layer} direction {r.direction}"
        assert r.cell == "lstm" and r.i.shape == (T, B, H), what
        check_record(r, ref, what)
        check_recurrence(r, c0[k], what)


@pytest.mark.parametrize("kw", VARIANTS[:2])
def test_record_packed_unsorted(kw, backend):
    peephole = kw.get("peephole", False)
    L, D, lengths = 2, 2, [2, 4, 3]                              # unsorted, max = T
    rng = np.random.default_rng(4)
    p = make_params(rng, 4, layers=L, dirs=D, peep=3 if peephole else 0)
    m = lstmkit.LSTM(I, H, num_layers=L, bidirectional=True, dtype=torch.float64,
                     backend=backend, **kw)
    load(m, p)
    x = rng.standard_normal((T, B, I))                           # padded steps never used
    h0, c0 = rng.standard_normal((2, L * D, B, H))               # caller's batch order
    packed = pack_padded_sequence(torch.from_numpy(x), torch.tensor(lengths),
                                  enforce_sorted=False)
    with lstmkit.record(m) as rec:
        out, (h_n, c_n) = m(packed, (torch.from_numpy(h0), torch.from_numpy(c0)))
    out, out_lengths = pad_packed_sequence(out)                  # (T, B, 2H)
    assert out_lengths.tolist() == lengths
    assert [(r.layer, r.direction) for r in rec.layers] == [(0, 0), (0, 1), (1, 0), (1, 1)]

    step = partial(lstm_step, peephole=peephole)
    for b, n in enumerate(lengths):              # each sequence alone, unpadded
        one = slice(b, b + 1)
        ref_out, (ref_h, ref_c), ref_recs = np_run(step, x[:n, one], (h0[:, one], c0[:, one]),
                                                   p, L, D)
        close(out[:n, one], ref_out, f"output of sequence {b}")
        close(h_n[:, one], ref_h, f"h_n of sequence {b}")
        close(c_n[:, one], ref_c, f"c_n of sequence {b}")
        for r, ref in zip(rec.layers, ref_recs):
            assert sorted(r.keys()) == sorted(ref)
            for key, expected in ref.items():
                close(r[key][:n, one], expected, f"seq {b} l{r.layer} d{r.direction} {key}")

    mask = torch.arange(T)[:, None] < torch.tensor(lengths)      # (T, B), caller's order
    for r in rec.layers:
        assert torch.equal(r.mask, mask), f"mask of l{r.layer} d{r.direction}"
        for key, v in r.tensors.items():                         # v (T, B, H)
            assert v.shape == (T, B, H)
            assert torch.isnan(v[~mask]).all(), f"padded {key} must be NaN"
            assert not torch.isnan(v[mask]).any(), f"real steps of {key} must not be NaN"
