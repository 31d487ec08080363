"""lstmkit.LSTM1997 (Hochreiter & Schmidhuber 1997): the paper's equations by hand in NumPy,
the constant error carousel, the truncated gradient, every backend against the reference
(float64, gradients included, with masks), gradcheck, record, summary and torch.compile."""

from __future__ import annotations

import numpy as np
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

import lstmkit

F64 = torch.float64
I, H = 3, 4
BACKENDS = ["reference", "fused_py", "fused_cpp"]


def _module(backend, **kw):
    torch.manual_seed(0)
    m = lstmkit.LSTM1997(I, H, dtype=F64, backend=backend, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.8, 0.8)
    return m


def _numpy_forward(m, x, h0, c0):
    """The paper's forward pass, one sequence at a time: net inputs, y^in, y^out, g(net_c),
    s_c(t) = s_c(t−1) + y^in g(net_c), y^c = y^out h(s_c)."""
    sig = lambda z: 1 / (1 + np.exp(-z))                      # noqa: E731
    W_ih, W_hh = m.weight_ih_l0.detach().numpy(), m.weight_hh_l0.detach().numpy()
    b = (m.bias_ih_l0 + m.bias_hh_l0).detach().numpy()
    outs = []
    h, s = h0.copy(), c0.copy()
    for x_t in x:
        net = W_ih @ x_t + W_hh @ h + b
        y_in, net_c, y_out = net[:H], net[H:2 * H], net[2 * H:]
        s = s + sig(y_in) * (4 * sig(net_c) - 2)               # g ∈ [−2, 2], the CEC
        h = sig(y_out) * (2 * sig(s) - 1)                      # h ∈ [−1, 1]
        outs.append(h)
    return np.stack(outs), h, s


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_papers_equations_by_hand(backend):
    m = _module(backend)
    g = np.random.default_rng(0)
    x, h0, c0 = g.normal(size=(7, 2, I)), g.normal(size=(2, H)), g.normal(size=(2, H))
    out, (h_n, c_n) = m(torch.from_numpy(x), (torch.from_numpy(h0)[None],
                                              torch.from_numpy(c0)[None]))
    for b in range(2):
        want, h_last, s_last = _numpy_forward(m, x[:, b], h0[b], c0[b])
        np.testing.assert_allclose(out[:, b].detach().numpy(), want, atol=1e-12)
        np.testing.assert_allclose(h_n[0, b].detach().numpy(), h_last, atol=1e-12)
        np.testing.assert_allclose(c_n[0, b].detach().numpy(), s_last, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_closed_input_gate_keeps_the_carousel_constant(backend):
    """With the input gate shut (bias −60), c_t = c_{t−1} exactly: the CEC's weight 1.0."""
    m = _module(backend)
    with torch.no_grad():
        m.bias_ih_l0[:H] = -60.0
    c0 = torch.randn(1, 3, H, dtype=F64)
    out, (_, c_n) = m(torch.randn(20, 3, I, dtype=F64), (torch.zeros(1, 3, H, dtype=F64), c0))
    assert_close(c_n, c0, "c after 20 steps with i = 0", 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_gradient_flows_back_only_through_the_carousel(backend):
    """truncate=True: ∂L/∂h_0 = 0; ∂L/∂c_0 is the CEC's (the same as untruncated at the
    last step of a one-step sequence); the weights still get gradients."""
    m = _module(backend, truncate=True)
    x = torch.randn(6, 2, I, dtype=F64)
    h0 = torch.randn(1, 2, H, dtype=F64, requires_grad=True)
    c0 = torch.randn(1, 2, H, dtype=F64, requires_grad=True)
    out, (h_n, c_n) = m(x, (h0, c0))
    (out.sum() + c_n.sum()).backward()
    assert h0.grad is None or torch.equal(h0.grad, torch.zeros_like(h0))   # reference: no path
    assert c0.grad.abs().min() > 0
    assert m.weight_hh_l0.grad.abs().sum() > 0
    full = _module(backend)
    h1, c1 = h0.detach().clone().requires_grad_(), c0.detach().clone().requires_grad_()
    out1, (_, c_n1) = full(x[:1], (h1, c1))
    (out1.sum() + c_n1.sum()).backward()
    h2, c2 = h0.detach().clone().requires_grad_(), c0.detach().clone().requires_grad_()
    out2, (_, c_n2) = m(x[:1], (h2, c2))
    (out2.sum() + c_n2.sum()).backward()
    assert_close(c2.grad, c1.grad, "one step: truncation changes nothing for c_0", 1e-12)


@pytest.mark.parametrize("truncate", [False, True])
@pytest.mark.parametrize("regularisers", [{}, {"zoneout": 0.3, "recurrent_dropout": 0.3,
                                               "input_dropout": 0.2, "weight_dropout": 0.2}],
                         ids=["plain", "regularised"])
def test_fused_backends_equal_the_reference(truncate, regularisers):
    results = {}
    for backend in BACKENDS:
        m = _module(backend, truncate=truncate, num_layers=2, bidirectional=True,
                    **regularisers).train()
        g = torch.Generator().manual_seed(1)
        x, feed = make_input(6, 3, I, F64, batch_first=False, packed=True, generator=g)
        torch.manual_seed(7)
        out, state = m(feed)
        backward_with_random_grads(out, as_tuple(state), seed=2)
        results[backend] = (output_tensor(out), as_tuple(state), x.grad,
                            {n: p.grad for n, p in m.named_parameters()})
    want = results["reference"]
    for backend in ("fused_py", "fused_cpp"):
        got = results[backend]
        assert_close(got[0], want[0], f"{backend} output", TOL[F64])
        for a, b in zip(got[1], want[1], strict=True):
            assert_close(a, b, f"{backend} final state", TOL[F64])
        assert_close(got[2], want[2], f"{backend} grad input", TOL[F64])
        for name, grad in want[3].items():
            assert_close(got[3][name], grad, f"{backend} grad {name}", TOL[F64])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    m = _module(backend, bidirectional=True)
    x = torch.randn(4, 2, I, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x)[0], (x,))


def test_record_summary_and_errors():
    m = lstmkit.LSTM1997(I, H, num_layers=2)
    with lstmkit.record(m) as rec:
        m(torch.randn(5, 2, I))
    assert rec.layers[0].keys() == ["i", "g", "o", "c", "h"]
    g = rec.layers[1]["g"]
    assert bool(((g > -2) & (g < 2)).all())
    text = lstmkit.summary(m)
    assert f"total parameters: {lstmkit.count_parameters(m):,}" in text
    assert lstmkit.count_parameters(m) == 3 * (H * I + H * H + 2 * H) + 3 * (H * H + H * H + 2 * H)
    with pytest.raises(TypeError, match="forget_gate.*truncate"):
        lstmkit.LSTM1997(I, H, forget_gate=True)
    with pytest.raises(ValueError, match="no torch.nn equivalent"):
        m.to_torch()


def test_compile_has_no_graph_breaks():
    torch.manual_seed(0)
    m = lstmkit.LSTM1997(I, H, truncate=True)
    x = torch.randn(6, 2, I)
    dynamo.reset()
    explained = dynamo.explain(m)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x)[0], m(x)[0], rtol=1e-6, atol=1e-6)
