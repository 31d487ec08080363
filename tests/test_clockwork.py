"""ClockworkRNN (Koutník et al. 2014): fused vs reference, gradcheck, an independent NumPy
computation of the paper's equations, held modules, the block mask, per-sequence clocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TOL, assert_close, backward_with_random_grads, make_input, output_tensor
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import lstmkit

F64 = torch.float64
PERIODS = {"exp": dict(num_modules=3), "chain_from_2": dict(periods=(2, 4, 8)),
           "non_dividing": dict(periods=(1, 3, 4)), "offset": dict(periods=(2, 3, 5))}
CHAINS = ("exp", "chain_from_2")          # each period divides the next: C++ kernels run
FUSED = [("fused_py", p) for p in PERIODS] + [("fused_cpp", p) for p in CHAINS]
ALL = ["reference", "fused_py", "fused_cpp"]


def _module(backend, *, I=3, H=6, layers=2, bidirectional=True, bias=True, **kw):
    torch.manual_seed(0)
    m = lstmkit.ClockworkRNN(I, H, layers, bias=bias, bidirectional=bidirectional, dtype=F64,
                             backend=backend, **(kw or PERIODS["exp"]))
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.8, 0.8)
    return m


def _run(m, packed, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, feed = make_input(7, 3, m.input_size, F64, batch_first=False, packed=packed,
                         generator=g)
    h0 = torch.randn(m.num_layers * m.num_directions, 3, m.hidden_size, dtype=F64,
                     generator=g, requires_grad=True)
    out, h_n = m(feed, h0)
    backward_with_random_grads(out, (h_n,), seed=seed)
    return output_tensor(out).detach(), h_n.detach(), x.grad, h0.grad


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("backend, periods", FUSED)
def test_fused_matches_reference(backend, periods, packed, bias):
    ref, fused = (_module(b, bias=bias, **PERIODS[periods]) for b in ("reference", backend))
    got, want = _run(fused, packed), _run(ref, packed)
    for what, a, b in zip(("output", "h_n", "dx", "dh0"), got, want):
        assert_close(a, b, what, TOL[F64])
    for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
        assert_close(p.grad, q.grad, f"grad {name}", TOL[F64])


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("backend, periods", [(b, (1, 2)) for b in ALL]
                         + [(b, (1, 3)) for b in ("reference", "fused_py")])
def test_gradcheck(backend, periods, packed):
    m = _module(backend, I=2, H=4, periods=periods)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(5, 2, 2, dtype=F64, requires_grad=True)
    h0 = torch.randn(4, 2, 4, dtype=F64, requires_grad=True)

    def f(x, h0, *ps):
        feed = pack_padded_sequence(x, torch.tensor([5, 3])) if packed else x
        out, h_n = functional_call(m, dict(zip(names, ps)), (feed, h0))
        return output_tensor(out), h_n

    assert torch.autograd.gradcheck(f, (x, h0, *params))


def _numpy_clockwork(x, h0, w_ih, w_hh, b, periods):
    """The paper's Eqs. with t counted from 0: module i (units i·k … ) updates when
    t mod T_i = 0; W_H is zeroed below the block diagonal (rows: receiving module)."""
    g, H = len(periods), h0.shape[-1]
    k = H // g
    W = w_hh.copy()
    for j in range(g):                       # receiving module
        for i in range(j):                   # faster sending module: no connection
            W[j * k:(j + 1) * k, i * k:(i + 1) * k] = 0.0
    h, outs = h0.copy(), []
    for t in range(x.shape[0]):
        new = np.tanh(x[t] @ w_ih.T + h @ W.T + b)
        for i, T in enumerate(periods):
            if t % T == 0:
                h[:, i * k:(i + 1) * k] = new[:, i * k:(i + 1) * k]
        outs.append(h.copy())
    return np.stack(outs), h


@pytest.mark.parametrize("backend, periods", [
    (b, p) for b in ALL for p in [(1, 2, 4), (2, 4, 8), (1, 3, 4), (2, 3, 5)]
    if b != "fused_cpp" or p[1] % p[0] == 0 == p[2] % p[1]])
def test_numpy_paper_equations(backend, periods):
    m = _module(backend, layers=1, periods=periods)
    with torch.no_grad():                    # masked entries hold values: they must not act
        m.weight_hh_l0.uniform_(-0.8, 0.8)
        m.weight_hh_l0_reverse.uniform_(-0.8, 0.8)
    x = torch.randn(9, 2, 3, dtype=F64)
    h0 = torch.randn(2, 2, 6, dtype=F64)
    out, h_n = m(x, h0)
    for d, sfx in enumerate(("", "_reverse")):
        p = {n: getattr(m, n + "_l0" + sfx).detach().numpy()
             for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        xs = x.numpy() if d == 0 else x.numpy()[::-1]      # reverse: its clock from its start
        want, want_n = _numpy_clockwork(xs, h0[d].numpy(), p["weight_ih"], p["weight_hh"],
                                        p["bias_ih"] + p["bias_hh"], periods)
        got = out[..., d * 6:(d + 1) * 6].detach().numpy()
        np.testing.assert_allclose(got if d == 0 else got[::-1], want, atol=1e-12)
        np.testing.assert_allclose(h_n[d].detach().numpy(), want_n, atol=1e-12)


@pytest.mark.parametrize("backend", ALL)
def test_held_modules_keep_their_values(backend):
    periods = (1, 2, 4)
    m = _module(backend, layers=1, bidirectional=False, periods=periods)
    with lstmkit.record(m) as rec:
        m(torch.randn(9, 2, 3, dtype=F64))
    h = rec.layers[0]["h"]                                             # [T, B, H]
    for t in range(1, 9):
        for i, T in enumerate(periods):
            units = slice(2 * i, 2 * i + 2)
            if t % T:
                assert torch.equal(h[t, :, units], h[t - 1, :, units]), (t, T)
            else:
                assert not torch.equal(h[t, :, units], h[t - 1, :, units]), (t, T)


@pytest.mark.parametrize("backend", ALL)
def test_masked_weights_no_effect_no_gradient(backend):
    m = _module(backend, layers=1, bidirectional=False, num_modules=3)
    mask = m.hh_mask.bool()
    module = torch.arange(6) // 2
    assert mask.equal(module[None, :] >= module[:, None])      # block-upper-triangular
    x = torch.randn(6, 2, 3, dtype=F64)
    out, _ = m(x)
    out.sum().backward()
    assert torch.count_nonzero(m.weight_hh_l0.grad[~mask]) == 0
    assert torch.count_nonzero(m.weight_hh_l0.grad[mask]) > 0
    with torch.no_grad():
        m.weight_hh_l0[~mask] = 5.0
    assert torch.equal(m(x)[0], out)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("backend, periods", [("reference", (1, 2, 3)), ("fused_py", (1, 2, 3)),
                                              ("fused_py", (1, 2, 4)),
                                              ("fused_cpp", (1, 2, 4))])
def test_packed_sequences_have_their_own_clock(backend, periods, bidirectional):
    m = _module(backend, bidirectional=bidirectional, periods=periods)
    lengths = [4, 7, 2]
    x = torch.randn(7, 3, 3, dtype=F64)
    out, h_n = m(pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False))
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
    for b, n in enumerate(lengths):
        alone, alone_n = m(x[:n, b])                          # unbatched, on its own
        assert_close(padded[:n, b], alone, f"output of sequence {b}", TOL[F64])
        assert_close(h_n[:, b], alone_n, f"h_n of sequence {b}", TOL[F64])


def test_init_zeroes_masked_entries_and_state_dict_is_rnns():
    m = lstmkit.ClockworkRNN(3, 8, num_modules=4)
    assert torch.count_nonzero(m.weight_hh_l0[~m.hh_mask.bool()]) == 0
    rnn = torch.nn.RNN(3, 8)
    m.load_state_dict(rnn.state_dict())                     # same names and shapes
    assert set(m.state_dict()) == set(rnn.state_dict())


@pytest.mark.parametrize("backend", ["auto", "fused_py", "fused_cpp"])
def test_float32_agrees_with_reference(backend):
    m = lstmkit.ClockworkRNN(4, 8, num_modules=4, backend=backend)
    ref = lstmkit.ClockworkRNN(4, 8, num_modules=4, backend="reference")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(10, 3, 4)
    assert_close(m(x)[0], ref(x)[0], "float32 output", TOL[torch.float32])


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(hidden_size=7, num_modules=3), ValueError, "divisible"),
    (dict(periods=(1, 4, 2)), ValueError, "strictly increasing"),
    (dict(periods=(0, 1)), ValueError, "positive"),
    (dict(), ValueError, "exactly one"),
    (dict(periods=(1, 2), num_modules=2), ValueError, "exactly one"),
    (dict(periods="12"), TypeError, "sequence of ints"),
    (dict(num_modules=2, nonlinearity="relu"), ValueError, "nonlinearity"),
    (dict(num_modules=2, proj_size=2), ValueError, "proj_size"),
    (dict(num_modules=2, dropout_p=0.1), TypeError, "dropout_p"),
])
def test_bad_options_raise(kwargs, error, words):
    kwargs = {"hidden_size": 6, **kwargs}
    with pytest.raises(error, match=words):
        lstmkit.ClockworkRNN(3, **kwargs)


def test_fused_cpp_refuses_what_it_cannot_run():
    m = lstmkit.ClockworkRNN(3, 4, num_modules=2, dtype=torch.bfloat16, backend="fused_cpp")
    with pytest.raises(ValueError, match="float32/float64"):
        m(torch.randn(5, 2, 3, dtype=torch.bfloat16))


def test_bad_input_names_shapes():
    m = lstmkit.ClockworkRNN(3, 4, num_modules=2)
    with pytest.raises(ValueError, match="input_size=3"):
        m(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match=r"\(1, 2, 4\)"):
        m(torch.randn(5, 2, 3), torch.zeros(1, 3, 4))


def test_batch_first_and_unbatched_match_the_default_layout():
    m = _module("auto", layers=2)
    first = lstmkit.ClockworkRNN(3, 6, 2, bidirectional=True, batch_first=True, num_modules=3,
                                 dtype=F64)
    first.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3, dtype=F64)
    out, h_n = m(x)
    out_bf, h_bf = first(x.transpose(0, 1))
    assert_close(out_bf.transpose(0, 1), out, "batch_first output", TOL[F64])
    assert_close(h_bf, h_n, "batch_first h_n", TOL[F64])
    out_1, h_1 = m(x[:, 1])
    assert_close(out_1, out[:, 1], "unbatched output", TOL[F64])
    assert_close(h_1, h_n[:, 1], "unbatched h_n", TOL[F64])
