"""torch.compile of models with lstmkit layers: same outputs and gradients as eager.

(The fused kernels are not yet registered as torch.library custom ops, so dynamo still
breaks the graph around them; this checks that compiled models compute the same thing.)"""

from __future__ import annotations

import pytest
import torch

import lstmkit


@pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace")
@pytest.mark.parametrize("make", [
    lambda: lstmkit.LSTM(4, 6, peephole=True, backend="fused"),
    lambda: lstmkit.GRU(4, 6, reset_after=False, num_layers=2),
    lambda: lstmkit.LSTM(4, 6, bidirectional=True),
], ids=["peephole-fused", "gru-reset-before-2-layers", "lstm-bidirectional-auto"])
def test_compiled_equals_eager(make):
    torch.manual_seed(0)
    m = make()
    x = torch.randn(9, 3, 4, requires_grad=True)
    g = torch.randn(9, 3, m.hidden_size * m.num_directions)
    out, _ = m(x)
    (out * g).sum().backward()
    eager = [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    x.grad = None
    m.zero_grad()
    compiled = torch.compile(m, backend="aot_eager")
    out2, _ = compiled(x)
    (out2 * g).sum().backward()
    torch.testing.assert_close(out2, out, rtol=1e-6, atol=1e-6)
    for a, b in zip([x.grad] + [p.grad for p in m.parameters()], eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
