"""torch.autograd.gradcheck (float64, finite differences) for every cell variant and backend,
including the variants torch.nn does not have."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstmkit

I, H = 2, 3

VARIANTS = {
    "lstm": lambda **kw: lstmkit.LSTM(I, H, **kw),
    "lstm_peephole": lambda **kw: lstmkit.LSTM(I, H, peephole=True, **kw),
    "lstm_coupled": lambda **kw: lstmkit.LSTM(I, H, coupled=True, **kw),
    "lstm_coupled_peephole": lambda **kw: lstmkit.LSTM(I, H, coupled=True, peephole=True, **kw),
    "lstm_proj_peephole": lambda **kw: lstmkit.LSTM(I, H, proj_size=2, peephole=True, **kw),
    "gru": lambda **kw: lstmkit.GRU(I, H, **kw),
    "gru_reset_before": lambda **kw: lstmkit.GRU(I, H, reset_after=False, **kw),
    "rnn_tanh": lambda **kw: lstmkit.RNN(I, H, **kw),
    "rnn_relu": lambda **kw: lstmkit.RNN(I, H, nonlinearity="relu", **kw),
}


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradcheck(variant, packed, backend):
    torch.manual_seed(0)
    m = VARIANTS[variant](num_layers=2, bidirectional=True, dtype=torch.float64,
                          backend=backend)
    with torch.no_grad():            # peepholes away from zero, so their gradient matters
        for p in m.parameters():
            p.uniform_(-0.8, 0.8)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    T, B = 3, 3
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    shapes = m._state_shapes()
    hx = [torch.randn(n, B, s, dtype=torch.float64, requires_grad=True) for n, s in shapes]
    lengths = torch.tensor([2, 3, 1])

    def f(x, *rest):
        states, weights = rest[: len(hx)], rest[len(hx):]
        out, state = torch.func.functional_call(
            m, dict(zip(names, weights)),
            (pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x,
             tuple(states) if len(states) == 2 else states[0]))
        state = state if isinstance(state, tuple) else (state,)
        return (out.data if packed else out, *state)

    assert torch.autograd.gradcheck(f, (x, *hx, *params), eps=1e-6, atol=1e-7)
