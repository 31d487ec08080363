"""DepthGatedLSTM (Yao et al. 2015): fused vs reference, gradcheck, an independent NumPy
computation of the paper's equations, d = 0 against torch.nn.LSTM, the gradient into c^L."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TOL, assert_close, backward_with_random_grads, make_input, output_tensor
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import lstmkit

F64 = torch.float64
DEPTH = ("weight_xd", "bias_d", "weight_cd", "weight_ld")


def _module(backend, *, I=3, H=4, layers=3, bidirectional=True, bias=True, dtype=F64):
    torch.manual_seed(0)
    m = lstmkit.DepthGatedLSTM(I, H, layers, bias=bias, bidirectional=bidirectional,
                               dtype=dtype, backend=backend)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.8, 0.8)
    return m


def _run(m, packed, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, feed = make_input(6, 3, m.input_size, F64, batch_first=False, packed=packed,
                         generator=g)
    shape = (m.num_layers * m.num_directions, 3, m.hidden_size)
    h0 = torch.randn(shape, dtype=F64, generator=g, requires_grad=True)
    c0 = torch.randn(shape, dtype=F64, generator=g, requires_grad=True)
    out, (h_n, c_n) = m(feed, (h0, c0))
    backward_with_random_grads(out, (h_n, c_n), seed=seed)
    return output_tensor(out).detach(), h_n.detach(), c_n.detach(), x.grad, h0.grad, c0.grad


FUSED = ["fused_py", "fused_cpp"]
ALL = ["reference", *FUSED]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("backend", FUSED)
def test_fused_matches_reference(backend, packed, bidirectional, bias):
    ref, fused = (_module(b, bias=bias, bidirectional=bidirectional)
                  for b in ("reference", backend))
    got, want = _run(fused, packed), _run(ref, packed)
    for what, a, b in zip(("output", "h_n", "c_n", "dx", "dh0", "dc0"), got, want):
        assert_close(a, b, what, TOL[F64])
    for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
        assert p.grad is not None, name
        assert_close(p.grad, q.grad, f"grad {name}", TOL[F64])


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gradcheck(backend, packed):
    m = _module(backend, I=2, H=2, layers=2)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(4, 2, 2, dtype=F64, requires_grad=True)
    h0 = torch.randn(4, 2, 2, dtype=F64, requires_grad=True)
    c0 = torch.randn(4, 2, 2, dtype=F64, requires_grad=True)

    def f(x, h0, c0, *ps):
        feed = pack_padded_sequence(x, torch.tensor([4, 2])) if packed else x
        out, (h_n, c_n) = functional_call(m, dict(zip(names, ps)), (feed, (h0, c0)))
        return output_tensor(out), h_n, c_n

    assert torch.autograd.gradcheck(f, (x, h0, c0, *params))


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def _numpy_depth_gated(x, h0, c0, p):
    """Two layers of the paper's equations, written out per step: layer 1 plain LSTM;
    layer 2 with d = σ(b_d + W_xd x + w_cd c_{t-1} + w_ld c^1_t),
    c = d c^1_t + f c_{t-1} + i g."""
    def gates(layer, x_t, h):
        a = (x_t @ p[f"weight_ih_l{layer}"].T + p[f"bias_ih_l{layer}"]
             + h @ p[f"weight_hh_l{layer}"].T + p[f"bias_hh_l{layer}"])
        H = h.shape[1]
        return (_sig(a[:, :H]), _sig(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]),
                _sig(a[:, 3 * H:]))

    h1, c1, h2, c2 = h0[0], c0[0], h0[1], c0[1]
    outs = []
    for x_t in x:
        i, f, g, o = gates(0, x_t, h1)
        c1 = f * c1 + i * g
        h1 = o * np.tanh(c1)
        i, f, g, o = gates(1, h1, h2)
        d = _sig(p["bias_d_l1"] + h1 @ p["weight_xd_l1"].T + p["weight_cd_l1"] * c2
                 + p["weight_ld_l1"] * c1)
        c2 = d * c1 + f * c2 + i * g
        h2 = o * np.tanh(c2)
        outs.append(h2)
    return np.stack(outs), np.stack([h1, h2]), np.stack([c1, c2])


@pytest.mark.parametrize("backend", ALL)
def test_numpy_paper_equations(backend):
    m = _module(backend, layers=2, bidirectional=False)
    x = torch.randn(5, 2, 3, dtype=F64)
    h0, c0 = torch.randn(2, 2, 2, 4, dtype=F64)
    out, (h_n, c_n) = m(x, (h0, c0))
    p = {n: t.detach().numpy() for n, t in m.named_parameters()}
    want = _numpy_depth_gated(x.numpy(), h0.numpy(), c0.numpy(), p)
    for got, exp in zip((out, h_n, c_n), want):
        np.testing.assert_allclose(got.detach().numpy(), exp, atol=1e-12)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_closed_depth_gate_is_a_plain_lstm_stack(backend, packed):
    """b_d = −1e4 and zero depth weights give d = 0 exactly: torch.nn.LSTM's function."""
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(3, 4, 3, bidirectional=True, dtype=F64)
    ours = lstmkit.DepthGatedLSTM(3, 4, 3, bidirectional=True, dtype=F64, backend=backend)
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert not unexpected and all(n.startswith(DEPTH) for n in missing)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.startswith(DEPTH):
                p.fill_(-1e4 if name.startswith("bias_d") else 0.0)
    results = []
    for m in (ours, theirs):
        out, states = _run_lstm(m, packed)
        results.append((out, *states))
    for what, a, b in zip(("output", "h_n", "c_n", "dx", "dh0", "dc0"), *results):
        assert_close(a, b, what, TOL[F64])
    mine = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        assert_close(mine[name].grad, p.grad, f"grad {name}", TOL[F64])


def _run_lstm(m, packed):
    g = torch.Generator().manual_seed(3)
    x, feed = make_input(6, 3, 3, F64, batch_first=False, packed=packed, generator=g)
    h0 = torch.randn(6, 3, 4, dtype=F64, generator=g, requires_grad=True)
    c0 = torch.randn(6, 3, 4, dtype=F64, generator=g, requires_grad=True)
    out, (h_n, c_n) = m(feed, (h0, c0))
    backward_with_random_grads(out, (h_n, c_n), seed=4)
    return output_tensor(out).detach(), (h_n.detach(), c_n.detach(), x.grad, h0.grad,
                                         c0.grad)


@pytest.mark.parametrize("backend", ALL)
def test_gradient_reaches_the_lower_cell(backend):
    """With layer 1 blind to h^0 (W_ih = W_xd = 0), layer 0 influences the output only
    through c^0 and the depth gate: its weights get a gradient only along that path."""
    m = _module(backend, layers=2, bidirectional=False)
    with torch.no_grad():
        m.weight_ih_l1.zero_()
        m.weight_xd_l1.zero_()
    out, _ = m(torch.randn(5, 2, 3, dtype=F64))
    out.sum().backward()
    assert m.weight_ih_l0.grad.abs().sum() > 1e-3
    m.zero_grad()
    with torch.no_grad():
        m.bias_d_l1.fill_(-1e4)
        m.weight_cd_l1.zero_()
        m.weight_ld_l1.zero_()
    out, _ = m(torch.randn(5, 2, 3, dtype=F64))
    out.sum().backward()
    assert torch.count_nonzero(m.weight_ih_l0.grad) == 0


def test_record_has_the_depth_gate():
    m = _module("auto", layers=2, bidirectional=False, dtype=torch.float32)
    with lstmkit.record(m) as rec:
        m(torch.randn(5, 2, 3))
    assert "d" not in rec.layers[0].keys()
    d = rec.layers[1]["d"]
    assert d.shape == (5, 2, 4) and bool(((d > 0) & (d < 1)).all())


def test_parameters_and_state_dict():
    m = lstmkit.DepthGatedLSTM(3, 4, 2, bidirectional=True)
    names = [n for n, _ in m.named_parameters()]
    lstm_names = [n for n, _ in torch.nn.LSTM(3, 4, 2, bidirectional=True).named_parameters()]
    assert names[:len(lstm_names)] == lstm_names
    assert names[len(lstm_names):] == [f"{n}_l1{s}" for s in ("", "_reverse") for n in DEPTH]
    assert m.weight_xd_l1.shape == (4, 8) and m.weight_ld_l1_reverse.shape == (4,)
    assert lstmkit.count_parameters(m) == sum(p.numel() for p in m.parameters())
    with pytest.raises(ValueError, match="no torch.nn equivalent"):
        m.to_torch()


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(proj_size=2), ValueError, "proj_size"),
    (dict(peephole=True), ValueError, "peephole"),
    (dict(backend="fast"), ValueError, "backend"),
    (dict(reset_after=True), TypeError, "reset_after"),
])
def test_bad_options_raise(kwargs, error, words):
    with pytest.raises(error, match=words):
        lstmkit.DepthGatedLSTM(3, 4, **kwargs)


@pytest.mark.parametrize("backend", FUSED)
def test_float32_agrees_with_reference(backend):
    ref = _module("reference", layers=2, dtype=torch.float32)
    fused = _module(backend, layers=2, dtype=torch.float32)
    x = torch.randn(6, 3, 3)
    assert_close(fused(x)[0], ref(x)[0], "float32 output", TOL[torch.float32])


def test_fused_cpp_refuses_what_it_cannot_run():
    m = lstmkit.DepthGatedLSTM(3, 4, dtype=torch.bfloat16, backend="fused_cpp")
    with pytest.raises(ValueError, match="float32/float64"):
        m(torch.randn(5, 2, 3, dtype=torch.bfloat16))


def test_bad_states_name_shapes():
    m = lstmkit.DepthGatedLSTM(3, 4)
    with pytest.raises(ValueError, match=r"\(2, 2, 4\)"):
        m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))


def test_batch_first_and_unbatched_match_the_default_layout():
    m = _module("auto", layers=2)
    first = lstmkit.DepthGatedLSTM(3, 4, 2, bidirectional=True, batch_first=True, dtype=F64)
    first.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3, dtype=F64)
    out, (h_n, c_n) = m(x)
    out_bf, (h_bf, c_bf) = first(x.transpose(0, 1))
    assert_close(out_bf.transpose(0, 1), out, "batch_first output", TOL[F64])
    assert_close(c_bf, c_n, "batch_first c_n", TOL[F64])
    out_1, (h_1, c_1) = m(x[:, 1])
    assert_close(out_1, out[:, 1], "unbatched output", TOL[F64])
    assert_close(c_1, c_n[:, 1], "unbatched c_n", TOL[F64])
